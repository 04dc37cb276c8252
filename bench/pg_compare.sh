#!/usr/bin/env bash
# PostgreSQL: bursar against one transaction per payment, on one server.
#
# What it measures, in one run on one PostgreSQL instance:
#
#   (a) the plain approach: every payment is its own transaction,
#         BEGIN;
#         UPDATE enrollments SET amount_paid = amount_paid + :x,
#                                amount_due = amount_due - :x
#          WHERE id = 1 AND amount_due >= :x;
#         INSERT INTO payments (enrollment_id, amount, idempotency_key) …;
#         COMMIT;
#       run by pgbench with CLIENTS clients (100 by default) on one row, for
#       DURATION seconds, with synchronous_commit=on. Throughput is pgbench's
#       own "tps"; p50 and p99 come from its per-transaction log (-l).
#   (b) bursar on the same server, in a database of its own: one
#       `bursar serve` process, and `bursar load-test` with CLIENTS
#       concurrent HTTP clients paying into one enrollment for DURATION
#       seconds. Throughput is acknowledged payments per second; p50 and p99
#       are the HTTP request latencies the load tester measured.
#
# Both run on the same machine as the server and the load generators, so
# the figures are for the whole machine, not for PostgreSQL alone. Each run
# creates fresh databases (bench_pgbench_*, bench_bursar_*) and drops them
# afterwards; nothing else on the server is touched.
#
# Run it from the repository root after a release build:
#
#   cargo build --release -p bursar
#   bench/pg_compare.sh [--postgres URL] [--duration SECONDS] [--clients N]
#                       [--runs N] [--bursar PATH] [--perf FILE] [--keep DIR]
#
#   --postgres  the server, as postgres://USER@HOST:PORT (default
#               postgres://postgres@127.0.0.1:5432, or $BENCH_POSTGRES_URL);
#               the user must be allowed to create databases
#   --duration  seconds each measurement lasts (default 30)
#   --clients   concurrent clients on both sides (default 100)
#   --runs      how many times to measure both, alternating (default 1); the
#               table shows every run and the medians
#   --bursar    the bursar binary (default target/release/bursar)
#   --perf      record a perf profile of `bursar serve` during the last run
#               of (b) into FILE (needs perf)
#   --keep      copy every raw output (pgbench's output and per-transaction
#               logs, the load tester's JSON reports, the server logs) into
#               the directory DIR
#
# Needs psql, pgbench, python3 and curl. The server must allow CLIENTS
# connections on top of what else is connected (max_connections).

set -euo pipefail

postgres_url=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
duration=30
clients=100
runs=1
bursar=target/release/bursar
perf_output=""
keep_dir=""

usage() {
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --postgres) postgres_url=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --bursar) bursar=$2; shift 2 ;;
        --perf) perf_output=$2; shift 2 ;;
        --keep) keep_dir=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done

fail() {
    echo "pg_compare: $*" >&2
    exit 1
}

for tool in psql pgbench python3 curl; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[[ -x $bursar ]] || fail "no bursar binary at $bursar (run: cargo build --release -p bursar)"
"$bursar" load-test --help >/dev/null 2>&1 || fail "$bursar has no load-test command"
[[ -z $perf_output ]] || command -v perf >/dev/null || fail "perf is not installed"
[[ $duration =~ ^[0-9]+$ && $clients =~ ^[0-9]+$ && $runs =~ ^[0-9]+$ ]] ||
    fail "--duration, --clients and --runs take whole numbers"

# The URL of one database on the server: any path and query of the given
# URL are replaced and kept respectively.
url_base=${postgres_url%%\?*}
url_query=""
[[ $postgres_url == *\?* ]] && url_query="?${postgres_url#*\?}"
url_scheme=${url_base%%://*}
url_rest=${url_base#*://}
url_authority=${url_rest%%/*}
database_url() {
    echo "${url_scheme}://${url_authority}/$1${url_query}"
}

admin_url=$(database_url postgres)
sql() {
    psql "$admin_url" -X -q -At -v ON_ERROR_STOP=1 -c "$1"
}

sql "SELECT 1" >/dev/null || fail "cannot reach PostgreSQL at $postgres_url"
server_version=$(sql "SHOW server_version")
max_connections=$(sql "SHOW max_connections")
# Other sessions than this check's own; pgbench needs `clients` more.
others=$(sql "SELECT count(*) - 1 FROM pg_stat_activity WHERE backend_type = 'client backend'")
if (( others + clients > max_connections )); then
    fail "the server allows $max_connections connections and $others are in use; $clients more are needed"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pg_compare.XXXXXX")
stamp="$(date +%s)_$$"
databases=()
serve_pid=""

cleanup() {
    if [[ -n $serve_pid ]] && kill -0 "$serve_pid" 2>/dev/null; then
        kill -TERM "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    for database in "${databases[@]}"; do
        sql "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
    done
    if [[ -n $keep_dir ]]; then
        mkdir -p "$keep_dir" && cp -r "$work"/. "$keep_dir"/
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A fresh database with synchronous_commit on for every session in it,
# whatever the server's default is.
create_database() {
    local database=$1
    sql "CREATE DATABASE $database" >/dev/null
    databases+=("$database")
    sql "ALTER DATABASE $database SET synchronous_commit = on" >/dev/null
}

# Percentiles of the latencies (microseconds, third field) in pgbench's
# per-transaction logs, printed as milliseconds: "p50 p99".
pgbench_percentiles() {
    python3 - "$@" <<'PYTHON'
import sys
latencies = []
for path in sys.argv[1:]:
    with open(path) as log:
        for line in log:
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]))
if not latencies:
    sys.exit("pgbench logged no transactions")
latencies.sort()
def at(q):
    return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000
print(f"{at(0.50):.2f} {at(0.99):.2f}")
PYTHON
}

# (a): sets `result` to "payments_per_second p50_ms p99_ms". Like
# `measure_bursar`, it runs in this shell (not in a command substitution), so
# that `cleanup` knows its database.
measure_pgbench() {
    local run=$1
    local database="bench_pgbench_${stamp}_${run}"
    create_database "$database"
    local url
    url=$(database_url "$database")
    psql "$url" -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE TABLE enrollments (
    id bigint PRIMARY KEY,
    amount_paid bigint NOT NULL CHECK (amount_paid >= 0),
    amount_due bigint NOT NULL CHECK (amount_due >= 0)
);
CREATE TABLE payments (
    id bigserial PRIMARY KEY,
    enrollment_id bigint NOT NULL REFERENCES enrollments (id),
    amount bigint NOT NULL CHECK (amount > 0),
    idempotency_key text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO enrollments VALUES (1, 0, 1000000000000000);
SQL
    # The same amounts as bursar's load tester (100 ..= 10,000 minor units),
    # and a unique idempotency key per payment, as bursar stores one.
    cat >"$work/pay.sql" <<'SQL'
\set x random(100, 10000)
BEGIN;
UPDATE enrollments SET amount_paid = amount_paid + :x, amount_due = amount_due - :x WHERE id = 1 AND amount_due >= :x;
INSERT INTO payments (enrollment_id, amount, idempotency_key) VALUES (1, :x, :client_id || '-' || gen_random_uuid());
COMMIT;
SQL
    local logs="$work/pgbench_$run"
    mkdir -p "$logs"
    (cd "$logs" && PGOPTIONS="-c synchronous_commit=on" pgbench -n -c "$clients" -j 2 \
        -T "$duration" -f "$work/pay.sql" -l --log-prefix=tx "$url") \
        >"$work/pgbench_$run.out" 2>&1 || {
        cat "$work/pgbench_$run.out" >&2
        fail "pgbench failed"
    }
    local tps
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' \
        "$work/pgbench_$run.out")
    [[ -n $tps ]] || { cat "$work/pgbench_$run.out" >&2; fail "no tps in pgbench's output"; }
    local paid count
    paid=$(psql "$url" -X -At -c "SELECT amount_paid = (SELECT coalesce(sum(amount), 0) FROM payments) FROM enrollments WHERE id = 1")
    [[ $paid == t ]] || fail "(a) run $run: amount_paid is not the sum of the payments"
    count=$(psql "$url" -X -At -c "SELECT count(*) FROM payments")
    echo "(a) run $run: $count payments committed" >&2
    result="$tps $(pgbench_percentiles "$logs"/tx.*)"
}

# (b): sets `result` to "payments_per_second p50_ms p99_ms".
measure_bursar() {
    local run=$1 profile=$2
    local database="bench_bursar_${stamp}_${run}"
    create_database "$database"
    local token
    token="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    # The file exists before the server starts, so polling it never races
    # the redirection.
    : >"$work/serve_$run.out"
    BURSAR_ADMIN_TOKEN=$token "$bursar" serve --listen 127.0.0.1:0 \
        --database "$(database_url "$database")" \
        >>"$work/serve_$run.out" 2>"$work/serve_$run.log" &
    serve_pid=$!
    local base=""
    for _ in $(seq 600); do
        base=$(sed -n 's/^bursar listening on \(http:\/\/[^ ]*\)$/\1/p' "$work/serve_$run.out")
        [[ -n $base ]] && break
        kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve_$run.log" >&2; fail "bursar serve exited"; }
        sleep 0.1
    done
    [[ -n $base ]] || fail "bursar serve did not start listening"
    local perf_pid=""
    if [[ -n $profile ]]; then
        perf record -F 999 -g -p "$serve_pid" -o "$profile" -- sleep "$duration" \
            >"$work/perf.out" 2>&1 &
        perf_pid=$!
    fi
    "$bursar" load-test --url "$base" --token "$token" --clients "$clients" \
        --duration "$duration" --enrollments 1 --json \
        >"$work/load_$run.json" 2>"$work/load_$run.err" || {
        cat "$work/load_$run.err" "$work/load_$run.json" >&2
        fail "bursar load-test failed"
    }
    [[ -z $perf_pid ]] || wait "$perf_pid" || true
    kill -TERM "$serve_pid"
    wait "$serve_pid" || true
    serve_pid=""
    result=$(python3 - "$work/load_$run.json" "$run" <<'PYTHON'
import json, sys
report = json.load(open(sys.argv[1]))
if not report.get("ok"):
    sys.exit(f"(b) run {sys.argv[2]}: the load tester's verdict failed: {report.get('verdict')}")
payments = report["payments"]
print(f"(b) run {sys.argv[2]}: {payments['acknowledged_total']} payments acknowledged, "
      f"{payments['refused']} refused", file=sys.stderr)
latency = report["latency_ms"]
print(report["throughput"]["acknowledged_payments_per_second"], latency["p50"], latency["p99"])
PYTHON
) || fail "cannot read the load tester's report"
}

echo "PostgreSQL $server_version at $postgres_url; $clients clients, $duration s per measurement, $runs run(s)" >&2
results="$work/results"
result=""
: >"$results"
for run in $(seq "$runs"); do
    measure_pgbench "$run"
    echo "a $run $result" >>"$results"
    profile=""
    (( run == runs )) && profile=$perf_output
    measure_bursar "$run" "$profile"
    echo "b $run $result" >>"$results"
done

python3 - "$results" "$clients" "$duration" <<'PYTHON'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
clients, duration = sys.argv[2], sys.argv[3]
names = {
    "a": "(a) pgbench, one transaction per payment",
    "b": "(b) bursar over HTTP",
}
print(f"\n{clients} clients on one enrollment, {duration} s each, synchronous_commit=on\n")
print(f"{'':50} {'payments/s':>12} {'p50 ms':>9} {'p99 ms':>9}")
medians = {}
for side in "ab":
    mine = [[float(value) for value in row[2:5]] for row in rows if row[0] == side]
    for row, (rate, p50, p99) in zip((r for r in rows if r[0] == side), mine):
        print(f"{names[side] + ' run ' + row[1]:50} {rate:12.1f} {p50:9.2f} {p99:9.2f}")
    medians[side] = [statistics.median(column) for column in zip(*mine)]
print()
for side in "ab":
    rate, p50, p99 = medians[side]
    print(f"{names[side] + ' (median)':50} {rate:12.1f} {p50:9.2f} {p99:9.2f}")
(rate_a, _, p99_a), (rate_b, _, p99_b) = medians["a"], medians["b"]
ratio = rate_b / rate_a
print(f"\nthroughput ratio (b)/(a): {ratio:.1f}x; p99 (b)/(a): {p99_b / p99_a:.2f}")
met = ratio >= 10 and p99_b < p99_a
print(f"target (>= 10x the payments per second, p99 below (a)'s): {'met' if met else 'NOT met'}")
PYTHON
