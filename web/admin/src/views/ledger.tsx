// An enrollment's ledger, a page at a time. Entries have `seq` 1 to the
// enrollment's version without gaps, so page k holds seq k·n+1 to (k+1)·n and
// the newest page is known without reading the others.

import { useEffect, useState } from "preact/hooks";
import { ErrorMessage, Money, type Session, TableHead, Time, useLoad } from "../common";
import type { Enrollment, LedgerEntry } from "../types";

/** Entries on one page of the ledger table. */
export const LEDGER_PAGE_ENTRIES = 20;

export function LedgerPanel({ session, path, enrollment }: { session: Session; path: string; enrollment: Enrollment }) {
  const pages = Math.max(1, Math.ceil(enrollment.version / LEDGER_PAGE_ENTRIES));
  // `null`: follow the newest page as entries arrive.
  const [chosen, setChosen] = useState<number | null>(null);
  useEffect(() => setChosen(null), [path]);
  const page = chosen === null ? pages - 1 : Math.min(chosen, pages - 1);
  const after = page * LEDGER_PAGE_ENTRIES;
  const entries = useLoad(
    () =>
      session.api
        .get<{ entries: LedgerEntry[] }>(`${path}/ledger`, { after, limit: LEDGER_PAGE_ENTRIES })
        .then((body) => body.entries),
    `${path}|${after}|${page === pages - 1 ? enrollment.version : ""}`,
  );
  const go = (target: number) => setChosen(target >= pages - 1 ? null : Math.max(0, target));
  return (
    <div class="panel" role="group" aria-labelledby="ledger-heading">
      <h2 id="ledger-heading">Ledger</h2>
      <nav class="pager" aria-label="Ledger pages">
        <button type="button" class="secondary" disabled={page === 0} onClick={() => go(0)}>
          Oldest
        </button>
        <button type="button" class="secondary" disabled={page === 0} onClick={() => go(page - 1)}>
          Older
        </button>
        <span>{`Page ${page + 1} of ${pages} (entries ${after + 1}–${Math.min(after + LEDGER_PAGE_ENTRIES, enrollment.version)} of ${enrollment.version})`}</span>
        <button type="button" class="secondary" disabled={page >= pages - 1} onClick={() => go(page + 1)}>
          Newer
        </button>
        <button type="button" class="secondary" disabled={page >= pages - 1} onClick={() => go(pages - 1)}>
          Newest
        </button>
      </nav>
      <ErrorMessage error={entries.error} />
      {entries.data && <LedgerTable entries={entries.data} caption="Ledger entries, oldest first" />}
    </div>
  );
}

export function LedgerTable({ entries, caption }: { entries: LedgerEntry[]; caption: string }) {
  if (entries.length === 0) return <p>No entry.</p>;
  return (
    <div class="scroll">
      <table class="ledger">
        <caption class="visually-hidden">{caption}</caption>
        <TableHead columns={["Seq", "Time", "Kind", "Amount", "Reference and reason", "Idempotency key and source", "Paid after", "Due after", "Hash"]} numeric={["Seq", "Amount", "Paid after", "Due after"]} />
        <tbody>
          {entries.map((entry) => (
            <tr key={entry.seq} data-testid="ledger-row">
              <td class="num">{entry.seq}</td>
              <td>
                <Time value={entry.created_at} />
              </td>
              <td>
                {entry.kind}
                {entry.hold_seq !== undefined && entry.kind !== "HOLD" ? ` (hold ${entry.hold_seq})` : ""}
              </td>
              <td class="num">
                <Money amount={entry.amount} currency={entry.currency} />
              </td>
              <td class="text">
                {entry.reference !== null && <div data-testid="reference">{entry.reference}</div>}
                {entry.reason !== null && <div class="reason">{entry.reason}</div>}
                {entry.reference === null && entry.reason === null && "—"}
              </td>
              <td class="text">
                {entry.idempotency_key !== null && <div class="key">{entry.idempotency_key}</div>}
                {entry.source !== null && <div class="source">{`${entry.source.processor} ${entry.source.event_type} ${entry.source.event_id}`}</div>}
                {entry.idempotency_key === null && entry.source === null && "—"}
              </td>
              <td class="num">
                <Money amount={entry.enrollment.amount_paid} currency={entry.currency} />
              </td>
              <td class="num">
                <Money amount={entry.enrollment.amount_due} currency={entry.currency} />
              </td>
              <td>
                <code class="hash" title={entry.hash}>
                  {entry.hash.slice(0, 12)}…
                </code>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
