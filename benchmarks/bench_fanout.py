"""Fan-out: 500 children that each sleep 50 ms, started and reaped by ``Scope``, against raw
``os.fork`` plus an ``os.wait4(-1)`` loop; and the delay from a child's exit to its report.

Both run interleaved, round after round, in one process; we print medians of per-round ratios.

    .venv/bin/python benchmarks/bench_fanout.py [--children 500] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from typing import NoReturn

import divergefork as df


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the parent only, never its children
    return usage.ru_utime + usage.ru_stime


def raw(n: int, sleep: float) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    for _ in range(n):
        if os.fork() == 0:
            time.sleep(sleep)
            os._exit(0)
    for _ in range(n):
        os.wait4(-1, 0)  # fine in a benchmark that owns every child of this process
    return time.perf_counter() - wall, _cpu() - cpu


def _sleep_then_exit(seconds: float) -> NoReturn:
    time.sleep(seconds)
    df.exit_child(0)


def scope(n: int, sleep: float) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    with df.Scope() as s:
        for _ in range(n):
            s.fork(sleep, _sleep_then_exit)
    elapsed = time.perf_counter() - wall, _cpu() - cpu
    assert len(s.reports) == n and all(r.ok for r in s.reports)
    return elapsed


def _report_exit_time(seconds: float) -> NoReturn:
    time.sleep(seconds)
    # CLOCK_MONOTONIC is system-wide: the parent can compare it with its own readings.
    df.exit_child(0, result=time.monotonic())


def report_delays(n: int) -> list[float]:
    delays = []
    with df.Scope() as s:
        for _ in range(n):
            s.fork(random.uniform(0, 0.1), _report_exit_time)
        for report in s.as_completed():
            now = time.monotonic()
            assert isinstance(report.result, float)
            delays.append(now - report.result)
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description="Scope fan-out against raw fork + wait4(-1)")
    parser.add_argument("--children", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sleep", type=float, default=0.05)
    args = parser.parse_args()
    scope(20, 0.0)
    raw(20, 0.0)
    wall_ratios, cpu_ratios = [], []
    for _ in range(args.rounds):
        r_wall, r_cpu = raw(args.children, args.sleep)
        s_wall, s_cpu = scope(args.children, args.sleep)
        wall_ratios.append(s_wall / r_wall)
        cpu_ratios.append(s_cpu / r_cpu)
    delays = report_delays(args.children)
    print(f"{args.children} children sleeping {args.sleep * 1e3:g} ms, {args.rounds} rounds")
    print(f"  Scope / raw wall time   median ratio {statistics.median(wall_ratios):.3f}  (target <= 1.2)")
    print(f"  Scope / raw parent CPU  median ratio {statistics.median(cpu_ratios):.3f}  (target <= 1.5)")
    print(
        f"  exit-to-report delay    median {statistics.median(delays) * 1e3:.2f} ms, "
        f"p90 {statistics.quantiles(delays, n=10)[-1] * 1e3:.2f} ms  (target median <= 5 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
