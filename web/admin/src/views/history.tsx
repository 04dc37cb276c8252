// The past of one enrollment: its balance as of a time, and a statement for
// a period (opening balance, entries, closing balance).

import { useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { ErrorMessage, periodOf, TimeInput, type Session } from "../common";
import { inputToRfc3339, startOfMonth, toInput } from "../time";
import type { Enrollment, Statement } from "../types";
import { Summary } from "./summary";
import { LedgerTable } from "./ledger";

function Panel({ id, title, children }: { id: string; title: string; children: ComponentChildren }) {
  return (
    <div class="panel" role="group" aria-labelledby={id}>
      <h2 id={id}>{title}</h2>
      {children}
    </div>
  );
}

export function AsOfPanel({ session, path }: { session: Session; path: string }) {
  const [input, setInput] = useState(() => toInput(new Date()).slice(0, 16));
  const [answer, setAnswer] = useState<{ at: string; enrollment: Enrollment } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const submit = async (event: Event) => {
    event.preventDefault();
    const at = inputToRfc3339(input);
    if (at === null) {
      setError(new Error("Give a date and a time."));
      return;
    }
    try {
      setAnswer({ at, enrollment: await session.api.get<Enrollment>(path, { as_of: at }) });
      setError(null);
    } catch (failure) {
      setAnswer(null);
      setError(failure);
    }
  };
  return (
    <Panel id="as-of-heading" title="Balance as of a time">
      <form class="inline" onSubmit={submit}>
        <TimeInput id="as-of" label="As of (UTC)" value={input} onChange={setInput} required />
        <button type="submit">Show balance</button>
      </form>
      <ErrorMessage error={error} />
      {answer && <Summary enrollment={answer.enrollment} label={`As of ${answer.at}`} nested />}
    </Panel>
  );
}

export function StatementPanel({ session, path }: { session: Session; path: string }) {
  const [from, setFrom] = useState(() => toInput(startOfMonth(new Date())).slice(0, 16));
  const [to, setTo] = useState("");
  const [statement, setStatement] = useState<Statement | null>(null);
  const [error, setError] = useState<unknown>(null);
  const submit = async (event: Event) => {
    event.preventDefault();
    const period = periodOf(from, to);
    if (period instanceof Error) {
      setError(period);
      return;
    }
    try {
      setStatement(await session.api.get<Statement>(`${path}/statement`, period));
      setError(null);
    } catch (failure) {
      setStatement(null);
      setError(failure);
    }
  };
  return (
    <Panel id="statement-heading" title="Statement for a period">
      <form class="inline" onSubmit={submit}>
        <TimeInput id="statement-from" label="From (UTC, empty: the beginning)" value={from} onChange={setFrom} />
        <TimeInput id="statement-to" label="To (UTC, excluded; empty: now)" value={to} onChange={setTo} />
        <button type="submit">Show statement</button>
      </form>
      <ErrorMessage error={error} />
      {statement && (
        <div class="statement" data-testid="statement">
          {statement.opening === null ? (
            <p>{`Opening balance${statement.from ? ` at ${statement.from}` : ""}: none, not enrolled yet.`}</p>
          ) : (
            <Summary enrollment={statement.opening} label={`Opening balance at ${statement.from ?? "the beginning"}`} nested />
          )}
          <h3>{`Entries (${statement.entries.length})`}</h3>
          <LedgerTable entries={statement.entries} caption="Entries of the period" />
          {statement.closing === null ? (
            <p>{`Closing balance at ${statement.to}: none, not enrolled yet.`}</p>
          ) : (
            <Summary enrollment={statement.closing} label={`Closing balance at ${statement.to}`} nested />
          )}
        </div>
      )}
    </Panel>
  );
}
