// The retry policy on a fake clock: the same cases as the Rust client's
// retry.rs tests, none of which ever sleeps.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  type Attempt,
  DEFAULT_RETRY_POLICY,
  ManualClock,
  type RetryPolicy,
  type RetryReason,
  type Settled,
  checkPolicy,
  delayCeiling,
  jitter,
  parseRetryAfter,
  runWithRetries,
  seededRandom,
} from "../src/retry.js";

const POLICY: RetryPolicy = {
  attemptsMax: 10,
  delayInitialMs: 100,
  delayMaxMs: 2_000,
  elapsedMaxMs: 60_000,
  attemptTimeoutMs: 5_000,
};

const UNAVAILABLE: Attempt<string> = {
  kind: "retry",
  reason: { kind: "unavailable", status: 503, code: "OVERLOADED" },
  retryAfterMs: undefined,
};

/** Runs a scripted sequence of attempts; returns the outcome and how many attempts were made. */
async function scripted(
  policy: RetryPolicy,
  clock: ManualClock,
  seed: number,
  script: (attempt: number) => Attempt<string>,
): Promise<{ settled: Settled<string>; attempts: number }> {
  let attempts = 0;
  const settled = await runWithRetries({ policy, clock, random: seededRandom(seed) }, async (number) => {
    attempts = number;
    return script(number);
  });
  return { settled, attempts };
}

test("the default policy is the Rust client's", () => {
  assert.deepEqual(
    { ...DEFAULT_RETRY_POLICY },
    { attemptsMax: 8, delayInitialMs: 50, delayMaxMs: 2_000, elapsedMaxMs: 30_000, attemptTimeoutMs: 15_000 },
  );
});

test("the ceiling doubles, then stays at the cap", () => {
  const ceilings = [1, 2, 3, 4, 5, 6, 7, 8].map((retry) => delayCeiling(POLICY, retry));
  assert.deepEqual(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
  assert.equal(delayCeiling(POLICY, 1_000), 2_000);
  assert.equal(delayCeiling(POLICY, 2 ** 32 - 1), 2_000);
});

test("every delay is within its ceiling, and the delays grow", async () => {
  const sums = new Array<number>(9).fill(0);
  const seeds = 400;
  for (let seed = 0; seed < seeds; seed += 1) {
    const clock = new ManualClock();
    const { settled, attempts } = await scripted(POLICY, clock, seed, () => UNAVAILABLE);
    assert.equal(settled.kind, "unknown");
    assert.equal(attempts, 10);
    const sleeps = clock.sleeps();
    assert.equal(sleeps.length, 9);
    sleeps.forEach((sleep, index) => {
      const ceiling = delayCeiling(POLICY, index + 1);
      assert.ok(sleep >= 0 && sleep <= ceiling, `retry ${index + 1}: ${sleep} > ${ceiling}`);
      sums[index]! += sleep;
    });
  }
  // Full jitter averages half the ceiling: 50, 100, 200, 400, 800, then
  // 1000 ms at the cap. Allow for sampling noise.
  const means = sums.map((sum) => sum / seeds);
  [50, 100, 200, 400, 800, 1000, 1000, 1000, 1000].forEach((expected, index) => {
    assert.ok(Math.abs(means[index]! - expected) <= expected * 0.15, `means ${means}`);
  });
});

test("the jitter covers the whole range, and a seed reproduces it", () => {
  const random = seededRandom(7);
  const draws = Array.from({ length: 10_000 }, () => jitter(random, 1_000));
  assert.ok(draws.every((draw) => draw >= 0 && draw <= 1_000));
  // Every tenth of the range is hit about a tenth of the time.
  const deciles = new Array<number>(10).fill(0);
  for (const draw of draws) {
    deciles[Math.min(9, Math.floor(draw / 100))]! += 1;
  }
  assert.ok(deciles.every((count) => count >= 800 && count < 1200), `${deciles}`);
  const again = seededRandom(7);
  assert.ok(draws.every((draw) => draw === jitter(again, 1_000)));
  assert.equal(jitter(seededRandom(1), 0), 0);
});

test("Retry-After is waited for at least", async () => {
  const clock = new ManualClock();
  const { settled, attempts } = await scripted(POLICY, clock, 3, (number) =>
    number < 3
      ? { kind: "retry", reason: { kind: "unavailable", status: 503, code: "OVERLOADED" }, retryAfterMs: 1_000 }
      : { kind: "done", value: "paid" },
  );
  assert.deepEqual(settled, { kind: "done", value: "paid", attempts: 3 });
  assert.equal(attempts, 3);
  const sleeps = clock.sleeps();
  assert.equal(sleeps.length, 2);
  sleeps.forEach((sleep, index) => {
    assert.ok(sleep >= 1_000, `${sleeps}`);
    assert.ok(sleep <= 1_000 + delayCeiling(POLICY, index + 1), `${sleeps}`);
  });
});

test("a refusal is never retried", async () => {
  const clock = new ManualClock();
  const { settled, attempts } = await scripted(POLICY, clock, 1, () => ({
    kind: "refused",
    status: 422,
    code: "OVERPAYMENT",
    message: "too much",
    details: { amount: 5, amount_due: 4 },
  }));
  assert.equal(attempts, 1);
  assert.deepEqual(clock.sleeps(), []);
  assert.deepEqual(settled, {
    kind: "refused",
    status: 422,
    code: "OVERPAYMENT",
    message: "too much",
    details: { amount: 5, amount_due: 4 },
    attempts: 1,
  });
});

test("an unknown answer is reported without a retry", async () => {
  const clock = new ManualClock();
  const { settled, attempts } = await scripted(POLICY, clock, 1, () => ({ kind: "unknown", cause: "HTTP 500 INTERNAL" }));
  assert.equal(attempts, 1);
  assert.equal(settled.kind, "unknown");
  assert.match(settled.kind === "unknown" ? settled.cause : "", /500/);
});

test("the attempt bound gives up as unknown", async () => {
  const clock = new ManualClock();
  const { settled, attempts } = await scripted({ ...POLICY, attemptsMax: 4 }, clock, 5, () => ({
    kind: "retry",
    reason: { kind: "timeout", detail: "no answer in 5000 ms" },
    retryAfterMs: undefined,
  }));
  assert.equal(attempts, 4);
  assert.equal(clock.sleeps().length, 3);
  assert.equal(settled.kind, "unknown");
  const cause = settled.kind === "unknown" ? settled.cause : "";
  assert.match(cause, /gave up after 4 attempts/);
  assert.match(cause, /timed out/);
});

test("the time bound gives up as unknown", async () => {
  const policy = { ...POLICY, attemptsMax: 1_000, elapsedMaxMs: 10_000 };
  const clock = new ManualClock();
  const { settled, attempts } = await scripted(policy, clock, 9, () => UNAVAILABLE);
  assert.equal(settled.kind, "unknown");
  assert.match(settled.kind === "unknown" ? settled.cause : "", /gave up/);
  assert.ok(clock.now() <= 10_000);
  // With delays of up to 2 s, ten seconds hold a handful of retries, far
  // fewer than the attempt bound.
  assert.ok(attempts >= 3 && attempts < 100, `${attempts}`);
  // A Retry-After beyond what is left of the budget ends at once.
  const second = new ManualClock();
  const late = await scripted(policy, second, 9, () => ({
    kind: "retry",
    reason: { kind: "unavailable", status: 503, code: "OVERLOADED" },
    retryAfterMs: 60_000,
  }));
  assert.equal(late.settled.kind, "unknown");
  assert.equal(late.attempts, 1);
  assert.deepEqual(second.sleeps(), []);
});

test("time spent in slow attempts counts against the budget", async () => {
  const policy = { ...POLICY, attemptsMax: 1_000, elapsedMaxMs: 10_000 };
  const clock = new ManualClock();
  const { settled, attempts } = await scripted(policy, clock, 2, () => {
    clock.advance(4_000);
    return { kind: "retry", reason: { kind: "timeout", detail: "no answer in 4000 ms" }, retryAfterMs: undefined };
  });
  assert.equal(settled.kind, "unknown");
  assert.ok(attempts <= 3, `${attempts}`);
});

test("every retry is reported to the observer", async () => {
  const clock = new ManualClock();
  const seen: RetryReason[] = [];
  const delays: number[] = [];
  const settled = await runWithRetries(
    {
      policy: POLICY,
      clock,
      random: seededRandom(1),
      onRetry: ({ reason, delayMs }) => {
        seen.push(reason);
        delays.push(delayMs);
      },
    },
    async (number): Promise<Attempt<string>> =>
      number === 1
        ? { kind: "retry", reason: { kind: "connection", detail: "refused" }, retryAfterMs: undefined }
        : number === 2
          ? UNAVAILABLE
          : { kind: "done", value: "ok" },
  );
  assert.deepEqual(settled, { kind: "done", value: "ok", attempts: 3 });
  assert.deepEqual(
    seen.map((reason) => reason.kind),
    ["connection", "unavailable"],
  );
  assert.deepEqual(delays, clock.sleeps());
});

test("Retry-After is read in delay-seconds only", () => {
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter("3"), 3_000);
  assert.equal(parseRetryAfter(" 1 "), 1_000);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT"), undefined);
  assert.equal(parseRetryAfter("1.5"), undefined);
  assert.equal(parseRetryAfter("-1"), undefined);
});

test("a policy with impossible numbers is refused when the client is made", () => {
  assert.throws(() => checkPolicy({ ...POLICY, attemptsMax: 0 }), RangeError);
  assert.throws(() => checkPolicy({ ...POLICY, attemptsMax: 1.5 }), RangeError);
  assert.throws(() => checkPolicy({ ...POLICY, delayMaxMs: -1 }), RangeError);
  assert.throws(() => checkPolicy({ ...POLICY, elapsedMaxMs: Number.NaN }), RangeError);
  assert.throws(() => checkPolicy({ ...POLICY, attemptTimeoutMs: 0 }), RangeError);
  assert.deepEqual(checkPolicy(POLICY), POLICY);
});
