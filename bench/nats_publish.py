#!/usr/bin/env python3
"""How fast `bursar serve --events-nats` publishes a backlog to NATS JetStream.

A backlog of events is written first with no publisher (one enrollment,
then --batches full `POST /v1/batch` of 8,192 payments: one event each).
Then, --runs times, `bursar serve` starts with --events-nats and a stream of
its own (so each run publishes the whole backlog from position 0), and the
script polls /metrics until `bursar_events_publisher_position` reaches the
last event. The figure is events acknowledged by JetStream per second, from
the moment the server printed its listening line (connecting to NATS and
creating the stream included) to the moment the last ack was counted.

Usage, from the repository root, with a NATS server (`nats-server -js`):

  cargo build --release -p bursar
  python3 bench/nats_publish.py [--nats nats://127.0.0.1:4222] [--batches 13] [--runs 3]
      [--database postgres://USER@HOST/DATABASE]

Without --database it uses a SQLite file in a temporary directory; a
PostgreSQL database is created if missing (use a fresh one: it is left in
place). Each run's stream is deleted afterwards.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

BURSAR = "target/release/bursar"
TOKEN = "bench-admin-token-0123456789"
BATCH = 8192


def start(database, extra, log):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURSAR_")}
    env["BURSAR_ADMIN_TOKEN"] = TOKEN
    process = subprocess.Popen(
        [BURSAR, "serve", "--listen", "127.0.0.1:0", "--database", database] + extra,
        stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    for line in process.stdout:
        if line.startswith("bursar listening on "):
            return process, line.split()[-1], time.monotonic()
    raise SystemExit("bursar serve did not start")


def request(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as response:
        return response.read().decode()


def stop(process):
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def metric(base, name):
    for line in request("GET", f"{base}/metrics").splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    return None


def delete_stream(nats, stream):
    """Deletes a stream with the plain NATS protocol (no client needed)."""
    host, port = nats.split("://")[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.recv(4096)  # INFO
        connection.sendall(
            b'CONNECT {"verbose":false,"pedantic":false}\r\n'
            + f"PUB $JS.API.STREAM.DELETE.{stream} 0\r\n\r\nPING\r\n".encode())
        received = b""
        while b"PONG" not in received:
            received += connection.recv(4096)


def main():
    global BURSAR
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--batches", type=int, default=13)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database")
    parser.add_argument("--bursar", default=BURSAR, help="the bursar binary")
    arguments = parser.parse_args()
    BURSAR = arguments.bursar

    with tempfile.TemporaryDirectory() as directory:
        database = arguments.database or f"sqlite://{directory}/bench.db"
        log = open(os.path.join(directory, "serve.log"), "w")
        # `serve` never creates a PostgreSQL database; `migrate` does.
        subprocess.run([BURSAR, "migrate", "--database", database], check=True,
                       stdout=subprocess.DEVNULL)
        loader, base, _ = start(database, [], log)
        request("PUT", f"{base}/v1/users/u1/courses/c1", {"currency": "USD", "price": 10**12})
        for batch in range(arguments.batches):
            operations = [{"user_id": "u1", "course_id": "c1", "kind": "payment",
                           "idempotency_key": f"bench-{batch}-{n}", "body": {"amount": 1}}
                          for n in range(BATCH)]
            request("POST", f"{base}/v1/batch", {"operations": operations, "detail": "summary"})
        # The enrollment's event, then one per payment.
        last = 1 + arguments.batches * BATCH
        stop(loader)

        rates = []
        for run in range(arguments.runs):
            stream = f"BENCH_{os.getpid()}_{run}"
            prefix = f"bench{os.getpid()}r{run}.events"
            server, base, started = start(database, [
                "--events-nats", arguments.nats, "--events-nats-stream", stream,
                "--events-nats-subject-prefix", prefix], log)
            while (metric(base, "bursar_events_publisher_position") or 0) < last:
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            stop(server)
            delete_stream(arguments.nats, stream)
            rates.append(last / elapsed)
            print(f"run {run + 1}: {last} events in {elapsed:.2f} s: {last / elapsed:,.0f} events/s")
        print(f"median: {statistics.median(rates):,.0f} events/s "
              f"({last} events, {'PostgreSQL' if arguments.database else 'SQLite'})")


if __name__ == "__main__":
    main()
