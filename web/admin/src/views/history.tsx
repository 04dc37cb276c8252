// The past of one enrollment: its balance as of a time, and a statement for
// a period (opening balance, entries, closing balance).

import { useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { ErrorMessage, Field, Money, type Session } from "../common";
import { inputToRfc3339, startOfMonth, toInput } from "../time";
import type { Enrollment, Statement } from "../types";
import { Summary } from "./summary";
import { LedgerTable } from "./ledger";

function TimeInput({ id, label, value, onChange }: { id: string; label: string; value: string; onChange: (value: string) => void }) {
  return (
    <Field label={label} id={id}>
      <input id={id} type="datetime-local" step={1} required value={value} onInput={(event) => onChange(event.currentTarget.value)} />
    </Field>
  );
}

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
        <TimeInput id="as-of" label="As of (UTC)" value={input} onChange={setInput} />
        <button type="submit">Show balance</button>
      </form>
      <ErrorMessage error={error} />
      {answer && <Summary enrollment={answer.enrollment} label={`As of ${answer.at}`} />}
    </Panel>
  );
}

/** An opening or closing balance as the statement gives it: an enrollment as
 * it stood, an amount, or nothing (not enrolled yet). */
function Balance({ value, currency }: { value: unknown; currency: string }) {
  if (value === null || value === undefined) return <p>None: not enrolled yet.</p>;
  if (typeof value === "number") return <Money amount={value} currency={currency} />;
  if (typeof value !== "object") return <span>{String(value)}</span>;
  const fields = Object.entries(value as Record<string, unknown>).filter(
    ([name, field]) => typeof field === "number" && (name === "price" || name.startsWith("amount_")),
  ) as [string, number][];
  const statuses = Object.entries(value as Record<string, unknown>).filter(
    ([name, field]) => typeof field === "string" && name.endsWith("status"),
  ) as [string, string][];
  const ownCurrency = typeof (value as { currency?: unknown }).currency === "string" ? (value as { currency: string }).currency : currency;
  return (
    <dl class="amounts">
      {fields.map(([name, amount]) => (
        <div key={name}>
          <dt>{name.replace(/^amount_/, "").replace(/_/g, " ")}</dt>
          <dd>
            <Money amount={amount} currency={ownCurrency} />
          </dd>
        </div>
      ))}
      {statuses.map(([name, status]) => (
        <div key={name}>
          <dt>{name.replace(/_/g, " ")}</dt>
          <dd>{status}</dd>
        </div>
      ))}
    </dl>
  );
}

export function StatementPanel({ session, path, currency }: { session: Session; path: string; currency: string }) {
  const now = new Date();
  const [from, setFrom] = useState(() => toInput(startOfMonth(now)).slice(0, 16));
  const [to, setTo] = useState(() => toInput(now).slice(0, 16));
  const [statement, setStatement] = useState<{ from: string; to: string; body: Statement } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const submit = async (event: Event) => {
    event.preventDefault();
    const start = inputToRfc3339(from);
    const end = inputToRfc3339(to);
    if (start === null || end === null) {
      setError(new Error("Give both a start and an end."));
      return;
    }
    try {
      const body = await session.api.get<Statement>(`${path}/statement`, { from: start, to: end });
      setStatement({ from: start, to: end, body });
      setError(null);
    } catch (failure) {
      setStatement(null);
      setError(failure);
    }
  };
  return (
    <Panel id="statement-heading" title="Statement for a period">
      <form class="inline" onSubmit={submit}>
        <TimeInput id="statement-from" label="From (UTC)" value={from} onChange={setFrom} />
        <TimeInput id="statement-to" label="To (UTC)" value={to} onChange={setTo} />
        <button type="submit">Show statement</button>
      </form>
      <ErrorMessage error={error} />
      {statement && (
        <div class="statement" data-testid="statement">
          <h3>{`Opening balance at ${statement.from}`}</h3>
          <Balance value={statement.body.opening} currency={currency} />
          <h3>{`Entries (${statement.body.entries.length})`}</h3>
          <LedgerTable entries={statement.body.entries} caption="Entries of the period" />
          <h3>{`Closing balance at ${statement.to}`}</h3>
          <Balance value={statement.body.closing} currency={currency} />
        </div>
      )}
    </Panel>
  );
}
