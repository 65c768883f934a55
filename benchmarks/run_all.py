"""Run every benchmark in turn (``make bench``), then one table of the issue's targets.

    .venv/bin/python benchmarks/run_all.py            # full: a few minutes
    .venv/bin/python benchmarks/run_all.py --quick    # smoke run: under a minute

Each benchmark prints its own figures and targets; bench_fork and bench_fanout also hand
their target rows back here (``--json``) for the closing table. The exit status is 0 when
every benchmark ran, whether or not its targets were met (``--strict``: 1 on a missed target).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Target, print_targets, read_targets

HERE = Path(__file__).resolve().parent

# (script, full-mode arguments, quick-mode arguments, reports targets through --json)
BENCHMARKS: list[tuple[str, list[str], list[str], bool]] = [
    ("bench_fork.py", [], ["--quick"], True),
    ("bench_fanout.py", [], ["--quick"], True),
    ("bench_race.py", [], ["--rounds", "1", "--scale", "0.1"], False),
    ("bench_check.py", [], ["--rounds", "1"], False),
]


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few rounds of each: a smoke run")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    print(f"date     {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine  {' '.join(platform.uname())}, {os.cpu_count()} cpus")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"command  {' '.join(['benchmarks/run_all.py', *sys.argv[1:]])}")
    print(f"load     {_load()} (1, 5, 15 min) at the start: the machine is shared", flush=True)
    status = 0
    targets: list[tuple[str, list[Target]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as temp:
        for script, full, quick, reports in BENCHMARKS:
            extra = quick if args.quick else full
            table = Path(temp) / f"{script}.json"
            command = [sys.executable, str(HERE / script), *extra, *(["--json", str(table)] if reports else [])]
            print(f"\n== {script} {' '.join(extra)}", flush=True)
            started = time.perf_counter()
            code = subprocess.run(command, check=False).returncode
            print(f"== {script}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
            if code != 0 and not (script == "bench_check.py" and code == 1):
                status = 1  # bench_check exits 1 for its own missed target, not for a failure
            if reports and table.exists():
                targets.append((script, read_targets(table)))
    print(f"\nload     {_load()} (1, 5, 15 min) at the end")
    every = [t for _, rows in targets for t in rows]
    print_targets("all targets (issue 11), medians of per-pair ratios", every)
    missed = sum(t.met is False for t in every)
    print(f"\n{len(every) - missed} of {len(every)} targets met" + (f", {missed} missed" if missed else ""))
    if args.strict and missed:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
