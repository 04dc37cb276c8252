// The audit (admin): every ledger replayed by the server, every
// disagreement named.

import { useState } from "preact/hooks";
import { ErrorMessage, RoleGate, type Session, TableHead } from "../common";
import { enrollmentHash } from "../routes";
import type { AuditReport } from "../types";

export function AuditView({ session }: { session: Session }) {
  return (
    <section aria-labelledby="audit-heading">
      <h1 id="audit-heading">Audit</h1>
      <p>
        The audit replays every enrollment's ledger, checks every hash of its chain and compares the result with the stored
        enrollment. It reads the whole ledger, so it may take a while on a large database.
      </p>
      <RoleGate role={session.role} needed="admin" what="Running the audit">
        <Audit session={session} />
      </RoleGate>
    </section>
  );
}

function Audit({ session }: { session: Session }) {
  const [report, setReport] = useState<{ at: Date; report: AuditReport } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [running, setRunning] = useState(false);
  const run = async () => {
    setRunning(true);
    setError(null);
    try {
      setReport({ at: new Date(), report: await session.api.get<AuditReport>("/v1/audit") });
    } catch (failure) {
      setError(failure);
    } finally {
      setRunning(false);
    }
  };
  return (
    <>
      <button type="button" disabled={running} onClick={() => void run()}>
        {running ? "Running the audit…" : "Run the audit"}
      </button>
      <ErrorMessage error={error} />
      {report && (
        <div class="panel" role="status" data-testid="audit-result">
          {report.report.ok ? (
            <p class="ok">
              {`✓ No disagreement: ${report.report.enrollments} enrollments and ${report.report.entries} entries replayed (run at ${report.at.toISOString().slice(0, 19)}Z).`}
            </p>
          ) : (
            <>
              <p class="error">
                {`✗ ${report.report.disagreements.length} disagreement(s) in ${report.report.enrollments} enrollments and ${report.report.entries} entries:`}
              </p>
              <table>
                <TableHead columns={["Enrollment", "Seq", "Problem"]} numeric={["Seq"]} />
                <tbody>
                  {report.report.disagreements.map((disagreement, index) => (
                    <tr key={index}>
                      <td>
                        <a href={enrollmentHash(disagreement.user_id, disagreement.course_id)}>
                          {`${disagreement.user_id} / ${disagreement.course_id}`}
                        </a>
                      </td>
                      <td class="num">{disagreement.seq ?? "—"}</td>
                      <td class="text">{disagreement.problem}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </>
          )}
        </div>
      )}
    </>
  );
}
