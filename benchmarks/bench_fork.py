"""Per-child cost of fork+wait: divergefork against raw os.fork/os.wait4 and multiprocessing.

All three run interleaved in one process, round after round, so that machine noise hits them
alike; we print the median over rounds of the per-round ratio, never a single absolute time.

    .venv/bin/python benchmarks/bench_fork.py [--children 200] [--rounds 15] [--ballast-mb 0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import NoReturn

import divergefork as df


def _raw(n: int) -> None:
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.wait4(pid, 0)


def _entry(_: None) -> NoReturn:
    df.exit_child(0)


def _divergefork(n: int) -> None:
    for _ in range(n):
        report = df.fork(None, _entry).wait()
        assert report.ok, report


def _noop() -> None:
    pass


def _multiprocessing(n: int) -> None:
    ctx = multiprocessing.get_context("fork")
    for _ in range(n):
        proc = ctx.Process(target=_noop)
        proc.start()
        proc.join()
        assert proc.exitcode == 0


def _time(fn: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return (time.perf_counter() - start) / n


def measure(children: int, rounds: int, ballast_mb: int) -> dict[str, list[float]]:
    """Per-child seconds of each method, round by round, from a parent grown by ``ballast_mb``."""
    ballast = bytearray(ballast_mb * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # resident, like a real parent's heap: fork copies its page tables
    methods: dict[str, Callable[[int], None]] = {
        "raw": _raw,
        "divergefork": _divergefork,
        "multiprocessing": _multiprocessing,
    }
    for fn in methods.values():
        fn(5)  # warm up imports and caches
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            times[name].append(_time(fn, children))
    del ballast
    return times


def _ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--children", type=int, default=200, help="children per round and method (bare parent)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--ballast-mb",
        type=int,
        nargs="+",
        default=[0],
        help="grow the parent by this much resident memory first; several values make a table",
    )
    args = parser.parse_args()
    print(f"{args.rounds} rounds; per-child fork+wait, medians of per-round ratios")
    print(f"{'parent +MiB':>11} {'raw ms':>8} {'df ms':>8} {'mp ms':>8} {'df/raw':>7} {'mp/raw':>7} {'df/mp':>6}")
    for mb in args.ballast_mb:
        # Bigger parents fork slower: fewer children keep each round short.
        children = max(10, args.children * 10 // max(10, mb))
        times = measure(children, args.rounds, mb)
        print(
            f"{mb:>11} {statistics.median(times['raw']) * 1e3:8.3f} "
            f"{statistics.median(times['divergefork']) * 1e3:8.3f} "
            f"{statistics.median(times['multiprocessing']) * 1e3:8.3f} "
            f"{_ratio(times, 'divergefork', 'raw'):7.3f} {_ratio(times, 'multiprocessing', 'raw'):7.3f} "
            f"{_ratio(times, 'divergefork', 'multiprocessing'):6.3f}"
        )
    print("targets (bare parent): df/raw <= 1.25, df/mp < 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
