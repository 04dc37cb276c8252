// Names for the generated request and response types (src/schema.ts), so
// that callers write `Enrollment` rather than
// `components["schemas"]["Enrollment"]`.

import type { components } from "./schema.js";

type Schemas = components["schemas"];

export type Enrollment = Schemas["Enrollment"];
export type LedgerEntry = Schemas["LedgerEntry"];
export type AccessPolicy = Schemas["AccessPolicy"];
export type EntryKind = Schemas["EntryKind"];
export type PaymentStatus = Schemas["PaymentStatus"];
export type AccessStatus = Schemas["AccessStatus"];
export type EnrollmentStatus = Schemas["EnrollmentStatus"];

/** `{entry, enrollment}`: an accepted operation, or its replay. */
export type AcceptedBody = Schemas["AcceptedBody"];
/** `{enrollment}`: enrolling again with the same terms. */
export type EnrollmentBody = Schemas["EnrollmentBody"];
export type EnrollmentsBody = Schemas["EnrollmentsBody"];
export type LedgerBody = Schemas["LedgerBody"];
export type HoldView = Schemas["HoldView"];
export type HoldsBody = Schemas["HoldsBody"];
export type BatchRequest = Schemas["BatchBody"];
export type BatchOperation = Schemas["BatchOperation"];
export type BatchKind = Schemas["BatchKind"];
export type BatchResponse = Schemas["BatchResponse"];
export type BatchResult = Schemas["BatchResult"];
export type BursarEvent = Schemas["Event"];
export type EventType = Schemas["EventType"];
export type EventsBody = Schemas["EventsBody"];
/** `{opening, entries, closing, …}`: an enrollment over a period. */
export type StatementBody = Schemas["StatementBody"];
/** `{ok, entries, head_hash, problems}`: the check of one enrollment's chain. */
export type EnrollmentAuditBody = Schemas["EnrollmentAuditBody"];

/** Every error code this version of the server documents. */
export type ErrorCode = Schemas["ErrorDetail"]["code"];

export type EnrollRequest = Schemas["EnrollBody"];
export type PaymentRequest = Schemas["PaymentBody"];
export type PayRemainingRequest = Schemas["PayRemainingBody"];
export type CreditRequest = Schemas["CreditBody"];
export type RefundRequest = Schemas["RefundBody"];
export type ChargeRequest = Schemas["ChargeBody"];
export type CaptureRequest = Schemas["CaptureBody"];
/**
 * A hold of `{amount}` or of `{remaining: true}`, exactly one of them (the
 * document states the choice as a `oneOf` the generator cannot express).
 */
export type HoldRequest = Omit<Schemas["HoldBody"], "amount" | "remaining"> &
  (
    | { readonly amount: Schemas["Amount"]; readonly remaining?: never }
    | { readonly remaining: true; readonly amount?: never }
  );
