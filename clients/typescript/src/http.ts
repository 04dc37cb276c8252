// One HTTP request under the retry policy: the same method, URL, headers,
// idempotency key and body on every attempt, each attempt bounded by its own
// timeout, each answer sorted into done / refused / retry / unknown exactly as
// bursar's Rust client sorts it.

import { unsafeAmount } from "./money.js";
import {
  type Attempt,
  type Clock,
  type Random,
  type RetryObserver,
  type RetryPolicy,
  type Settled,
  parseRetryAfter,
  runWithRetries,
} from "./retry.js";

/** What a success answer carried. */
export interface Answer {
  readonly status: number;
  readonly body: unknown;
  /** The server sent `Idempotent-Replayed: true`: this is the stored answer of an earlier attempt. */
  readonly replayed: boolean;
}

export interface Transport {
  readonly fetch: typeof fetch;
  readonly clock: Clock;
  readonly random: Random;
  readonly onRetry?: RetryObserver | undefined;
}

export interface Request {
  readonly method: "GET" | "PUT" | "POST";
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  /** JSON text, sent as it is on every attempt. */
  readonly body?: string | undefined;
  readonly policy: RetryPolicy;
  /** The caller's own cancellation: no attempt starts after it fires, and the one running is abandoned. */
  readonly signal?: AbortSignal | undefined;
}

/** A bursar error body's code, message and details, or stand-ins for another body (a proxy's page). */
export function errorOf(
  status: number,
  text: string,
): { code: string; message: string; details: unknown } {
  try {
    const parsed: unknown = JSON.parse(text);
    const error = (parsed as { error?: unknown } | null)?.error as
      | { code?: unknown; message?: unknown; details?: unknown }
      | undefined;
    if (typeof error?.code === "string" && typeof error.message === "string") {
      return { code: error.code, message: error.message, details: error.details };
    }
  } catch {
    // Not JSON: fall through to the stand-ins.
  }
  return { code: `HTTP_${status}`, message: [...text].slice(0, 200).join(""), details: undefined };
}

/** What an answer with this status and body means for the retry loop. */
export function classify(
  status: number,
  replayed: boolean,
  retryAfterMs: number | undefined,
  text: string,
): Attempt<Answer> {
  if (status >= 200 && status <= 299) {
    let body: unknown;
    try {
      body = text === "" ? null : JSON.parse(text);
    } catch (error) {
      return { kind: "unknown", cause: `HTTP ${status} with an unreadable body: ${describeError(error)}` };
    }
    const unsafe = unsafeAmount(body);
    if (unsafe !== null) {
      return { kind: "unknown", cause: `HTTP ${status} with an unreadable body: ${unsafe}` };
    }
    return { kind: "done", value: { status, body, replayed } };
  }
  // The server (or a proxy in front of it) did not take the request, or took
  // it and could not answer in time: both are safe to resend with the same key.
  if (status >= 502 && status <= 504) {
    return { kind: "retry", reason: { kind: "unavailable", status, code: errorOf(status, text).code }, retryAfterMs };
  }
  if (status >= 400 && status <= 499) {
    return { kind: "refused", status, ...errorOf(status, text) };
  }
  const { code, message } = errorOf(status, text);
  return { kind: "unknown", cause: `HTTP ${status} ${code}: ${message}` };
}

/**
 * An error and its causes on one line: fetch's own message ("fetch failed")
 * alone never says what went wrong.
 */
export function describeError(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current !== undefined && current !== null && depth < 8; depth += 1) {
    if (current instanceof Error) {
      const code = (current as { code?: unknown }).code;
      parts.push(typeof code === "string" && !current.message.includes(code) ? `${current.message} (${code})` : current.message);
      current = current.cause;
    } else {
      parts.push(String(current));
      break;
    }
  }
  return parts.join(": ");
}

/** One attempt: the request sent, the whole answer read, within the attempt timeout. */
async function attemptOnce(transport: Transport, request: Request): Promise<Attempt<Answer>> {
  if (request.signal?.aborted) {
    return { kind: "unknown", cause: `the caller stopped waiting: ${describeError(request.signal.reason)}` };
  }
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, request.policy.attemptTimeoutMs);
  const forward = (): void => controller.abort();
  request.signal?.addEventListener("abort", forward, { once: true });
  try {
    const response = await transport.fetch(request.url, {
      method: request.method,
      headers: request.headers,
      body: request.body,
      // A redirect would resend a payment somewhere the caller did not name;
      // a 3xx is reported instead.
      redirect: "manual",
      signal: controller.signal,
    });
    const replayed = response.headers.get("idempotent-replayed") === "true";
    const retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
    // The body is read inside the timeout too: an answer cut off or stalled
    // half-way is no answer, and the same key recovers it.
    const text = await response.text();
    return classify(response.status, replayed, retryAfterMs, text);
  } catch (error) {
    if (request.signal?.aborted) {
      return { kind: "unknown", cause: `the caller stopped waiting: ${describeError(request.signal.reason)}` };
    }
    if (timedOut) {
      return { kind: "retry", reason: { kind: "timeout", detail: `no answer in ${request.policy.attemptTimeoutMs} ms` }, retryAfterMs: undefined };
    }
    return { kind: "retry", reason: { kind: "connection", detail: describeError(error) }, retryAfterMs: undefined };
  } finally {
    clearTimeout(timer);
    request.signal?.removeEventListener("abort", forward);
  }
}

/** Sends one request under its retry policy. */
export function send(transport: Transport, request: Request): Promise<Settled<Answer>> {
  return runWithRetries(
    { policy: request.policy, clock: transport.clock, random: transport.random, onRetry: transport.onRetry },
    () => attemptOnce(transport, request),
  );
}
