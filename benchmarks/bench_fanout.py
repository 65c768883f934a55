"""Fan-out: many children at once in a ``Scope``, against a raw ``os.fork`` loop.

Two measurements, each a pair per round (raw and ours in turn, the order alternating), quoted
as medians of the per-round ratios:

- Wall and parent CPU: ``--children`` (500) children that each sleep ``--sleep`` (50 ms) and
  exit, forked in a ``df.Scope`` and reaped by leaving it, against ``os.fork`` in a loop and
  then ``os.wait4(pid, 0)`` for each pid in turn. Parent CPU is ``getrusage(RUSAGE_SELF)``
  (the parent alone); the parent's minor page faults per fork are shown too.
- Exit-to-report delay: the same number of children wait on a pipe until all are forked
  (otherwise the delay would be the fork loop's), then sleep 0-2x ``--sleep`` at random,
  write a CLOCK_MONOTONIC stamp to their own slot of shared memory and exit at once. The
  parent notes when each report reaches it: from ``Scope.as_completed()``, or for raw from
  ``os.wait4(-1, 0)``, which returns each child as it ends (a per-pid loop would wait for
  the slowest first). Measured at normal priority, and with the parent raised to nice -20
  after forking (children keep the normal priority) where allowed; skipped with a message
  where not.

    .venv/bin/python benchmarks/bench_fanout.py [--quick] [--children 500] [--rounds 15] [--delay-rounds 11]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from _common import Target, at_most, median_ratio, print_targets, skipped, spread, write_targets

import divergefork as df


@dataclass(frozen=True)
class Run:
    wall: float  # seconds from the first fork to the last child reaped
    cpu: float  # parent CPU seconds over the same span
    faults: float  # parent minor page faults per fork, during the fork loop


def _cpu_and_faults() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the parent only, never its children
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def raw(n: int, sleep: float) -> Run:
    wall, (cpu, faults) = time.perf_counter(), _cpu_and_faults()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            time.sleep(sleep)
            os._exit(0)
        pids.append(pid)
    faults = _cpu_and_faults()[1] - faults
    for pid in pids:
        os.wait4(pid, 0)
    cpu = _cpu_and_faults()[0] - cpu
    return Run(time.perf_counter() - wall, cpu, faults / n)


def _sleep_then_exit(seconds: float) -> NoReturn:
    time.sleep(seconds)
    df.exit_child(0)


def ours(n: int, sleep: float) -> Run:
    wall, (cpu, faults) = time.perf_counter(), _cpu_and_faults()
    with df.Scope() as scope:
        for _ in range(n):
            scope.fork(sleep, _sleep_then_exit)
        faults = _cpu_and_faults()[1] - faults
    cpu = _cpu_and_faults()[0] - cpu
    elapsed = time.perf_counter() - wall
    if len(scope.reports) != n or not all(r.ok for r in scope.reports):
        raise SystemExit(f"fan-out: {sum(not r.ok for r in scope.reports)} of {n} children failed")
    return Run(elapsed, cpu, faults / n)


class _Barrier:
    """Children block until every one of them is ready; each has a slot for its exit stamp.

    The parent releases them only once all are asleep on the pipe: a child still starting up
    at the release would compete for the CPU with those exiting, and the delay would then
    measure how fast children start, not how fast their exits are reported.
    """

    def __init__(self, n: int) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.mapping = mmap.mmap(-1, 8 * n)
        self.stamps = memoryview(self.mapping).cast("d")
        self.ready = mmap.mmap(-1, n)  # one byte per child: 1 once it is about to block

    def child(self, index: int, seconds: float) -> None:
        os.close(self.write_fd)
        self.ready[index] = 1
        os.read(self.read_fd, 1)  # EOF once the parent closed its end
        time.sleep(seconds)
        self.stamps[index] = time.monotonic()  # the last thing before exiting

    def release(self) -> None:
        while self.ready.find(b"\0") != -1:
            time.sleep(0.001)
        time.sleep(0.005)  # the last child to set its byte reaches read() too
        os.close(self.write_fd)

    def close(self) -> None:
        os.close(self.read_fd)
        self.stamps.release()
        self.mapping.close()
        self.ready.close()


def _barrier_child(job: tuple[_Barrier, int, float]) -> NoReturn:
    barrier, index, seconds = job
    barrier.child(index, seconds)
    df.exit_child(0)


class _Priority:
    """The parent at ``nice`` while it reaps (``None``: unchanged); children forked before keep theirs."""

    def __init__(self, nice: int | None) -> None:
        self.nice = nice
        self.saved = 0

    def __enter__(self) -> None:
        if self.nice is not None:
            self.saved = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, 0, self.nice)

    def __exit__(self, *exc: object) -> None:
        if self.nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, self.saved)


def can_raise_priority() -> bool:
    try:
        with _Priority(-20):
            return True
    except PermissionError:
        return False


@dataclass(frozen=True)
class Delays:
    """One delay run: the median exit-to-report delay, and the parent's CPU per report."""

    median: float
    cpu_per_report: float


def delays_ours(n: int, sleep: float, nice: int | None) -> Delays:
    """Seconds from each child's exit stamp to its report coming out of as_completed()."""
    barrier = _Barrier(n)
    delays = []
    with df.Scope() as scope:
        for i in range(n):
            scope.fork((barrier, i, random.uniform(0, 2 * sleep)), _barrier_child, name=str(i))
        with _Priority(nice):
            barrier.release()
            cpu = _cpu_and_faults()[0]
            for report in scope.as_completed():
                delays.append(time.monotonic() - barrier.stamps[int(report.name)])
            cpu = _cpu_and_faults()[0] - cpu
    barrier.close()
    return Delays(statistics.median(delays), cpu / n)


def delays_raw(n: int, sleep: float, nice: int | None) -> Delays:
    """The same with os.fork and os.wait4(-1), which returns each child as it ends."""
    barrier = _Barrier(n)
    index_of = {}
    for i in range(n):
        seconds = random.uniform(0, 2 * sleep)
        pid = os.fork()
        if pid == 0:
            barrier.child(i, seconds)
            os._exit(0)
        index_of[pid] = i
    delays = []
    with _Priority(nice):
        barrier.release()
        cpu = _cpu_and_faults()[0]
        for _ in range(n):
            pid, _, _ = os.wait4(-1, 0)  # this benchmark owns every child of its process
            delays.append(time.monotonic() - barrier.stamps[index_of[pid]])
        cpu = _cpu_and_faults()[0] - cpu
    barrier.close()
    return Delays(statistics.median(delays), cpu / n)


def delay_pairs(n: int, sleep: float, rounds: int, nice: int | None) -> dict[str, list[Delays]]:
    """Per round, a delay run of ours and one of raw (in alternating order)."""
    runs: dict[str, list[Delays]] = {"ours": [], "raw": []}
    for r in range(rounds):
        for side in (("ours", "raw") if r % 2 == 0 else ("raw", "ours")):
            runs[side].append(delays_ours(n, sleep, nice) if side == "ours" else delays_raw(n, sleep, nice))
    return runs


def print_delays(label: str, runs: dict[str, list[Delays]]) -> list[float]:
    """Print one priority's delays; return ours / raw per round."""
    ours, raw = [d.median for d in runs["ours"]], [d.median for d in runs["raw"]]
    print(
        f"  {label}: ours median {statistics.median(ours) * 1e3:7.2f} ms, raw wait4(-1) "
        f"{statistics.median(raw) * 1e3:7.2f} ms; ours / raw {_ratios(ours, raw)}"
    )
    print(
        f"    rounds whose median delay was over 20 ms: ours {_slow(ours)}, raw {_slow(raw)}; parent CPU per "
        f"report: ours {statistics.median(d.cpu_per_report for d in runs['ours']) * 1e6:.0f} us, "
        f"raw {statistics.median(d.cpu_per_report for d in runs['raw']) * 1e6:.0f} us"
    )
    return [o / r for o, r in zip(ours, raw, strict=True)]


def _ratios(a: list[float], b: list[float]) -> str:
    low, high = spread([x / y for x, y in zip(a, b, strict=True)])
    return f"{median_ratio(a, b):.3f} [{low:.3f}-{high:.3f}]"


def _slow(medians: list[float]) -> str:
    # The delay is bimodal on a busy machine: a round either keeps up (about 1-5 ms) or falls
    # behind the children's exits for good (50-150 ms). Say how many rounds fell behind.
    return f"{sum(m > 0.02 for m in medians)}/{len(medians)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds of 200 children")
    parser.add_argument("--children", type=int, help="children per run (default 500; quick 200)")
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds each child sleeps (default 0.05)")
    parser.add_argument("--rounds", type=int, help="pairs of wall/CPU runs (default 15; quick 2)")
    parser.add_argument("--delay-rounds", type=int, help="pairs of delay runs per priority (default 11; quick 1)")
    parser.add_argument("--json", type=Path, help="also write the targets table here (for run_all.py)")
    args = parser.parse_args()
    n, sleep = args.children or (200 if args.quick else 500), args.sleep
    rounds = args.rounds or (2 if args.quick else 15)
    delay_rounds = args.delay_rounds or (1 if args.quick else 11)

    ours(20, 0.0)  # warm-up: imports, caches
    raw(20, 0.0)
    runs: dict[str, list[Run]] = {"raw": [], "ours": []}
    for r in range(rounds):
        for side in (("raw", "ours") if r % 2 == 0 else ("ours", "raw")):
            runs[side].append(raw(n, sleep) if side == "raw" else ours(n, sleep))
    wall = {side: [x.wall for x in v] for side, v in runs.items()}
    cpu = {side: [x.cpu for x in v] for side, v in runs.items()}
    print(f"fan-out: {n} children sleeping {sleep * 1e3:g} ms, {rounds} rounds of raw and Scope in turn")
    for side in runs:
        print(
            f"  {side:<5} wall median {statistics.median(wall[side]) * 1e3:7.1f} ms, parent CPU "
            f"{statistics.median(cpu[side]) * 1e3:7.1f} ms, parent page faults per fork "
            f"{statistics.median(x.faults for x in runs[side]):5.1f}"
        )
    print(f"  ours / raw wall        median of per-round ratios {_ratios(wall['ours'], wall['raw'])}  [deciles]")
    print(f"  ours / raw parent CPU  median of per-round ratios {_ratios(cpu['ours'], cpu['raw'])}")

    print(f"exit-to-report delay: {n} children released together, sleeping 0-{2 * sleep * 1e3:g} ms")
    print_delays("normal priority", delay_pairs(n, sleep, delay_rounds, None))
    boosted: list[float] | None = None
    if can_raise_priority():
        boosted = print_delays("parent at nice -20", delay_pairs(n, sleep, delay_rounds, -20))
    else:
        print("  parent at nice -20: skipped (not allowed: needs root or CAP_SYS_NICE)")

    targets: list[Target] = [
        at_most("fan-out wall, against raw", median_ratio(wall["ours"], wall["raw"]), 1.25),
        at_most("fan-out parent CPU, against raw", median_ratio(cpu["ours"], cpu["raw"]), 1.5),
    ]
    measure = "exit->report delay at raised priority, against raw"
    if boosted is None:
        targets.append(skipped(measure, "<= 3x", "nice -20 not allowed"))
    else:
        targets.append(at_most(measure, statistics.median(boosted), 3))
    print_targets("targets (fan-out)", targets)
    write_targets(args.json, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
