"""Where one child's fork+wait time goes, phase by phase, in the parent and in the child.

Run by bench_fork.py as ``python _postfork_probe.py N``: N children each of raw, ours and mp,
in blocks of 10 taking turns (as in bench_fork); prints one JSON object.

Before divergefork or multiprocessing is imported, ``os.fork``, the wait calls, the descriptor
calls and ``select.epoll`` are replaced by thin wrappers that note the monotonic time of each
call (a wrapper costs well under a microsecond, plus the page or two it writes). For each
child we note, on CLOCK_MONOTONIC (one clock for every process):

- ``before_fork``: from the previous child's wait returning to ``os.fork`` being called;
- ``fork``: the fork call itself, as the parent sees it (page tables copied);
- ``parent_work``: from fork() returning to the parent's first call that can sleep
  (``epoll.poll`` with a timeout other than 0, or a wait call without WNOHANG);
- ``child_start``: from the parent's fork() returning to fork() returning in the child;
- ``child_setup``: from there to the child's first line of user code (the entry);
- ``after_wake``: from the parent's last sleep returning to the wait call returning.

Only standard-library names are wrapped, never divergefork's own, so the probe measures
whatever runtime is installed.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NoReturn

_now = time.monotonic_ns


class _Record:
    """The parent's notes on the child being forked now."""

    def __init__(self) -> None:
        self.fork_called = 0
        self.forked = 0  # 0: not recording (before the fork, or after the parent slept)
        self.slept = 0
        self.woke = 0
        self.sleeps_in = ""
        self.events: list[tuple[str, int]] = []  # (call, ns after fork) until the parent slept


_current = _Record()
_records: list[_Record] = []


def _note(label: str, sleeps: bool) -> None:
    record = _current
    if record.forked and not record.slept:
        at = _now()
        record.events.append((label, at - record.forked))
        if sleeps:
            record.slept = at
            record.sleeps_in = label


def _woke(sleeps: bool) -> None:
    if sleeps and _current.slept:
        _current.woke = _now()


def _wrap(name: str, sleeps: Callable[..., bool] = lambda *a: False) -> None:
    real = getattr(os, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        blocking = sleeps(*args, **kwargs)
        _note(name, blocking)
        result = real(*args, **kwargs)
        _woke(blocking)
        return result

    setattr(os, name, wrapper)


class _Stamps:
    """Shared memory, one slot per child: when fork() returned in it, when its entry ran."""

    def __init__(self, n: int) -> None:
        self.mapping = mmap.mmap(-1, 16 * n)
        self.slots = memoryview(self.mapping).cast("q")
        self.index = 0  # the child being forked now

    def forked(self) -> None:
        self.slots[2 * self.index] = _now()

    def entry(self, index: int) -> None:
        self.slots[2 * index + 1] = _now()


_stamps = _Stamps(1)


def _fork() -> int:
    global _current
    _current = _Record()
    _current.fork_called = _now()
    pid = _real_fork()
    if pid:
        _current.forked = _now()
    else:
        _stamps.forked()
    return pid


class _Epoll:
    """A stand-in for select.epoll (which cannot be subclassed) that notes each call."""

    def __init__(self, *args: Any) -> None:
        _note("epoll()", False)
        self._ep = _real_epoll(*args)

    def poll(self, timeout: float | None = None, maxevents: int = -1) -> list[tuple[int, int]]:
        blocking = timeout is None or timeout != 0
        _note("epoll.poll", blocking)
        events = self._ep.poll(timeout, maxevents)
        _woke(blocking)
        return events

    def register(self, fd: int, eventmask: int = select.EPOLLIN) -> None:
        _note("epoll.register", False)
        self._ep.register(fd, eventmask)

    def unregister(self, fd: int) -> None:
        _note("epoll.unregister", False)
        self._ep.unregister(fd)

    def modify(self, fd: int, eventmask: int) -> None:
        _note("epoll.modify", False)
        self._ep.modify(fd, eventmask)

    def close(self) -> None:
        _note("epoll.close", False)
        self._ep.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ep, name)


def _blocking_wait(*args: Any) -> bool:
    return len(args) < 2 or not args[1] & os.WNOHANG


_real_fork = os.fork
_real_epoll = select.epoll
setattr(os, "fork", _fork)
setattr(select, "epoll", _Epoll)
_wrap("wait4", _blocking_wait)
_wrap("waitpid", _blocking_wait)
_wrap("waitid", lambda *args: len(args) < 3 or not args[2] & os.WNOHANG)
for _name in ("close", "read", "write", "pipe", "pipe2", "pidfd_open", "kill", "setpgid"):
    if hasattr(os, _name):
        _wrap(_name)

# Only now: modules that bind os.fork and friends at import take the wrappers.
import multiprocessing  # noqa: E402

import divergefork as df  # noqa: E402

_MP = multiprocessing.get_context("fork")


def _ours_entry(index: int) -> NoReturn:
    _stamps.entry(index)
    df.exit_child(0)


def _mp_target(index: int) -> None:
    _stamps.entry(index)


def _one(method: str, i: int) -> None:
    if method == "raw":
        pid = os.fork()
        if pid == 0:
            _stamps.entry(i)
            os._exit(0)
        os.wait4(pid, 0)
    elif method == "ours":
        report = df.fork(i, _ours_entry).wait()
        if not report.ok:
            raise SystemExit(f"probe child failed: {report}")
    elif method == "mp":
        proc = _MP.Process(target=_mp_target, args=(i,))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"probe child failed: {proc.exitcode}")
    else:
        raise SystemExit(f"unknown method {method!r}: raw, ours or mp")


def run(method: str, n: int, first: int, stamps: _Stamps) -> list[tuple[int, int, _Record]]:
    """Fork and wait for n children; per child (start, wait returned, the parent's notes)."""
    global _stamps
    _stamps = stamps
    rows = []
    for i in range(first, first + n):
        started = _now()
        stamps.index = i
        _one(method, i)
        rows.append((started, _now(), _current))
    return rows


def _median_us(values: list[int]) -> float:
    return statistics.median(values) / 1e3


def summary(rows: list[tuple[int, int, _Record]], slots: memoryview) -> dict[str, Any]:
    if any(not r.slept for _, _, r in rows):
        raise SystemExit("probe: a parent never slept after fork")
    n = len(rows)
    parent_work = [r.slept - r.forked for _, _, r in rows]
    # The usual sequence of calls after fork, with the median time of each.
    sequences = Counter(tuple(label for label, _ in r.events) for _, _, r in rows)
    usual, count = sequences.most_common(1)[0]
    matching = [r.events for _, _, r in rows if tuple(label for label, _ in r.events) == usual]
    timeline = [(label, statistics.median(e[k][1] / 1e3 for e in matching)) for k, label in enumerate(usual)]
    return {
        "children": n,
        "per_child": _median_us([done - started for started, done, _ in rows]),
        "before_fork": _median_us([r.fork_called - started for started, _, r in rows]),
        "fork": _median_us([r.forked - r.fork_called for _, _, r in rows]),
        "parent_work": _median_us(parent_work),
        "parent_work_deciles": [q / 1e3 for q in statistics.quantiles(parent_work, n=10)[::8]],
        "sleeps_in": Counter(r.sleeps_in for _, _, r in rows).most_common(1)[0][0],
        "child_start": _median_us([slots[2 * i] - r.forked for i, (_, _, r) in enumerate(rows)]),
        "child_setup": _median_us([slots[2 * i + 1] - slots[2 * i] for i in range(n)]),
        "entry_after_sleep": sum(slots[2 * i + 1] > r.slept for i, (_, _, r) in enumerate(rows)) / n,
        "after_wake": _median_us([done - r.woke for _, done, r in rows]),
        "timeline": timeline,
        "timeline_share": count / n,
    }


def main() -> int:
    """``_postfork_probe.py N [BLOCK]``: N children of each method, in blocks taking turns."""
    n = int(sys.argv[1])
    block = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    methods = ["raw", "ours", "mp"]
    for method in methods:
        run(method, block, 0, _Stamps(block))  # warm-up: lazy imports, caches
    stamps = {method: _Stamps(n) for method in methods}
    rows: dict[str, list[tuple[int, int, _Record]]] = {method: [] for method in methods}
    for r in range(n // block):
        for method in [*methods[r % 3 :], *methods[: r % 3]]:
            rows[method] += run(method, block, r * block, stamps[method])
    json.dump({method: summary(rows[method], stamps[method].slots) for method in methods}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
