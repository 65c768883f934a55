"""Increments per second per process: every SharedCounter mode, a bare memoryview loop, and C.

Each case runs alone (one process) and racing (parent and one child started together on a
flag in shared memory, as in ``divergefork demo race``). All cases run interleaved, round after
round, so machine noise hits them alike; the table shows the median rate over rounds, and the
target lines the median over rounds of the per-round ratio.

Two ways to add are measured. ``add()`` is one Python call per update; ``add_repeatedly(n)``
makes the same n separate updates inside the counter (what the demo and the plugin use).
The C program (``benchmarks/race.c``, compiled here at -O0 into a temporary directory, where
``cc`` or ``gcc`` exists) is the physical reference: the same race without an interpreter.

    .venv/bin/python benchmarks/bench_race.py [--rounds 5] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import divergefork as df
from divergefork._shared import SYNC_MODES, Sync

HERE = Path(__file__).resolve().parent

Worker = Callable[[int], None]

_READY, _START = 0, 16  # words of the control mapping, on separate cache lines


@dataclass(frozen=True)
class Case:
    label: str
    n: int  # updates per process per run, before --scale
    make: Callable[[], tuple[Worker, Callable[[], None]]]  # -> (worker, cleanup)


def bare_loop() -> tuple[Worker, Callable[[], None]]:
    mapping = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    words = memoryview(mapping).cast("q")

    def work(n: int) -> None:
        w = words
        for _ in range(n):
            w[0] += 1

    def cleanup() -> None:
        words.release()
        mapping.close()

    return work, cleanup


def per_call(sync: Sync) -> Callable[[], tuple[Worker, Callable[[], None]]]:
    def make() -> tuple[Worker, Callable[[], None]]:
        counter = df.SharedCounter(sync)

        def work(n: int) -> None:
            add = counter.add
            for _ in range(n):
                add()

        return work, counter.close

    return make


def repeated(sync: Sync) -> Callable[[], tuple[Worker, Callable[[], None]]]:
    def make() -> tuple[Worker, Callable[[], None]]:
        counter = df.SharedCounter(sync)
        return counter.add_repeatedly, counter.close

    return make


def cases(atomic: bool) -> list[Case]:
    found = [Case("bare memoryview loop", 2_000_000, bare_loop)]
    for sync in SYNC_MODES:
        if sync == "atomic" and not atomic:
            continue
        n = 2_000_000 if sync in ("none", "sharded") else 400_000
        found.append(Case(f"{sync} add()", n, per_call(sync)))
        found.append(Case(f"{sync} add_repeatedly(n)", n, repeated(sync)))
    return found


@dataclass(frozen=True)
class Task:
    work: Worker
    n: int
    control: memoryview


def racer(task: Task) -> NoReturn:
    task.control[_READY] = 1
    while task.control[_START] == 0:
        os.sched_yield()
    started = time.perf_counter()
    task.work(task.n)
    df.exit_child(0, result=time.perf_counter() - started)


def run_case(case: Case, n: int, racing: bool) -> float:
    """Increments per second per process (the mean over the racing processes)."""
    work, cleanup = case.make()
    mapping = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    control = memoryview(mapping).cast("q")
    try:
        child = df.fork(Task(work, n, control), racer, timeout=600) if racing else None
        if child is not None:
            while control[_READY] == 0:
                os.sched_yield()
        control[_START] = 1
        started = time.perf_counter()
        work(n)
        rates = [n / (time.perf_counter() - started)]
        if child is not None:
            report = child.wait()
            if not report.ok or not isinstance(report.result, float):
                raise RuntimeError(f"{case.label}: the racing child failed: {report.describe()}\n{report.error}")
            rates.append(n / report.result)
        return statistics.fmean(rates)
    finally:
        control.release()
        mapping.close()
        cleanup()


def compile_c(directory: str) -> Path | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    binary = Path(directory) / "race"
    done = subprocess.run([compiler, "-O0", "-o", str(binary), str(HERE / "race.c")], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"note: compiling race.c failed, no C reference:\n{done.stderr}", file=sys.stderr)
        return None
    return binary


def run_c(binary: Path, n: int, racing: bool) -> float:
    done = subprocess.run([str(binary), str(n), "2" if racing else "1"], capture_output=True, text=True, check=True)
    for line in done.stdout.splitlines():
        if line.startswith("increments_per_second_per_process = "):
            return statistics.fmean(float(rate) for rate in line.split("=", 1)[1].split())
    raise RuntimeError(f"race.c printed no rate:\n{done.stdout}")


TARGETS = [
    # (what, numerator, denominator, minimum ratio, strictly greater)
    ("none add_repeatedly >= 0.9x bare loop", "none add_repeatedly(n)", "bare memoryview loop", 0.9),
    ("none add() >= 0.9x bare loop", "none add()", "bare memoryview loop", 0.9),
    ("sharded add_repeatedly >= 0.9x none", "sharded add_repeatedly(n)", "none add_repeatedly(n)", 0.9),
    ("sharded add() >= 0.9x none add()", "sharded add()", "none add()", 0.9),
    ("atomic add_repeatedly > lock", "atomic add_repeatedly(n)", "lock add_repeatedly(n)", 1.0),
    ("atomic add() > lock add()", "atomic add()", "lock add()", 1.0),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every case (default 5; the median is shown)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every case's updates (default 1.0)")
    args = parser.parse_args()
    try:
        df.SharedCounter("atomic").close()
        atomic = True
    except df.DivergeforkError as exc:
        print(f"note: no atomic mode here: {exc}", file=sys.stderr)
        atomic = False
    all_cases = cases(atomic)
    rates: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_race-") as directory:
        binary = compile_c(directory)
        c_label = "C race.c -O0 (reference)"
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}...", file=sys.stderr)
            for racing in (False, True):
                for case in all_cases:
                    rate = run_case(case, max(1, int(case.n * args.scale)), racing)
                    rates.setdefault((case.label, racing), []).append(rate)
                if binary is not None:
                    rate = run_c(binary, max(1, int(20_000_000 * args.scale)), racing)
                    rates.setdefault((c_label, racing), []).append(rate)

    labels = [case.label for case in all_cases] + ([c_label] if binary is not None else [])
    cpus = len(os.sched_getaffinity(0))
    print(f"\nincrements per second per process, median of {args.rounds} rounds ({cpus} CPUs, Python {sys.version.split()[0]})")
    print(f"{'case':30} {'alone':>12} {'racing (2)':>12}")
    for label in labels:
        alone, race = (statistics.median(rates[(label, r)]) for r in (False, True))
        print(f"{label:30} {alone / 1e6:10.2f} M {race / 1e6:10.2f} M")

    print("\ntargets: median over rounds of the per-round ratio")
    print(f"{'':44} {'alone':>7} {'racing':>7}")
    missed = 0
    for what, top, bottom, minimum in TARGETS:
        if (top, False) not in rates or (bottom, False) not in rates:
            continue
        cells = []
        for racing in (False, True):
            ratio = statistics.median(a / b for a, b in zip(rates[(top, racing)], rates[(bottom, racing)], strict=True))
            ok = ratio > minimum if minimum == 1.0 else ratio >= minimum
            missed += not ok
            cells.append(f"{ratio:5.2f}{' ' if ok else '!'}")
        print(f"{what:44} {cells[0]:>7} {cells[1]:>7}")
    print("('!' marks a missed target)")
    if missed:
        print(
            "\nwhy a target can miss:\n"
            "- add() is one Python function call per update (~25-30 ns on 3.11, on top of the\n"
            "  ~100 ns read-modify-write); no pure-Python API avoids it. add_repeatedly(n) is the\n"
            "  same updates without that call, and is what the demo and the race plugin use.\n"
            "- lock: the uncontended path is C (sem_trywait/sem_post, ~160 ns), while every\n"
            "  atomic add is a ctypes call (~350 ns). atomic beats lock only when the two\n"
            "  processes really run at once and fight over the lock: 2 idle CPUs, not a busy machine."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
