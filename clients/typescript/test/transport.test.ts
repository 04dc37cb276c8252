// The client's own rules, without a bursar server: answers sorted by status,
// arguments refused before anything is sent, and, over real HTTP to a small
// scripted server (as the Rust client's tests do), the same key and body on
// every attempt, Retry-After honoured, a refusal sent once, an unreachable or
// silent server ending `unknown` within the bounds.

import assert from "node:assert/strict";
import { type IncomingMessage, type ServerResponse, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { classify, describeError, errorOf } from "../src/http.js";
import { BursarClient, ManualClock, checkAmount, seededRandom } from "../src/index.js";
import { unsafeAmount } from "../src/money.js";

test("answers are classified by status", () => {
  assert.deepEqual(classify(201, false, undefined, '{"amount":7}'), {
    kind: "done",
    value: { status: 201, body: { amount: 7 }, replayed: false },
  });
  const unreadable = classify(200, false, undefined, "x");
  assert.equal(unreadable.kind, "unknown");
  assert.match(unreadable.kind === "unknown" ? unreadable.cause : "", /unreadable/);
  assert.deepEqual(
    classify(422, false, undefined, '{"error":{"code":"OVERPAYMENT","message":"too much","details":{"amount":5,"amount_due":4}}}'),
    { kind: "refused", status: 422, code: "OVERPAYMENT", message: "too much", details: { amount: 5, amount_due: 4 } },
  );
  for (const status of [400, 401, 403, 404, 409, 413, 422]) {
    assert.equal(classify(status, false, undefined, "").kind, "refused");
  }
  assert.deepEqual(classify(503, false, 1_000, '{"error":{"code":"STORAGE_UNAVAILABLE","message":"disk full"}}'), {
    kind: "retry",
    reason: { kind: "unavailable", status: 503, code: "STORAGE_UNAVAILABLE" },
    retryAfterMs: 1_000,
  });
  assert.equal(classify(502, false, undefined, "<html>").kind, "retry");
  assert.equal(classify(504, false, undefined, "").kind, "retry");
  const internal = classify(500, false, undefined, "");
  assert.equal(internal.kind, "unknown");
  assert.match(internal.kind === "unknown" ? internal.cause : "", /500/);
  // A redirect is not followed: a payment is never resent elsewhere.
  assert.equal(classify(307, false, undefined, "").kind, "unknown");
  assert.deepEqual(errorOf(502, "<html>bad gateway</html>"), {
    code: "HTTP_502",
    message: "<html>bad gateway</html>",
    details: undefined,
  });
});

test("an answer whose amounts are not safe integers is unknown, not a success", () => {
  for (const body of [
    '{"entry":{"amount":10.5},"enrollment":{}}',
    '{"enrollment":{"amount_paid":9007199254740993}}',
    '{"enrollments":[{"price":1e300}]}',
  ]) {
    const attempt = classify(201, false, undefined, body);
    assert.equal(attempt.kind, "unknown", body);
    assert.match(attempt.kind === "unknown" ? attempt.cause : "", /not a safe integer/);
  }
  assert.equal(unsafeAmount({ events: [{ data: { exception: { event: { amount: 1.5 } } } }] }), null);
  assert.equal(unsafeAmount({ amount_due: 1_000_000_000_000_000, reference: 1.5 }), null);
});

test("an error's causes are named", () => {
  const error = new TypeError("fetch failed", { cause: Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:9"), { code: "ECONNREFUSED" }) });
  assert.equal(describeError(error), "fetch failed: connect ECONNREFUSED 127.0.0.1:9");
});

test("amounts are checked before anything is sent", async () => {
  let sent = 0;
  const client = new BursarClient({
    baseUrl: "http://127.0.0.1:9",
    fetch: async () => {
      sent += 1;
      throw new Error("nothing should be sent");
    },
  });
  const bad: Array<[unknown, ErrorConstructor]> = [
    [10.5, RangeError],
    [0, RangeError],
    [-1, RangeError],
    [1_000_000_000_001, RangeError],
    [2 ** 53, RangeError],
    [Number.NaN, RangeError],
    [Number.POSITIVE_INFINITY, RangeError],
    ["10", TypeError],
    [10n, TypeError],
    [null, TypeError],
    [undefined, TypeError],
  ];
  for (const [amount, kind] of bad) {
    assert.throws(() => client.payment("u1", "c1", { amount: amount as number }), kind, String(amount));
    assert.throws(() => client.refund("u1", "c1", { amount: amount as number, reason: "r" }), kind);
    assert.throws(() => client.openHold("u1", "c1", { amount: amount as number }), kind);
  }
  assert.throws(() => client.captureHold("u1", "c1", 2, { amount: 0.5 }), RangeError);
  assert.throws(() => client.enroll("u1", "c1", { currency: "USD", price: -1 }), RangeError);
  assert.throws(() => client.enroll("u1", "c1", { currency: "USD", price: 99.99 }), RangeError);
  assert.throws(
    () => client.enroll("u1", "c1", { currency: "USD", price: 100, access_policy: { kind: "MIN_SETTLED", amount: 1.5 } }),
    RangeError,
  );
  assert.throws(
    () => client.batch({ operations: [{ user_id: "u", course_id: "c", kind: "payment", body: { amount: "5" } }] }),
    /operations\[0\]\.body\.amount/,
  );
  // The edges are accepted.
  assert.equal(checkAmount("amount", 1), 1);
  assert.equal(checkAmount("amount", 1_000_000_000_000), 1_000_000_000_000);
  // Ids, keys, pages and hold numbers too.
  assert.throws(() => client.payment("..", "c1", { amount: 1 }), RangeError);
  assert.throws(() => client.payment("u/1", "c1", { amount: 1 }), RangeError);
  assert.throws(() => client.payment("u1", "", { amount: 1 }), RangeError);
  assert.throws(() => client.payment("u1", "c1", { amount: 1 }, { idempotencyKey: " padded" }), RangeError);
  assert.throws(() => client.payment("u1", "c1", { amount: 1 }, { idempotencyKey: "é" }), RangeError);
  assert.throws(() => client.payment("u1", "c1", { amount: 1 }, { idempotencyKey: "k".repeat(256) }), RangeError);
  assert.throws(() => client.ledger("u1", "c1", { limit: 1_001 }), RangeError);
  assert.throws(() => client.events({ waitSeconds: 31 }), RangeError);
  assert.throws(() => client.voidHold("u1", "c1", 0), RangeError);
  assert.equal(sent, 0);
  // And the client itself.
  for (const baseUrl of ["127.0.0.1:8080", "ftp://host", "http://", "http://host/path"]) {
    assert.throws(() => new BursarClient({ baseUrl }), TypeError, baseUrl);
  }
  assert.throws(() => new BursarClient({ baseUrl: "http://host", token: "bad\ntoken" }), TypeError);
  assert.equal(new BursarClient({ baseUrl: "http://127.0.0.1:8080/" }).baseUrl, "http://127.0.0.1:8080");
});

interface Seen {
  keys: Array<string | undefined>;
  bodies: string[];
}

/** A server that answers `failures` 503s (with `Retry-After: 2`) before a 201, or always 422. */
async function stub(script: { failures?: number; refuse?: boolean; silent?: boolean }): Promise<{ baseUrl: string; seen: Seen; close: () => void }> {
  const seen: Seen = { keys: [], bodies: [] };
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    let body = "";
    request.on("data", (chunk: Buffer) => (body += chunk.toString()));
    request.on("end", () => {
      seen.keys.push(request.headers["idempotency-key"] as string | undefined);
      seen.bodies.push(body);
      if (script.silent) {
        return; // Never answers: the attempt timeout must end it.
      }
      if (script.refuse) {
        response.writeHead(422, { "content-type": "application/json" });
        response.end('{"error":{"code":"OVERPAYMENT","message":"more than is due"}}');
        return;
      }
      if (seen.keys.length <= (script.failures ?? 0)) {
        response.writeHead(503, { "content-type": "application/json", "retry-after": "2" });
        response.end('{"error":{"code":"OVERLOADED","message":"the write queue is full"}}');
        return;
      }
      const replayed = seen.keys.length > (script.failures ?? 0) + 1;
      response.writeHead(201, { "content-type": "application/json", "idempotent-replayed": String(replayed) });
      response.end('{"entry":{"seq":2,"kind":"PAYMENT","amount":1250},"enrollment":{"amount_paid":1250}}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    seen,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

test("every attempt carries the same key and body, after at least Retry-After", async () => {
  const { baseUrl, seen, close } = await stub({ failures: 3 });
  try {
    const clock = new ManualClock();
    const retries: string[] = [];
    const client = new BursarClient({
      baseUrl,
      token: "t",
      clock,
      random: seededRandom(11),
      onRetry: ({ reason }) => retries.push(reason.kind),
    });
    const outcome = await client.payment("u1", "c1", { amount: 1_250 }, { idempotencyKey: "order-77" });
    assert.equal(outcome.kind, "succeeded");
    assert.equal(outcome.attempts, 4);
    assert.equal(outcome.idempotencyKey, "order-77");
    assert.equal(outcome.kind === "succeeded" && outcome.replayed, false);
    assert.deepEqual(seen.keys, ["order-77", "order-77", "order-77", "order-77"]);
    assert.ok(seen.bodies.every((body) => body === '{"amount":1250}'), `${seen.bodies}`);
    // Three retries, each after at least the 2 s the server asked for, and
    // none of them slept for real.
    const sleeps = clock.sleeps();
    assert.equal(sleeps.length, 3);
    assert.ok(sleeps.every((sleep) => sleep >= 2_000), `${sleeps}`);
    assert.deepEqual(retries, ["unavailable", "unavailable", "unavailable"]);
  } finally {
    close();
  }
});

test("a call without a key gets a new one, the same on all its attempts", async () => {
  const { baseUrl, seen, close } = await stub({ failures: 1 });
  try {
    const client = new BursarClient({ baseUrl, clock: new ManualClock() });
    const outcome = await client.payRemaining("u1", "c1");
    assert.equal(outcome.kind, "succeeded");
    assert.match(outcome.idempotencyKey ?? "", /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.deepEqual(seen.keys, [outcome.idempotencyKey, outcome.idempotencyKey]);
    const second = await client.payRemaining("u1", "c1");
    assert.notEqual(second.idempotencyKey, outcome.idempotencyKey);
  } finally {
    close();
  }
});

test("a refusal is sent once", async () => {
  const { baseUrl, seen, close } = await stub({ refuse: true });
  try {
    const clock = new ManualClock();
    const client = new BursarClient({ baseUrl, clock });
    const outcome = await client.payment("u1", "c1", { amount: 5 }, { idempotencyKey: "order-78" });
    assert.deepEqual(outcome, {
      kind: "refused",
      status: 422,
      code: "OVERPAYMENT",
      message: "more than is due",
      details: undefined,
      idempotencyKey: "order-78",
      attempts: 1,
    });
    assert.equal(seen.keys.length, 1);
    assert.deepEqual(clock.sleeps(), []);
  } finally {
    close();
  }
});

test("an unreachable server ends unknown within the bounds, carrying the key", async () => {
  // A port that was just free: connecting to it is refused.
  const { baseUrl, close } = await stub({});
  close();
  await new Promise((resolve) => setTimeout(resolve, 50));
  const clock = new ManualClock();
  const client = new BursarClient({ baseUrl, clock, retryPolicy: { attemptsMax: 5 } });
  const outcome = await client.payment("u1", "c1", { amount: 5 }, { idempotencyKey: "order-79" });
  assert.equal(outcome.kind, "unknown");
  assert.equal(outcome.idempotencyKey, "order-79");
  const cause = outcome.kind === "unknown" ? outcome.cause : "";
  assert.match(cause, /gave up after 5 attempts/);
  assert.match(cause, /connection failed/);
  assert.match(cause, /ECONNREFUSED/);
  assert.equal(clock.sleeps().length, 4);
});

test("a silent server is abandoned after the attempt timeout, and retried", async () => {
  const { baseUrl, seen, close } = await stub({ silent: true });
  try {
    const clock = new ManualClock();
    const client = new BursarClient({ baseUrl, clock, retryPolicy: { attemptsMax: 3, attemptTimeoutMs: 100 } });
    const outcome = await client.charge("u1", "c1", { amount: 500, reason: "late fee" }, { idempotencyKey: "fee-1" });
    assert.equal(outcome.kind, "unknown");
    assert.match(outcome.kind === "unknown" ? outcome.cause : "", /gave up after 3 attempts: timed out: no answer in 100 ms/);
    assert.deepEqual(seen.keys, ["fee-1", "fee-1", "fee-1"]);
  } finally {
    close();
  }
});

test("the caller's signal stops the retries", async () => {
  const { baseUrl, seen, close } = await stub({ silent: true });
  try {
    const controller = new AbortController();
    const client = new BursarClient({ baseUrl, clock: new ManualClock() });
    setTimeout(() => controller.abort(new Error("the tab was closed")), 50);
    const outcome = await client.payment("u1", "c1", { amount: 5 }, { idempotencyKey: "order-80", signal: controller.signal });
    assert.equal(outcome.kind, "unknown");
    assert.equal(outcome.attempts, 1);
    assert.match(outcome.kind === "unknown" ? outcome.cause : "", /the caller stopped waiting: the tab was closed/);
    assert.equal(seen.keys.length, 1);
  } finally {
    close();
  }
});
