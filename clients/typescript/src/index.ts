// @bursar/client: a client for the bursar HTTP API on `fetch`, with the
// retry and idempotency rules of bursar's Rust client.

export {
  type AsOfOptions,
  BursarClient,
  type ClientOptions,
  type OperationOptions,
  type Outcome,
  type ReadOptions,
  BATCH_OPERATIONS_MAX,
  EVENTS_PAGE_LIMIT_MAX,
  EVENTS_WAIT_SECONDS_MAX,
  ID_LENGTH_MAX,
  IDEMPOTENCY_KEY_LENGTH_MAX,
  LEDGER_PAGE_LIMIT_MAX,
  checkId,
  checkIdempotencyKey,
} from "./client.js";
export { AMOUNT_MAX, AMOUNT_MIN, PRICE_MIN, checkAmount, checkPrice } from "./money.js";
export {
  type Clock,
  DEFAULT_RETRY_POLICY,
  ManualClock,
  NO_RETRIES,
  type Random,
  type RetryObserver,
  type RetryPolicy,
  type RetryReason,
  delayCeiling,
  describeReason,
  seededRandom,
  systemClock,
} from "./retry.js";
export type * from "./types.js";
export type { components, operations, paths } from "./schema.js";
