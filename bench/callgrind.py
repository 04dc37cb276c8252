#!/usr/bin/env python3
"""Instructions per payment on the writer path, counted by callgrind.

Runs `store-writer` (the store's batch path as the group-commit writer calls
it: decision, hash chain, SQLite; no HTTP) under `valgrind --tool=callgrind`
twice per configuration, with a small and a large number of batches, and
divides the difference in instructions by the difference in payments, so
that start-up, migrations and creating the enrollments cancel out.
Instruction counts do not depend on the machine's other load, so two
versions compare with no noise (the fsync's wait is not counted).

valgrind does not run the SHA-NI instructions, so under it the sha2 crate
takes its software SHA-256, several times the instructions of the SHA-NI
path it takes on this machine (`grep sha_ni /proc/cpuinfo`). The table
shows every instruction, and those outside the software SHA-256 apart.

Usage, from the repository root, after `cargo build --release -p bursar-bench`:

  python3 bench/callgrind.py [--target DIR] [--only 50x1,8192x1]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

# (label, batch size, enrollments, batches in the short run, batches in the long run)
CONFIGURATIONS = [
    ("50x1", 50, 1, 20, 60),
    ("50x10000", 50, 10_000, 20, 60),
    ("8192x1", 8192, 1, 1, 3),
    ("8192x10000", 8192, 10_000, 1, 3),
]


def counted(stderr, out_file):
    """All instructions of a callgrind run (its stderr and output file), and
    those in the software SHA-256."""
    match = re.search(r"Collected : (\d+)", stderr)
    if not match:
        raise SystemExit(stderr[-2000:])
    # --auto=no: without the annotated sources, whose call lines
    # (`N (Mx)  file:function`) would count the SHA-256 a second time.
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", out_file],
                               check=True, capture_output=True, text=True).stdout
    sha = 0
    for line in annotated.splitlines():
        if "sha2::sha256::soft" in line:
            sha += int(line.split()[0].replace(",", ""))
    return int(match.group(1)), sha


def instructions(writer, batches, batch_size, enrollments):
    """All instructions of one run, and those in the software SHA-256."""
    with tempfile.TemporaryDirectory() as directory:
        output = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/out",
             writer, f"sqlite://{directory}/cg.db", str(batches), str(batch_size), str(enrollments)],
            check=True, capture_output=True, text=True)
        return counted(output.stderr, f"{directory}/out")


def table(configurations, only, measure, what):
    """One Markdown row per configuration (or those in `only`): `what` per
    payment, the difference between a short and a long run of `measure`."""
    wanted = set(only.split(",")) if only else None
    print(f"| batch x enrollments | {what} | of which software SHA-256 | without it |")
    print("|---|---:|---:|---:|")
    for label, batch_size, enrollments, short, long in configurations:
        if wanted and label not in wanted:
            continue
        (few, few_sha) = measure(short, batch_size, enrollments)
        (many, many_sha) = measure(long, batch_size, enrollments)
        payments = (long - short) * batch_size
        per_payment = (many - few) / payments
        sha = (many_sha - few_sha) / payments
        print(f"| {label} | {per_payment:,.0f} | {sha:,.0f} | {per_payment - sha:,.0f} |", flush=True)
        print(f"{label}: {few:,} and {many:,} instructions for {short} and {long} batches", file=sys.stderr)


def command_line(doc, configurations, binary, instructions, what):
    """The command line both scripts share: --target, --only, the table."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=os.environ.get("CARGO_TARGET_DIR", "target"))
    parser.add_argument("--only", help="comma-separated labels, e.g. " + ",".join(c[0] for c in configurations[:2]))
    arguments = parser.parse_args()
    path = f"{arguments.target}/release/{binary}"
    table(configurations, arguments.only,
          lambda batches, batch_size, enrollments: instructions(path, batches, batch_size, enrollments), what)


def main():
    command_line(__doc__, CONFIGURATIONS, "store-writer", instructions, "instructions per payment")

if __name__ == "__main__":
    main()
