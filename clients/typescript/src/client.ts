// The client: one method per endpoint of the enrollment API and the event
// feed, each answering an `Outcome`, each operation sent with one idempotency
// key that every retry reuses.

import { type Answer, type Transport, send } from "./http.js";
import { checkAmount, checkBodyAmounts, checkPrice } from "./money.js";
import {
  type Clock,
  DEFAULT_RETRY_POLICY,
  type Random,
  type RetryObserver,
  type RetryPolicy,
  type Settled,
  checkPolicy,
  systemClock,
} from "./retry.js";
import type {
  AcceptedBody,
  BatchOperation,
  BatchRequest,
  BatchResponse,
  CaptureRequest,
  ChargeRequest,
  CreditRequest,
  EnrollRequest,
  Enrollment,
  EnrollmentAuditBody,
  EnrollmentBody,
  EnrollmentsBody,
  ErrorCode,
  EventType,
  EventsBody,
  HoldRequest,
  HoldsBody,
  LedgerBody,
  PayRemainingRequest,
  PaymentRequest,
  RefundRequest,
  StatementBody,
} from "./types.js";

/** What one call came to. Every variant says how many attempts it took. */
export type Outcome<T> =
  /** The server answered with success; for an operation, it is durable. */
  | {
      readonly kind: "succeeded";
      readonly status: number;
      readonly body: T;
      /** This is the stored answer of an earlier attempt with the same key: nothing was applied twice. */
      readonly replayed: boolean;
      readonly idempotencyKey: string | undefined;
      readonly attempts: number;
    }
  /** The server refused (a 4xx) and stored nothing; the same request would be refused again. */
  | {
      readonly kind: "refused";
      readonly status: number;
      /**
       * bursar's error code: `OVERPAYMENT`, `NOTHING_DUE`, … (or `HTTP_<status>`
       * when a proxy answered with a body that is not bursar's).
       */
      readonly code: ErrorCode | (string & {});
      readonly message: string;
      /** The numbers of a money refusal, say `{"amount", "amount_due"}`; `undefined` when none. */
      readonly details: unknown;
      readonly idempotencyKey: string | undefined;
      readonly attempts: number;
    }
  /**
   * No answer said whether the request was applied: it may or may not have
   * been. Send it again later with the same `idempotencyKey` (and the same
   * body): that applies it once, or answers what was applied.
   */
  | {
      readonly kind: "unknown";
      /** The last cause, in words: `gave up after 8 attempts: HTTP 503 OVERLOADED`. */
      readonly cause: string;
      readonly idempotencyKey: string | undefined;
      readonly attempts: number;
    };

/** How a client is made. Only `baseUrl` is needed. */
export interface ClientOptions {
  /** `http://HOST:PORT` or `https://HOST:PORT`, without a path. */
  readonly baseUrl: string;
  /** The bearer token sent with every request. */
  readonly token?: string | undefined;
  /** Overrides of `DEFAULT_RETRY_POLICY`, field by field. */
  readonly retryPolicy?: Partial<RetryPolicy> | undefined;
  /** Told of every retry, before its delay: for logs and metrics. */
  readonly onRetry?: RetryObserver | undefined;
  /** Makes the idempotency key of a call that was given none; `crypto.randomUUID` by default. */
  readonly newIdempotencyKey?: (() => string) | undefined;
  /** The `fetch` to send with; the global one by default. */
  readonly fetch?: typeof fetch | undefined;
  /** Where the retry loop reads the time and sleeps; tests pass a `ManualClock`. */
  readonly clock?: Clock | undefined;
  /** The randomness of the jitter; tests pass `seededRandom(n)`. */
  readonly random?: Random | undefined;
}

/** Per call: the caller's cancellation. */
export interface ReadOptions {
  /** Stops the call: no attempt starts after it fires, and the outcome is `unknown`. */
  readonly signal?: AbortSignal | undefined;
}

/** Per read of an enrollment: the time to read it as of. */
export interface AsOfOptions extends ReadOptions {
  /** A time in the past: an RFC 3339 text, or a `Date`. */
  readonly asOf?: string | Date | undefined;
}

/** Per operation: its idempotency key, and the caller's cancellation. */
export interface OperationOptions extends ReadOptions {
  /**
   * The key of this operation, 1–255 printable ASCII characters without
   * leading or trailing spaces. Derive it from what the operation stands for
   * (a processor's charge id, an order id) so that a retry made after a
   * crash or a reload still sends the same key. Without it, a new random
   * key is made for this call; it is in the outcome.
   */
  readonly idempotencyKey?: string | undefined;
}

/** The longest an idempotency key may be. */
export const IDEMPOTENCY_KEY_LENGTH_MAX = 255;
/** The longest a user or course id may be. */
export const ID_LENGTH_MAX = 128;
/** The most entries one ledger page holds. */
export const LEDGER_PAGE_LIMIT_MAX = 1_000;
/** The most events one feed page holds. */
export const EVENTS_PAGE_LIMIT_MAX = 1_000;
/** The longest a feed read may wait for an event, in seconds. */
export const EVENTS_WAIT_SECONDS_MAX = 30;
/** The most operations of one batch. */
export const BATCH_OPERATIONS_MAX = 8_192;

/**
 * A user or course id: 1–128 characters of `[A-Za-z0-9._:@-]`, not made of
 * dots alone. Checked before sending, because `..` in a path would be
 * resolved by `fetch` into another route.
 */
export function checkId(name: string, value: unknown): string {
  if (typeof value !== "string") {
    throw new TypeError(`${name} must be a string, not ${value === null ? "null" : typeof value}`);
  }
  if (!/^[A-Za-z0-9._:@-]{1,128}$/.test(value) || /^\.+$/.test(value)) {
    throw new RangeError(
      `${name} must be 1 to ${ID_LENGTH_MAX} characters of A-Z a-z 0-9 . _ : @ -, not only dots: ${JSON.stringify(value)}`,
    );
  }
  return value;
}

/** An idempotency key as the server takes it; throws as `checkId` does. */
export function checkIdempotencyKey(value: unknown): string {
  if (typeof value !== "string") {
    throw new TypeError(`the idempotency key must be a string, not ${value === null ? "null" : typeof value}`);
  }
  if (
    value.length < 1 ||
    value.length > IDEMPOTENCY_KEY_LENGTH_MAX ||
    !/^[\x20-\x7e]+$/.test(value) ||
    value.trim() !== value
  ) {
    throw new RangeError(
      `the idempotency key must be 1 to ${IDEMPOTENCY_KEY_LENGTH_MAX} printable ASCII characters without leading or trailing spaces: ${JSON.stringify(value)}`,
    );
  }
  return value;
}

function checkCount(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new RangeError(`${name} must be an integer from ${min} to ${max}, not ${value}`);
  }
  return value;
}

/** `after=&limit=` of a paged read, each checked. */
function pageQuery(page: { readonly after?: number; readonly limit?: number }, limitMax: number): URLSearchParams {
  const query = new URLSearchParams();
  if (page.after !== undefined) {
    query.set("after", String(checkCount("after", page.after, 0, Number.MAX_SAFE_INTEGER)));
  }
  if (page.limit !== undefined) {
    query.set("limit", String(checkCount("limit", page.limit, 1, limitMax)));
  }
  return query;
}

/** Times as the server reads them: RFC 3339 texts as given, `Date`s in UTC. */
function timeQuery(times: Record<string, string | Date | undefined>): URLSearchParams {
  const query = new URLSearchParams();
  for (const [name, time] of Object.entries(times)) {
    if (time instanceof Date) {
      if (Number.isNaN(time.getTime())) {
        throw new RangeError(`${name} is an invalid Date`);
      }
      query.set(name, time.toISOString());
    } else if (time !== undefined) {
      if (typeof time !== "string") {
        throw new TypeError(`${name} must be an RFC 3339 text or a Date, not ${typeof time}`);
      }
      query.set(name, time);
    }
  }
  return query;
}

/** `?a=1&b=2`, or nothing for no parameters. */
function queryString(query: URLSearchParams): string {
  const text = query.toString();
  return text === "" ? "" : `?${text}`;
}

/** A hold's sequence number, as its `HOLD` entry's `seq` gave it. */
function checkHoldSeq(value: number): number {
  return checkCount("holdSeq", value, 1, Number.MAX_SAFE_INTEGER);
}

function checkBaseUrl(baseUrl: string): string {
  const trimmed = baseUrl.replace(/\/+$/, "");
  const match = /^(https?):\/\/([^/?#]+)$/.exec(trimmed);
  if (match === null) {
    throw new TypeError(`bad base URL ${JSON.stringify(baseUrl)}: expected http://HOST:PORT or https://HOST:PORT`);
  }
  return trimmed;
}

function checkToken(token: string): string {
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new TypeError("the token holds characters an HTTP header cannot carry");
  }
  return token;
}

/**
 * A bursar API client. Every method answers an `Outcome`; none throws for
 * anything the network or the server does. Methods throw a `TypeError` or a
 * `RangeError`, before anything is sent, for arguments the server would
 * refuse anyway: an amount that is not a safe integer in range, a bad id,
 * key or page size.
 */
export class BursarClient {
  readonly baseUrl: string;
  readonly retryPolicy: RetryPolicy;
  private readonly authorization: string | undefined;
  private readonly transport: Transport;
  private readonly newKey: () => string;

  constructor(options: ClientOptions) {
    this.baseUrl = checkBaseUrl(options.baseUrl);
    this.retryPolicy = checkPolicy({ ...DEFAULT_RETRY_POLICY, ...options.retryPolicy });
    this.authorization = options.token === undefined ? undefined : `Bearer ${checkToken(options.token)}`;
    const fetchFunction = options.fetch ?? globalThis.fetch;
    this.transport = {
      fetch: fetchFunction.bind(globalThis),
      clock: options.clock ?? systemClock,
      random: options.random ?? Math.random,
      onRetry: options.onRetry,
    };
    this.newKey = options.newIdempotencyKey ?? (() => globalThis.crypto.randomUUID());
  }

  private enrollmentUrl(userId: string, courseId: string, suffix = ""): string {
    const user = encodeURIComponent(checkId("userId", userId));
    const course = encodeURIComponent(checkId("courseId", courseId));
    return `${this.baseUrl}/v1/users/${user}/courses/${course}${suffix}`;
  }

  private headers(idempotencyKey: string | undefined, hasBody: boolean): Record<string, string> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (this.authorization !== undefined) {
      headers.authorization = this.authorization;
    }
    if (idempotencyKey !== undefined) {
      headers["idempotency-key"] = idempotencyKey;
    }
    if (hasBody) {
      headers["content-type"] = "application/json";
    }
    return headers;
  }

  private async call<T>(
    method: "GET" | "PUT" | "POST",
    url: string,
    body: unknown,
    idempotencyKey: string | undefined,
    options: ReadOptions | undefined,
    policy: RetryPolicy = this.retryPolicy,
  ): Promise<Outcome<T>> {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const settled: Settled<Answer> = await send(this.transport, {
      method,
      url,
      headers: this.headers(idempotencyKey, text !== undefined),
      body: text,
      policy,
      signal: options?.signal,
    });
    switch (settled.kind) {
      case "done":
        return {
          kind: "succeeded",
          status: settled.value.status,
          body: settled.value.body as T,
          replayed: settled.value.replayed,
          idempotencyKey,
          attempts: settled.attempts,
        };
      case "refused":
        return {
          kind: "refused",
          status: settled.status,
          code: settled.code,
          message: settled.message,
          details: settled.details,
          idempotencyKey,
          attempts: settled.attempts,
        };
      case "unknown":
        return { kind: "unknown", cause: settled.cause, idempotencyKey, attempts: settled.attempts };
    }
  }

  private operation<T = AcceptedBody>(
    userId: string,
    courseId: string,
    suffix: string,
    body: object,
    options: OperationOptions | undefined,
  ): Promise<Outcome<T>> {
    const url = this.enrollmentUrl(userId, courseId, suffix);
    checkBodyAmounts("", body);
    const key = checkIdempotencyKey(options?.idempotencyKey ?? this.newKey());
    return this.call<T>("POST", url, body, key, options);
  }

  /**
   * `PUT /v1/users/{userId}/courses/{courseId}`: enroll. Idempotent by its
   * terms, so it needs no key: 201 with `{entry, enrollment}` when it
   * creates, 200 with `{enrollment}` when the same terms exist, refused
   * `ENROLLMENT_EXISTS` for other terms.
   */
  enroll(
    userId: string,
    courseId: string,
    body: EnrollRequest,
    options?: ReadOptions,
  ): Promise<Outcome<AcceptedBody | EnrollmentBody>> {
    const url = this.enrollmentUrl(userId, courseId);
    checkPrice("price", body.price);
    checkBodyAmounts("", body);
    return this.call("PUT", url, body, undefined, options);
  }

  /**
   * `GET /v1/users/{userId}/courses/{courseId}`: the enrollment; with
   * `asOf`, as it stood at that time (refused 400 for a future time).
   */
  getEnrollment(userId: string, courseId: string, options?: AsOfOptions): Promise<Outcome<Enrollment>> {
    const url = this.enrollmentUrl(userId, courseId, queryString(timeQuery({ as_of: options?.asOf })));
    return this.call("GET", url, undefined, undefined, options);
  }

  /** `GET /v1/users/{userId}/courses`: the user's enrollments, by course id; with `asOf`, as they stood then. */
  listEnrollments(userId: string, options?: AsOfOptions): Promise<Outcome<EnrollmentsBody>> {
    const user = encodeURIComponent(checkId("userId", userId));
    const url = `${this.baseUrl}/v1/users/${user}/courses${queryString(timeQuery({ as_of: options?.asOf }))}`;
    return this.call("GET", url, undefined, undefined, options);
  }

  /**
   * `GET …/statement?from=&to=`: the enrollment as it stood before `from`
   * (`opening`), the entries with `from <= created_at < to`, and where they
   * left it (`closing`). Without `from`, from the beginning; without `to`,
   * until now.
   */
  statement(
    userId: string,
    courseId: string,
    period: { readonly from?: string | Date; readonly to?: string | Date } = {},
    options?: ReadOptions,
  ): Promise<Outcome<StatementBody>> {
    const suffix = `/statement${queryString(timeQuery({ from: period.from, to: period.to }))}`;
    return this.call("GET", this.enrollmentUrl(userId, courseId, suffix), undefined, undefined, options);
  }

  /** `GET …/audit`: replay the enrollment's ledger and verify its hash chain. */
  auditEnrollment(userId: string, courseId: string, options?: ReadOptions): Promise<Outcome<EnrollmentAuditBody>> {
    return this.call("GET", this.enrollmentUrl(userId, courseId, "/audit"), undefined, undefined, options);
  }

  /** `POST …/payments`: record a payment of `amount` (1 ..= 10^12 minor units). */
  payment(userId: string, courseId: string, body: PaymentRequest, options?: OperationOptions): Promise<Outcome<AcceptedBody>> {
    checkAmount("amount", body.amount);
    return this.operation(userId, courseId, "/payments", body, options);
  }

  /**
   * `POST …/pay-remaining`: a payment of exactly what is available at commit
   * time. A second one, from another tab, is refused `NOTHING_DUE`.
   */
  payRemaining(
    userId: string,
    courseId: string,
    body: PayRemainingRequest = {},
    options?: OperationOptions,
  ): Promise<Outcome<AcceptedBody>> {
    return this.operation(userId, courseId, "/pay-remaining", body, options);
  }

  /** `POST …/credits`: a discount or scholarship. */
  credit(userId: string, courseId: string, body: CreditRequest, options?: OperationOptions): Promise<Outcome<AcceptedBody>> {
    checkAmount("amount", body.amount);
    return this.operation(userId, courseId, "/credits", body, options);
  }

  /** `POST …/refunds`: money given back; at most what was paid. */
  refund(userId: string, courseId: string, body: RefundRequest, options?: OperationOptions): Promise<Outcome<AcceptedBody>> {
    checkAmount("amount", body.amount);
    return this.operation(userId, courseId, "/refunds", body, options);
  }

  /** `POST …/charges`: an extra charge (a fee). */
  charge(userId: string, courseId: string, body: ChargeRequest, options?: OperationOptions): Promise<Outcome<AcceptedBody>> {
    checkAmount("amount", body.amount);
    return this.operation(userId, courseId, "/charges", body, options);
  }

  /** `POST …/complete`: the course is finished (needs access `GRANTED`). */
  complete(userId: string, courseId: string, options?: OperationOptions): Promise<Outcome<AcceptedBody>> {
    return this.operation(userId, courseId, "/complete", {}, options);
  }

  /** `POST …/cancel`: cancel an enrollment nothing was paid for and that has no open hold. */
  cancel(userId: string, courseId: string, options?: OperationOptions): Promise<Outcome<AcceptedBody>> {
    return this.operation(userId, courseId, "/cancel", {}, options);
  }

  /**
   * `POST …/holds`: reserve `{amount}` or `{remaining: true}` of what is
   * available before charging a card. The answer's `entry.seq` names the
   * hold; `entry.amount` is what it holds. A second hold of the remaining
   * balance is refused `NOTHING_DUE`; more than is available, `OVERPAYMENT`.
   */
  openHold(userId: string, courseId: string, body: HoldRequest, options?: OperationOptions): Promise<Outcome<AcceptedBody>> {
    if (body.remaining !== true) {
      checkAmount("amount", body.amount);
    }
    return this.operation(userId, courseId, "/holds", body, options);
  }

  /** `GET …/holds`: the enrollment's open holds. */
  listHolds(userId: string, courseId: string, options?: ReadOptions): Promise<Outcome<HoldsBody>> {
    return this.call("GET", this.enrollmentUrl(userId, courseId, "/holds"), undefined, undefined, options);
  }

  /**
   * `POST …/holds/{holdSeq}/capture`: turn an open hold into a payment, all
   * of it or `amount` of it; the rest is released. A hold captured, voided
   * or expired is refused `HOLD_NOT_OPEN`.
   */
  captureHold(
    userId: string,
    courseId: string,
    holdSeq: number,
    body: CaptureRequest = {},
    options?: OperationOptions,
  ): Promise<Outcome<AcceptedBody>> {
    if (body.amount !== undefined && body.amount !== null) {
      checkAmount("amount", body.amount);
    }
    return this.operation(userId, courseId, `/holds/${checkHoldSeq(holdSeq)}/capture`, body, options);
  }

  /** `POST …/holds/{holdSeq}/void`: release an open hold. */
  voidHold(userId: string, courseId: string, holdSeq: number, options?: OperationOptions): Promise<Outcome<AcceptedBody>> {
    return this.operation(userId, courseId, `/holds/${checkHoldSeq(holdSeq)}/void`, {}, options);
  }

  /**
   * `GET …/ledger?after=&limit=`: at most `limit` (1 ..= 1,000, default 100)
   * entries with `seq > after`, oldest first.
   */
  ledger(
    userId: string,
    courseId: string,
    page: { readonly after?: number; readonly limit?: number } = {},
    options?: ReadOptions,
  ): Promise<Outcome<LedgerBody>> {
    const suffix = `/ledger${queryString(pageQuery(page, LEDGER_PAGE_LIMIT_MAX))}`;
    return this.call("GET", this.enrollmentUrl(userId, courseId, suffix), undefined, undefined, options);
  }

  /**
   * `POST /v1/batch`: up to 8,192 operations in one durable commit, one
   * result per operation, in order. Every operation but `enroll` needs an
   * `idempotency_key`; one left out is made here, and `operations` of the
   * outcome is the batch as sent, keys included: resend exactly that when
   * the outcome is `unknown`.
   */
  batch(request: BatchRequest, options?: ReadOptions): Promise<Outcome<BatchResponse> & { readonly operations: BatchOperation[] }> {
    const operations = request.operations.map((operation, index) => {
      checkId(`operations[${index}].user_id`, operation.user_id);
      checkId(`operations[${index}].course_id`, operation.course_id);
      checkBodyAmounts(`operations[${index}].body.`, operation.body);
      if (operation.kind === "enroll" && operation.idempotency_key == null) {
        return operation;
      }
      const key = checkIdempotencyKey(operation.idempotency_key ?? this.newKey());
      return { ...operation, idempotency_key: key };
    });
    checkCount("the number of operations", operations.length, 1, BATCH_OPERATIONS_MAX);
    // Checked above, before anything is sent; the answer comes later.
    return this.call<BatchResponse>("POST", `${this.baseUrl}/v1/batch`, { ...request, operations }, undefined, options).then(
      (outcome) => ({ ...outcome, operations }),
    );
  }

  /**
   * `GET /v1/events?after=&limit=&type=&wait=`: the events after a position,
   * oldest first. With `wait` (up to 30 s) the server holds the request
   * until an event commits; the attempt timeout is stretched by `wait` so a
   * long poll is never cut short. Keep `next_after` and pass it as `after`
   * next time.
   */
  events(
    query: {
      readonly after?: number;
      readonly limit?: number;
      readonly types?: readonly EventType[];
      readonly waitSeconds?: number;
    } = {},
    options?: ReadOptions,
  ): Promise<Outcome<EventsBody>> {
    const params = pageQuery(query, EVENTS_PAGE_LIMIT_MAX);
    if (query.types !== undefined && query.types.length > 0) {
      params.set("type", query.types.join(","));
    }
    let policy = this.retryPolicy;
    if (query.waitSeconds !== undefined) {
      const wait = checkCount("waitSeconds", query.waitSeconds, 0, EVENTS_WAIT_SECONDS_MAX);
      params.set("wait", String(wait));
      policy = { ...policy, attemptTimeoutMs: policy.attemptTimeoutMs + wait * 1000 };
    }
    return this.call("GET", `${this.baseUrl}/v1/events${queryString(params)}`, undefined, undefined, options, policy);
  }
}
