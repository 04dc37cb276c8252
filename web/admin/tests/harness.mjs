// What the browser tests stand on: a real `bursar serve` (the binary in
// BURSAR_BIN) on a temporary SQLite file, calls to its API, Stripe events
// signed as Stripe signs them, and Debian's Chromium driven by
// playwright-core.

import { spawn } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const repository = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const STRIPE_SECRET = "whsec_YnJvd3NlciB0ZXN0cyBvZiB0aGUgYWRtaW4gcGFnZQ";
/** The longest the server may take to start. */
const SERVER_START_MS = 20_000;

/** Starts `bursar serve` on a free port with a fresh database. */
export async function startServer() {
  const bin = process.env.BURSAR_BIN;
  if (!bin) throw new Error("BURSAR_BIN must name the bursar binary (cargo build -p bursar)");
  const directory = await mkdtemp(join(tmpdir(), "bursar-admin-"));
  const adminToken = `admin-${randomUUID()}`;
  const child = spawn(
    bin,
    [
      "serve",
      "--listen", "127.0.0.1:0",
      "--database", `sqlite://${join(directory, "bursar.db")}`,
      "--stripe-webhook-secrets", STRIPE_SECRET,
      "--webhooks-allow-private",
    ],
    {
      env: { ...process.env, BURSAR_ADMIN_TOKEN: adminToken, BURSAR_LOG: "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let output = "";
  const url = await new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`bursar serve did not start:\n${output}`)), SERVER_START_MS);
    const read = (chunk) => {
      output += chunk;
      const match = /bursar listening on (http:\/\/\S+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[1]);
      }
    };
    child.stdout.setEncoding("utf8").on("data", read);
    child.stderr.setEncoding("utf8").on("data", read);
    child.on("exit", (code) => reject(new Error(`bursar serve exited (${code}):\n${output}`)));
  });
  const server = {
    url,
    adminToken,
    log: () => output,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((done) => child.once("exit", done));
        child.kill("SIGTERM");
        await exited;
      }
      await rm(directory, { recursive: true, force: true });
    },
  };
  server.api = (token = adminToken) => new ApiClient(url, token);
  return server;
}

export class ApiClient {
  constructor(url, token) {
    this.url = url;
    this.token = token;
  }

  async request(method, path, body, headers = {}) {
    const response = await fetch(this.url + path, {
      method,
      headers: {
        Authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      // Not JSON (an export): the text is returned.
    }
    return { status: response.status, body: json, text, headers: response.headers };
  }

  /** A request that must answer `status`; returns its JSON. */
  async expect(status, method, path, body, headers) {
    const answer = await this.request(method, path, body, headers);
    if (answer.status !== status) {
      throw new Error(`${method} ${path}: expected ${status}, got ${answer.status}: ${answer.text}`);
    }
    return answer.body;
  }

  enroll(user, course, price, currency = "USD") {
    return this.expect(201, "PUT", `/v1/users/${user}/courses/${course}`, { price, currency });
  }

  /** `kind` is `payments`, `refunds`, `credits` or `charges`. */
  operate(kind, user, course, body) {
    return this.expect(201, "POST", `/v1/users/${user}/courses/${course}/${kind}`, body, {
      "Idempotency-Key": randomUUID(),
    });
  }
}

async function fixture(name) {
  const path = join(repository, "crates", "bursar", "tests", "http", "fixtures", "stripe", `${name}.json`);
  return JSON.parse(await readFile(path, "utf8"));
}

/** A paid `checkout.session.completed` event for an enrollment, built from
 * Stripe's example objects as the Rust intake tests build theirs. */
export async function paidCheckout({ eventId, paymentIntent, amount, user, course }) {
  const now = Math.floor(Date.now() / 1000);
  const session = await fixture("checkout.session");
  Object.assign(session, {
    id: `cs_${eventId}`,
    payment_intent: paymentIntent,
    amount_total: amount,
    amount_subtotal: amount,
    currency: "usd",
    payment_status: "paid",
    status: "complete",
    created: now,
    metadata: { bursar_user_id: user, bursar_course_id: course },
  });
  const event = await fixture("event");
  Object.assign(event, { id: eventId, type: "checkout.session.completed", created: now });
  event.data.object = session;
  return event;
}

/** POSTs a Stripe event signed as Stripe signs: `t=<unix>,v1=<hex
 * HMAC-SHA256(secret, "{t}.{body}")>`. */
export async function deliverStripe(url, event, secret = STRIPE_SECRET) {
  const body = JSON.stringify(event);
  const timestamp = Math.floor(Date.now() / 1000);
  const signature = createHmac("sha256", secret).update(`${timestamp}.${body}`).digest("hex");
  const response = await fetch(`${url}/v1/intake/stripe`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Stripe-Signature": `t=${timestamp},v1=${signature}` },
    body,
  });
  const answer = await response.json();
  if (response.status !== 200) throw new Error(`intake answered ${response.status}: ${JSON.stringify(answer)}`);
  return answer;
}

/** A local port nothing listens on: deliveries to it are refused at once. */
export async function closedPort() {
  const server = createServer();
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address();
  await new Promise((done) => server.close(done));
  return port;
}

/** Debian's Chromium (or BURSAR_CHROMIUM), headless. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.BURSAR_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}
