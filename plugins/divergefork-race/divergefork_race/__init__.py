"""Example divergefork plugin: children that add to one counter in shared memory.

``divergefork_children`` maps one :class:`divergefork.SharedCounter` in the parent and lends
it to a few children (``race-1``, ``race-2``, ...). A borrowed value is normally a private
copy-on-write copy, but the counter lives in a ``MAP_SHARED`` mapping, so every child adds to
the same physical word. ``divergefork_finished`` reads the counter back in the parent and prints
it against the expected count.

Why the counter is created during collection, and what that costs: it must exist in the
parent before the first child is forked (each child inherits the mapping), and
``divergefork_children`` is the last hook before forking, so it cannot be made lazily later.
Creating it maps one anonymous shared page (plus, for ``lock`` and ``sharded``, a POSIX
semaphore that is unlinked at once; for ``atomic``, loading libatomic). Nothing outside the
process is touched, so ``divergefork list``, ``--only`` leaving out the race children, or a
run rejected before forking merely map it for nothing: the mapping goes away with the
process. ``divergefork list --race-sync atomic`` does fail where libatomic is missing, as the
run would. ``divergefork_finished`` closes the counter; a second collection in one process
closes the first counter before lending a new one.

The default, ``--race-sync sharded``, is exact. ``divergefork run --race-sync none`` shows the
lesson of ``divergefork demo race``: the children still all exit 0, yet the count comes up short.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn, final

import divergefork as df

__all__ = [
    "RaceTask",
    "add_to_counter",
    "divergefork_addoption",
    "divergefork_children",
    "divergefork_finished",
]

SYNC_CHOICES: Final = ("none", "lock", "atomic", "sharded")
MAX_CHILDREN: Final = 64  # SharedCounter's default number of slots


@final
@dataclass(frozen=True, slots=True)
class RaceTask:
    """What each child borrows: the shared counter and how many times to add 1 to it."""

    counter: df.SharedCounter
    increments: int


def add_to_counter(task: RaceTask) -> NoReturn:
    """The children's entry: ``increments`` separate updates of the shared counter."""
    task.counter.add_repeatedly(task.increments)
    df.exit_child(0, result={"added": task.increments})


@final
@dataclass(frozen=True, slots=True)
class _Run:
    counter: df.SharedCounter
    increments: int
    names: frozenset[str]


# The counter lent in this run: divergefork_finished gets only reports, so the plugin (a
# module, loaded once per command) keeps it here between the two hooks.
_current: _Run | None = None


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace(",", "_"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, not {value:,}")
        return value

    return parse


@df.hookimpl
def divergefork_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("divergefork-race")
    group.add_argument(
        "--race-sync",
        choices=SYNC_CHOICES,
        default="sharded",
        help="how the race children's updates are synchronised (default: sharded; none loses updates)",
    )
    group.add_argument(
        "--race-children",
        type=_bounded_int(1, MAX_CHILDREN),
        default=3,
        metavar="K",
        help="how many children add to the shared counter (default: 3)",
    )
    group.add_argument(
        "--race-n",
        type=_bounded_int(1, 10**9),
        default=200_000,
        metavar="N",
        help="how many times each race child adds 1 (default: 200,000)",
    )


@df.hookimpl
def divergefork_children(config: df.Config) -> Sequence[df.ChildSpec[RaceTask]]:
    global _current
    options = config.options
    if _current is not None:  # a second collection in one process: lend a fresh counter
        _current.counter.close()
    counter = df.SharedCounter(options.race_sync)
    task = RaceTask(counter, options.race_n)
    names = [f"race-{k}" for k in range(1, options.race_children + 1)]
    _current = _Run(counter, task.increments, frozenset(names))
    return [df.ChildSpec(name, task, add_to_counter, timeout=120.0) for name in names]


@df.hookimpl
def divergefork_finished(reports: Sequence[df.Report]) -> None:
    global _current
    run, _current = _current, None
    if run is None:
        return
    ran = [report for report in reports if report.name in run.names]
    if ran:
        # Write to stderr: with `--json -` stdout carries nothing but the JSON document.
        print(_summary(run, len(ran)), file=sys.stderr)
    run.counter.close()


def _summary(run: _Run, children: int) -> str:
    value, expected = run.counter.value, children * run.increments
    sync = run.counter.sync
    who = "1 child" if children == 1 else f"{children} children"
    head = f"race: shared counter = {value:,} (expected {expected:,}, {who}, --race-sync {sync})"
    if value == expected:
        return f"{head}: exact"
    lost = expected - value
    return f"{head}: {lost:,} updates lost ({lost / expected:.2%}); try --race-sync sharded"
