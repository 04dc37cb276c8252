// The shapes of bursar's JSON answers that the page reads (docs/api.md and
// GET /openapi.json are the reference). Amounts are integer minor units.

export type Role = "reader" | "writer" | "admin";

export interface WhoAmI {
  role: Role;
  /** `null` for the break-glass token of the server's configuration. */
  token_id: string | null;
  expires_at: string | null;
}

export interface AccessPolicy {
  kind: "FULL_PAYMENT" | "MIN_SETTLED";
  amount?: number;
}

export interface Enrollment {
  user_id: string;
  course_id: string;
  currency: string;
  price: number;
  amount_charged: number;
  amount_paid: number;
  amount_credited: number;
  amount_refunded: number;
  amount_due: number;
  amount_held: number;
  amount_available: number;
  payment_status: string;
  access_policy: AccessPolicy;
  access_status: string;
  status: string;
  version: number;
  created_at: string;
  updated_at: string;
}

export interface Source {
  processor: string;
  event_id: string;
  event_type: string;
}

export interface LedgerEntry {
  seq: number;
  kind: string;
  amount: number;
  currency: string;
  idempotency_key: string | null;
  reference: string | null;
  reason: string | null;
  hold_seq?: number;
  expires_at?: string;
  source: Source | null;
  created_at: string;
  enrollment: Enrollment;
  prev_hash: string;
  hash: string;
}

export interface Hold {
  hold_seq: number;
  amount: number;
  expires_at: string;
  reference: string | null;
}

export interface Disagreement {
  user_id: string;
  course_id: string;
  seq: number | null;
  problem: string;
}

/** `GET …/courses/{c}/audit`: one enrollment's chain replayed. */
export interface ChainAudit {
  ok: boolean;
  entries: number;
  head_hash: string | null;
  problems: Disagreement[];
}

/** `GET …/courses/{c}/statement`: the period is `from <= created_at < to`. */
export interface Statement {
  user_id: string;
  course_id: string;
  currency: string;
  /** `null`: from the beginning. */
  from: string | null;
  to: string;
  /** The enrollment before `from`; `null` when it did not exist yet. */
  opening: Enrollment | null;
  entries: LedgerEntry[];
  /** The enrollment after the last entry before `to`; `null` when it did not exist yet. */
  closing: Enrollment | null;
}

export interface AuditReport {
  ok: boolean;
  enrollments: number;
  entries: number;
  disagreements: Disagreement[];
}

export type ExceptionState = "OPEN" | "RESOLVED" | "DISMISSED";

export interface IntakeException {
  id: string;
  state: ExceptionState;
  processor: string;
  event_id: string;
  event_type: string;
  code: string;
  message: string;
  user_id: string | null;
  course_id: string | null;
  received_at: string;
  updated_at: string;
  attempts: number;
  next_retry_at: string | null;
  dismiss_reason: string | null;
  position: number;
}

export interface WebhookEndpoint {
  id: string;
  url: string;
  types: string[] | null;
  state: string;
  created_at: string;
  started_after: number;
  failing_since: string | null;
}

export interface Delivery {
  event_id: string;
  position: number;
  attempt: number;
  status: number | null;
  latency_ms: number;
  error: string | null;
  at: string;
}
