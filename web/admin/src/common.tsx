// Small pieces the views share. Every text from the API or from people is
// rendered as a JSX text child, which Preact sets as text: never as HTML.

import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { Api, ApiError, roleAtLeast } from "./api";
import { formatMoney } from "./money";
import { inputToRfc3339, showTime } from "./time";
import type { Role } from "./types";

/** What every view gets: the API with the signed-in token, and its role. */
export interface Session {
  api: Api;
  role: Role;
}

export function ErrorMessage({ error }: { error: unknown }) {
  if (error === null || error === undefined) return null;
  const text =
    error instanceof ApiError
      ? `${error.code}: ${error.message}`
      : error instanceof Error
        ? error.message
        : String(error);
  return (
    <p class="error" role="alert">
      {text}
    </p>
  );
}

export function Money({ amount, currency }: { amount: number; currency: string }) {
  return <span class="money">{formatMoney(amount, currency)}</span>;
}

export function Time({ value }: { value: string | null | undefined }) {
  if (!value) return <span>—</span>;
  return <time dateTime={value}>{showTime(value)}</time>;
}

/** A status such as `GRANTED` or `FAILING`, as a labelled badge. */
export function Badge({ value }: { value: string }) {
  return <span class={`badge badge-${value.toLowerCase().replace(/[^a-z_]/g, "")}`}>{value}</span>;
}

/** Shows its children only to a token of `needed` role or higher; others
 * are told which token they need. */
export function RoleGate({
  role,
  needed,
  what,
  children,
}: {
  role: Role;
  needed: Role;
  what: string;
  children: ComponentChildren;
}) {
  if (roleAtLeast(role, needed)) return <>{children}</>;
  return (
    <p class="notice" role="note">
      {what} needs an {needed} token; you are signed in with a {role} token.
    </p>
  );
}

export interface Loaded<T> {
  data: T | null;
  error: unknown;
  loading: boolean;
  reload: () => void;
}

/** Runs `load` when `key` changes (and on `reload`), keeping the last answer
 * while the next loads; answers that arrive after a newer request are
 * dropped. */
export function useLoad<T>(load: (() => Promise<T>) | null, key: string): Loaded<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(false);
  const [generation, setGeneration] = useState(0);
  const latest = useRef(0);
  useEffect(() => {
    if (load === null) {
      setData(null);
      setError(null);
      return;
    }
    const request = ++latest.current;
    setLoading(true);
    load().then(
      (value) => {
        if (request !== latest.current) return;
        setData(value);
        setError(null);
        setLoading(false);
      },
      (failure) => {
        if (request !== latest.current) return;
        setError(failure);
        setLoading(false);
      },
    );
  }, [key, generation]);
  const reload = useCallback(() => setGeneration((value) => value + 1), []);
  return { data, error, loading, reload };
}

/** A labelled field: the label names the control for screen readers. */
export function Field({ label, id, children }: { label: string; id: string; children: ComponentChildren }) {
  return (
    <div class="field">
      <label for={id}>{label}</label>
      {children}
    </div>
  );
}

/** An `aria-live` line telling what an action did. */
export function Status({ text }: { text: string | null }) {
  return (
    <p class="status" role="status" aria-live="polite">
      {text ?? ""}
    </p>
  );
}

export function TimeInput({
  id,
  label,
  value,
  onChange,
  required = false,
}: {
  id: string;
  label: string;
  value: string;
  onChange: (value: string) => void;
  required?: boolean;
}) {
  return (
    <Field label={label} id={id}>
      <input id={id} type="datetime-local" step={1} required={required} value={value} onInput={(event) => onChange(event.currentTarget.value)} />
    </Field>
  );
}

/** A period's bounds from two inputs: an empty one is left out (the server
 * then takes the beginning, or its now). */
export function periodOf(from: string, to: string): { from?: string; to?: string } | Error {
  const start = from === "" ? undefined : inputToRfc3339(from);
  const end = to === "" ? undefined : inputToRfc3339(to);
  if (start === null || end === null) return new Error("A time must be a date and a time.");
  return { from: start, to: end };
}

/** A table's header row; the `numeric` columns are right-aligned. */
export function TableHead({ columns, numeric = [] }: { columns: string[]; numeric?: string[] }) {
  return (
    <thead>
      <tr>
        {columns.map((column) => (
          <th key={column} scope="col" class={numeric.includes(column) ? "num" : undefined}>
            {column}
          </th>
        ))}
      </tr>
    </thead>
  );
}
