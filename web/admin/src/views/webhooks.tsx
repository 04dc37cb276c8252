// Webhook endpoints (admin): their state, their failed deliveries, and a
// replay that sends events again.

import { useState } from "preact/hooks";
import { Badge, ErrorMessage, Field, RoleGate, type Session, Status, TableHead, Time, useLoad } from "../common";
import type { Delivery, WebhookEndpoint } from "../types";

/** Delivery attempts read per endpoint (the log keeps 1,000). */
export const DELIVERIES_SHOWN = 100;

export function WebhooksView({ session }: { session: Session }) {
  return (
    <section aria-labelledby="webhooks-heading">
      <h1 id="webhooks-heading">Webhooks</h1>
      <RoleGate role={session.role} needed="admin" what="Reading and replaying webhook endpoints">
        <Webhooks session={session} />
      </RoleGate>
    </section>
  );
}

function Webhooks({ session }: { session: Session }) {
  const endpoints = useLoad(
    () => session.api.get<{ webhooks: WebhookEndpoint[] }>("/v1/webhooks").then((body) => body.webhooks),
    "webhooks",
  );
  const [selected, setSelected] = useState<string | null>(null);
  const list = endpoints.data ?? [];
  const endpoint = list.find((candidate) => candidate.id === selected) ?? null;
  return (
    <>
      <p>
        <button type="button" class="secondary" onClick={() => endpoints.reload()}>
          Refresh
        </button>
      </p>
      <ErrorMessage error={endpoints.error} />
      {endpoints.data && list.length === 0 && <p>No webhook endpoint is registered.</p>}
      {list.length > 0 && (
        <table data-testid="webhooks">
          <TableHead columns={["Endpoint", "URL", "Types", "State", "Created", "Deliveries"]} />
          <tbody>
            {list.map((webhook) => (
              <tr key={webhook.id}>
                <td>
                  <code>{webhook.id}</code>
                </td>
                <td class="text url">{webhook.url}</td>
                <td class="text">{webhook.types === null ? "every type" : webhook.types.join(", ")}</td>
                <td>
                  <Badge value={webhook.state} />
                  {webhook.failing_since && (
                    <div class="hint">
                      {"since "}
                      <Time value={webhook.failing_since} />
                    </div>
                  )}
                </td>
                <td>
                  <Time value={webhook.created_at} />
                </td>
                <td>
                  <button
                    type="button"
                    class="secondary"
                    aria-label={`Deliveries of ${webhook.id}`}
                    aria-pressed={selected === webhook.id}
                    onClick={() => setSelected(webhook.id)}
                  >
                    Show deliveries
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {endpoint && <Deliveries key={endpoint.id} session={session} endpoint={endpoint} onReplayed={() => endpoints.reload()} />}
    </>
  );
}

function Deliveries({ session, endpoint, onReplayed }: { session: Session; endpoint: WebhookEndpoint; onReplayed: () => void }) {
  const path = `/v1/webhooks/${encodeURIComponent(endpoint.id)}`;
  const deliveries = useLoad(
    () => session.api.get<{ deliveries: Delivery[] }>(`${path}/deliveries`, { limit: DELIVERIES_SHOWN }).then((body) => body.deliveries),
    path,
  );
  const [onlyFailed, setOnlyFailed] = useState(true);
  const [after, setAfter] = useState<string | null>(null);
  const [status, setStatus] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const all = deliveries.data ?? [];
  const failed = all.filter((delivery) => delivery.error !== null);
  const shown = onlyFailed ? failed : all;
  // By default replay from just before the oldest failed delivery shown.
  const suggested = failed.length > 0 ? Math.min(...failed.map((delivery) => delivery.position)) - 1 : endpoint.started_after;
  const replayAfter = after ?? String(suggested);
  const replay = async (event: Event) => {
    event.preventDefault();
    if (!/^\d+$/.test(replayAfter)) {
      setError(new Error("The position must be a whole number, 0 or more."));
      return;
    }
    try {
      const answer = await session.api.post<WebhookEndpoint>(`${path}/replay`, { after: Number(replayAfter) });
      setStatus(`Replaying the events after position ${replayAfter} to ${endpoint.id}; it is ${answer.state ?? "ACTIVE"}.`);
      setError(null);
      onReplayed();
      deliveries.reload();
    } catch (failure) {
      setError(failure);
    }
  };
  return (
    <div class="panel" role="group" aria-labelledby="deliveries-heading">
      <h2 id="deliveries-heading">{`Deliveries of ${endpoint.id}`}</h2>
      <p class="text url">{endpoint.url}</p>
      <form class="inline" onSubmit={replay}>
        <Field label="Replay the events after position" id="replay-after">
          <input id="replay-after" inputMode="numeric" value={replayAfter} onInput={(event) => setAfter(event.currentTarget.value)} />
        </Field>
        <button type="submit">Replay</button>
      </form>
      <Status text={status} />
      <ErrorMessage error={error ?? deliveries.error} />
      <p>
        <label class="check">
          <input type="checkbox" checked={onlyFailed} onChange={(event) => setOnlyFailed(event.currentTarget.checked)} />
          {` Only failed attempts (${failed.length} of the newest ${all.length})`}
        </label>{" "}
        <button type="button" class="secondary" onClick={() => deliveries.reload()}>
          Refresh
        </button>
      </p>
      {shown.length === 0 ? (
        <p>{onlyFailed ? "No failed attempt among the newest." : "No attempt yet."}</p>
      ) : (
        <table data-testid="deliveries">
          <TableHead columns={["When", "Event", "Position", "Attempt", "HTTP status", "ms", "Error"]} numeric={["Position", "Attempt", "HTTP status", "ms"]} />
          <tbody>
            {shown.map((delivery, index) => (
              <tr key={`${delivery.event_id}-${delivery.attempt}-${index}`}>
                <td>
                  <Time value={delivery.at} />
                </td>
                <td>
                  <code>{delivery.event_id}</code>
                </td>
                <td class="num">{delivery.position}</td>
                <td class="num">{delivery.attempt}</td>
                <td class="num">{delivery.status ?? "—"}</td>
                <td class="num">{delivery.latency_ms}</td>
                <td class="text">{delivery.error ?? "delivered"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
