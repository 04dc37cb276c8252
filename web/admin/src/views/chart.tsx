// A chart of an enrollment's payments over time, drawn as SVG by hand: the
// net amount paid (payments less refunds) and the amount owed, as steps, with
// a mark at each payment and refund. Money stays in integer minor units: the
// height of a point is computed with BigInt division.

import { useEffect, useRef, useState } from "preact/hooks";
import { ErrorMessage, Money, type Session, TableHead, Time } from "../common";
import { formatMoney } from "../money";
import { showTime } from "../time";
import type { Enrollment, LedgerEntry } from "../types";

/** The most entries the chart reads; past them it says it stopped there. */
export const CHART_ENTRIES_MAX = 10_000;
/** Entries per ledger request while reading for the chart (the API's most). */
const CHART_PAGE_ENTRIES = 1000;

const WIDTH = 720;
const HEIGHT = 240;
const LEFT = 110;
const RIGHT = 16;
const TOP = 14;
const BOTTOM = 34;
const PLOT_WIDTH = WIDTH - LEFT - RIGHT;
const PLOT_HEIGHT = HEIGHT - TOP - BOTTOM;

const MOVES_MONEY = new Set(["PAYMENT", "CAPTURE", "REFUND"]);

/** Every entry of the enrollment (up to `CHART_ENTRIES_MAX`), read once and
 * then only the new ones as the version moves. */
function useAllEntries(session: Session, path: string, version: number) {
  const [entries, setEntries] = useState<LedgerEntry[]>([]);
  const [error, setError] = useState<unknown>(null);
  const loaded = useRef<{ path: string; entries: LedgerEntry[] }>({ path: "", entries: [] });
  useEffect(() => {
    let cancelled = false;
    (async () => {
      let all = loaded.current.path === path ? loaded.current.entries : [];
      try {
        while (all.length < CHART_ENTRIES_MAX && (all.length === 0 || all[all.length - 1].seq < version)) {
          const after = all.length === 0 ? 0 : all[all.length - 1].seq;
          const body = await session.api.get<{ entries: LedgerEntry[] }>(`${path}/ledger`, { after, limit: CHART_PAGE_ENTRIES });
          if (cancelled) return;
          all = all.concat(body.entries);
          if (body.entries.length < CHART_PAGE_ENTRIES) break;
        }
        loaded.current = { path, entries: all };
        setEntries(all);
        setError(null);
      } catch (failure) {
        if (!cancelled) setError(failure);
      }
    })();
    return () => {
      cancelled = true;
    };
  }, [path, version]);
  return { entries, error };
}

export function PaymentsPanel({ session, path, enrollment }: { session: Session; path: string; enrollment: Enrollment }) {
  const { entries, error } = useAllEntries(session, path, enrollment.version);
  const moves = entries.filter((entry) => MOVES_MONEY.has(entry.kind));
  return (
    <div class="panel" role="group" aria-labelledby="payments-heading">
      <h2 id="payments-heading">Payments over time</h2>
      <ErrorMessage error={error} />
      {entries.length > 0 && <PaymentsChart entries={entries} currency={enrollment.currency} />}
      {entries.length >= CHART_ENTRIES_MAX && <p class="hint">{`The chart shows the first ${CHART_ENTRIES_MAX} entries.`}</p>}
      {moves.length > 0 && (
        <details>
          <summary>{`Payments and refunds as a table (${moves.length})`}</summary>
          <table>
            <TableHead columns={["Time", "Kind", "Amount", "Paid after"]} numeric={["Amount", "Paid after"]} />
            <tbody>
              {moves.map((entry) => (
                <tr key={entry.seq}>
                  <td>
                    <Time value={entry.created_at} />
                  </td>
                  <td>{entry.kind}</td>
                  <td class="num">
                    <Money amount={entry.amount} currency={entry.currency} />
                  </td>
                  <td class="num">
                    <Money amount={entry.enrollment.amount_paid} currency={entry.currency} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </details>
      )}
    </div>
  );
}

interface Point {
  time: number;
  paid: bigint;
  owed: bigint;
  entry: LedgerEntry;
}

function PaymentsChart({ entries, currency }: { entries: LedgerEntry[]; currency: string }) {
  const points: Point[] = entries.map((entry) => ({
    time: Date.parse(entry.created_at),
    paid: BigInt(entry.enrollment.amount_paid),
    owed: BigInt(entry.enrollment.amount_paid) + BigInt(entry.enrollment.amount_due),
    entry,
  }));
  const first = points[0].time;
  const last = Math.max(points[points.length - 1].time, Date.now());
  const span = Math.max(1, last - first);
  let top = 1n;
  for (const point of points) {
    if (point.paid > top) top = point.paid;
    if (point.owed > top) top = point.owed;
  }
  const x = (time: number) => LEFT + ((time - first) * PLOT_WIDTH) / span;
  // Integer division on the money; the quotient is a pixel count.
  const y = (amount: bigint) => TOP + PLOT_HEIGHT - Number((amount * BigInt(PLOT_HEIGHT)) / top);
  const steps = (value: (point: Point) => bigint) => {
    let d = `M ${x(points[0].time).toFixed(1)} ${y(value(points[0]))}`;
    for (const point of points.slice(1)) d += ` H ${x(point.time).toFixed(1)} V ${y(value(point))}`;
    return `${d} H ${x(last).toFixed(1)}`;
  };
  const moves = points.filter((point) => MOVES_MONEY.has(point.entry.kind));
  const payments = moves.filter((point) => point.entry.kind !== "REFUND").length;
  const refunds = moves.length - payments;
  const now = points[points.length - 1];
  const description =
    `Net paid over time from ${showTime(entries[0].created_at)}: ${payments} payment(s) and ${refunds} refund(s); ` +
    `${formatMoney(now.paid, currency)} paid of ${formatMoney(now.owed, currency)} owed.`;
  const half = top / 2n;
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${WIDTH} ${HEIGHT}`} role="img" aria-labelledby="chart-title chart-desc" data-testid="payments-chart">
        <title id="chart-title">Payments over time</title>
        <desc id="chart-desc">{description}</desc>
        {[0n, half, top].map((amount) => (
          <g key={String(amount)} class="grid">
            <line x1={LEFT} x2={WIDTH - RIGHT} y1={y(amount)} y2={y(amount)} />
            <text x={LEFT - 6} y={y(amount) + 4} text-anchor="end">
              {formatMoney(amount, currency)}
            </text>
          </g>
        ))}
        <text class="axis" x={LEFT} y={HEIGHT - 10} text-anchor="start">
          {showTime(entries[0].created_at)}
        </text>
        <text class="axis" x={WIDTH - RIGHT} y={HEIGHT - 10} text-anchor="end">
          {showTime(new Date(last).toISOString())}
        </text>
        <path class="owed" d={steps((point) => point.owed)} />
        <path class="paid" d={steps((point) => point.paid)} />
        {moves.map((point) => (
          <circle
            key={point.entry.seq}
            class={point.entry.kind === "REFUND" ? "mark refund" : "mark payment"}
            cx={x(point.time).toFixed(1)}
            cy={y(point.paid)}
            r={4}
          >
            <title>{`${showTime(point.entry.created_at)} ${point.entry.kind} ${formatMoney(point.entry.amount, currency)}`}</title>
          </circle>
        ))}
      </svg>
      <figcaption>
        <span class="legend paid">net paid</span> <span class="legend owed">owed</span>{" "}
        <span class="legend payment">payment</span> <span class="legend refund">refund</span>
      </figcaption>
    </figure>
  );
}
