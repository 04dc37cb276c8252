// Export (admin): the ledger entries of a period as CSV or JSON lines. The
// file is fetched with the token in the Authorization header and handed to
// the browser as a Blob URL, so the token never appears in a URL.

import { useState } from "preact/hooks";
import { ErrorMessage, Field, RoleGate, Status, type Session } from "../common";
import { inputToRfc3339, startOfMonth, toInput } from "../time";

export function ExportView({ session }: { session: Session }) {
  return (
    <section aria-labelledby="export-heading">
      <h1 id="export-heading">Export</h1>
      <p>The ledger entries committed in a period, in their global order, as a file.</p>
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
  const now = new Date();
  const [from, setFrom] = useState(() => toInput(startOfMonth(now)).slice(0, 16));
  const [to, setTo] = useState(() => toInput(now).slice(0, 16));
  const [format, setFormat] = useState<"csv" | "jsonl">("csv");
  const [status, setStatus] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: Event) => {
    event.preventDefault();
    const start = inputToRfc3339(from);
    const end = inputToRfc3339(to);
    if (start === null || end === null) {
      setError(new Error("Give both a start and an end."));
      return;
    }
    setBusy(true);
    setError(null);
    setStatus(`Exporting ${start} to ${end}…`);
    try {
      const blob = await session.api.blob("/v1/export", { from: start, to: end, format });
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = `bursar-export-${fileTime(start)}-${fileTime(end)}.${format}`;
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
        <Field label="From (UTC)" id="export-from">
          <input id="export-from" type="datetime-local" step={1} required value={from} onInput={(event) => setFrom(event.currentTarget.value)} />
        </Field>
        <Field label="To (UTC)" id="export-to">
          <input id="export-to" type="datetime-local" step={1} required value={to} onInput={(event) => setTo(event.currentTarget.value)} />
        </Field>
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
