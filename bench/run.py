#!/usr/bin/env python3
"""bursar's benchmarks, side by side, in one run on this machine.

Cases (each measured --runs times, interleaved, so noise spreads evenly):

  1. bursar, SQLite, 100 clients, one hot enrollment, one payment per request
  2. the same with --batch-size 8192 (POST /v1/batch)
  3. the same as 1 with 10,000 enrollments
  4. the plain approach bursar replaces: one SQLite transaction per payment
     (UPDATE ... SET amount_paid = amount_paid + ?, then INSERT into a
     payments table, synchronous=FULL) from 100 threads on one row
  5. bursar on PostgreSQL, 100 clients, one hot enrollment (skipped with
     --skip-postgres)
  7a/7b. case 1 on a server started by `webhook-sink` (bursar serve
     --webhooks-allow-private on a temporary SQLite file, a receiver that
     verifies every signature on this machine): 7a with no webhook
     endpoint, 7b with one endpoint registered that receives every event;
     load-test drives both (`webhook-sink --load-test`)
  6. bursar, SQLite, 100 clients, one hot enrollment, checkout flows: each
     a hold of a small amount then its capture (`load-test --holds
     --void-percent 0 --expire-percent 0`, so every flow is hold + capture
     and no run waits for expiry); its figure is flows/s, two requests each

Cases 1-3 run `bursar load-test --spawn` (a private `bursar serve` on a
temporary SQLite file, synchronous=FULL); the load generator and the server
share this machine's cores. Case 5 starts `bursar serve` on a fresh
PostgreSQL database and points `bursar load-test` at it.

Usage, from the repository root:

  cargo build --release -p bursar -p bursar-bench
  python3 bench/run.py [--duration 10] [--runs 3] [--postgres URL] [--skip-postgres] [--only 1,6]

It prints a Markdown table of medians (payments/s, p50, p99, server peak
RSS) with ratios, ready for BENCHMARKS.md, and every run's raw figures.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

BURSAR = "target/release/bursar"
BASELINE = "target/release/sqlite-baseline"
WEBHOOK_SINK = "target/release/webhook-sink"


def load_test(arguments, duration, clients=100):
    command = [BURSAR, "load-test", "--clients", str(clients), "--duration", str(duration), "--json"]
    output = subprocess.run(command + arguments, check=False, capture_output=True, text=True)
    if output.returncode != 0:
        sys.stderr.write(output.stderr)
        raise SystemExit(f"load-test failed: {' '.join(command + arguments)}")
    report = json.loads(output.stdout)
    return {
        "payments_per_second": report["throughput"]["acknowledged_payments_per_second"],
        "p50_ms": report["latency_ms"]["p50"],
        "p99_ms": report["latency_ms"]["p99"],
        "rss_mib": (report["server"].get("peak_rss_bytes") or 0) / 2**20,
        "verdict": report["verdict"]["ok"] if isinstance(report["verdict"], dict) else report["verdict"],
    }


def checkout_load_test(arguments, duration, clients=100):
    """A `load-test --holds` run; its "payments" are checkout flows."""
    command = [BURSAR, "load-test", "--holds", "--clients", str(clients), "--duration", str(duration), "--json"]
    output = subprocess.run(command + arguments, check=False, capture_output=True, text=True)
    if output.returncode != 0:
        sys.stderr.write(output.stderr)
        raise SystemExit(f"load-test failed: {' '.join(command + arguments)}")
    report = json.loads(output.stdout)
    return {
        "payments_per_second": report["throughput"]["checkout_flows_per_second"],
        "p50_ms": report["latency_ms"]["request"]["p50"],
        "p99_ms": report["latency_ms"]["request"]["p99"],
        "flow_p50_ms": report["latency_ms"]["flow"]["p50"],
        "rss_mib": (report["server"].get("peak_rss_bytes") or 0) / 2**20,
        "verdict": report["verdict"]["ok"],
    }


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
        "verdict": True,
    }


def psql(url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True, capture_output=True)


def postgres_case(server_url, duration):
    database = f"bench_bursar_{uuid.uuid4().hex[:10]}"
    psql(f"{server_url}/postgres", f"CREATE DATABASE {database}")
    token = uuid.uuid4().hex
    environment = dict(os.environ, BURSAR_ADMIN_TOKEN=token, BURSAR_LOG="warn")
    server = subprocess.Popen(
        [BURSAR, "serve", "--listen", "127.0.0.1:0", "--database", f"{server_url}/{database}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment,
    )
    try:
        address = None
        for line in server.stdout:
            if line.startswith("bursar listening on "):
                address = line.split()[-1]
                break
        if address is None:
            raise SystemExit("bursar serve on PostgreSQL did not start")
        result = load_test(["--url", address, "--token", token], duration)
        with open(f"/proc/{server.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    result["rss_mib"] = int(line.split()[1]) / 1024
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)
        psql(f"{server_url}/postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def webhook_case(duration, endpoint):
    """Case 1 on a server with (7b) or without (7a) one webhook endpoint."""
    command = [WEBHOOK_SINK, "--load-test", "--clients", "100", "--enrollments", "1",
               "--duration", str(int(duration)), "--bursar", BURSAR]
    if not endpoint:
        command.append("--no-webhook")
    output = subprocess.run(command, check=False, capture_output=True, text=True)
    if output.returncode != 0:
        sys.stderr.write(output.stderr)
        raise SystemExit(f"webhook-sink failed: {' '.join(command)}")
    report = json.loads(output.stdout)
    return {
        "payments_per_second": report["throughput"]["acknowledged_payments_per_second"],
        "p50_ms": report["latency_ms"]["p50"],
        "p99_ms": report["latency_ms"]["p99"],
        "rss_mib": None,
        "webhooks_during_run": report["webhook_events_during_run"],
        "verdict": (report["verdict"]["ok"] if isinstance(report["verdict"], dict) else report["verdict"])
                   and report["webhook_bad_signatures"] == 0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="measurements per case (default 3)")
    parser.add_argument("--postgres", default=os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--only", help="comma-separated case numbers to measure, e.g. 1,6 (default: all)")
    arguments = parser.parse_args()

    cases = [
        ("1. bursar SQLite, 100 clients, 1 hot enrollment, 1 payment/request",
         lambda: load_test(["--spawn"], arguments.duration)),
        ("2. bursar SQLite, 100 clients, 1 hot enrollment, 8,192 payments/request",
         lambda: load_test(["--spawn", "--batch-size", "8192"], arguments.duration)),
        ("3. bursar SQLite, 100 clients, 10,000 enrollments, 1 payment/request",
         lambda: load_test(["--spawn", "--enrollments", "10000"], arguments.duration)),
        ("4. plain SQLite, 1 transaction per payment, 100 threads, 1 row",
         lambda: sqlite_baseline(arguments.duration)),
    ]
    if not arguments.skip_postgres:
        cases.append(("5. bursar PostgreSQL, 100 clients, 1 hot enrollment, 1 payment/request",
                      lambda: postgres_case(arguments.postgres, arguments.duration)))
    cases.append(("6. bursar SQLite, 100 clients, 1 hot enrollment, checkout flows (hold + capture)",
                  lambda: checkout_load_test(["--spawn", "--void-percent", "0", "--expire-percent", "0"],
                                             arguments.duration)))
    cases.append(("7a. bursar SQLite, case 1 on webhook-sink's server, no webhook endpoint",
                  lambda: webhook_case(arguments.duration, False)))
    cases.append(("7b. bursar SQLite, case 1 on webhook-sink's server, one webhook endpoint receiving every event",
                  lambda: webhook_case(arguments.duration, True)))
    if arguments.only:
        wanted = {number.strip() for number in arguments.only.split(",")}
        cases = [case for case in cases if case[0].split(".")[0] in wanted]

    results = {name: [] for name, _ in cases}
    for run in range(arguments.runs):
        for name, measure in cases:
            result = measure()
            results[name].append(result)
            print(f"run {run + 1} {name}: {result['payments_per_second']:,.0f}/s "
                  f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms "
                  f"rss {result['rss_mib'] or 0:.0f} MiB verdict {result['verdict']}", file=sys.stderr)
            time.sleep(1)

    def median(name, field):
        values = [result[field] for result in results[name] if result[field] is not None]
        return statistics.median(values) if values else None

    def case_median(number):
        named = [name for name, _ in cases if name.startswith(f"{number}.")]
        return median(named[0], "payments_per_second") if named else None

    def median_of(label):
        named = [name for name, _ in cases if name.startswith(f"{label}.")]
        return median(named[0], "payments_per_second") if named else None

    case1 = case_median(1)
    baseline = case_median(4)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.node()}: {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"{arguments.runs} runs of {arguments.duration:g} s per case, medians\n")
    print("| case | payments/s (case 6: flows/s) | p50 ms | p99 ms | server peak RSS MiB | vs case 1 | vs plain SQLite | verdicts |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, _ in cases:
        throughput = median(name, "payments_per_second")
        rss = median(name, "rss_mib")
        verdicts = "all OK" if all(result["verdict"] for result in results[name]) else "FAILED"
        print(f"| {name} | {throughput:,.0f} | {median(name, 'p50_ms'):.2f} | {median(name, 'p99_ms'):.2f} | "
              f"{'' if rss is None else f'{rss:.0f}'} | {ratio(throughput, case1, 2)} | {ratio(throughput, baseline, 1)} | {verdicts} |")
    with_endpoint, without = median_of("7b"), median_of("7a")
    if with_endpoint and without:
        print(f"\n7b / 7a (one webhook endpoint against none): {with_endpoint / without:.2f}x")
    print("\nEvery run: " + json.dumps(results))


def ratio(value, reference, digits):
    return f"{value / reference:.{digits}f}x" if reference else ""



if __name__ == "__main__":
    main()
