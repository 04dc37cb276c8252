// Retries through real outages of a real `bursar serve`: its database file
// moved away under it (503 STORAGE_UNAVAILABLE after the payment committed,
// then the same key replays it), and the server stopped and started again on
// the same port and file while a payment is being retried.

import assert from "node:assert/strict";
import { renameSync } from "node:fs";
import { test } from "node:test";
import type { RetryReason } from "../src/index.js";
import { Server, serverUnavailable } from "./server.js";

const skip = serverUnavailable();

test("a 503 is retried with the same key, and the retry finds the payment the 503 hid", { skip }, async () => {
  const server = await Server.start();
  try {
    const client = server.client();
    const enrolled = await client.enroll("u1", "c1", { currency: "USD", price: 10_000 });
    assert.equal(enrolled.kind, "succeeded");
    // The database file is moved away: the next batch commits into the
    // file the server holds open, finds the path no longer names it, and
    // answers 503 STORAGE_UNAVAILABLE instead of acknowledging. The payment
    // is in the file all the same; only a retry with its key can tell.
    const moved = `${server.databasePath}.moved`;
    renameSync(server.databasePath, moved);
    const retries: RetryReason[] = [];
    const retrying = server.client({
      onRetry: ({ reason }) => {
        retries.push(reason);
        if (retries.length === 1) {
          // Put the file back before the retry (at least the 1 s of
          // Retry-After later): writes resume, and the key is found.
          renameSync(moved, server.databasePath);
        }
      },
    });
    const outcome = await retrying.payment("u1", "c1", { amount: 2_500 }, { idempotencyKey: "order-503" });
    assert.deepEqual(retries, [{ kind: "unavailable", status: 503, code: "STORAGE_UNAVAILABLE" }], server.log());
    assert.equal(outcome.kind, "succeeded", JSON.stringify(outcome));
    assert.ok(outcome.kind === "succeeded");
    assert.equal(outcome.attempts, 2);
    assert.equal(outcome.replayed, true, "the first attempt had committed it");
    assert.equal(outcome.body.enrollment.amount_paid, 2_500);
    const ledger = await client.ledger("u1", "c1");
    assert.ok(ledger.kind === "succeeded");
    assert.deepEqual(
      ledger.body.entries.map((entry) => entry.kind),
      ["ENROLL", "PAYMENT"],
    );
  } finally {
    await server.stop();
  }
});

test("a payment retried while the server restarts on the same port is applied once", { skip }, async () => {
  const first = await Server.start();
  let second: Server | undefined;
  try {
    const client = first.client({ retryPolicy: { attemptsMax: 100, elapsedMaxMs: 60_000 } });
    const enrolled = await client.enroll("u1", "c1", { currency: "USD", price: 10_000 });
    assert.equal(enrolled.kind, "succeeded");
    await first.stop();
    const retries: RetryReason[] = [];
    let restarting: Promise<Server> | undefined;
    const restartingClient = first.client({
      retryPolicy: { attemptsMax: 100, elapsedMaxMs: 60_000 },
      onRetry: ({ reason }) => {
        retries.push(reason);
        // The server comes back, on the same port and file, while the
        // client is between its attempts.
        restarting ??= Server.start({ directory: first.directory, port: first.port });
      },
    });
    const outcome = await restartingClient.payment("u1", "c1", { amount: 2_500 }, { idempotencyKey: "order-restart" });
    second = await restarting;
    assert.ok(second !== undefined && retries.length >= 1);
    assert.ok(
      retries.every((reason) => reason.kind === "connection"),
      JSON.stringify(retries),
    );
    assert.equal(outcome.kind, "succeeded", JSON.stringify(outcome));
    assert.ok(outcome.kind === "succeeded");
    assert.equal(outcome.replayed, false);
    assert.equal(outcome.body.enrollment.amount_paid, 2_500);
    // The same key once more, as a caller that never saw the answer would
    // send it: a replay.
    const again = await second.client().payment("u1", "c1", { amount: 2_500 }, { idempotencyKey: "order-restart" });
    assert.ok(again.kind === "succeeded" && again.replayed);
    const enrollment = await second.client().getEnrollment("u1", "c1");
    assert.ok(enrollment.kind === "succeeded");
    assert.equal(enrollment.body.amount_paid, 2_500);
  } finally {
    await first.stop();
    await second?.stop();
  }
});
