// Times. bursar's times are UTC RFC 3339; the page shows them in UTC and
// reads the times people type as UTC too, so what is typed and what is
// shown agree whatever the browser's time zone.

/** `2026-12-02T10:30:12.123456Z` → `2026-12-02 10:30:12 UTC`. */
export function showTime(rfc3339: string | null | undefined): string {
  if (!rfc3339) return "—";
  const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(rfc3339);
  return match ? `${match[1]} ${match[2]} UTC` : rfc3339;
}

/** The value of an `<input type="datetime-local">` read as UTC, as RFC 3339
 * (`2026-12-02T10:30` → `2026-12-02T10:30:00Z`); `null` when empty or
 * malformed. */
export function inputToRfc3339(value: string): string | null {
  const match = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(:\d{2})?(\.\d+)?$/.exec(value);
  if (!match) return null;
  return `${match[1]}${match[2] ?? ":00"}Z`;
}

/** A moment as the value of an `<input type="datetime-local" step="1">`, in UTC. */
export function toInput(date: Date): string {
  return date.toISOString().slice(0, 19);
}

/** The start of the current month, UTC. */
export function startOfMonth(now: Date): Date {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
}
