"""Where a child was when it ended badly: faulthandler, written to the child's status pipe.

The first time a process forks a child, faulthandler is enabled in it once (for fatal signals,
and for ``STACK_SIGNAL``), writing to descriptor ``stack_fd()``: a copy of that process's own
stderr, so its own crash is reported there as with ``python -X faulthandler``. Every child
inherits the handlers and puts its status pipe on that descriptor number, so a crash, or the
stack signal its parent sends when a deadline strikes, writes the child's Python traceback
(every thread) into its own pipe, for ``Report.stack``. Nothing of it is done per child but
one ``dup2``. Exec'd programs get neither (handlers reset, the descriptor is close-on-exec).
"""

from __future__ import annotations

import faulthandler
import fcntl
import os
import signal
from typing import Final

__all__ = ["FATAL_SIGNALS", "STACK_SIGNAL", "stack_fd"]

#: The signal a parent sends to a child when its deadline strikes (or its scope is
#: cancelled), before SIGTERM, to take its stack: a real-time signal users are unlikely to use.
STACK_SIGNAL: Final[int] = int(signal.SIGRTMAX) - 4
#: Signals whose end carries the stack faulthandler wrote at the crash.
FATAL_SIGNALS: Final = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT})

_fd = -2  # -2: not decided yet in this process; -1: unavailable


def stack_fd() -> int:
    """The descriptor faulthandler writes to in this process (-1 if unavailable).

    Inherited by forked children with the same number, so it is decided once per process
    tree: a child forking children of its own keeps it (it is its status pipe there).
    """
    global _fd
    if _fd == -2:
        _fd = _enable()
    return _fd


def _enable() -> int:
    try:
        fd = fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:
        try:
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return -1
        fd = fcntl.fcntl(null, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(null)
    try:
        faulthandler.enable(file=fd, all_threads=True)
        faulthandler.register(STACK_SIGNAL, file=fd, all_threads=True, chain=False)
    except (OSError, RuntimeError, ValueError):
        os.close(fd)
        return -1
    return fd


def reclaim() -> None:
    """In a child: point faulthandler back at ``stack_fd()`` if other code took it since.

    (A test runner's own faulthandler set-up, say.) Costs a few system calls, so it is for
    children that expect that, not for every child.
    """
    if _fd >= 0:
        try:
            faulthandler.enable(file=_fd, all_threads=True)
            faulthandler.register(STACK_SIGNAL, file=_fd, all_threads=True, chain=False)
        except (OSError, RuntimeError, ValueError):
            pass


def trim(text: str) -> str:
    """The stack as the user reads it: faulthandler's text down to the entry's first frame.

    Below the entry come divergefork's frames and then the parent's, up to its call of
    ``fork()``: a copy of the parent's stack, not the child's story.
    """
    package = f'File "{os.path.dirname(os.path.abspath(__file__))}{os.sep}'
    kept: list[str] = []
    inside = False  # below one of our frames, until the next thread's header
    for line in text.splitlines():
        if not line.startswith(" "):
            inside = False
        elif package in line:
            inside = True
        if not inside:
            kept.append(line)
    return "\n".join(kept).strip("\n") + "\n" if kept else ""
