#!/usr/bin/env python3
"""Instructions per payment of a whole `bursar serve` answering POST /v1/batch,
counted by callgrind.

Starts the release `bursar serve` (a temporary SQLite file, no webhook
endpoint) under `valgrind --tool=callgrind`, sends it batches of 1,024 payments in
`summary` detail (the body `bursar load-test --batch-size` sends: ids like
load-test's, keys of about 25 characters), one request at a time, and stops
it with SIGTERM. Run twice, with a small and a large number of batches, the
difference in instructions divided by the difference in payments is what
one payment costs the server: reading and parsing the body, the writer, the
response. As in `callgrind.py`, the software SHA-256 valgrind runs instead
of SHA-NI is shown apart.

Usage, from the repository root, after `cargo build --release -p bursar`:

  python3 bench/callgrind_http.py [--target DIR] [--only 1024x1,1024x10000]
"""

import http.client
import json
import os
import signal
import subprocess
import tempfile
import uuid

from callgrind import command_line, counted

# (label, batch size, enrollments, batches in the short run, batches in the long run)
# Batches of 1,024, not 8,192: under valgrind a batch of 8,192 takes longer
# than the server's 10 s request timeout.
CONFIGURATIONS = [
    ("1024x1", 1024, 1, 2, 6),
    ("1024x10000", 1024, 10_000, 2, 6),
]

TOKEN = uuid.uuid4().hex


def post(connection, body):
    connection.request("POST", "/v1/batch", body=body,
                       headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    response = connection.getresponse()
    text = response.read()
    if response.status != 200:
        raise SystemExit(f"/v1/batch answered {response.status}: {text[:500]!r}")
    return json.loads(text)


def user(index):
    return f"lt0123456789-student-{index}"


def enroll_body(first, count):
    operations = [{"user_id": user(index), "course_id": "lt-course", "kind": "enroll",
                   "body": {"currency": "USD", "price": 1_000_000_000_000}} for index in range(first, first + count)]
    return json.dumps({"operations": operations, "detail": "summary"})


def payment_body(batch, batch_size, enrollments):
    operations = []
    for offset in range(batch_size):
        number = batch * batch_size + offset
        operations.append({"user_id": user(number % enrollments), "course_id": "lt-course", "kind": "payment",
                           "idempotency_key": f"lt0123456789-{number:012d}", "body": {"amount": 1}})
    return json.dumps({"operations": operations, "detail": "summary"}, separators=(",", ":"))


def instructions(bursar, batches, batch_size, enrollments):
    """All instructions of one server run, and those in the software SHA-256."""
    with tempfile.TemporaryDirectory() as directory:
        bodies = [payment_body(batch, batch_size, enrollments) for batch in range(batches)]
        environment = dict(os.environ, BURSAR_ADMIN_TOKEN=TOKEN, BURSAR_LOG="warn")
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/out",
             bursar, "serve", "--listen", "127.0.0.1:0", "--database", f"sqlite://{directory}/cg.db"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        try:
            address = None
            for line in server.stdout:
                if line.startswith("bursar listening on http://"):
                    address = line.split("http://", 1)[1].strip()
                    break
            if address is None:
                raise SystemExit(f"bursar serve did not start: {server.stderr.read()[-2000:]}")
            host, port = address.rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port), timeout=600)
            for first in range(0, enrollments, batch_size):
                post(connection, enroll_body(first, min(batch_size, enrollments - first)))
            for body in bodies:
                results = post(connection, body)["results"]
                if any(result["status"] != 201 for result in results):
                    raise SystemExit("a payment was not accepted")
            connection.close()
            server.send_signal(signal.SIGTERM)
            _, errors = server.communicate(timeout=600)
        finally:
            # A run that failed leaves no server behind under valgrind.
            if server.poll() is None:
                server.kill()
                server.wait()
        return counted(errors, f"{directory}/out")


def main():
    command_line(__doc__, CONFIGURATIONS, "bursar", instructions, "server instructions per payment")

if __name__ == "__main__":
    main()
