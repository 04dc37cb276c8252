// Money for display only. Amounts are integer minor units; they are turned
// into text with integer division and remainder (BigInt), never with
// floating-point arithmetic.

/** Minor-unit exponents of the ISO 4217 currencies that do not use two. */
const EXPONENTS: Record<string, number> = {
  BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3,
  BIF: 0, CLP: 0, DJF: 0, GNF: 0, ISK: 0, JPY: 0, KMF: 0, KRW: 0, PYG: 0,
  RWF: 0, UGX: 0, UYI: 0, VND: 0, VUV: 0, XAF: 0, XOF: 0, XPF: 0,
};

export function minorUnitExponent(currency: string): number {
  return EXPONENTS[currency] ?? 2;
}

/** `1234567` → `1,234,567`. */
function groupThousands(digits: string): string {
  let grouped = "";
  for (let end = digits.length; end > 0; end -= 3) {
    const start = Math.max(0, end - 3);
    grouped = digits.slice(start, end) + (grouped === "" ? "" : `,${grouped}`);
  }
  return grouped;
}

/** `formatAmount(123456, "USD")` → `1,234.56`; `formatAmount(500, "JPY")` → `500`. */
export function formatAmount(minor: number | bigint, currency: string): string {
  if (typeof minor === "number" && !Number.isSafeInteger(minor)) {
    return `${String(minor)} (not a whole number of minor units)`;
  }
  let value = BigInt(minor);
  const negative = value < 0n;
  if (negative) value = -value;
  const exponent = minorUnitExponent(currency);
  const scale = 10n ** BigInt(exponent);
  const whole = groupThousands((value / scale).toString());
  const fraction = exponent === 0 ? "" : `.${(value % scale).toString().padStart(exponent, "0")}`;
  return `${negative ? "−" : ""}${whole}${fraction}`;
}

/** `formatMoney(123456, "USD")` → `1,234.56 USD`. */
export function formatMoney(minor: number | bigint, currency: string): string {
  return `${formatAmount(minor, currency)} ${currency}`;
}
