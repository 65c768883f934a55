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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--children", type=int, default=200, help="children per round and method")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ballast-mb", type=int, default=0, help="grow the parent by this much resident memory first")
    args = parser.parse_args()
    ballast = bytearray(args.ballast_mb * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # make it resident, like a real parent's heap
    methods: dict[str, Callable[[int], None]] = {
        "raw": _raw,
        "divergefork": _divergefork,
        "multiprocessing": _multiprocessing,
    }
    for fn in methods.values():
        fn(10)  # warm up imports and caches
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            times[name].append(_time(fn, args.children))
    ratio = [d / r for d, r in zip(times["divergefork"], times["raw"], strict=True)]
    mp_ratio = [m / r for m, r in zip(times["multiprocessing"], times["raw"], strict=True)]
    vs_mp = [d / m for d, m in zip(times["divergefork"], times["multiprocessing"], strict=True)]
    print(f"parent ballast: {args.ballast_mb} MiB; {args.rounds} rounds x {args.children} children per method")
    for name, samples in times.items():
        print(f"  {name:16s} median {statistics.median(samples) * 1e3:7.3f} ms per child")
    print(f"  divergefork / raw             median ratio {statistics.median(ratio):.3f}  (target <= 1.25)")
    print(f"  multiprocessing / raw         median ratio {statistics.median(mp_ratio):.3f}")
    print(f"  divergefork / multiprocessing median ratio {statistics.median(vs_mp):.3f}  (target < 1)")
    del ballast
    return 0


if __name__ == "__main__":
    sys.exit(main())
