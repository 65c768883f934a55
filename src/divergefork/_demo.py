"""``divergefork demo race``: two processes, one shared counter, and the updates they lose.

The library half is :func:`race`, which forks one child with ``df.fork``, lets parent and child
add 1 to one :class:`SharedCounter` ``n`` times each, starting together on a flag in shared
memory, and returns a :class:`RaceResult`. The command-line half (``configure`` and the
``_main_*`` functions) parses, calls :func:`race` and prints in the manner of the C program
from the original discussion: a ``[pid X] Done.`` line per process and the child's waitpid
report on stderr, then ``shared_int = X (expected 2N).`` on stdout.

``lockstep`` replaces the free-running race with its worst case, deterministically: for every
update, the parent reads, the child reads (the same value), the parent writes, the child writes
(the same value plus one), each step handed over through a turn word in shared memory. Each pair
of updates then moves the counter by one, so exactly half are lost, every time.
"""

from __future__ import annotations

import argparse
import functools
import json
import mmap
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Final, NoReturn, final

from ._atomic import load_fetch_add
from ._child import exit_child
from ._errors import DivergeforkError
from ._exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._fork import Child, fork
from ._report import Outcome, Report
from ._shared import SYNC_MODES, SharedCounter, Sync, racy_halves

__all__ = ["DEFAULT_LOCKSTEP_N", "DEFAULT_N", "ProcessRun", "RaceResult", "configure", "main", "race"]

#: Increments per process of the free-running race: enough to lose updates every time, a
#: second or two with ``--sync none`` (``lock`` and ``atomic`` take several times longer).
DEFAULT_N: Final = 5_000_000
#: With ``--lockstep`` every update costs four hand-overs between the processes.
DEFAULT_LOCKSTEP_N: Final = 20_000
MAX_N: Final = 10**12

# Word indices in the control mapping, one 128-byte line apart so that spinning on one flag
# does not keep stealing the line the other process writes.
_READY: Final = 0
_START: Final = 16
_TURN: Final = 32
_CONTROL_WORDS: Final = 48
_POLL_EVERY: Final = 256  # spins between checks that the child is still there


@final
@dataclass(frozen=True, slots=True)
class ProcessRun:
    """How one process of the race did: its pid, its adding time, when it finished."""

    pid: int
    #: Seconds from the start flag to its last update.
    seconds: float
    #: ``time.monotonic()`` when it finished (one clock for every process of the machine).
    finished_at: float
    increments: int

    @property
    def increments_per_second(self) -> float:
        return self.increments / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "seconds": self.seconds,
            "increments_per_second": self.increments_per_second,
        }


@final
@dataclass(frozen=True, slots=True)
class RaceResult:
    """The outcome of one race. ``child_run`` is ``None`` if the child did not finish."""

    n: int
    sync: Sync
    lockstep: bool
    value: int
    parent: ProcessRun
    child_run: ProcessRun | None
    child: Report

    @property
    def expected(self) -> int:
        return 2 * self.n

    @property
    def lost(self) -> int:
        return self.expected - self.value

    @property
    def lost_fraction(self) -> float:
        return self.lost / self.expected

    @property
    def increments_per_second(self) -> float:
        """Per process: the mean of the parent's and the child's rates."""
        runs = [run for run in (self.parent, self.child_run) if run is not None]
        return sum(run.increments_per_second for run in runs) / len(runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "sync": self.sync,
            "lockstep": self.lockstep,
            "expected": self.expected,
            "value": self.value,
            "lost": self.lost,
            "lost_fraction": self.lost_fraction,
            "increments_per_second": self.increments_per_second,
            "parent": self.parent.to_dict(),
            "child_run": None if self.child_run is None else self.child_run.to_dict(),
            "child": self.child.to_dict(),
        }


@final
@dataclass(frozen=True, slots=True)
class _Task:
    counter: SharedCounter
    control: memoryview
    n: int
    lockstep: bool


class _ChildGone(Exception):
    pass


def race(n: int, sync: Sync = "none", *, lockstep: bool = False) -> RaceResult:
    """Race a forked child: each process adds 1 to one shared counter ``n`` times.

    Raises ``ValueError`` for a bad ``n``/``sync`` or ``lockstep`` with a ``sync`` other than
    ``"none"`` (the other modes make an update indivisible), and ``DivergeforkError`` if the
    child ends before the start or in the middle of a lockstep race.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"race(n=...) must be an int, not {type(n).__name__}")
    if not 1 <= n <= MAX_N:
        raise ValueError(f"race(n=...) must be between 1 and {MAX_N:,}, not {n}")
    if sync not in SYNC_MODES:
        choices = ", ".join(map(repr, SYNC_MODES))
        raise ValueError(f"race(sync=...) must be one of {choices}, not {sync!r}")
    if lockstep and sync != "none":
        raise ValueError(
            f"race(lockstep=True) splits each update into its read and its write, which only "
            f"sync='none' allows, not sync={sync!r}"
        )
    control_map = mmap.mmap(-1, _CONTROL_WORDS * 8, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    base = memoryview(control_map)
    control = base.cast("q")
    base.release()
    try:
        with SharedCounter(sync) as counter:
            return _race(counter, control, n, lockstep)
    finally:
        control.release()
        control_map.close()


def _race(counter: SharedCounter, control: memoryview, n: int, lockstep: bool) -> RaceResult:
    child = fork(_Task(counter, control, n, lockstep), _race_child, name="race-child")
    try:
        try:
            _spin_until(control, _READY, 1, child)
        except _ChildGone:
            raise _child_gone(child, "before the start") from None
        control[_START] = 1
        started = time.perf_counter()
        if lockstep:
            try:
                _lockstep(counter, control, n, first=True, child=child)
            except _ChildGone:
                raise _child_gone(child, "in the middle of the lockstep race") from None
        else:
            counter.add_repeatedly(n)
        seconds = time.perf_counter() - started
        parent = ProcessRun(os.getpid(), seconds, time.monotonic(), n)
        report = child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
    return RaceResult(n, counter.sync, lockstep, counter.value, parent, _child_run(report, n), report)


def _child_gone(child: Child, when: str) -> DivergeforkError:
    report = child.wait()
    detail = f"\n{report.error.rstrip()}" if report.error else ""
    return DivergeforkError(f"the race child (pid {child.pid}) ended {when}: {report.describe()}{detail}")


def _child_run(report: Report, n: int) -> ProcessRun | None:
    result = report.result
    if not report.ok or not isinstance(result, dict):
        return None
    return ProcessRun(int(result["pid"]), float(result["seconds"]), float(result["finished_at"]), n)


def _race_child(task: _Task) -> NoReturn:
    control = task.control
    control[_READY] = 1
    _spin_until(control, _START, 1, None)
    started = time.perf_counter()
    if task.lockstep:
        _lockstep(task.counter, control, task.n, first=False, child=None)
    else:
        task.counter.add_repeatedly(task.n)
    seconds = time.perf_counter() - started
    exit_child(0, result={"pid": os.getpid(), "seconds": seconds, "finished_at": time.monotonic()})


def _spin_until(control: memoryview, index: int, target: int, child: Child | None) -> None:
    """Wait for ``control[index] == target``; with ``child``, give up if it has ended.

    Spinning, because a hand-over must take microseconds, not a scheduler tick; the yield lets
    the other process run where both share one core. The child needs no such check: the
    kernel kills it if the parent dies (``on_parent_exit="kill"``).
    """
    spins = 0
    while control[index] != target:
        os.sched_yield()
        spins += 1
        if child is not None and spins % _POLL_EVERY == 0 and child.poll() is not None:
            raise _ChildGone


def _lockstep(
    counter: SharedCounter, control: memoryview, n: int, *, first: bool, child: Child | None
) -> None:
    # The turn word only grows, and only the process whose turn it is writes it: 4 steps per
    # round (parent reads, child reads, parent writes, child writes). On x86-64 stores are
    # seen in order, so the counter's store is visible before the turn that follows it.
    load, store = racy_halves(counter)
    read_step, write_step = (0, 2) if first else (1, 3)
    for round_start in range(0, 4 * n, 4):
        _spin_until(control, _TURN, round_start + read_step, child)
        seen = load()
        control[_TURN] = round_start + read_step + 1
        _spin_until(control, _TURN, round_start + write_step, child)
        store(seen + 1)
        control[_TURN] = round_start + write_step + 1


# --- the command line ---------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the demos to the ``divergefork demo`` sub-parser; :func:`main` runs the chosen one."""
    parser.set_defaults(demo_main=functools.partial(_main_no_demo, parser))
    demos = parser.add_subparsers(dest="demo", metavar="DEMO")
    race_parser = demos.add_parser(
        "race",
        help="two processes add to one shared counter and lose updates",
        description=(
            "Fork one child; parent and child each add 1 to one counter in MAP_SHARED memory N "
            "times, starting together. With --sync none updates are lost (how many varies with "
            "the machine and its load); lock, atomic and sharded are exact."
        ),
    )
    race_parser.add_argument(
        "-n",
        type=_increments,
        default=None,
        metavar="N",
        help=f"increments per process (default {DEFAULT_N:,}; {DEFAULT_LOCKSTEP_N:,} with --lockstep)",
    )
    race_parser.add_argument(
        "--sync",
        choices=SYNC_MODES,
        default="none",
        help="how updates are synchronised (default: none, which races)",
    )
    race_parser.add_argument(
        "--lockstep",
        action="store_true",
        help="alternate the two processes' reads and writes: exactly half the updates are lost",
    )
    race_parser.add_argument("--json", action="store_true", help="print one JSON object instead of the log")
    race_parser.set_defaults(demo_main=functools.partial(_main_race, race_parser))


def main(args: argparse.Namespace) -> int:
    """Run the demo ``args`` chose (parsed by a parser :func:`configure` set up); the exit code."""
    demo_main: functools.partial[int] = args.demo_main
    return demo_main(args)


def _increments(text: str) -> int:
    try:
        n = int(text.replace(",", "_"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of increments, not {text!r}") from None
    if not 1 <= n <= MAX_N:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_N:,}, not {n:,}")
    return n


def _main_no_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: choose a demo: race (try '{parser.prog} race --help')", file=sys.stderr)
    return EXIT_USAGE


def _main_race(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.lockstep and args.sync != "none":
        parser.error(
            f"--lockstep splits each update into its read and its write, which only --sync none "
            f"allows (--sync {args.sync} makes an update indivisible); drop one of the two"
        )
    n: int = args.n if args.n is not None else (DEFAULT_LOCKSTEP_N if args.lockstep else DEFAULT_N)
    if args.sync == "atomic":
        # Worded for the command line (--sync sharded), before anything is mapped or forked.
        try:
            load_fetch_add(
                subject="--sync atomic",
                alternatives="--sync sharded (exact, no library needed) or --sync lock",
            )
        except DivergeforkError as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        result = race(n, args.sync, lockstep=args.lockstep)
    except DivergeforkError as exc:
        # The child died before the start or in the middle of the lockstep race: a run-time
        # failure after forking, not a usage error.
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted (the child was terminated and reaped)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_log(result)
    return EXIT_OK if result.child.ok else EXIT_FAILED


def _print_log(result: RaceResult) -> None:
    parent, child = result.parent, result.child
    runs = [parent] if result.child_run is None else [parent, result.child_run]
    for run in sorted(runs, key=lambda run: run.finished_at):
        print(f"[pid {run.pid}] Done.", file=sys.stderr)
    print(f"[pid {parent.pid}] Waiting for child {child.pid} to end...", file=sys.stderr)
    print(f"[pid {parent.pid}] Child {child.pid} {_waitpid_phrase(child)}", file=sys.stderr)
    sys.stderr.flush()
    print(f"shared_int = {result.value} (expected {result.expected}).")
    print(
        f"lost {result.lost:,} of {result.expected:,} updates ({result.lost_fraction:.2%}) "
        f"with --sync {result.sync}."
    )
    rates = f"parent {parent.increments_per_second / 1e6:.2f}"
    if result.child_run is not None:
        rates += f", child {result.child_run.increments_per_second / 1e6:.2f}"
    print(f"{result.increments_per_second / 1e6:.2f} million increments/second per process ({rates}).")
    if result.lockstep:
        print("--lockstep alternated the reads and writes, so exactly half were lost, on every run.")
    elif result.sync == "none":
        print("The loss varies with the machine and its load (cores, caches, scheduling): run it again.")
    else:
        print(f"--sync {result.sync} made every update count.")
    if not child.ok and child.error:
        print(child.error.rstrip("\n"), file=sys.stderr)


def _waitpid_phrase(report: Report) -> str:
    if report.outcome is Outcome.EXITED:
        return f"exited with status {report.exit_code}"
    if report.signal is not None:
        return f"was killed by signal {report.signal.name}"
    return f"ended: {report.describe()}"
