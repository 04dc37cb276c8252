// Intake exceptions (admin): Stripe events the ledger refused, kept for a
// person. Each open one can be retried now or dismissed with a reason.

import { useState } from "preact/hooks";
import { ErrorMessage, Field, RoleGate, type Session, Status, TableHead, Time, useLoad } from "../common";
import { enrollmentHash } from "../routes";
import type { ExceptionState, IntakeException } from "../types";

/** Exceptions per page of the table. */
export const EXCEPTIONS_PAGE = 50;

export function ExceptionsView({ session }: { session: Session }) {
  return (
    <section aria-labelledby="exceptions-heading">
      <h1 id="exceptions-heading">Intake exceptions</h1>
      <RoleGate role={session.role} needed="admin" what="Reading and resolving intake exceptions">
        <Exceptions session={session} />
      </RoleGate>
    </section>
  );
}

function Exceptions({ session }: { session: Session }) {
  const [state, setState] = useState<ExceptionState | "">("OPEN");
  // The `after` of each page shown so far: the last is the current page.
  const [afters, setAfters] = useState<number[]>([0]);
  const after = afters[afters.length - 1];
  const [status, setStatus] = useState<string | null>(null);
  const list = useLoad(
    () =>
      session.api
        .get<{ exceptions: IntakeException[] }>("/v1/intake/exceptions", { state: state || undefined, after, limit: EXCEPTIONS_PAGE })
        .then((body) => body.exceptions),
    `${state}|${after}`,
  );
  const done = (text: string) => {
    setStatus(text);
    list.reload();
  };
  const rows = list.data ?? [];
  return (
    <>
      <form class="inline" onSubmit={(event) => event.preventDefault()}>
        <Field label="State" id="exception-state">
          <select
            id="exception-state"
            value={state}
            onChange={(event) => {
              setState(event.currentTarget.value as ExceptionState | "");
              setAfters([0]);
            }}
          >
            <option value="OPEN">Open</option>
            <option value="RESOLVED">Resolved</option>
            <option value="DISMISSED">Dismissed</option>
            <option value="">All</option>
          </select>
        </Field>
        <button type="button" class="secondary" onClick={() => list.reload()}>
          Refresh
        </button>
      </form>
      <Status text={status} />
      <ErrorMessage error={list.error} />
      {list.data && rows.length === 0 && <p>No exception here.</p>}
      {rows.length > 0 && (
        <div class="scroll">
          <table data-testid="exceptions">
            <TableHead columns={["Exception", "Stripe event", "Refusal", "Enrollment", "Received", "Attempts", "State", "Actions"]} numeric={["Attempts"]} />
            <tbody>
              {rows.map((exception) => (
                <ExceptionRow key={exception.id} session={session} exception={exception} onDone={done} />
              ))}
            </tbody>
          </table>
        </div>
      )}
      <nav class="pager" aria-label="Exception pages">
        <button type="button" class="secondary" disabled={afters.length === 1} onClick={() => setAfters(afters.slice(0, -1))}>
          Previous page
        </button>
        <button
          type="button"
          class="secondary"
          disabled={rows.length < EXCEPTIONS_PAGE}
          onClick={() => setAfters([...afters, rows[rows.length - 1].position])}
        >
          Next page
        </button>
      </nav>
    </>
  );
}

function ExceptionRow({ session, exception, onDone }: { session: Session; exception: IntakeException; onDone: (text: string) => void }) {
  const [dismissing, setDismissing] = useState(false);
  const [reason, setReason] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const path = `/v1/intake/exceptions/${encodeURIComponent(exception.id)}`;
  const act = async (action: () => Promise<string>) => {
    setBusy(true);
    try {
      onDone(await action());
      setError(null);
      setDismissing(false);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  const retry = () =>
    act(async () => {
      const body = await session.api.post<{ exception: IntakeException }>(`${path}/retry`);
      return body.exception.state === "RESOLVED"
        ? `${exception.id} retried: the ledger took it (RESOLVED).`
        : `${exception.id} retried: still ${body.exception.state} (${body.exception.code}: ${body.exception.message}).`;
    });
  const dismiss = (event: Event) => {
    event.preventDefault();
    if (reason.trim() === "") {
      setError(new Error("Give a reason for dismissing it."));
      return;
    }
    void act(async () => {
      await session.api.post(`${path}/dismiss`, { reason: reason.trim() });
      return `${exception.id} dismissed.`;
    });
  };
  const reasonId = `reason-${exception.id}`;
  return (
    <tr data-testid="exception-row">
      <td>
        <code>{exception.id}</code>
      </td>
      <td class="text">
        <div>{exception.event_type}</div>
        <div class="key">{exception.event_id}</div>
      </td>
      <td class="text">
        <strong>{exception.code}</strong>
        <div>{exception.message}</div>
        {exception.dismiss_reason !== null && <div class="reason">{`Dismissed: ${exception.dismiss_reason}`}</div>}
      </td>
      <td class="text">
        {exception.user_id !== null && exception.course_id !== null ? (
          <a href={enrollmentHash(exception.user_id, exception.course_id)}>{`${exception.user_id} / ${exception.course_id}`}</a>
        ) : (
          "—"
        )}
      </td>
      <td>
        <Time value={exception.received_at} />
        {exception.next_retry_at && (
          <div class="hint">
            {"next retry "}
            <Time value={exception.next_retry_at} />
          </div>
        )}
      </td>
      <td class="num">{exception.attempts}</td>
      <td>{exception.state}</td>
      <td class="actions">
        {exception.state === "OPEN" && !dismissing && (
          <>
            <button type="button" disabled={busy} onClick={() => void retry()}>
              Retry
            </button>
            <button type="button" class="secondary" disabled={busy} onClick={() => setDismissing(true)}>
              Dismiss…
            </button>
          </>
        )}
        {dismissing && (
          <form onSubmit={dismiss}>
            <label for={reasonId}>{`Reason for dismissing ${exception.id}`}</label>
            <textarea id={reasonId} rows={2} maxLength={1024} value={reason} onInput={(event) => setReason(event.currentTarget.value)} />
            <button type="submit" disabled={busy}>
              Dismiss
            </button>
            <button type="button" class="secondary" onClick={() => setDismissing(false)}>
              Cancel
            </button>
          </form>
        )}
        <ErrorMessage error={error} />
      </td>
    </tr>
  );
}
