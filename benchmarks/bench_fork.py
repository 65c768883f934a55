"""Per-child cost of fork+wait: divergefork against raw os.fork and multiprocessing.

Three ways to start a child that exits at once, and wait for it:

- raw: ``os.fork()``, ``os._exit(0)`` in the child, ``os.wait4(pid, 0)`` in the parent;
- ours: ``divergefork.fork(None, entry).wait()``, the entry calling ``exit_child(0)``;
- mp: ``multiprocessing`` (fork context) ``Process(target=noop)``, ``start()``, ``join()``.

Methods (see benchmarks/README.md):

- Time: blocks of ``--block`` children, raw, ours and mp in turn (the order rotating every
  round), after a warm-up, for ``--rounds`` rounds. A round's ratio compares blocks run a few
  milliseconds apart, so a noisy machine moves both sides alike; we quote the median of the
  per-round ratios, with the first and last deciles.
- Page faults: minor faults per child of the parent (``getrusage(RUSAGE_SELF)``) and of the
  children (``RUSAGE_CHILDREN``, counted once they are reaped), over the same blocks. Counts,
  not times: they do not depend on the machine's load.
- Syscalls: ``strace -f -ff`` over a fresh process running N and then 2N children of one
  method; the difference divided by N is the per-child count, start-up cancelled out,
  split by process (parent, children) and syscall name.
- Work after fork: ``_postfork_probe.py`` times the parent from fork() returning to its first
  call that can sleep.
- Parent heap: raw and ours again, from a parent with 0, 50, 200 and 800 MiB of touched
  ballast: where our overhead falls under 5 % of the fork itself.

    .venv/bin/python benchmarks/bench_fork.py [--quick] [--rounds 150] [--block 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from _common import Target, at_least, at_most, median_ratio, print_targets, skipped, spread, write_targets

import divergefork as df

HERE = Path(__file__).resolve().parent
_MP = multiprocessing.get_context("fork")


def raw(n: int) -> None:
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.wait4(pid, 0)


def _exit_at_once(_: None) -> NoReturn:
    df.exit_child(0)


def ours(n: int) -> None:
    for _ in range(n):
        report = df.fork(None, _exit_at_once).wait()
        if not report.ok:
            raise SystemExit(f"divergefork child failed: {report}")


def _noop() -> None:
    pass


def mp(n: int) -> None:
    for _ in range(n):
        proc = _MP.Process(target=_noop)
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"multiprocessing child failed: exit code {proc.exitcode}")


METHODS: dict[str, Callable[[int], None]] = {"raw": raw, "ours": ours, "mp": mp}


@dataclass(frozen=True)
class Block:
    """One block of children of one method: per-child seconds and minor page faults."""

    seconds: float
    parent_faults: float
    child_faults: float


def run_block(fn: Callable[[int], None], n: int) -> Block:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    fn(n)
    elapsed = time.perf_counter() - start
    me2, kids2 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return Block(elapsed / n, (me2.ru_minflt - me.ru_minflt) / n, (kids2.ru_minflt - kids.ru_minflt) / n)


def interleaved(names: Sequence[str], block: int, rounds: int, warmup: int = 2) -> dict[str, list[Block]]:
    """Blocks of each method in turn, the order rotating every round so none always goes first."""
    for _ in range(warmup):
        for name in names:
            run_block(METHODS[name], block)
    blocks: dict[str, list[Block]] = {name: [] for name in names}
    for r in range(rounds):
        order = [*names[r % len(names) :], *names[: r % len(names)]]
        for name in order:
            blocks[name].append(run_block(METHODS[name], block))
    return blocks


def seconds(blocks: list[Block]) -> list[float]:
    return [b.seconds for b in blocks]


class Ballast:
    """``mib`` MiB of resident memory in this process, every page written (a real heap)."""

    def __init__(self, mib: int) -> None:
        self.data = bytearray(mib * 1024 * 1024)
        for i in range(0, len(self.data), 4096):
            self.data[i] = 1

    def release(self) -> None:
        del self.data


# --- syscalls -------------------------------------------------------------------------------

_SYSCALL = re.compile(r"^([a-z_0-9]+)\(")


_FORKS = ("clone", "clone3", "fork", "vfork")


def _calls(path: Path) -> list[str]:
    """The syscalls of one strace -ff file, in order; a few labelled with their first flag."""
    calls = []
    with path.open() as lines:
        for line in lines:
            match = _SYSCALL.match(line)
            if match:
                name = match.group(1)
                if name == "rt_sigprocmask":
                    name += ":" + line[len("rt_sigprocmask(SIG_") :].split(",", 1)[0]
                elif name == "epoll_ctl":
                    name += ":" + line.split("EPOLL_CTL_", 1)[-1].split(",", 1)[0]
                calls.append(name)
    return calls


def usual_cycle(calls: list[str]) -> tuple[tuple[str, ...], float]:
    """The most common run of the parent's syscalls from one fork to the next, and its share."""
    forks = [i for i, name in enumerate(calls) if name in _FORKS]
    cycles = Counter(tuple(calls[a:b]) for a, b in zip(forks, forks[1:], strict=False))
    if not cycles:
        return (), 0.0
    cycle, count = cycles.most_common(1)[0]
    return cycle, count / sum(cycles.values())


class TraceFailed(Exception):
    """strace is there but could not trace (no ptrace in a container, say)."""


def trace(method: str, n: int) -> tuple[Counter[str], Counter[str], list[str]]:
    """Syscalls of a fresh process running n children of ``method``: (parent's, children's) by
    name, and the parent's in order."""
    with tempfile.TemporaryDirectory(prefix="bench-strace-") as temp:
        prefix = Path(temp) / "t"
        command = [sys.executable, str(Path(__file__).resolve()), "--syscall-worker", method, str(n)]
        done = subprocess.run(
            ["strace", "-f", "-ff", "-o", str(prefix), *command], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise TraceFailed(f"strace run of {method} failed ({done.returncode}): {last}")
        parent_pid = int(done.stdout.split()[0])
        parent: Counter[str] = Counter()
        children: Counter[str] = Counter()
        in_order: list[str] = []
        for path in Path(temp).glob("t.*"):
            calls = _calls(path)
            if int(path.suffix[1:]) == parent_pid:
                in_order = calls
            (parent if int(path.suffix[1:]) == parent_pid else children).update(c.split(":")[0] for c in calls)
    return parent, children, in_order


@dataclass(frozen=True)
class Syscalls:
    """Per-child syscall counts by name, start-up cost differenced away."""

    parent: dict[str, float]
    child: dict[str, float]
    cycle: tuple[str, ...]  # the parent's usual syscalls from one fork to the next
    cycle_share: float  # of the children whose cycle was exactly that

    @property
    def total(self) -> float:
        return sum(self.parent.values()) + sum(self.child.values())


def syscalls_per_child(method: str, n: int) -> Syscalls:
    small, large = trace(method, n), trace(method, 2 * n)

    def per_child(a: Counter[str], b: Counter[str]) -> dict[str, float]:
        return {name: (b[name] - a[name]) / n for name in sorted(set(a) | set(b)) if b[name] != a[name]}

    return Syscalls(per_child(small[0], large[0]), per_child(small[1], large[1]), *usual_cycle(large[2]))


def syscall_worker(method: str, n: int) -> int:
    print(os.getpid(), flush=True)
    METHODS[method](n)
    return 0


# --- work after fork ------------------------------------------------------------------------


def postfork(n: int) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(HERE / "_postfork_probe.py"), str(n)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"post-fork probe failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return result


_PHASES = [
    ("per_child", "whole fork+wait, one child"),
    ("before_fork", "parent: call to os.fork()"),
    ("fork", "parent: inside os.fork()"),
    ("parent_work", "parent: fork() returned -> sleeps"),
    ("child_start", "child: parent's fork() -> child's"),
    ("child_setup", "child: fork() returned -> entry"),
    ("after_wake", "parent: woke -> wait() returns"),
]


# --- report ---------------------------------------------------------------------------------


def _fmt_range(values: Sequence[float]) -> str:
    low, high = spread(values)
    return f"{statistics.median(values):.3f} [{low:.3f}-{high:.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds, small heaps")
    parser.add_argument("--rounds", type=int, help="rounds of the bare-parent comparison (default 150; quick 15)")
    parser.add_argument("--block", type=int, default=10, help="children per block (default 10)")
    parser.add_argument("--heaps", type=int, nargs="+", help="parent ballast series in MiB (default 0 50 200 800; quick 0 50)")
    parser.add_argument("--strace-children", type=int, help="N of the N/2N strace runs (default 100; quick 10)")
    parser.add_argument("--json", type=Path, help="also write the targets table here (for run_all.py)")
    parser.add_argument("--syscall-worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.syscall_worker:
        return syscall_worker(args.syscall_worker[0], int(args.syscall_worker[1]))
    rounds = args.rounds or (15 if args.quick else 150)
    heaps = args.heaps or ([0, 50] if args.quick else [0, 50, 200, 800])
    strace_n = args.strace_children or (10 if args.quick else 100)
    block = args.block

    print(f"fork+wait per child: {rounds} rounds of blocks of {block} children, raw/ours/mp in turn")
    blocks = interleaved(["raw", "ours", "mp"], block, rounds)
    times = {name: seconds(b) for name, b in blocks.items()}
    ours_raw = [o / r for o, r in zip(times["ours"], times["raw"], strict=True)]
    mp_ours = [m / o for m, o in zip(times["mp"], times["ours"], strict=True)]
    for name in blocks:
        print(f"  {name:<5} median {statistics.median(times[name]) * 1e6:8.1f} us per child")
    print(f"  ours / raw  median of per-round ratios {_fmt_range(ours_raw)}  [deciles]")
    print(f"  mp / ours   median of per-round ratios {_fmt_range(mp_ours)}  (ours is this much faster)")
    faults = {
        name: (statistics.median(x.parent_faults for x in b), statistics.median(x.child_faults for x in b))
        for name, b in blocks.items()
    }
    print("minor page faults per child (getrusage; medians over blocks)")
    for name, (parent_f, child_f) in faults.items():
        print(f"  {name:<5} parent {parent_f:6.1f}   child {child_f:6.1f}")

    traced: dict[str, Syscalls] | None = None
    why_not = "strace is not installed"
    if shutil.which("strace"):
        try:
            traced = {name: syscalls_per_child(name, strace_n) for name in METHODS}
        except TraceFailed as exc:
            why_not = str(exc)
    if traced is not None:
        print(f"syscalls per child (strace -f, runs of {strace_n} and {2 * strace_n} children differenced)")
        print(f"  {'':<5} {'parent':>7} {'child':>7} {'total':>7}")
        for name, counts in traced.items():
            p, c = sum(counts.parent.values()), sum(counts.child.values())
            print(f"  {name:<5} {p:7.1f} {c:7.1f} {p + c:7.1f}")
        names = sorted(
            {n for s in traced.values() for n in (*s.parent, *s.child)},
            key=lambda n: -(traced["ours"].parent.get(n, 0) + traced["ours"].child.get(n, 0)),
        )
        print("  by name, per child (parent + child):")
        print(f"  {'syscall':<18}" + "".join(f"{m + ' p':>8}{m + ' c':>8}" for m in traced))
        for syscall in names:
            cells = [(s.parent.get(syscall, 0.0), s.child.get(syscall, 0.0)) for s in traced.values()]
            if all(abs(p) < 0.05 and abs(c) < 0.05 for p, c in cells):
                continue
            print(f"  {syscall:<18}" + "".join(f"{p:8.1f}{c:8.1f}" for p, c in cells))
        print("  the parent's usual syscalls from one fork to the next, in order:")
        for name, counts in traced.items():
            print(f"  {name} ({counts.cycle_share:.0%} of children): {' '.join(counts.cycle)}")
    else:
        print(f"syscalls per child: skipped ({why_not})")

    probe_n = 30 if args.quick else 300
    print(f"where the time goes, per child (probe: {probe_n} children each, blocks taking turns; medians, us)")
    probes = postfork(probe_n)
    print(f"  {'phase':<36}" + "".join(f"{name:>8}" for name in probes) + f"{'ours-raw':>9}")
    for key, label in _PHASES:
        cells = [probes[name][key] for name in probes]
        print(f"  {label:<36}" + "".join(f"{c:8.0f}" for c in cells) + f"{probes['ours'][key] - probes['raw'][key]:9.0f}")
    for name, probe in probes.items():
        low, high = probe["parent_work_deciles"]
        print(
            f"  {name}: the parent works {probe['parent_work']:.0f} us [{low:.0f}-{high:.0f}] after fork() "
            f"until {probe['sleeps_in']}; the entry ran after that in {probe['entry_after_sleep']:.0%} of children"
        )
    steps = ", ".join(f"{label} {at:.0f}" for label, at in probes["ours"]["timeline"])
    print(f"  ours, us after fork() at each call ({probes['ours']['timeline_share']:.0%} of children): {steps}")

    print("parent heap series: raw and ours in turn, from a parent grown by touched ballast (medians of pairs)")
    print(f"  {'MiB':>5} {'raw us':>9} {'ours us':>9} {'ours-raw':>9} {'ours/raw':>9} {'overhead':>9}")
    under: int | None = None
    for mib in heaps:
        ballast = Ballast(mib)
        # A fork of a big parent is slow: fewer children per block keep a round short.
        heap_block = max(2, block * 10 // max(10, mib // 10))
        heap_rounds = max(10, rounds // 2 if mib < 200 else rounds // 4)
        heap = interleaved(["raw", "ours"], heap_block, heap_rounds, warmup=1)
        ballast.release()
        ratio = median_ratio(seconds(heap["ours"]), seconds(heap["raw"]))
        extra = statistics.median(o - r for o, r in zip(seconds(heap["ours"]), seconds(heap["raw"]), strict=True))
        print(
            f"  {mib:>5} {statistics.median(seconds(heap['raw'])) * 1e6:9.1f} "
            f"{statistics.median(seconds(heap['ours'])) * 1e6:9.1f} {extra * 1e6:9.1f} {ratio:9.3f} {ratio - 1:9.1%}"
        )
        if under is None and ratio - 1 < 0.05:
            under = mib
    if under is None:
        print(f"  our overhead stays above 5 % of the fork up to {max(heaps)} MiB")
    else:
        print(f"  our overhead is under 5 % of the fork from {under} MiB of parent heap")

    targets: list[Target] = [at_most("per child, against raw", statistics.median(ours_raw), 1.25)]
    if traced is None:
        targets.append(skipped("syscalls per child", "<= 16", "no strace run"))
    else:
        targets.append(at_most("syscalls per child", traced["ours"].total, 16, unit=""))
    parent_faults, mp_faults = faults["ours"][0], faults["mp"][0]
    targets.append(
        Target(
            "parent page faults per child",
            parent_faults,
            f"<= mp's {mp_faults:.1f}",
            parent_faults <= mp_faults,
            "",
        )
    )
    targets.append(at_least("speed against multiprocessing", statistics.median(mp_ours), 1.1, note="mp / ours"))
    print_targets("targets (fork+wait per child)", targets)
    write_targets(args.json, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
