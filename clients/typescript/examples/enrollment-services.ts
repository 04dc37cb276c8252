import type { BursarClient, Enrollment } from "@bursar/client";

/** The platform's card processor (Stripe, say): charges a saved card. */
export interface CardProcessor {
  /**
   * Resolves with the charge, or rejects with `CardDeclined`. The processor
   * keeps `idempotencyKey`: the same key again answers the same charge
   * instead of charging twice.
   */
  charge(request: { userId: string; amount: number; currency: string; idempotencyKey: string }): Promise<{ id: string }>;
}

export class CardDeclined extends Error {}

/** bursar refused (`code` says why), or its answer never came (`retryable`). */
export class PaymentError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly retryable: boolean,
  ) {
    super(message);
  }
}

export type PayRemainingResult =
  | { status: "paid"; enrollment: Enrollment }
  | { status: "nothing-due" }
  | { status: "declined" };

export function enrollmentServices(bursar: BursarClient, cards: CardProcessor) {
  /**
   * The processor confirmed charge `chargeId` of `amount` cents. One payment
   * whose key is derived from the charge: a redelivered webhook or a retry
   * sends the same key, and bursar answers the first payment again instead
   * of counting it twice. Statuses come back computed in the same commit.
   */
  async function updateEnrollmentAfterPayment(
    userId: string,
    courseId: string,
    amount: number,
    chargeId: string,
  ): Promise<Enrollment> {
    const outcome = await bursar.payment(
      userId,
      courseId,
      { amount, reference: chargeId },
      { idempotencyKey: `charge:${chargeId}` },
    );
    switch (outcome.kind) {
      case "succeeded":
        return outcome.body.enrollment;
      case "refused": // OVERPAYMENT, ENROLLMENT_NOT_FOUND, …: nothing was recorded
        throw new PaymentError(outcome.code, outcome.message, false);
      case "unknown": // call again later with the same charge id
        throw new PaymentError("UNKNOWN", outcome.cause, true);
    }
  }

  /**
   * "Pay the remaining balance", pressed in a tab. `clickId` names this
   * press (made once, when the button is pressed): calling again with the
   * same one after an error finishes the same payment, every step replayed.
   */
  async function payRemainingBalance(
    userId: string,
    courseId: string,
    clickId: string = crypto.randomUUID(),
  ): Promise<PayRemainingResult> {
    // 1. Reserve what is due. Of two tabs, the second is refused here,
    //    before any card is charged.
    const hold = await bursar.openHold(
      userId,
      courseId,
      { remaining: true, expires_in: 900 },
      { idempotencyKey: `hold:${clickId}` },
    );
    if (hold.kind === "refused" && hold.code === "NOTHING_DUE") {
      return { status: "nothing-due" }; // paid already, or another tab is paying
    }
    if (hold.kind !== "succeeded") {
      throw failed(hold);
    }
    const { seq: holdSeq, amount, currency } = hold.body.entry;

    // 2. Charge the card for exactly the amount held.
    let charge: { id: string };
    try {
      charge = await cards.charge({ userId, amount, currency, idempotencyKey: `charge:${clickId}` });
    } catch (error) {
      if (!(error instanceof CardDeclined)) {
        throw error; // charged or not? Call again with the same clickId to learn.
      }
      // Declined: release the hold so that the student can pay another way.
      // Should this fail too, the hold lapses by itself after 900 s.
      await bursar.voidHold(userId, courseId, holdSeq, { idempotencyKey: `void:${clickId}` });
      return { status: "declined" };
    }

    // 3. The hold becomes the payment.
    const captured = await bursar.captureHold(
      userId,
      courseId,
      holdSeq,
      { reference: charge.id },
      { idempotencyKey: `capture:${clickId}` },
    );
    if (captured.kind !== "succeeded") {
      // Refused HOLD_NOT_OPEN: the hold lapsed first; refund charge.id.
      throw failed(captured);
    }
    return { status: "paid", enrollment: captured.body.enrollment };
  }

  return { updateEnrollmentAfterPayment, payRemainingBalance };
}

function failed(outcome: { kind: "refused"; code: string; message: string } | { kind: "unknown"; cause: string }) {
  return outcome.kind === "refused"
    ? new PaymentError(outcome.code, outcome.message, false)
    : new PaymentError("UNKNOWN", outcome.cause, true);
}
