// The retry policy: exponential backoff with full jitter, `Retry-After`
// honoured, bounded attempts and total time, and a clock and a source of
// randomness passed in, so that the policy is tested without ever sleeping.
//
// It is the policy of bursar's Rust client (crates/bursar-client/src/retry.rs),
// number for number. Only failures that are safe to retry are retried: no
// answer at all (a connection error or a timeout) and 502/503/504. Every retry
// resends the very same request, idempotency key included, so the server
// applies it at most once whatever happened to the earlier attempts.

/** How hard the client tries before it reports an outcome as unknown. */
export interface RetryPolicy {
  /** Attempts in all, the first one included; 1 means no retry. */
  readonly attemptsMax: number;
  /**
   * The ceiling of the delay before the first retry, in milliseconds; it
   * doubles with every retry after that.
   */
  readonly delayInitialMs: number;
  /** The ceiling never grows past this (milliseconds). */
  readonly delayMaxMs: number;
  /** No retry starts later than this after the first attempt started (milliseconds). */
  readonly elapsedMaxMs: number;
  /**
   * One attempt that has not been answered, body included, within this is
   * abandoned as a timeout (and retried). Milliseconds.
   */
  readonly attemptTimeoutMs: number;
}

/**
 * Eight attempts within thirty seconds, delays from up to 50 ms growing to
 * up to 2 s: long enough to ride out a server restart or a full write queue,
 * short enough that a caller learns of an outage quickly. An attempt waits
 * 15 s, longer than the 10 s after which bursar itself answers a stuck
 * request with a 503, so that answer arrives first.
 */
export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  attemptsMax: 8,
  delayInitialMs: 50,
  delayMaxMs: 2_000,
  elapsedMaxMs: 30_000,
  attemptTimeoutMs: 15_000,
});

/** One attempt and no retry. */
export const NO_RETRIES: RetryPolicy = Object.freeze({ ...DEFAULT_RETRY_POLICY, attemptsMax: 1 });

/**
 * The ceiling of the delay before retry number `retry` (1 for the first
 * retry): `delayInitialMs * 2^(retry - 1)`, capped at `delayMaxMs`.
 */
export function delayCeiling(policy: RetryPolicy, retry: number): number {
  const doublings = Math.max(0, retry - 1);
  // 2^1100 is Infinity, which the cap brings back to delayMaxMs.
  return Math.min(policy.delayInitialMs * 2 ** doublings, policy.delayMaxMs);
}

/** Where the retry loop reads the time and how it waits. */
export interface Clock {
  /** Milliseconds from any fixed origin; only differences are used. */
  now(): number;
  sleep(ms: number): Promise<void>;
}

/** The real clock: `performance.now()` and `setTimeout`. */
export const systemClock: Clock = Object.freeze({
  now: () => performance.now(),
  sleep: (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)),
});

/**
 * A clock that only moves when it is told to: `sleep` records the delay,
 * moves the time forward by it and returns at once. A test keeps it to read
 * what the client waited.
 */
export class ManualClock implements Clock {
  private elapsed = 0;
  private readonly slept: number[] = [];

  now(): number {
    return this.elapsed;
  }

  sleep(ms: number): Promise<void> {
    this.elapsed += ms;
    this.slept.push(ms);
    return Promise.resolve();
  }

  /** Moves the time forward without a sleep (as a slow attempt would). */
  advance(ms: number): void {
    this.elapsed += ms;
  }

  /** Every delay slept so far, in order. */
  sleeps(): number[] {
    return [...this.slept];
  }
}

/** A source of numbers uniform in [0, 1), like `Math.random`. */
export type Random = () => number;

const MASK_64 = (1n << 64n) - 1n;
const GOLDEN_GAMMA = 0x9e3779b97f4a7c15n;

/** SplitMix64's output function: a bijective mix of all 64 bits. */
function splitmix64(value: bigint): bigint {
  let z = value & MASK_64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK_64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK_64;
  return z ^ (z >> 31n);
}

/**
 * A seeded source of randomness (SplitMix64, as the Rust client's jitter),
 * so that a test's delays are the same on every run.
 */
export function seededRandom(seed: number | bigint): Random {
  let state = BigInt(seed) & MASK_64;
  return () => {
    state = (state + GOLDEN_GAMMA) & MASK_64;
    // The top 53 bits, as a fraction of 2^53: uniform in [0, 1).
    return Number(splitmix64(state) >> 11n) / 2 ** 53;
  };
}

/** A delay drawn uniformly from `[0, ceiling]` milliseconds. */
export function jitter(random: Random, ceilingMs: number): number {
  if (ceilingMs <= 0) {
    return 0;
  }
  return random() * ceilingMs;
}

/** Why an attempt is worth another try. */
export type RetryReason =
  /** 502, 503 or 504: the server (or a proxy) did not take the request. */
  | { readonly kind: "unavailable"; readonly status: number; readonly code: string }
  /** No answer within the attempt timeout. */
  | { readonly kind: "timeout"; readonly detail: string }
  /** The connection failed or broke before a whole answer arrived. */
  | { readonly kind: "connection"; readonly detail: string };

/** A reason in words, as the Rust client writes it. */
export function describeReason(reason: RetryReason): string {
  switch (reason.kind) {
    case "unavailable":
      return `HTTP ${reason.status} ${reason.code}`;
    case "timeout":
      return `timed out: ${reason.detail}`;
    case "connection":
      return `connection failed: ${reason.detail}`;
  }
}

/**
 * A 4xx: the server refused and stored nothing, so a retry would be refused
 * the same way.
 */
export interface Refusal {
  readonly kind: "refused";
  readonly status: number;
  readonly code: string;
  readonly message: string;
  readonly details: unknown;
}

/** What one attempt came to. */
export type Attempt<T> =
  /** A success answer, read. */
  | { readonly kind: "done"; readonly value: T }
  | Refusal
  /**
   * Safe to retry with the same key, after at least `retryAfterMs` if the
   * server asked for it.
   */
  | { readonly kind: "retry"; readonly reason: RetryReason; readonly retryAfterMs: number | undefined }
  /**
   * An answer that does not say whether the operation was applied, and that
   * retrying would not change (a 500, an unreadable success body), or a
   * caller that stopped waiting.
   */
  | { readonly kind: "unknown"; readonly cause: string };

/** What the retries came to: the last attempt's answer, or why they stopped. */
export type Settled<T> =
  | { readonly kind: "done"; readonly value: T; readonly attempts: number }
  | (Refusal & { readonly attempts: number })
  | { readonly kind: "unknown"; readonly cause: string; readonly attempts: number };

/** Told of every retry taken, before its delay. */
export type RetryObserver = (retry: {
  readonly reason: RetryReason;
  /** The attempt that failed, from 1. */
  readonly attempt: number;
  readonly delayMs: number;
}) => void;

export interface RetryContext {
  readonly policy: RetryPolicy;
  readonly clock: Clock;
  readonly random: Random;
  readonly onRetry?: RetryObserver | undefined;
}

/**
 * Runs `attempt` (given the attempt number, from 1) until it gives an answer
 * or the policy gives up, sleeping on the clock in between.
 *
 * The delay before retry `n` is drawn uniformly from `[0, ceiling(n)]` (full
 * jitter, so that many clients failing together do not retry together); when
 * the server sent `Retry-After`, it is that long plus the jitter, never
 * shorter.
 */
export async function runWithRetries<T>(
  context: RetryContext,
  attempt: (number: number) => Promise<Attempt<T>>,
): Promise<Settled<T>> {
  const { policy, clock, random, onRetry } = context;
  const started = clock.now();
  let number = 1;
  for (;;) {
    const answer = await attempt(number);
    switch (answer.kind) {
      case "done":
        return { kind: "done", value: answer.value, attempts: number };
      case "refused":
        return { ...answer, attempts: number };
      case "unknown":
        return { kind: "unknown", cause: answer.cause, attempts: number };
      case "retry":
        break;
    }
    const reason = describeReason(answer.reason);
    const attempts = number === 1 ? "attempt" : "attempts";
    if (number >= policy.attemptsMax) {
      return { kind: "unknown", cause: `gave up after ${number} ${attempts}: ${reason}`, attempts: number };
    }
    const jittered = jitter(random, delayCeiling(policy, number));
    const delay = answer.retryAfterMs === undefined ? jittered : answer.retryAfterMs + jittered;
    const elapsed = Math.max(0, clock.now() - started);
    if (elapsed + delay > policy.elapsedMaxMs) {
      return {
        kind: "unknown",
        cause: `gave up after ${number} ${attempts} in ${Math.floor(elapsed)} ms: ${reason}`,
        attempts: number,
      };
    }
    onRetry?.({ reason: answer.reason, attempt: number, delayMs: delay });
    await clock.sleep(delay);
    number += 1;
  }
}

/**
 * `Retry-After` in delay-seconds, the form bursar sends, as milliseconds. An
 * HTTP-date is not read; the backoff alone then decides the delay.
 */
export function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) {
    return undefined;
  }
  const text = value.trim();
  if (!/^[0-9]+$/.test(text)) {
    return undefined;
  }
  const seconds = Number(text);
  return Number.isSafeInteger(seconds) ? seconds * 1000 : undefined;
}

/** Checks a policy's numbers, so that a typo fails at once, not at the first outage. */
export function checkPolicy(policy: RetryPolicy): RetryPolicy {
  if (!Number.isSafeInteger(policy.attemptsMax) || policy.attemptsMax < 1) {
    throw new RangeError(`retry policy: attemptsMax must be an integer of at least 1, not ${policy.attemptsMax}`);
  }
  for (const name of ["delayInitialMs", "delayMaxMs", "elapsedMaxMs", "attemptTimeoutMs"] as const) {
    const value = policy[name];
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
      throw new RangeError(`retry policy: ${name} must be a finite number of milliseconds, not ${value}`);
    }
  }
  if (policy.attemptTimeoutMs <= 0) {
    throw new RangeError("retry policy: attemptTimeoutMs must be more than 0");
  }
  return Object.freeze({ ...policy });
}
