// The README's rewrite of the seed platform's two payment functions, run as
// the README shows them: the README must hold examples/enrollment-services.ts
// verbatim, and the functions are run against a real `bursar serve` with a
// card processor that keeps idempotency keys, as real ones do.

import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CardDeclined, type CardProcessor, PaymentError, enrollmentServices } from "../examples/enrollment-services.js";
import type { BursarClient } from "../src/index.js";
import { PACKAGE_DIR, Server, serverUnavailable } from "./server.js";

test("the README holds examples/enrollment-services.ts verbatim", () => {
  const readmePath = join(PACKAGE_DIR, "README.md");
  const readme = readFileSync(readmePath, "utf8");
  const example = readFileSync(join(PACKAGE_DIR, "examples", "enrollment-services.ts"), "utf8");
  const pattern = /(<!-- example:begin examples\/enrollment-services\.ts -->\n```ts\n)([\s\S]*?)(```\n<!-- example:end -->)/;
  const block = pattern.exec(readme);
  assert.ok(block, "the README has no example block");
  if (process.env.BURSAR_BLESS === "1") {
    writeFileSync(readmePath, readme.replace(pattern, (_, begin: string, _old: string, end: string) => begin + example + end));
    return;
  }
  assert.equal(
    block[2],
    example,
    "the README's example differs from examples/enrollment-services.ts: BURSAR_BLESS=1 npm test copies the file into it",
  );
});

/** A card processor that charges once per idempotency key, and declines the cards it is told to. */
class Cards implements CardProcessor {
  readonly charges = new Map<string, { id: string; userId: string; amount: number; currency: string }>();
  declining = new Set<string>();

  async charge(request: { userId: string; amount: number; currency: string; idempotencyKey: string }) {
    const known = this.charges.get(request.idempotencyKey);
    if (known !== undefined) {
      return known;
    }
    // A real processor takes a moment, during which another tab may act.
    await new Promise((resolve) => setTimeout(resolve, 20));
    if (this.declining.has(request.userId)) {
      throw new CardDeclined("your card was declined");
    }
    const charge = { id: `ch_${this.charges.size + 1}`, userId: request.userId, amount: request.amount, currency: request.currency };
    this.charges.set(request.idempotencyKey, charge);
    return charge;
  }
}

describe("the seed's two functions on @bursar/client", { skip: serverUnavailable() }, () => {
  let server: Server;
  let bursar: BursarClient;

  before(async () => {
    server = await Server.start();
    bursar = server.client();
  });

  after(async () => {
    await server?.stop();
  });

  async function enroll(userId: string, price: number): Promise<void> {
    const outcome = await bursar.enroll(userId, "compliance-101", { currency: "USD", price });
    assert.equal(outcome.kind, "succeeded");
  }

  test("updateEnrollmentAfterPayment: a redelivered charge counts once, an overpayment is refused", async () => {
    const { updateEnrollmentAfterPayment } = enrollmentServices(bursar, new Cards());
    await enroll("amy", 10_000);
    const first = await updateEnrollmentAfterPayment("amy", "compliance-101", 2_500, "ch_1001");
    assert.equal(first.amount_paid, 2_500);
    assert.equal(first.payment_status, "PARTIAL");
    // The processor delivers the same webhook again, twice at once.
    const again = await Promise.all([
      updateEnrollmentAfterPayment("amy", "compliance-101", 2_500, "ch_1001"),
      updateEnrollmentAfterPayment("amy", "compliance-101", 2_500, "ch_1001"),
    ]);
    assert.deepEqual(again, [first, first]);
    const rest = await updateEnrollmentAfterPayment("amy", "compliance-101", 7_500, "ch_1002");
    assert.equal(rest.payment_status, "COMPLETED");
    assert.equal(rest.access_status, "GRANTED");
    await assert.rejects(
      updateEnrollmentAfterPayment("amy", "compliance-101", 100, "ch_1003"),
      (error: unknown) => error instanceof PaymentError && error.code === "OVERPAYMENT" && !error.retryable,
    );
    // A float never leaves the process.
    await assert.rejects(async () => updateEnrollmentAfterPayment("amy", "compliance-101", 10.5, "ch_1004"), RangeError);
    const enrollment = await bursar.getEnrollment("amy", "compliance-101");
    assert.ok(enrollment.kind === "succeeded");
    assert.equal(enrollment.body.amount_paid, 10_000);
  });

  test("payRemainingBalance: two tabs, one charge; the other tab is told nothing is due", async () => {
    const cards = new Cards();
    const { payRemainingBalance } = enrollmentServices(bursar, cards);
    await enroll("ben", 7_000);
    const results = await Promise.all([
      payRemainingBalance("ben", "compliance-101"),
      payRemainingBalance("ben", "compliance-101"),
    ]);
    assert.deepEqual(results.map((result) => result.status).sort(), ["nothing-due", "paid"]);
    assert.equal(cards.charges.size, 1);
    assert.equal([...cards.charges.values()][0]!.amount, 7_000);
    const paid = results.find((result) => result.status === "paid");
    assert.ok(paid?.status === "paid");
    assert.equal(paid.enrollment.amount_paid, 7_000);
    assert.equal(paid.enrollment.amount_held, 0);
    assert.equal(paid.enrollment.access_status, "GRANTED");
  });

  test("payRemainingBalance: a declined card releases the hold; the same press again replays every step", async () => {
    const cards = new Cards();
    const { payRemainingBalance } = enrollmentServices(bursar, cards);
    await enroll("cleo", 5_000);
    cards.declining.add("cleo");
    assert.deepEqual(await payRemainingBalance("cleo", "compliance-101"), { status: "declined" });
    const afterDecline = await bursar.getEnrollment("cleo", "compliance-101");
    assert.ok(afterDecline.kind === "succeeded");
    assert.equal(afterDecline.body.amount_held, 0);
    assert.equal(afterDecline.body.amount_available, 5_000);
    cards.declining.clear();
    const first = await payRemainingBalance("cleo", "compliance-101", "click-42");
    assert.equal(first.status, "paid");
    // The page reloads and sends the same press again: nothing new happens.
    const again = await payRemainingBalance("cleo", "compliance-101", "click-42");
    assert.deepEqual(again, first);
    assert.equal(cards.charges.size, 1);
    const ledger = await bursar.ledger("cleo", "compliance-101");
    assert.ok(ledger.kind === "succeeded");
    assert.deepEqual(
      ledger.body.entries.map((entry) => entry.kind),
      ["ENROLL", "HOLD", "VOID", "HOLD", "CAPTURE"],
    );
  });
});
