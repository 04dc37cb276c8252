// Money as the server takes it: integer minor units (cents), checked before a
// request leaves the process, and checked again in every answer, so that no
// float, string or rounded number is ever taken for an amount.

/** One operation moves 1 ..= 10^12 minor units. */
export const AMOUNT_MIN = 1;
/** The largest amount of one operation, and the largest price: 10^12 minor units. */
export const AMOUNT_MAX = 1_000_000_000_000;
/** A price may be 0 (a free course) ..= 10^12. */
export const PRICE_MIN = 0;

function checkInteger(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number") {
    throw new TypeError(
      `${name} must be a number of minor units (an integer such as 2500 for 25.00), not ${describe(value)}`,
    );
  }
  if (!Number.isSafeInteger(value)) {
    throw new RangeError(`${name} must be a whole number of minor units, not ${value}`);
  }
  if (value < min || value > max) {
    throw new RangeError(`${name} must be from ${min} to ${max} minor units, not ${value}`);
  }
  return value;
}

function describe(value: unknown): string {
  if (typeof value === "string") {
    return `the string ${JSON.stringify(value)}`;
  }
  if (typeof value === "bigint") {
    return `the bigint ${value}n`;
  }
  return value === null ? "null" : typeof value;
}

/**
 * An operation's amount: a safe integer from 1 to 10^12. Throws a
 * `TypeError` for anything but a number, a `RangeError` for a fraction or a
 * number out of range.
 */
export function checkAmount(name: string, value: unknown): number {
  return checkInteger(name, value, AMOUNT_MIN, AMOUNT_MAX);
}

/** A price: a safe integer from 0 to 10^12; throws as `checkAmount` does. */
export function checkPrice(name: string, value: unknown): number {
  return checkInteger(name, value, PRICE_MIN, AMOUNT_MAX);
}

/**
 * The amounts of one operation's body, by field: `amount` and `price` where
 * present, and a `MIN_SETTLED` access policy's `amount`. Throws as
 * `checkAmount` does, naming `where` and the field.
 */
export function checkBodyAmounts(where: string, body: unknown): void {
  if (typeof body !== "object" || body === null) {
    return;
  }
  const fields = body as Record<string, unknown>;
  if (fields.amount !== undefined) {
    checkAmount(`${where}amount`, fields.amount);
  }
  if (fields.price !== undefined) {
    checkPrice(`${where}price`, fields.price);
  }
  const policy = fields.access_policy;
  if (typeof policy === "object" && policy !== null && (policy as Record<string, unknown>).amount !== undefined) {
    checkPrice(`${where}access_policy.amount`, (policy as Record<string, unknown>).amount);
  }
}

/** A field that holds money in bursar's answers. */
function isMoneyField(name: string): boolean {
  return name === "price" || name === "amount" || name.startsWith("amount_");
}

/**
 * Finds the first money field of an answer that is not a safe integer (a
 * fraction, or a number JSON.parse could not hold exactly), and says which.
 * `null` when every amount is sound.
 */
export function unsafeAmount(value: unknown, path = ""): string | null {
  if (Array.isArray(value)) {
    for (const [index, item] of value.entries()) {
      const found = unsafeAmount(item, `${path}[${index}]`);
      if (found !== null) {
        return found;
      }
    }
    return null;
  }
  if (typeof value !== "object" || value === null) {
    return null;
  }
  for (const [name, field] of Object.entries(value)) {
    if (name === "event") {
      // The payment processor's own event, kept as it arrived in an intake
      // exception: its amounts are the processor's, not bursar's.
      continue;
    }
    const at = path === "" ? name : `${path}.${name}`;
    if (isMoneyField(name) && typeof field === "number" && !Number.isSafeInteger(field)) {
      return `${at} is ${field}, not a safe integer number of minor units`;
    }
    const found = unsafeAmount(field, at);
    if (found !== null) {
      return found;
    }
  }
  return null;
}
