// One enrollment: its amounts and statuses (re-read every few seconds), its
// chain verified, its open holds, a chart of its payments, its ledger page
// by page, its balance as of a time and a statement for a period.

import { useEffect, useState } from "preact/hooks";
import { enrollmentPath } from "../api";
import { ErrorMessage, Money, type Session, TableHead, Time, useLoad } from "../common";
import { enrollmentHash } from "../routes";
import type { ChainAudit, Enrollment, Hold } from "../types";
import { LedgerPanel } from "./ledger";
import { PaymentsPanel } from "./chart";
import { AsOfPanel, StatementPanel } from "./history";
import { Summary } from "./summary";

/** How often the open enrollment is read again: a payment made elsewhere
 * shows within this time, without reloading the page. Only the enrollment is
 * read; its ledger, holds and chain are read again when its version moved. */
export const REFRESH_SECONDS = 5;

export interface EnrollmentProps {
  session: Session;
  userId: string;
  courseId: string;
}

export function EnrollmentView({ session, userId, courseId }: EnrollmentProps) {
  const path = enrollmentPath(userId, courseId);
  const [enrollment, setEnrollment] = useState<Enrollment | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [checkedAt, setCheckedAt] = useState<Date | null>(null);

  const read = async () => {
    try {
      const fresh = await session.api.get<Enrollment>(path);
      setEnrollment((old) => (old !== null && old.version === fresh.version && old.updated_at === fresh.updated_at ? old : fresh));
      setError(null);
    } catch (failure) {
      setError(failure);
    }
    setCheckedAt(new Date());
  };

  useEffect(() => {
    setEnrollment(null);
    void read();
    const timer = setInterval(() => {
      if (!document.hidden) void read();
    }, REFRESH_SECONDS * 1000);
    return () => clearInterval(timer);
  }, [path]);

  const revision = enrollment === null ? "" : `${path}@${enrollment.version}`;
  return (
    <section aria-labelledby="enrollment-heading">
      <p>
        <a href={enrollmentHash(userId)}>← {`Enrollments of ${userId}`}</a>
      </p>
      <h1 id="enrollment-heading">
        <span class="id">{userId}</span> / <span class="id">{courseId}</span>
      </h1>
      <p class="hint">
        {`Read again every ${REFRESH_SECONDS} s`}
        {checkedAt && `; last read ${checkedAt.toISOString().slice(11, 19)} UTC`}.{" "}
        <button type="button" class="secondary" onClick={() => void read()}>
          Refresh now
        </button>
      </p>
      <ErrorMessage error={error} />
      {enrollment && (
        <>
          <Summary enrollment={enrollment} />
          <ChainPanel session={session} path={path} revision={revision} />
          <HoldsPanel session={session} path={path} revision={revision} currency={enrollment.currency} />
          <PaymentsPanel session={session} path={path} enrollment={enrollment} />
          <LedgerPanel session={session} path={path} enrollment={enrollment} />
          <AsOfPanel session={session} path={path} />
          <StatementPanel session={session} path={path} />
        </>
      )}
    </section>
  );
}

/** The enrollment's hash chain, replayed by the server. */
function ChainPanel({ session, path, revision }: { session: Session; path: string; revision: string }) {
  const chain = useLoad(() => session.api.get<ChainAudit>(`${path}/audit`), revision);
  return (
    <div class="panel" role="group" aria-labelledby="chain-heading">
      <h2 id="chain-heading">Ledger chain</h2>
      <ErrorMessage error={chain.error} />
      {chain.data &&
        (chain.data.ok ? (
          <p class="ok" data-testid="chain">
            {`✓ Chain verified: ${chain.data.entries} entries replayed, every hash and amount agrees.`}
            {chain.data.head_hash && (
              <>
                {" Head hash "}
                <code class="hash">{chain.data.head_hash}</code>.
              </>
            )}
          </p>
        ) : (
          <div class="error" data-testid="chain" role="alert">
            <p>{`✗ The chain does not verify (${chain.data.entries} entries read):`}</p>
            <ul>
              {chain.data.problems.map((problem, index) => (
                <li key={index}>{problem.seq === null ? problem.problem : `seq ${problem.seq}: ${problem.problem}`}</li>
              ))}
            </ul>
          </div>
        ))}
    </div>
  );
}

function HoldsPanel({ session, path, revision, currency }: { session: Session; path: string; revision: string; currency: string }) {
  const holds = useLoad(() => session.api.get<{ holds: Hold[] }>(`${path}/holds`).then((body) => body.holds), revision);
  return (
    <div class="panel" role="group" aria-labelledby="holds-heading">
      <h2 id="holds-heading">Open holds</h2>
      <ErrorMessage error={holds.error} />
      {holds.data && holds.data.length === 0 && <p>No open hold.</p>}
      {holds.data && holds.data.length > 0 && (
        <table>
          <TableHead columns={["Hold", "Amount", "Expires", "Reference"]} numeric={["Amount"]} />
          <tbody>
            {holds.data.map((hold) => (
              <tr key={hold.hold_seq}>
                <td>{hold.hold_seq}</td>
                <td class="num">
                  <Money amount={hold.amount} currency={currency} />
                </td>
                <td>
                  <Time value={hold.expires_at} />
                </td>
                <td class="text">{hold.reference ?? "—"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
