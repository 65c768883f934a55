"""How long the parent works between fork() returning and going to sleep, per child.

Run by bench_fork.py as ``python _postfork_probe.py METHOD N``; prints one JSON object.

Before divergefork or multiprocessing is imported, ``os.fork``, the wait calls, the descriptor
calls and ``select.epoll`` are replaced by thin wrappers that note the monotonic time of each
call (a wrapper costs well under a microsecond). The parent's "work after fork" is the time
from fork() returning to the first call that can sleep: ``epoll.poll`` with a timeout other
than 0, or a wait call without WNOHANG. Every child also stamps the time its first line of
user code runs, so we see whether the child ran during that work or only after it.

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
_forked_at = 0  # monotonic ns when the last fork() returned in the parent; 0: not recording
_events: list[tuple[str, int]] = []  # (call, ns after fork) since that fork
_finished: list[tuple[int, str, list[tuple[str, int]]]] = []  # (ns to sleep, sleep call, events)


def _note(label: str, sleeps: bool) -> None:
    global _forked_at
    if _forked_at:
        at = _now() - _forked_at
        _events.append((label, at))
        if sleeps:
            _finished.append((at, label, list(_events)))
            _sleep_starts.append(_forked_at + at)
            _fork_returns.append(_forked_at)
            _forked_at = 0


_sleep_starts: list[int] = []  # monotonic ns at which the parent went to sleep, per child
_fork_returns: list[int] = []  # monotonic ns at which fork() returned in the parent, per child


def _wrap(name: str, sleeps: Callable[..., bool] = lambda *a: False) -> None:
    real = getattr(os, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _note(name, sleeps(*args, **kwargs))
        return real(*args, **kwargs)

    setattr(os, name, wrapper)


def _fork() -> int:
    global _forked_at
    pid = _real_fork()
    if pid:
        _events.clear()
        _forked_at = _now()
    else:
        _forked_at = 0
    return pid


class _Epoll:
    """A stand-in for select.epoll (which cannot be subclassed) that notes each call."""

    def __init__(self, *args: Any) -> None:
        _note("epoll()", False)
        self._ep = _real_epoll(*args)

    def poll(self, timeout: float | None = None, maxevents: int = -1) -> list[tuple[int, int]]:
        _note("epoll.poll", timeout is None or timeout != 0)
        return self._ep.poll(timeout, maxevents)

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


class _Stamps:
    """One slot per child in shared memory: when its first line of user code ran."""

    def __init__(self, n: int) -> None:
        self.mapping = mmap.mmap(-1, 8 * n)
        self.slots = memoryview(self.mapping).cast("q")

    def stamp(self, index: int) -> None:
        self.slots[index] = _now()


def _ours_entry(job: tuple[_Stamps, int]) -> NoReturn:
    job[0].stamp(job[1])
    df.exit_child(0)


def _mp_target(stamps: _Stamps, index: int) -> None:
    stamps.stamp(index)


def run(method: str, n: int, stamps: _Stamps) -> None:
    for i in range(n):
        if method == "raw":
            pid = os.fork()
            if pid == 0:
                stamps.stamp(i)
                os._exit(0)
            os.wait4(pid, 0)
        elif method == "ours":
            report = df.fork((stamps, i), _ours_entry).wait()
            if not report.ok:
                raise SystemExit(f"probe child failed: {report}")
        elif method == "mp":
            proc = _MP.Process(target=_mp_target, args=(stamps, i))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"probe child failed: {proc.exitcode}")
        else:
            raise SystemExit(f"unknown method {method!r}: raw, ours or mp")


def main() -> int:
    method, n = sys.argv[1], int(sys.argv[2])
    run(method, 10, _Stamps(10))  # warm-up: lazy imports, caches
    _finished.clear()
    _sleep_starts.clear()
    _fork_returns.clear()
    stamps = _Stamps(n)
    run(method, n, stamps)
    if len(_finished) != n:
        raise SystemExit(f"probe saw {len(_finished)} sleeps for {n} children ({method})")
    work_us = [at / 1e3 for at, _, _ in _finished]
    child_after = sum(stamps.slots[i] > _sleep_starts[i] for i in range(n))
    # The usual sequence of calls, with the median time of each after fork() returned.
    sequences = Counter(tuple(label for label, _ in events) for _, _, events in _finished)
    usual, count = sequences.most_common(1)[0]
    matching = [events for _, _, events in _finished if tuple(label for label, _ in events) == usual]
    timeline = [(label, statistics.median(events[k][1] / 1e3 for events in matching)) for k, label in enumerate(usual)]
    json.dump(
        {
            "method": method,
            "children": n,
            "work_us": statistics.median(work_us),
            "work_us_deciles": statistics.quantiles(work_us, n=10)[::8],
            "sleeps_in": Counter(label for _, label, _ in _finished).most_common(1)[0][0],
            "child_after_sleep": child_after / n,
            "child_first_line_us": statistics.median((stamps.slots[i] - _fork_returns[i]) / 1e3 for i in range(n)),
            "timeline": timeline,
            "timeline_share": count / n,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
