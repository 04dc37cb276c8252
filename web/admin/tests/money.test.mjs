// The page's money and time formatting, without a browser: amounts in
// integer minor units become text by integer division, never by floats.

import assert from "node:assert/strict";
import { test } from "node:test";
import { buildSync } from "esbuild";
import { fileURLToPath } from "node:url";

/** A module of the page's sources, bundled to JavaScript and imported. */
async function load(source) {
  const bundled = buildSync({
    entryPoints: [fileURLToPath(new URL(`../src/${source}`, import.meta.url))],
    bundle: true,
    format: "esm",
    write: false,
  });
  return import(`data:text/javascript;base64,${Buffer.from(bundled.outputFiles[0].contents).toString("base64")}`);
}

test("amounts are formatted from integer minor units", async () => {
  const { formatAmount, formatMoney } = await load("money.ts");
  assert.equal(formatMoney(0, "USD"), "0.00 USD");
  assert.equal(formatMoney(5, "USD"), "0.05 USD");
  assert.equal(formatMoney(123_456, "USD"), "1,234.56 USD");
  assert.equal(formatMoney(-2_500, "EUR"), "−25.00 EUR");
  assert.equal(formatMoney(500, "JPY"), "500 JPY");
  assert.equal(formatMoney(1_234_567, "KWD"), "1,234.567 KWD");
  // The largest total bursar keeps (10^15 minor units) is exact.
  assert.equal(formatAmount(1_000_000_000_000_000, "USD"), "10,000,000,000,000.00");
  assert.equal(formatAmount(999_999_999_999_999n, "USD"), "9,999,999,999,999.99");
  // An amount that is not whole is named as such, never rounded.
  assert.match(formatAmount(10.5, "USD"), /not a whole number/);
});

test("times typed in the page are read as UTC", async () => {
  const { inputToRfc3339, showTime } = await load("time.ts");
  assert.equal(inputToRfc3339("2026-12-02T10:30"), "2026-12-02T10:30:00Z");
  assert.equal(inputToRfc3339("2026-12-02T10:30:15"), "2026-12-02T10:30:15Z");
  assert.equal(inputToRfc3339("2026-12-02"), null);
  assert.equal(inputToRfc3339(""), null);
  assert.equal(showTime("2026-12-02T10:30:12.123456Z"), "2026-12-02 10:30:12 UTC");
});
