// The admin page in a real browser (Debian's Chromium, headless) against a
// real `bursar serve`: signing in, an enrollment found, a payment and a
// refund made through the API showing up by themselves, an intake exception
// retried and dismissed, webhook deliveries replayed, the audit, a CSV
// downloaded and read, the XSS reference shown as text, and reader and
// writer tokens that cannot act. Screenshots of the main views go to
// BURSAR_ADMIN_ARTIFACTS (default: test-results/); with BURSAR_BLESS=1 they
// are also copied to docs/admin/.

import assert from "node:assert/strict";
import { copyFile, mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { closedPort, deliverStripe, launchChromium, paidCheckout, repository, startServer } from "./harness.mjs";

const XSS = "<img src=x onerror=alert(1)>";
const artifacts = process.env.BURSAR_ADMIN_ARTIFACTS || join(repository, "web", "admin", "test-results");
/** How long the page may take to show a change made elsewhere: its refresh
 * interval (5 s) and room for a busy machine. */
const REFRESH_WAIT_MS = 15_000;
/** The whole suite's limit, so a hung browser fails the run instead of
 * stalling it; a passing run takes about 20 s. */
const SUITE_TIMEOUT_MS = 180_000;

/** The rows of a CSV text (RFC 4180: quoted fields may hold commas, quotes
 * and line breaks). */
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let index = 0; index < text.length; index += 1) {
    const char = text[index];
    if (quoted) {
      if (char === '"' && text[index + 1] === '"') {
        field += '"';
        index += 1;
      } else if (char === '"') quoted = false;
      else field += char;
    } else if (char === '"') quoted = true;
    else if (char === ",") {
      row.push(field);
      field = "";
    } else if (char === "\n") {
      row.push(field.replace(/\r$/, ""));
      rows.push(row);
      row = [];
      field = "";
    } else field += char;
  }
  if (field !== "" || row.length > 0) rows.push([...row, field]);
  return rows;
}

/** The UTC wall-clock time of `date` in a datetime-local input's format. */
const inputTime = (date) => date.toISOString().slice(0, 19);

describe("the admin page", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  let browser;
  let page;
  let api;
  const dialogs = [];
  const problems = [];
  const requestedUrls = [];
  const screenshots = [];
  const tokens = [];

  const shoot = async (name) => {
    const path = join(artifacts, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    screenshots.push(path);
  };

  const signIn = async (token) => {
    await page.goto(`${server.url}/admin`);
    await page.getByLabel("API token").fill(token);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByTestId("role").waitFor();
  };

  const signOut = async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("API token").waitFor();
  };

  const openEnrollment = async (user, course) => {
    await page.getByRole("link", { name: "Enrollments", exact: true }).click();
    await page.getByLabel("User id").fill(user);
    await page.getByRole("button", { name: "Find" }).click();
    await page.getByRole("link", { name: course, exact: true }).click();
    await page.getByRole("heading", { name: `${user} / ${course}` }).waitFor();
  };

  /** An amount of the open enrollment as it stands now. */
  const amount = (name) =>
    page.getByRole("group", { name: "Amounts and statuses", exact: true }).getByTestId(`amount-${name}`).locator("dd");

  before(async () => {
    await mkdir(artifacts, { recursive: true });
    server = await startServer();
    api = server.api();
    tokens.push(server.adminToken);
    // An endpoint nothing listens on, registered before anything happens,
    // so every event of the test fails to be delivered to it.
    const port = await closedPort();
    await api.expect(201, "POST", "/v1/webhooks", { url: `http://127.0.0.1:${port}/bursar-events` });
    browser = await launchChromium();
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
    page = await context.newPage();
    page.on("dialog", (dialog) => {
      dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    page.on("console", (message) => {
      // A refused API call is logged by the browser itself; anything else
      // (a CSP or Trusted Types violation, a script error) is a problem.
      if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
        problems.push(`console: ${message.text()}`);
      }
    });
    page.on("request", (request) => requestedUrls.push(request.url()));
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    if (process.env.BURSAR_BLESS === "1") {
      const docs = join(repository, "docs", "admin");
      await mkdir(docs, { recursive: true });
      for (const path of screenshots) await copyFile(path, join(docs, path.slice(artifacts.length + 1)));
    }
  });

  it("is served without a token, with a strict policy and no inline code", async () => {
    const answer = await fetch(`${server.url}/admin`);
    assert.equal(answer.status, 200);
    const csp = answer.headers.get("content-security-policy");
    for (const directive of [
      "default-src 'none'",
      "script-src 'self'",
      "style-src 'self'",
      "connect-src 'self'",
      "base-uri 'none'",
      "form-action 'none'",
      "frame-ancestors 'none'",
    ]) {
      assert.ok(csp.includes(directive), `${directive} in ${csp}`);
    }
    assert.ok(!csp.includes("unsafe"), csp);
    assert.equal(answer.headers.get("x-content-type-options"), "nosniff");
    assert.equal(answer.headers.get("referrer-policy"), "no-referrer");
    assert.equal(answer.headers.get("cache-control"), "no-cache");
    const html = await answer.text();
    assert.doesNotMatch(html, /<script>|<style|style=/);
    const assets = [...html.matchAll(/(?:src|href)="(\/admin\/assets\/[^"]+)"/g)].map((match) => match[1]);
    assert.equal(assets.length, 2, html);
    for (const asset of assets) {
      const file = await fetch(server.url + asset);
      assert.equal(file.status, 200, asset);
      assert.match(file.headers.get("cache-control"), /immutable/);
      assert.equal(file.headers.get("x-content-type-options"), "nosniff");
    }
    const revalidated = await fetch(`${server.url}/admin`, { headers: { "If-None-Match": answer.headers.get("etag") } });
    assert.equal(revalidated.status, 304);
    assert.equal((await fetch(`${server.url}/admin/assets/nothing.js`)).status, 404);
  });

  it("signs in with a token and shows its role", async () => {
    await page.goto(`${server.url}/admin`);
    await shoot("sign-in");
    await page.getByLabel("API token").fill("not-a-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "UNAUTHENTICATED" }).waitFor();
    // By keyboard this time: Enter in the field signs in.
    await page.getByLabel("API token").fill(server.adminToken);
    await page.getByLabel("API token").press("Enter");
    assert.equal(await page.getByTestId("role").textContent(), "admin");
    assert.equal(await page.evaluate(() => localStorage.length), 0, "nothing in localStorage");
    // Kept for this tab: a reload stays signed in.
    await page.reload();
    assert.equal(await page.getByTestId("role").textContent(), "admin");
  });

  it("finds an enrollment and shows the XSS reference as text", async () => {
    await api.enroll("u1", "c1", 10_000);
    await api.operate("payments", "u1", "c1", { amount: 2_500, reference: XSS });
    await openEnrollment("u1", "c1");
    assert.equal(await amount("paid").textContent(), "25.00 USD");
    assert.equal(await amount("due").textContent(), "75.00 USD");
    assert.equal(await page.getByTestId("reference").first().textContent(), XSS);
    await page.getByText(XSS, { exact: true }).first().waitFor();
    assert.equal(await page.locator("img").count(), 0, "no element was made of the reference");
    assert.deepEqual(dialogs, []);
    await page.getByTestId("chain").filter({ hasText: "Chain verified: 2 entries" }).waitFor();
  });

  it("shows a payment made through the API without a reload", async () => {
    // Later than the first payment, earlier than the second.
    await new Promise((done) => setTimeout(done, 1_100));
    const middle = new Date(Math.floor(Date.now() / 1000) * 1000);
    await new Promise((done) => setTimeout(done, 1_100));
    await api.operate("payments", "u1", "c1", { amount: 7_500, reference: "second payment" });
    await amount("paid").filter({ hasText: "100.00 USD" }).waitFor({ timeout: REFRESH_WAIT_MS });
    await page.getByTestId("access-status").filter({ hasText: "GRANTED" }).waitFor();
    await page.getByTestId("chain").filter({ hasText: "Chain verified: 3 entries" }).waitFor();
    await page.getByTestId("payments-chart").locator("circle").nth(1).waitFor();
    // The balance as it stood between the two payments.
    await page.getByLabel("As of (UTC)").fill(inputTime(middle));
    await page.getByRole("button", { name: "Show balance" }).click();
    const asOf = page.getByRole("group", { name: `As of ${middle.toISOString().slice(0, 19)}Z` });
    assert.equal(await asOf.getByTestId("amount-paid").locator("dd").textContent(), "25.00 USD");
  });

  it("shows access revoked after a refund", async () => {
    await api.operate("refunds", "u1", "c1", { amount: 5_000, reason: "course dropped" });
    await page.getByTestId("access-status").filter({ hasText: "REVOKED" }).waitFor({ timeout: REFRESH_WAIT_MS });
    assert.equal(await amount("paid").textContent(), "50.00 USD");
    await page.getByTestId("chain").filter({ hasText: "Chain verified: 4 entries" }).waitFor();
    // A statement of the last hour: not enrolled at its start, four
    // entries, 50.00 paid at its end.
    await page.getByLabel(/^From/).fill(inputTime(new Date(Date.now() - 3_600_000)));
    await page.getByLabel(/^To/).fill("");
    await page.getByRole("button", { name: "Show statement" }).click();
    const statement = page.getByTestId("statement");
    await statement.getByText("none, not enrolled yet").waitFor();
    await statement.getByText("Entries (4)").waitFor();
    assert.equal(await statement.getByTestId("ledger-row").count(), 4);
    const closing = statement.getByRole("group", { name: /^Closing balance at/ });
    assert.equal(await closing.getByTestId("amount-paid").locator("dd").textContent(), "50.00 USD");
    assert.equal(await closing.getByTestId("amount-refunded").locator("dd").textContent(), "50.00 USD");
    await shoot("enrollment");
  });

  it("retries and dismisses an intake exception", async () => {
    await api.enroll("u2", "c2", 5_000);
    const event = await paidCheckout({ eventId: "evt_overpaid", paymentIntent: "pi_overpaid", amount: 9_000, user: "u2", course: "c2" });
    const answer = await deliverStripe(server.url, event);
    assert.match(answer.exception, /^exc_/);
    await page.getByRole("link", { name: "Intake exceptions" }).click();
    const row = page.getByTestId("exception-row").filter({ hasText: answer.exception });
    await row.getByText("OVERPAYMENT").waitFor();
    await shoot("exceptions");
    await row.getByRole("button", { name: "Retry" }).click();
    await page.getByRole("status").filter({ hasText: "still OPEN" }).waitFor();
    await row.getByRole("button", { name: "Dismiss…" }).click();
    await row.getByRole("button", { name: "Dismiss", exact: true }).click();
    await row.getByRole("alert").filter({ hasText: "Give a reason" }).waitFor();
    await row.getByLabel(`Reason for dismissing ${answer.exception}`).fill(`refunded at Stripe ${XSS}`);
    await row.getByRole("button", { name: "Dismiss", exact: true }).click();
    await page.getByRole("status").filter({ hasText: "dismissed" }).waitFor();
    await page.getByText("No exception here.").waitFor();
    const stored = await api.expect(200, "GET", `/v1/intake/exceptions/${answer.exception}`);
    assert.equal(stored.exception.state, "DISMISSED");
    assert.equal(stored.exception.dismiss_reason, `refunded at Stripe ${XSS}`);
    await page.getByLabel("State").selectOption("DISMISSED");
    await page.getByText(`Dismissed: refunded at Stripe ${XSS}`).waitFor();
    assert.equal(await page.locator("img").count(), 0);
  });

  it("shows failed webhook deliveries and replays them", async () => {
    await page.getByRole("link", { name: "Webhooks" }).click();
    const button = page.getByRole("button", { name: /^Deliveries of wh_/ });
    await button.click();
    const deliveries = page.getByTestId("deliveries");
    await deliveries.locator("tbody tr").first().waitFor();
    await page.getByRole("button", { name: "Replay" }).click();
    await page.getByRole("status").filter({ hasText: "Replaying the events after position" }).waitFor();
    await shoot("webhooks");
  });

  it("runs the audit", async () => {
    await page.getByRole("link", { name: "Audit" }).click();
    await page.getByRole("button", { name: "Run the audit" }).click();
    await page.getByTestId("audit-result").getByText("No disagreement: 2 enrollments and 5 entries").waitFor();
    await shoot("audit");
  });

  it("downloads the period's entries as CSV", async () => {
    await page.getByRole("link", { name: "Export" }).click();
    await page.getByLabel(/^From/).fill(inputTime(new Date(Date.now() - 3_600_000)));
    await page.getByLabel(/^To/).fill("");
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download" }).click()]);
    assert.match(download.suggestedFilename(), /^bursar-export-.*\.csv$/);
    const [header, ...rows] = parseCsv(await readFile(await download.path(), "utf8"));
    for (const name of ["position", "user_id", "course_id", "seq", "kind", "amount", "reference", "amount_paid", "access_status"]) {
      assert.ok(header.includes(name), `${name} in ${header}`);
    }
    const records = rows.map((row) => Object.fromEntries(header.map((name, index) => [name, row[index]])));
    // In global order: u1/c1's enroll, payments and refund, then u2/c2's
    // enroll (its overpaying checkout was refused: no entry).
    assert.deepEqual(
      records.map((record) => [record.user_id, record.seq, record.kind, record.amount, record.access_status]),
      [
        ["u1", "1", "ENROLL", "10000", "LOCKED"],
        ["u1", "2", "PAYMENT", "2500", "LOCKED"],
        ["u1", "3", "PAYMENT", "7500", "GRANTED"],
        ["u1", "4", "REFUND", "5000", "REVOKED"],
        ["u2", "1", "ENROLL", "5000", "LOCKED"],
      ],
    );
    assert.equal(records[1].reference, XSS);
    await page.getByRole("status").filter({ hasText: "Downloaded" }).waitFor();
  });

  it("gives a reader token no action, and the server refuses it anyway", async () => {
    const reader = await api.expect(201, "POST", "/v1/tokens", { role: "reader" });
    const writer = await api.expect(201, "POST", "/v1/tokens", { role: "writer" });
    tokens.push(reader.token, writer.token);
    await signOut();
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, "signing out forgets the token");
    await signIn(reader.token);
    assert.equal(await page.getByTestId("role").textContent(), "reader");
    await page.getByText(reader.id).waitFor();
    await openEnrollment("u1", "c1");
    assert.equal(await amount("paid").textContent(), "50.00 USD");
    for (const [section, what] of [
      ["Intake exceptions", "Reading and resolving intake exceptions needs an admin token"],
      ["Webhooks", "Reading and replaying webhook endpoints needs an admin token"],
      ["Audit", "Running the audit needs an admin token"],
      ["Export", "Exporting the ledger needs an admin token"],
    ]) {
      await page.getByRole("link", { name: section, exact: true }).click();
      await page.getByText(what).waitFor();
      for (const action of ["Retry", "Dismiss…", "Replay", "Run the audit", "Download"]) {
        assert.equal(await page.getByRole("button", { name: action }).count(), 0, `${action} offered to a reader`);
      }
      if (section === "Intake exceptions") await shoot("reader");
    }
    // The server enforces the role whatever the page offers.
    const refused = await page.evaluate(
      async ([token]) => {
        const response = await fetch("/v1/audit", { headers: { Authorization: `Bearer ${token}` } });
        return [response.status, (await response.json()).error.code];
      },
      [reader.token],
    );
    assert.deepEqual(refused, [403, "FORBIDDEN"]);
    // A writer token may operate on enrollments, but not the admin sections.
    await signOut();
    await signIn(writer.token);
    assert.equal(await page.getByTestId("role").textContent(), "writer");
    await page.getByRole("link", { name: "Intake exceptions" }).click();
    await page.getByText("needs an admin token; you are signed in with a writer token").waitFor();
    assert.equal(await page.getByRole("button", { name: "Retry" }).count(), 0);
  });

  it("never put a token in a URL, fired no dialog and broke no policy", () => {
    for (const token of tokens) {
      assert.ok(!requestedUrls.some((url) => url.includes(token)), "a token appeared in a URL");
    }
    assert.ok(!requestedUrls.some((url) => !url.startsWith(server.url) && !url.startsWith("data:") && !url.startsWith("blob:")), "every request stays on the server");
    assert.deepEqual(dialogs, []);
    assert.deepEqual(problems, []);
  });
});
