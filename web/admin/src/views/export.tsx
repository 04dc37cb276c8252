// Export (admin): the ledger entries of a period as CSV or JSON lines. The
// file is fetched with the token in the Authorization header and handed to
// the browser as a Blob URL, so the token never appears in a URL.

import { useState } from "preact/hooks";
import { ErrorMessage, Field, periodOf, RoleGate, Status, TimeInput, type Session } from "../common";
import { startOfMonth, toInput } from "../time";

export function ExportView({ session }: { session: Session }) {
  return (
    <section aria-labelledby="export-heading">
      <h1 id="export-heading">Export</h1>
      <p>
        The ledger entries committed in a period (from its start, included, to its end, excluded), in their global order, as a
        file: CSV with a header line, or one JSON object per line.
      </p>
      <RoleGate role={session.role} needed="admin" what="Exporting the ledger">
        <Export session={session} />
      </RoleGate>
    </section>
  );
}

function fileTime(rfc3339: string): string {
  return rfc3339.replace(/:/g, "");
}

function Export({ session }: { session: Session }) {
  const [from, setFrom] = useState(() => toInput(startOfMonth(new Date())).slice(0, 16));
  const [to, setTo] = useState("");
  const [format, setFormat] = useState<"csv" | "jsonl">("csv");
  const [status, setStatus] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: Event) => {
    event.preventDefault();
    const period = periodOf(from, to);
    if (period instanceof Error) {
      setError(period);
      return;
    }
    setBusy(true);
    setError(null);
    setStatus(`Exporting from ${period.from ?? "the beginning"} to ${period.to ?? "now"}…`);
    try {
      const blob = await session.api.blob("/v1/export", { ...period, format });
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = `bursar-export-${fileTime(period.from ?? "start")}-${fileTime(period.to ?? toInput(new Date()) + "Z")}.${format}`;
      document.body.append(link);
      link.click();
      link.remove();
      // The browser has taken the file once the click is handled.
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      setStatus(`Downloaded ${link.download} (${blob.size.toLocaleString("en")} bytes).`);
    } catch (failure) {
      setStatus(null);
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <form class="inline" onSubmit={submit}>
        <TimeInput id="export-from" label="From (UTC, empty: the beginning)" value={from} onChange={setFrom} />
        <TimeInput id="export-to" label="To (UTC, excluded; empty: now)" value={to} onChange={setTo} />
        <Field label="Format" id="export-format">
          <select id="export-format" value={format} onChange={(event) => setFormat(event.currentTarget.value as "csv" | "jsonl")}>
            <option value="csv">CSV</option>
            <option value="jsonl">JSON lines</option>
          </select>
        </Field>
        <button type="submit" disabled={busy}>
          Download
        </button>
      </form>
      <Status text={status} />
      <ErrorMessage error={error} />
    </>
  );
}
