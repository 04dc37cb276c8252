// Finding a user's enrollments, now or as they stood at a time.

import { useEffect, useState } from "preact/hooks";
import { enrollmentPath } from "../api";
import { Badge, ErrorMessage, Field, Money, type Session, TableHead, Time, useLoad } from "../common";
import { enrollmentHash } from "../routes";
import { inputToRfc3339 } from "../time";
import type { Enrollment } from "../types";

export function EnrollmentsView({ session, userId }: { session: Session; userId: string | null }) {
  const [typed, setTyped] = useState(userId ?? "");
  const [asOfInput, setAsOfInput] = useState("");
  const [asOf, setAsOf] = useState<string | null>(null);
  const [formError, setFormError] = useState<string | null>(null);
  useEffect(() => setTyped(userId ?? ""), [userId]);

  const list = useLoad(
    userId === null
      ? null
      : () =>
          session.api
            .get<{ enrollments: Enrollment[] }>(enrollmentPath(userId), { as_of: asOf ?? undefined })
            .then((body) => body.enrollments),
    `${userId}|${asOf}`,
  );

  const submit = (event: Event) => {
    event.preventDefault();
    const user = typed.trim();
    if (user === "") {
      setFormError("Type a user id.");
      return;
    }
    let time: string | null = null;
    if (asOfInput !== "") {
      time = inputToRfc3339(asOfInput);
      if (time === null) {
        setFormError("The time must be a date and a time.");
        return;
      }
    }
    setFormError(null);
    setAsOf(time);
    if (user === userId) list.reload();
    else location.hash = enrollmentHash(user);
  };

  return (
    <section aria-labelledby="find-heading">
      <h1 id="find-heading">Enrollments</h1>
      <form class="inline" onSubmit={submit}>
        <Field label="User id" id="user-id">
          <input id="user-id" value={typed} onInput={(event) => setTyped(event.currentTarget.value)} />
        </Field>
        <Field label="As of (UTC, optional)" id="list-as-of">
          <input
            id="list-as-of"
            type="datetime-local"
            step={1}
            value={asOfInput}
            onInput={(event) => setAsOfInput(event.currentTarget.value)}
          />
        </Field>
        <button type="submit">Find</button>
      </form>
      {formError && (
        <p class="error" role="alert">
          {formError}
        </p>
      )}
      <ErrorMessage error={list.error} />
      {list.loading && <p class="loading">Loading…</p>}
      {userId !== null && list.data !== null && (
        <EnrollmentTable userId={userId} enrollments={list.data} asOf={asOf} />
      )}
    </section>
  );
}

function EnrollmentTable({ userId, enrollments, asOf }: { userId: string; enrollments: Enrollment[]; asOf: string | null }) {
  if (enrollments.length === 0) {
    return <p>{asOf ? `${userId} had no enrollment at ${asOf}.` : `${userId} has no enrollment.`}</p>;
  }
  return (
    <table>
      <caption>
        {`Enrollments of ${userId}`}
        {asOf ? ` as of ${asOf}` : ""}
      </caption>
      <TableHead columns={["Course", "Price", "Paid", "Due", "Payment", "Access", "Status", "Updated"]} numeric={["Price", "Paid", "Due"]} />
      <tbody>
        {enrollments.map((enrollment) => (
          <tr key={enrollment.course_id}>
            <th scope="row">
              <a href={enrollmentHash(enrollment.user_id, enrollment.course_id)}>{enrollment.course_id}</a>
            </th>
            <td class="num">
              <Money amount={enrollment.price} currency={enrollment.currency} />
            </td>
            <td class="num">
              <Money amount={enrollment.amount_paid} currency={enrollment.currency} />
            </td>
            <td class="num">
              <Money amount={enrollment.amount_due} currency={enrollment.currency} />
            </td>
            <td>
              <Badge value={enrollment.payment_status} />
            </td>
            <td>
              <Badge value={enrollment.access_status} />
            </td>
            <td>
              <Badge value={enrollment.status} />
            </td>
            <td>
              <Time value={enrollment.updated_at} />
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
