// A real `bursar serve` for the tests: the binary of `$BURSAR_BIN`, a SQLite
// file in a fresh temporary directory, the admin token in
// `BURSAR_ADMIN_TOKEN`, and a port of its own choosing (or a given one, to
// come back on the same port after a stop).

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { BursarClient, type ClientOptions } from "../src/index.js";

/** clients/typescript, from dist/test where the tests run. */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

export const ADMIN_TOKEN = "test-admin-token-typescript-client";

/** How long a server may take to say it listens, on a busy machine. */
const START_DEADLINE_MS = 60_000;

/**
 * Why the tests that need a server cannot run, or `undefined` when they can.
 * Without `BURSAR_BIN` they are skipped, except under `CI=true`, where they
 * fail.
 */
export function serverUnavailable(): string | undefined {
  if (process.env.BURSAR_BIN !== undefined && process.env.BURSAR_BIN !== "") {
    return undefined;
  }
  if (process.env.CI === "true") {
    throw new Error("BURSAR_BIN must name the bursar binary under CI=true");
  }
  return "BURSAR_BIN is not set (cargo test sets it; or BURSAR_BIN=target/debug/bursar npm test)";
}

export class Server {
  private constructor(
    private child: ChildProcess,
    readonly baseUrl: string,
    readonly port: number,
    readonly directory: string,
    readonly databasePath: string,
  ) {}

  /** Starts a server on a new database, or on `reuse`'s database and port. */
  static async start(reuse?: { directory: string; port: number }): Promise<Server> {
    const binary = process.env.BURSAR_BIN;
    if (binary === undefined || binary === "") {
      throw new Error("BURSAR_BIN is not set");
    }
    const directory = reuse?.directory ?? mkdtempSync(join(tmpdir(), "bursar-ts-"));
    const databasePath = join(directory, "bursar.db");
    const env: Record<string, string> = {};
    for (const [name, value] of Object.entries(process.env)) {
      if (!name.startsWith("BURSAR_") && value !== undefined) {
        env[name] = value;
      }
    }
    env.BURSAR_ADMIN_TOKEN = ADMIN_TOKEN;
    const log = openSync(join(directory, "serve.log"), "a");
    const child = spawn(
      binary,
      ["serve", "--listen", `127.0.0.1:${reuse?.port ?? 0}`, "--database", `sqlite://${databasePath}`],
      { env, stdio: ["ignore", "pipe", log] },
    );
    closeSync(log);
    const baseUrl = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`bursar serve did not listen within ${START_DEADLINE_MS} ms`)), START_DEADLINE_MS);
      const lines = createInterface({ input: child.stdout! });
      lines.on("line", (line) => {
        const address = /^bursar listening on (http:\/\/\S+)/.exec(line)?.[1];
        if (address !== undefined) {
          clearTimeout(timer);
          resolve(address);
        }
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        const text = readFileSync(join(directory, "serve.log"), "utf8");
        reject(new Error(`bursar serve exited (${code ?? signal}) before listening:\n${text}`));
      });
    });
    const port = Number(new URL(baseUrl).port);
    return new Server(child, baseUrl, port, directory, databasePath);
  }

  /** A client of this server with the admin token; `options` override the rest. */
  client(options: Partial<ClientOptions> = {}): BursarClient {
    return new BursarClient({ baseUrl: this.baseUrl, token: ADMIN_TOKEN, ...options });
  }

  /** SIGTERM, and the process's exit: requests in flight finish, the queue drains. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) {
      return;
    }
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.kill("SIGTERM");
    await exited;
  }

  /** What the server logged so far. */
  log(): string {
    return readFileSync(join(this.directory, "serve.log"), "utf8");
  }
}

/** A GET with the admin token, outside the client: what the test checks against. */
export async function getJson(server: Server, path: string): Promise<unknown> {
  const response = await fetch(`${server.baseUrl}${path}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  if (!response.ok) {
    throw new Error(`GET ${path}: ${response.status} ${await response.text()}`);
  }
  return response.json();
}
