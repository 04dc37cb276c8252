#!/usr/bin/env python3
"""bursar's benchmarks, side by side, in one run on this machine.

Every bursar case runs with events on: `webhook-sink --load-test` starts a
private `bursar serve --webhooks-allow-private` (a temporary SQLite file,
synchronous=FULL, or a fresh PostgreSQL database), registers one webhook
endpoint on a receiver on this machine that verifies every signature, and
drives `bursar load-test --url` against it. Each case is measured --runs
times, interleaved, so noise spreads evenly:

  0. the HTTP ceiling: case 1's server, router, auth, extractors and load
     generator, with payments answered by a made-up 201 of the same size and
     never recorded (`bursar serve --bench-http-ceiling`, a hidden flag for
     benchmarks only; its verdict fails by design)
  1. bursar, SQLite, 100 clients, one hot enrollment, one payment per request
  2. the same with batches of 8,192 (POST /v1/batch), 16 clients (load-test's
     default: clients x batch size within half the write queue)
  2b. case 2 over 10,000 enrollments
  3. case 1 over 10,000 enrollments
  4. the plain approach bursar replaces: one SQLite transaction per payment
     (UPDATE ... SET amount_paid = amount_paid + ?, then INSERT into a
     payments table, synchronous=FULL) from 100 threads on one row; no HTTP,
     no events
  5. bursar on PostgreSQL, 100 clients, one hot enrollment (skipped with
     --skip-postgres)
  5b. bursar on PostgreSQL, batches of 8,192, 16 clients
  6. checkout flows: each a hold of a small amount then its capture
     (`load-test --holds --void-percent 0 --expire-percent 0`); its figure
     is flows/s, two requests each
  7a. case 1 with no webhook endpoint registered: what events cost

For the SQLite cases the table also shows the database's bytes per ledger
entry after a clean stop and a truncating checkpoint, and every case the
server's peak RSS (VmHWM).

Two measurements of a large ledger (with --only start,audit, or with all):

  start: `bursar serve` on a database of 10,000,000 ledger entries over 100
     enrollments, from exec to "bursar listening" (the database opened and
     migrated, the tokens loaded, the writer started); the database is made
     by `store-writer` (the store's own batch path, no HTTP) on this build
  audit: `bursar audit` of 1,000,000 entries over 100 enrollments

Usage, from the repository root:

  cargo build --release -p bursar -p bursar-bench
  python3 bench/run.py [--duration 10] [--runs 3] [--postgres URL] [--skip-postgres]
                       [--only 0,1,2,2b,start,audit] [--target DIR]

It prints a Markdown table of medians (payments/s, p50, p99, server peak
RSS, bytes per entry) with ratios, ready for BENCHMARKS.md, and every run's
raw figures.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

TARGET = os.environ.get("CARGO_TARGET_DIR", "target")
BURSAR = f"{TARGET}/release/bursar"
BASELINE = f"{TARGET}/release/sqlite-baseline"
WEBHOOK_SINK = f"{TARGET}/release/webhook-sink"
STORE_WRITER = f"{TARGET}/release/store-writer"

BATCH_SIZE = 8192
BATCH_CLIENTS = 16


def set_target(directory):
    """Measure the binaries in `directory`/release from now on."""
    global BURSAR, BASELINE, WEBHOOK_SINK, STORE_WRITER
    BURSAR = f"{directory}/release/bursar"
    BASELINE = f"{directory}/release/sqlite-baseline"
    WEBHOOK_SINK = f"{directory}/release/webhook-sink"
    STORE_WRITER = f"{directory}/release/store-writer"


def on_target(directory, measure):
    """`measure`, run with the binaries of `directory` (None: the --target)."""
    def run():
        saved = (BURSAR, BASELINE, WEBHOOK_SINK, STORE_WRITER)
        if directory:
            set_target(directory)
        try:
            return measure()
        finally:
            set_binaries(saved)
    return run


def set_binaries(binaries):
    global BURSAR, BASELINE, WEBHOOK_SINK, STORE_WRITER
    BURSAR, BASELINE, WEBHOOK_SINK, STORE_WRITER = binaries


def sqlite_baseline(duration, threads=100):
    with tempfile.TemporaryDirectory() as directory:
        output = subprocess.run(
            [BASELINE, os.path.join(directory, "baseline.db"), str(threads), str(duration)],
            check=True, capture_output=True, text=True,
        )
    report = json.loads(output.stdout)
    return {
        "payments_per_second": report["payments_per_second"],
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "rss_mib": None,
        "bytes_per_entry": None,
        "verdict": True,
    }


def psql(url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True, capture_output=True)


def served_case(duration, clients=100, enrollments=1, load_test=(), endpoint=True, ceiling=False,
                postgres=None, holds=False):
    """One load-test run through webhook-sink: a private server with one
    webhook endpoint (unless endpoint is False) on a temporary SQLite file or
    a fresh PostgreSQL database on `postgres`."""
    database = None
    if postgres:
        name = f"bench_bursar_{uuid.uuid4().hex[:10]}"
        psql(f"{postgres}/postgres", f"CREATE DATABASE {name}")
        database = f"{postgres}/{name}"
    command = [WEBHOOK_SINK, "--load-test", "--clients", str(clients), "--enrollments", str(enrollments),
               "--duration", str(int(duration)), "--bursar", BURSAR]
    if not endpoint:
        command.append("--no-webhook")
    if ceiling:
        command.append("--ceiling")
    if database:
        command += ["--database", database]
    if load_test:
        command += ["--", *load_test]
    try:
        output = subprocess.run(command, check=False, capture_output=True, text=True)
    finally:
        if postgres:
            psql(f"{postgres}/postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    if output.returncode != 0:
        sys.stderr.write(output.stderr)
        raise SystemExit(f"webhook-sink failed: {' '.join(command)}")
    report = json.loads(output.stdout)
    verdict = report["verdict"]["ok"] if isinstance(report["verdict"], dict) else report["verdict"]
    if holds:
        throughput = report["throughput"]["checkout_flows_per_second"]
        latency = report["latency_ms"]["request"]
    else:
        throughput = report["throughput"]["acknowledged_payments_per_second"]
        latency = report["latency_ms"]
    entries = report.get("ledger_entries")
    return {
        "payments_per_second": throughput,
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "rss_mib": (report.get("server_peak_rss_bytes") or 0) / 2**20 or None,
        # The ceiling's file holds its enrollments only.
        "bytes_per_entry": report["database_bytes"] / entries if entries and not ceiling else None,
        "webhooks_during_run": report["webhook_events_during_run"],
        # The ceiling records nothing: its verdict fails by design.
        "verdict": True if ceiling else verdict and report["webhook_bad_signatures"] == 0,
    }


def make_ledger(path, entries, enrollments):
    """A SQLite database of `entries` payments over `enrollments`, made by
    store-writer through the store's batch path in batches of 8,192."""
    batches = max(1, round(entries / BATCH_SIZE))
    started = time.monotonic()
    output = subprocess.run([STORE_WRITER, f"sqlite://{path}", str(batches), str(BATCH_SIZE), str(enrollments)],
                            check=True, capture_output=True, text=True)
    made = json.loads(output.stdout)
    print(f"made {made['operations']:,} entries over {enrollments} enrollments in "
          f"{time.monotonic() - started:.0f} s ({made['operations_per_second']:,.0f}/s): {path}", file=sys.stderr)
    return made["operations"]


def start_time(path):
    """Seconds from exec of `bursar serve` on `path` to "bursar listening"."""
    environment = dict(os.environ, BURSAR_ADMIN_TOKEN=uuid.uuid4().hex, BURSAR_LOG="warn")
    started = time.monotonic()
    server = subprocess.Popen([BURSAR, "serve", "--listen", "127.0.0.1:0", "--database", f"sqlite://{path}"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment)
    try:
        for line in server.stdout:
            if line.startswith("bursar listening on "):
                return time.monotonic() - started
        raise SystemExit("bursar serve did not start")
    finally:
        server.terminate()
        server.wait(timeout=60)


def audit_time(path):
    started = time.monotonic()
    output = subprocess.run([BURSAR, "audit", "--database", f"sqlite://{path}", "--json"],
                            check=False, capture_output=True, text=True)
    seconds = time.monotonic() - started
    report = json.loads(output.stdout)
    if output.returncode != 0 or not report.get("ok"):
        raise SystemExit(f"the audit failed: {output.stdout[:2000]} {output.stderr[-2000:]}")
    return seconds, report["entries"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="measurements per case (default 3)")
    parser.add_argument("--postgres", default=os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--only", help="comma-separated cases to measure, e.g. 0,1,2b,start (default: all)")
    parser.add_argument("--target", help="the cargo target directory holding release/ (default: $CARGO_TARGET_DIR or target)")
    parser.add_argument("--baseline", help="another target directory whose release binaries are measured "
                        "too, each case right after the --target's, labelled 'before'")
    parser.add_argument("--scratch", default=tempfile.gettempdir(),
                        help="where the large ledgers of start and audit are made (about 10 GB)")
    arguments = parser.parse_args()
    if arguments.target:
        set_target(arguments.target)
    duration = arguments.duration
    postgres = arguments.postgres

    cases = [
        ("0. HTTP ceiling: case 1 with payments answered unrecorded",
         lambda: served_case(duration, ceiling=True)),
        ("1. bursar SQLite, 100 clients, 1 hot enrollment, 1 payment/request",
         lambda: served_case(duration)),
        ("2. bursar SQLite, 16 clients, 1 hot enrollment, 8,192 payments/request",
         lambda: served_case(duration, clients=BATCH_CLIENTS, load_test=["--batch-size", str(BATCH_SIZE)])),
        ("2b. bursar SQLite, 16 clients, 10,000 enrollments, 8,192 payments/request",
         lambda: served_case(duration, clients=BATCH_CLIENTS, enrollments=10_000,
                             load_test=["--batch-size", str(BATCH_SIZE)])),
        ("3. bursar SQLite, 100 clients, 10,000 enrollments, 1 payment/request",
         lambda: served_case(duration, enrollments=10_000)),
        ("4. plain SQLite, 1 transaction per payment, 100 threads, 1 row",
         lambda: sqlite_baseline(duration)),
    ]
    if not arguments.skip_postgres:
        cases.append(("5. bursar PostgreSQL, 100 clients, 1 hot enrollment, 1 payment/request",
                      lambda: served_case(duration, postgres=postgres)))
        cases.append(("5b. bursar PostgreSQL, 16 clients, 1 hot enrollment, 8,192 payments/request",
                      lambda: served_case(duration, clients=BATCH_CLIENTS, postgres=postgres,
                                          load_test=["--batch-size", str(BATCH_SIZE)])))
    cases.append(("6. bursar SQLite, 100 clients, 1 hot enrollment, checkout flows (hold + capture)",
                  lambda: served_case(duration, holds=True,
                                      load_test=["--holds", "--void-percent", "0", "--expire-percent", "0"])))
    cases.append(("7a. case 1 with no webhook endpoint",
                  lambda: served_case(duration, endpoint=False)))
    wanted = {number.strip() for number in arguments.only.split(",")} if arguments.only else None
    if wanted is not None:
        cases = [case for case in cases if case[0].split(".")[0] in wanted]
    if arguments.baseline:
        cases = [pair for name, measure in cases
                 for pair in ((f"{name.split('.')[0]}-before. {name.split('. ', 1)[1]}",
                               on_target(arguments.baseline, measure)), (name, measure))]

    results = {name: [] for name, _ in cases}
    for run in range(arguments.runs):
        for name, measure in cases:
            result = measure()
            results[name].append(result)
            print(f"run {run + 1} {name}: {result['payments_per_second']:,.0f}/s "
                  f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms "
                  f"rss {result['rss_mib'] or 0:.0f} MiB bytes/entry {result['bytes_per_entry'] or 0:.0f} "
                  f"verdict {result['verdict']}", file=sys.stderr)
            time.sleep(1)

    def median(name, field):
        values = [result[field] for result in results[name] if result[field] is not None]
        return statistics.median(values) if values else None

    def median_of(label):
        named = [name for name, _ in cases if name.startswith(f"{label}.")]
        return median(named[0], "payments_per_second") if named else None

    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"{arguments.runs} runs of {duration:g} s per case, medians\n")
    if cases:
        case1, case0, baseline = median_of("1"), median_of("0"), median_of("4")
        print("| case | payments/s (case 6: flows/s) | p50 ms | p99 ms | server peak RSS MiB | bytes/entry | vs case 1 | vs case 0 | vs plain SQLite | verdicts |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for name, _ in cases:
            throughput = median(name, "payments_per_second")
            rss = median(name, "rss_mib")
            size = median(name, "bytes_per_entry")
            verdicts = "all OK" if all(result["verdict"] for result in results[name]) else "FAILED"
            if name.startswith("0."):
                verdicts = "n/a (nothing recorded)"
            print(f"| {name} | {throughput:,.0f} | {median(name, 'p50_ms'):.2f} | {median(name, 'p99_ms'):.2f} | "
                  f"{'' if rss is None else f'{rss:.0f}'} | {'' if size is None else f'{size:.0f}'} | "
                  f"{ratio(throughput, case1, 2)} | {ratio(throughput, case0, 2)} | {ratio(throughput, baseline, 1)} | {verdicts} |")
        for label, over, under in (("3 / 1", "3", "1"), ("1 / 0", "1", "0"), ("2b / 2", "2b", "2"),
                                   ("1 / 7a (events on / off)", "1", "7a"), ("5b / 5", "5b", "5")):
            if median_of(over) and median_of(under):
                print(f"{label}: {median_of(over) / median_of(under):.2f}x")
            if median_of(f"{over}-before") and median_of(f"{under}-before"):
                print(f"{label} before: {median_of(f'{over}-before') / median_of(f'{under}-before'):.2f}x")
        for name, _ in cases:
            label = name.split(".")[0]
            if median_of(f"{label}-before"):
                print(f"case {label} after / before: {median_of(label) / median_of(f'{label}-before'):.2f}x")

    large = {}
    if wanted is None or "start" in wanted or "audit" in wanted:
        scratch = tempfile.mkdtemp(prefix="bursar-bench-", dir=arguments.scratch)
        try:
            targets = [("", None)] + ([("before ", arguments.baseline)] if arguments.baseline else [])
            for label, directory in targets:
                if wanted is None or "audit" in wanted:
                    path = os.path.join(scratch, "audit.db")
                    on_target(directory, lambda: make_ledger(path, 1_000_000, 100))()
                    timings = [on_target(directory, lambda: audit_time(path))() for _ in range(arguments.runs)]
                    large[f"{label}audit"] = timings
                    print(f"{label}audit of {timings[0][1]:,} entries over 100 enrollments: median "
                          f"{statistics.median(t[0] for t in timings):.2f} s ({', '.join(f'{t[0]:.2f}' for t in timings)})")
                    os.remove(path)
                if wanted is None or "start" in wanted:
                    path = os.path.join(scratch, "start.db")
                    made = on_target(directory, lambda: make_ledger(path, 10_000_000, 100))()
                    print(f"{label}database of {made:,} entries: {os.path.getsize(path) / 1e9:.2f} GB "
                          f"({os.path.getsize(path) / made:.0f} bytes/entry)")
                    timings = [on_target(directory, lambda: start_time(path))() for _ in range(arguments.runs)]
                    large[f"{label}start"] = timings
                    print(f"{label}bursar serve start on {made:,} entries: median {statistics.median(timings):.2f} s "
                          f"({', '.join(f'{t:.2f}' for t in timings)})")
                    os.remove(path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\nEvery run: " + json.dumps({"cases": results, "large": large}))


def ratio(value, reference, digits):
    return f"{value / reference:.{digits}f}x" if reference and value else ""


if __name__ == "__main__":
    main()
