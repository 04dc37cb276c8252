//! The retry policy: exponential backoff with full jitter, `Retry-After`
//! honoured, bounded attempts and total time, and a clock behind a trait so
//! that the policy is tested without ever sleeping.
//!
//! Only failures that are safe to retry are retried: no answer at all (a
//! connection error or a timeout) and 502/503/504. Every retry resends the
//! very same request, idempotency key included, so the server applies it at
//! most once whatever happened to the earlier attempts.

use crate::Outcome;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How hard the client tries before it reports an outcome as unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; 1 means no retry.
    pub attempts_max: u32,
    /// The ceiling of the delay before the first retry; it doubles with
    /// every retry after that.
    pub delay_initial: Duration,
    /// The ceiling never grows past this.
    pub delay_max: Duration,
    /// No retry starts later than this after the first attempt started.
    pub elapsed_max: Duration,
    /// One attempt that has not been answered within this is abandoned as a
    /// timeout (and retried).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    /// Eight attempts within thirty seconds, delays from up to 50 ms growing
    /// to up to 2 s: long enough to ride out a server restart or a full write
    /// queue, short enough that a caller learns of an outage quickly. An
    /// attempt waits 15 s, longer than the 10 s after which bursar itself
    /// answers a stuck request with a 503, so that answer arrives first.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts_max: 8,
            delay_initial: Duration::from_millis(50),
            delay_max: Duration::from_secs(2),
            elapsed_max: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// One attempt and no retry.
    pub fn no_retries() -> RetryPolicy {
        RetryPolicy {
            attempts_max: 1,
            ..RetryPolicy::default()
        }
    }

    /// The ceiling of the delay before retry number `retry` (1 for the first
    /// retry): `delay_initial * 2^(retry - 1)`, capped at `delay_max`.
    pub fn delay_ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.delay_initial
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.delay_max)
    }
}

/// Where the retry loop reads the time and how it waits.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// The real clock: `Instant::now` and `tokio::time::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}

/// A clock that only moves when it is told to: `sleep` records the delay,
/// moves the time forward by it and returns at once. Clones share the time,
/// so a test keeps one clone to read what the client waited.
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

#[derive(Debug)]
struct ManualState {
    start: Instant,
    elapsed: Duration,
    sleeps: Vec<Duration>,
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock {
            state: Arc::new(Mutex::new(ManualState {
                start: Instant::now(),
                elapsed: Duration::ZERO,
                sleeps: Vec::new(),
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ManualState> {
        // A panic while the lock was held cannot leave the state half
        // written, so a poisoned lock is still good to read.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves the time forward without a sleep (as a slow attempt would).
    pub fn advance(&self, duration: Duration) {
        self.state().elapsed += duration;
    }

    /// Every delay slept so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.state().sleeps.clone()
    }

    /// The time passed since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.state().elapsed
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let state = self.state();
        state.start + state.elapsed
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        let mut state = self.state();
        state.elapsed += duration;
        state.sleeps.push(duration);
        std::future::ready(())
    }
}

/// The random part of full jitter: SplitMix64 over an atomic counter, so one
/// generator serves every task of a client without a lock, and a seed
/// reproduces a run.
#[derive(Debug)]
pub struct Jitter {
    state: AtomicU64,
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective mix of all 64 bits.
pub fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter {
            state: AtomicU64::new(seed),
        }
    }

    pub fn next_u64(&self) -> u64 {
        let previous = self.state.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed);
        splitmix64(previous.wrapping_add(GOLDEN_GAMMA))
    }

    /// A duration drawn uniformly from `0 ..= ceiling`, to the nanosecond.
    pub fn up_to(&self, ceiling: Duration) -> Duration {
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        // Lemire's multiply-shift maps 64 random bits onto 0..=nanos without
        // the bias of a modulo.
        let span = u128::from(nanos) + 1;
        let drawn = (u128::from(self.next_u64()) * span) >> 64;
        Duration::from_nanos(drawn as u64)
    }
}

/// Why an attempt is worth another try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryReason {
    /// 502, 503 or 504: the server (or a proxy) did not take the request.
    Unavailable { status: u16, code: String },
    /// No answer within the attempt timeout.
    Timeout(String),
    /// The connection failed or broke before a whole answer arrived.
    Connection(String),
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryReason::Unavailable { status, code } => write!(f, "HTTP {status} {code}"),
            RetryReason::Timeout(detail) => write!(f, "timed out: {detail}"),
            RetryReason::Connection(detail) => write!(f, "connection failed: {detail}"),
        }
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt<T> {
    /// A success answer, read.
    Done(T),
    /// A 4xx: the server refused and stored nothing, so a retry would be
    /// refused the same way.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// Safe to retry with the same key, after at least `retry_after` if the
    /// server asked for it.
    Retry {
        reason: RetryReason,
        retry_after: Option<Duration>,
    },
    /// An answer that does not say whether the operation was applied, and
    /// that retrying would not change (a 500, an unreadable success body).
    Unknown(String),
}

/// Runs `attempt` (given the attempt number, from 1) until it gives an
/// answer or the policy gives up, sleeping on `clock` in between.
///
/// The delay before retry `n` is drawn uniformly from `0 ..= ceiling(n)`
/// (full jitter, so that many clients failing together do not retry
/// together); when the server sent `Retry-After`, it is that long plus the
/// jitter, never shorter. `on_retry` sees the reason of every retry taken.
pub async fn run<C, T, F, Fut>(
    policy: &RetryPolicy,
    clock: &C,
    jitter: &Jitter,
    mut on_retry: impl FnMut(&RetryReason),
    mut attempt: F,
) -> Outcome<T>
where
    C: Clock,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let started = clock.now();
    let mut number = 1;
    loop {
        let (reason, retry_after) = match attempt(number).await {
            Attempt::Done(value) => return Outcome::Succeeded(value),
            Attempt::Refused {
                status,
                code,
                message,
            } => {
                return Outcome::Refused {
                    status,
                    code,
                    message,
                };
            }
            Attempt::Unknown(reason) => return Outcome::Unknown(reason),
            Attempt::Retry {
                reason,
                retry_after,
            } => (reason, retry_after),
        };
        let attempts = if number == 1 { "attempt" } else { "attempts" };
        if number >= policy.attempts_max {
            return Outcome::Unknown(format!("gave up after {number} {attempts}: {reason}"));
        }
        let jittered = jitter.up_to(policy.delay_ceiling(number));
        let delay = match retry_after {
            Some(after) => after.saturating_add(jittered),
            None => jittered,
        };
        let elapsed = clock.now().saturating_duration_since(started);
        if elapsed.saturating_add(delay) > policy.elapsed_max {
            return Outcome::Unknown(format!(
                "gave up after {number} {attempts} in {} ms: {reason}",
                elapsed.as_millis()
            ));
        }
        on_retry(&reason);
        clock.sleep(delay).await;
        number += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts_max: 10,
            delay_initial: Duration::from_millis(100),
            delay_max: Duration::from_secs(2),
            elapsed_max: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(5),
        }
    }

    fn unavailable() -> Attempt<&'static str> {
        Attempt::Retry {
            reason: RetryReason::Unavailable {
                status: 503,
                code: "OVERLOADED".into(),
            },
            retry_after: None,
        }
    }

    /// Runs a scripted sequence of attempts; returns the outcome and how many
    /// attempts were made.
    async fn scripted(
        policy: &RetryPolicy,
        clock: &ManualClock,
        seed: u64,
        script: impl Fn(u32) -> Attempt<&'static str>,
    ) -> (Outcome<&'static str>, u32) {
        let mut attempts = 0;
        let outcome = run(
            policy,
            clock,
            &Jitter::new(seed),
            |_| {},
            |number| {
                attempts = number;
                std::future::ready(script(number))
            },
        )
        .await;
        (outcome, attempts)
    }

    #[test]
    fn the_ceiling_doubles_then_stays_at_the_cap() {
        let policy = policy();
        let ceilings: Vec<u64> = (1..=8)
            .map(|retry| policy.delay_ceiling(retry).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(policy.delay_ceiling(1_000), Duration::from_secs(2));
        assert_eq!(policy.delay_ceiling(u32::MAX), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn every_delay_is_within_its_ceiling_and_the_delays_grow() {
        let policy = policy();
        // Over many seeds, each delay lies in 0..=ceiling(n), and the average
        // delay grows with the ceiling until the cap.
        let mut sums = [0u128; 9];
        let seeds = 400;
        for seed in 0..seeds {
            let clock = ManualClock::new();
            let (outcome, attempts) = scripted(&policy, &clock, seed, |_| unavailable()).await;
            assert!(matches!(outcome, Outcome::Unknown(_)));
            assert_eq!(attempts, 10);
            let sleeps = clock.sleeps();
            assert_eq!(sleeps.len(), 9);
            for (index, sleep) in sleeps.iter().enumerate() {
                let ceiling = policy.delay_ceiling(index as u32 + 1);
                assert!(
                    *sleep <= ceiling,
                    "retry {}: {sleep:?} > {ceiling:?}",
                    index + 1
                );
                sums[index] += sleep.as_micros();
            }
        }
        let means: Vec<u128> = sums.iter().map(|sum| sum / seeds as u128 / 1000).collect();
        // Full jitter averages half the ceiling: 50, 100, 200, 400, 800, then
        // 1000 ms at the cap. Allow for sampling noise.
        for (mean, expected) in means
            .iter()
            .zip([50, 100, 200, 400, 800, 1000, 1000, 1000, 1000])
        {
            let expected = expected as f64;
            assert!(
                (*mean as f64 - expected).abs() <= expected * 0.15,
                "means {means:?}"
            );
        }
    }

    #[test]
    fn jitter_covers_the_whole_range_and_a_seed_reproduces_it() {
        let ceiling = Duration::from_millis(1000);
        let jitter = Jitter::new(7);
        let draws: Vec<Duration> = (0..10_000).map(|_| jitter.up_to(ceiling)).collect();
        assert!(draws.iter().all(|draw| *draw <= ceiling));
        // Every tenth of the range is hit about a tenth of the time.
        let mut deciles = [0u32; 10];
        for draw in &draws {
            deciles[((draw.as_micros() * 10 / 1_000_001) as usize).min(9)] += 1;
        }
        assert!(
            deciles.iter().all(|count| (800..1200).contains(count)),
            "{deciles:?}"
        );
        let again = Jitter::new(7);
        assert!(draws.iter().all(|draw| *draw == again.up_to(ceiling)));
        assert_eq!(Jitter::new(1).up_to(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn retry_after_is_waited_for_at_least() {
        let policy = policy();
        let clock = ManualClock::new();
        let (outcome, attempts) = scripted(&policy, &clock, 3, |number| {
            if number < 3 {
                Attempt::Retry {
                    reason: RetryReason::Unavailable {
                        status: 503,
                        code: "OVERLOADED".into(),
                    },
                    retry_after: Some(Duration::from_secs(1)),
                }
            } else {
                Attempt::Done("paid")
            }
        })
        .await;
        assert!(matches!(outcome, Outcome::Succeeded("paid")));
        assert_eq!(attempts, 3);
        let sleeps = clock.sleeps();
        assert_eq!(sleeps.len(), 2);
        for (index, sleep) in sleeps.iter().enumerate() {
            let ceiling = policy.delay_ceiling(index as u32 + 1);
            assert!(*sleep >= Duration::from_secs(1), "{sleeps:?}");
            assert!(*sleep <= Duration::from_secs(1) + ceiling, "{sleeps:?}");
        }
    }

    #[tokio::test]
    async fn a_refusal_is_never_retried() {
        let clock = ManualClock::new();
        let (outcome, attempts) = scripted(&policy(), &clock, 1, |_| Attempt::Refused {
            status: 422,
            code: "OVERPAYMENT".into(),
            message: "too much".into(),
        })
        .await;
        assert_eq!(attempts, 1);
        assert!(clock.sleeps().is_empty());
        match outcome {
            Outcome::Refused { status, code, .. } => {
                assert_eq!(status, 422);
                assert_eq!(code, "OVERPAYMENT");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unknown_answer_is_reported_without_a_retry() {
        let clock = ManualClock::new();
        let (outcome, attempts) = scripted(&policy(), &clock, 1, |_| {
            Attempt::Unknown("HTTP 500 INTERNAL".into())
        })
        .await;
        assert_eq!(attempts, 1);
        assert!(matches!(outcome, Outcome::Unknown(reason) if reason.contains("500")));
    }

    #[tokio::test]
    async fn the_attempt_bound_gives_up_as_unknown() {
        let policy = RetryPolicy {
            attempts_max: 4,
            ..policy()
        };
        let clock = ManualClock::new();
        let (outcome, attempts) = scripted(&policy, &clock, 5, |_| Attempt::Retry {
            reason: RetryReason::Timeout("no answer in 5 s".into()),
            retry_after: None,
        })
        .await;
        assert_eq!(attempts, 4);
        assert_eq!(clock.sleeps().len(), 3);
        match outcome {
            Outcome::Unknown(reason) => {
                assert!(reason.contains("4 attempts"), "{reason}");
                assert!(reason.contains("timed out"), "{reason}");
            }
            other => panic!("expected unknown, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_time_bound_gives_up_as_unknown() {
        let policy = RetryPolicy {
            attempts_max: 1_000,
            elapsed_max: Duration::from_secs(10),
            ..policy()
        };
        let clock = ManualClock::new();
        let (outcome, attempts) = scripted(&policy, &clock, 9, |_| unavailable()).await;
        assert!(matches!(outcome, Outcome::Unknown(reason) if reason.contains("gave up")));
        assert!(clock.elapsed() <= Duration::from_secs(10));
        // With delays of up to 2 s, ten seconds hold a handful of retries,
        // far fewer than the attempt bound.
        assert!((3..100).contains(&attempts), "{attempts}");
        // A Retry-After beyond what is left of the budget ends at once.
        let clock = ManualClock::new();
        let (outcome, attempts) = scripted(&policy, &clock, 9, |_| Attempt::Retry {
            reason: RetryReason::Unavailable {
                status: 503,
                code: "OVERLOADED".into(),
            },
            retry_after: Some(Duration::from_secs(60)),
        })
        .await;
        assert!(matches!(outcome, Outcome::Unknown(_)));
        assert_eq!(attempts, 1);
        assert!(clock.sleeps().is_empty());
    }

    #[tokio::test]
    async fn time_spent_in_slow_attempts_counts_against_the_budget() {
        let policy = RetryPolicy {
            attempts_max: 1_000,
            elapsed_max: Duration::from_secs(10),
            ..policy()
        };
        let clock = ManualClock::new();
        let slow = clock.clone();
        let (outcome, attempts) = scripted(&policy, &clock, 2, move |_| {
            slow.advance(Duration::from_secs(4));
            Attempt::Retry {
                reason: RetryReason::Timeout("no answer in 4 s".into()),
                retry_after: None,
            }
        })
        .await;
        assert!(matches!(outcome, Outcome::Unknown(_)));
        assert!(attempts <= 3, "{attempts}");
    }

    #[tokio::test]
    async fn every_retry_is_reported_to_the_observer() {
        let clock = ManualClock::new();
        let mut seen = Vec::new();
        let outcome = run(
            &policy(),
            &clock,
            &Jitter::new(1),
            |reason| seen.push(reason.clone()),
            |number| {
                std::future::ready(match number {
                    1 => Attempt::Retry {
                        reason: RetryReason::Connection("refused".into()),
                        retry_after: None,
                    },
                    2 => unavailable(),
                    _ => Attempt::Done("ok"),
                })
            },
        )
        .await;
        assert!(matches!(outcome, Outcome::Succeeded("ok")));
        assert_eq!(seen.len(), 2);
        assert!(matches!(seen[0], RetryReason::Connection(_)));
        assert!(matches!(
            seen[1],
            RetryReason::Unavailable { status: 503, .. }
        ));
    }
}
