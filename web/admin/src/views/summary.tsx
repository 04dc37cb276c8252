// The amounts and statuses of one enrollment, now or as it stood.

import { Badge, Money, Time } from "../common";
import type { Enrollment } from "../types";

/** The amounts and statuses of an enrollment, as a definition list. */
export function Summary({
  enrollment,
  label = "Amounts and statuses",
  nested = false,
}: {
  enrollment: Enrollment;
  label?: string;
  /** Inside another panel: a smaller heading. */
  nested?: boolean;
}) {
  const currency = enrollment.currency;
  const amounts: [string, number][] = [
    ["Price", enrollment.price],
    ["Charged", enrollment.amount_charged],
    ["Paid", enrollment.amount_paid],
    ["Credited", enrollment.amount_credited],
    ["Refunded", enrollment.amount_refunded],
    ["Due", enrollment.amount_due],
    ["Held", enrollment.amount_held ?? 0],
    ["Available", enrollment.amount_available ?? enrollment.amount_due],
  ];
  return (
    <div class="panel" aria-label={label} role="group">
      {nested ? <h3>{label}</h3> : <h2>{label}</h2>}
      <div class="statuses">
        <span>
          Payment: <Badge value={enrollment.payment_status} />
        </span>
        <span data-testid="access-status">
          Access: <Badge value={enrollment.access_status} />
        </span>
        <span>
          Status: <Badge value={enrollment.status} />
        </span>
      </div>
      <dl class="amounts">
        {amounts.map(([name, amount]) => (
          <div key={name} data-testid={`amount-${name.toLowerCase()}`}>
            <dt>{name}</dt>
            <dd>
              <Money amount={amount} currency={currency} />
            </dd>
          </div>
        ))}
      </dl>
      <p class="hint">
        {"Access policy: "}
        {enrollment.access_policy.kind === "MIN_SETTLED" && enrollment.access_policy.amount !== undefined ? (
          <>
            {"access once paid and credited reach "}
            <Money amount={enrollment.access_policy.amount} currency={currency} />
          </>
        ) : (
          "access once paid in full"
        )}
        {`. Version ${enrollment.version}; enrolled `}
        <Time value={enrollment.created_at} />
        {", last changed "}
        <Time value={enrollment.updated_at} />.
      </p>
    </div>
  );
}

