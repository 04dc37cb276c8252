// Every method of the client against a real `bursar serve` on a real SQLite
// file: what each answers, a replay of the same key, a refusal's code and
// details, and two tabs paying the remaining balance at once.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { AcceptedBody, BursarClient, Outcome } from "../src/index.js";
import { Server, getJson, serverUnavailable } from "./server.js";

/** The body of a success, or a failure that shows what came instead. */
function succeeded<T>(outcome: Outcome<T>, status = 201): T {
  assert.equal(outcome.kind, "succeeded", JSON.stringify(outcome));
  assert.ok(outcome.kind === "succeeded");
  assert.equal(outcome.status, status, JSON.stringify(outcome));
  return outcome.body;
}

function refused<T>(outcome: Outcome<T>, status: number, code: string): unknown {
  assert.equal(outcome.kind, "refused", JSON.stringify(outcome));
  assert.ok(outcome.kind === "refused");
  assert.deepEqual([outcome.status, outcome.code], [status, code], JSON.stringify(outcome));
  assert.equal(outcome.attempts, 1);
  return outcome.details;
}

describe("the client against bursar serve", { skip: serverUnavailable() }, () => {
  let server: Server;
  let client: BursarClient;

  before(async () => {
    server = await Server.start();
    client = server.client();
  });

  after(async () => {
    await server?.stop();
  });

  test("enroll, pay, credit, charge, refund, complete, and read it all back", async () => {
    const created = succeeded(await client.enroll("alice", "rust-101", { currency: "USD", price: 10_000 }));
    assert.ok("entry" in created);
    assert.equal(created.entry.kind, "ENROLL");
    assert.equal(created.enrollment.amount_due, 10_000);
    // Enrolling again with the same terms answers 200 and the enrollment.
    const again = succeeded(await client.enroll("alice", "rust-101", { currency: "USD", price: 10_000 }), 200);
    assert.ok(!("entry" in again));
    assert.equal(again.enrollment.version, created.enrollment.version);
    refused(await client.enroll("alice", "rust-101", { currency: "USD", price: 9_000 }), 409, "ENROLLMENT_EXISTS");

    const paid = succeeded(await client.payment("alice", "rust-101", { amount: 2_500, reference: "ch_3Nk" }));
    assert.equal(paid.entry.kind, "PAYMENT");
    assert.equal(paid.enrollment.payment_status, "PARTIAL");
    const fee = succeeded(await client.charge("alice", "rust-101", { amount: 500, reason: "late fee" }));
    assert.equal(fee.enrollment.amount_due, 8_000);
    const scholarship = succeeded(await client.credit("alice", "rust-101", { amount: 1_000, reason: "scholarship" }));
    assert.equal(scholarship.enrollment.amount_due, 7_000);
    const rest = succeeded(await client.payRemaining("alice", "rust-101", { reference: "ch_rest" }));
    assert.equal(rest.entry.amount, 7_000);
    assert.equal(rest.enrollment.payment_status, "COMPLETED");
    assert.equal(rest.enrollment.access_status, "GRANTED");
    const refundedBody = succeeded(
      await client.refund("alice", "rust-101", { amount: 500, reason: "late fee waived", reference: "re_9" }),
    );
    assert.equal(refundedBody.enrollment.access_status, "REVOKED");
    succeeded(await client.credit("alice", "rust-101", { amount: 500, reason: "late fee waived" }));
    const done = succeeded(await client.complete("alice", "rust-101"));
    assert.equal(done.enrollment.status, "COMPLETED");

    const enrollment = succeeded(await client.getEnrollment("alice", "rust-101"), 200);
    assert.deepEqual(enrollment, done.enrollment);
    assert.deepEqual(enrollment, await getJson(server, "/v1/users/alice/courses/rust-101"));
    const list = succeeded(await client.listEnrollments("alice"), 200);
    assert.deepEqual(
      list.enrollments.map((each) => each.course_id),
      ["rust-101"],
    );
    const ledger = succeeded(await client.ledger("alice", "rust-101"), 200);
    assert.deepEqual(
      ledger.entries.map((entry) => entry.kind),
      ["ENROLL", "PAYMENT", "CHARGE", "CREDIT", "PAYMENT", "REFUND", "CREDIT", "COMPLETE"],
    );
    const page = succeeded(await client.ledger("alice", "rust-101", { after: 2, limit: 3 }), 200);
    assert.deepEqual(
      page.entries.map((entry) => entry.seq),
      [3, 4, 5],
    );
    refused(await client.getEnrollment("alice", "no-such-course"), 404, "ENROLLMENT_NOT_FOUND");
  });

  test("a retry with the same key is replayed, never applied twice", async () => {
    succeeded(await client.enroll("bob", "go-201", { currency: "EUR", price: 4_000 }));
    const first = await client.payment("bob", "go-201", { amount: 1_000 }, { idempotencyKey: "order-1001" });
    const second = await client.payment("bob", "go-201", { amount: 1_000 }, { idempotencyKey: "order-1001" });
    assert.equal(first.kind === "succeeded" && first.replayed, false);
    assert.equal(second.kind === "succeeded" && second.replayed, true);
    assert.deepEqual(succeeded(second), succeeded(first));
    const enrollment = succeeded(await client.getEnrollment("bob", "go-201"), 200);
    assert.equal(enrollment.amount_paid, 1_000);
    // The same key for another body is refused, and changes nothing.
    refused(
      await client.payment("bob", "go-201", { amount: 2_000 }, { idempotencyKey: "order-1001" }),
      409,
      "IDEMPOTENCY_KEY_REUSED",
    );
  });

  test("a refusal carries its code, message and numbers, and stores nothing", async () => {
    succeeded(await client.enroll("carol", "go-201", { currency: "EUR", price: 4_000 }));
    const outcome = await client.payment("carol", "go-201", { amount: 5_000 }, { idempotencyKey: "too-much" });
    const details = refused(outcome, 422, "OVERPAYMENT");
    assert.ok(outcome.kind === "refused");
    assert.match(outcome.message, /\S/);
    assert.equal(outcome.idempotencyKey, "too-much");
    assert.deepEqual(details, { amount: 5_000, amount_available: 4_000, amount_due: 4_000 });
    refused(await client.refund("carol", "go-201", { amount: 1, reason: "r" }), 422, "REFUND_EXCEEDS_PAID");
    refused(await client.payment("carol", "go-201", { amount: 1, currency: "USD" }), 422, "CURRENCY_MISMATCH");
    refused(await client.complete("carol", "go-201"), 409, "INVALID_TRANSITION");
    // A refused key stored nothing, so it may be used again.
    succeeded(await client.payment("carol", "go-201", { amount: 4_000 }, { idempotencyKey: "too-much" }));
  });

  test("cancel an enrollment nothing was paid for", async () => {
    succeeded(await client.enroll("dave", "go-201", { currency: "EUR", price: 4_000 }));
    const cancelled = succeeded(await client.cancel("dave", "go-201"));
    assert.equal(cancelled.enrollment.status, "CANCELLED");
    refused(await client.payment("dave", "go-201", { amount: 1 }), 409, "ENROLLMENT_CANCELLED");
  });

  test("holds: open, list, capture, void", async () => {
    succeeded(await client.enroll("erin", "ml-301", { currency: "USD", price: 9_000 }));
    const hold = succeeded(await client.openHold("erin", "ml-301", { amount: 3_000, expires_in: 600, reference: "pi_1" }));
    assert.equal(hold.entry.kind, "HOLD");
    assert.equal(hold.enrollment.amount_held, 3_000);
    assert.equal(hold.enrollment.amount_available, 6_000);
    const rest = succeeded(await client.openHold("erin", "ml-301", { remaining: true }));
    assert.equal(rest.entry.amount, 6_000);
    refused(await client.openHold("erin", "ml-301", { remaining: true }), 409, "NOTHING_DUE");
    const open = succeeded(await client.listHolds("erin", "ml-301"), 200);
    assert.deepEqual(
      open.holds.map((each) => [each.hold_seq, each.amount]),
      [
        [hold.entry.seq, 3_000],
        [rest.entry.seq, 6_000],
      ],
    );
    const captured = succeeded(await client.captureHold("erin", "ml-301", hold.entry.seq, { amount: 2_000, reference: "ch_1" }));
    assert.equal(captured.entry.kind, "CAPTURE");
    assert.equal(captured.enrollment.amount_paid, 2_000);
    const voided = succeeded(await client.voidHold("erin", "ml-301", rest.entry.seq));
    assert.equal(voided.entry.kind, "VOID");
    assert.equal(voided.enrollment.amount_held, 0);
    const details = refused(await client.voidHold("erin", "ml-301", rest.entry.seq), 409, "HOLD_NOT_OPEN");
    assert.deepEqual(details, { hold_seq: rest.entry.seq, state: "VOIDED" });
    refused(await client.captureHold("erin", "ml-301", 999), 404, "HOLD_NOT_FOUND");
    assert.deepEqual(succeeded(await client.listHolds("erin", "ml-301"), 200).holds, []);
  });

  test("a batch, its missing keys filled in and kept for a resend", async () => {
    const outcome = await client.batch({
      operations: [
        { user_id: "frank", course_id: "go-201", kind: "enroll", body: { currency: "EUR", price: 4_000 } },
        { user_id: "frank", course_id: "go-201", kind: "payment", idempotency_key: "w-77", body: { amount: 4_000 } },
        { user_id: "grace", course_id: "go-201", kind: "enroll", body: { currency: "EUR", price: 4_000 } },
        { user_id: "grace", course_id: "go-201", kind: "cancel" },
      ],
    });
    const response = succeeded(outcome, 200);
    assert.deepEqual(
      response.results.map((result) => result.status),
      [201, 201, 201, 201],
    );
    assert.equal(outcome.operations[0]!.idempotency_key, undefined);
    assert.equal(outcome.operations[1]!.idempotency_key, "w-77");
    const filled = outcome.operations[3]!.idempotency_key;
    assert.match(filled ?? "", /^[0-9a-f-]{36}$/);
    // Resending the batch as sent replays every operation.
    const resent = succeeded(await client.batch({ operations: outcome.operations, detail: "summary" }), 200);
    assert.deepEqual(
      resent.results.map((result) => [result.status, result.replayed ?? false]),
      [
        [200, false],
        [201, true],
        [200, false],
        [201, true],
      ],
    );
  });

  test("events: the feed after a position, by type, and a long poll that an operation ends", async () => {
    const all = succeeded(await client.events({ limit: 1_000 }), 200);
    assert.ok(all.events.length > 0);
    const positions = all.events.map((event) => event.position);
    assert.deepEqual(
      positions,
      positions.map((_, index) => index + 1),
    );
    const granted = succeeded(await client.events({ types: ["enrollment.access_granted"] }), 200);
    assert.ok(granted.events.every((event) => event.type === "enrollment.access_granted"));
    // A long poll from the end is answered by the next commit.
    succeeded(await client.enroll("heidi", "go-201", { currency: "EUR", price: 4_000 }));
    const end = succeeded(await client.events({ after: 0, limit: 1_000 }), 200).next_after;
    const waiting = client.events({ after: end, waitSeconds: 30 });
    await new Promise((resolve) => setTimeout(resolve, 200));
    succeeded(await client.payment("heidi", "go-201", { amount: 100 }));
    const woken = succeeded(await waiting, 200);
    assert.equal(woken.events[0]?.type, "payment.recorded");
    assert.equal(woken.events[0]?.user_id, "heidi");
  });

  test("two tabs pay the remaining balance at once: one payment, one NOTHING_DUE", async () => {
    for (let round = 0; round < 5; round += 1) {
      const course = `tabs-${round}`;
      succeeded(await client.enroll("ivan", course, { currency: "USD", price: 7_000 }));
      const [first, second] = await Promise.all([
        client.payRemaining("ivan", course, { reference: "tab-1" }),
        client.payRemaining("ivan", course, { reference: "tab-2" }),
      ]);
      const outcomes: Outcome<AcceptedBody>[] = [first, second];
      const paid = outcomes.filter((outcome) => outcome.kind === "succeeded");
      const nothing = outcomes.filter((outcome) => outcome.kind === "refused" && outcome.code === "NOTHING_DUE");
      assert.equal(paid.length, 1, JSON.stringify(outcomes));
      assert.equal(nothing.length, 1, JSON.stringify(outcomes));
      const enrollment = succeeded(await client.getEnrollment("ivan", course), 200);
      assert.equal(enrollment.amount_paid, 7_000);
      const ledger = succeeded(await client.ledger("ivan", course), 200);
      assert.equal(ledger.entries.filter((entry) => entry.kind === "PAYMENT").length, 1);
    }
  });

  test("as of a time, a statement of a period, and the audit of one enrollment", async () => {
    succeeded(await client.enroll("judy", "go-201", { currency: "EUR", price: 4_000 }));
    const first = succeeded(await client.payment("judy", "go-201", { amount: 1_000 }));
    const second = succeeded(await client.payment("judy", "go-201", { amount: 500 }));
    const then = succeeded(await client.getEnrollment("judy", "go-201", { asOf: first.entry.created_at }), 200);
    assert.deepEqual(then, first.enrollment);
    const listed = succeeded(await client.listEnrollments("judy", { asOf: first.entry.created_at }), 200);
    assert.deepEqual(listed.enrollments, [first.enrollment]);
    refused(await client.getEnrollment("judy", "go-201", { asOf: new Date(Date.now() + 86_400_000) }), 400, "INVALID_REQUEST");
    refused(await client.getEnrollment("judy", "go-201", { asOf: "yesterday" }), 400, "INVALID_REQUEST");
    assert.throws(() => client.getEnrollment("judy", "go-201", { asOf: new Date(Number.NaN) }), RangeError);
    const statement = succeeded(
      await client.statement("judy", "go-201", { from: first.entry.created_at, to: second.entry.created_at }),
      200,
    );
    assert.deepEqual(
      statement.entries.map((entry) => [entry.kind, entry.amount]),
      [["PAYMENT", 1_000]],
    );
    assert.equal(statement.opening?.amount_paid, 0);
    assert.deepEqual(statement.closing, first.enrollment);
    const whole = succeeded(await client.statement("judy", "go-201"), 200);
    assert.equal(whole.entries.length, 3);
    assert.deepEqual(whole.closing, second.enrollment);
    const audit = succeeded(await client.auditEnrollment("judy", "go-201"), 200);
    assert.deepEqual([audit.ok, audit.entries, audit.problems], [true, 3, []]);
    assert.equal(audit.head_hash, second.entry.hash);
  });

  test("the audit finds every ledger sound afterwards", async () => {
    const report = (await getJson(server, "/v1/audit")) as { ok: boolean; entries: number; disagreements: unknown[] };
    assert.equal(report.ok, true, JSON.stringify(report));
    assert.deepEqual(report.disagreements, []);
    assert.ok(report.entries > 30, JSON.stringify(report));
  });
});
