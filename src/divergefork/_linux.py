"""The platform seam: everything that differs between Linux and other POSIX systems.

Linux gives us pidfds (a reaped-and-reused pid can never be signalled by mistake, and the
exit of a child is a readable file descriptor we can put in one epoll) and
``PR_SET_PDEATHSIG`` (the kernel kills a child whose parent died, even by SIGKILL). Elsewhere
both degrade: signals go by pid (safe while the child is unreaped, because an unreaped pid is
never reused) and children are found by polling ``wait4(pid, WNOHANG)`` with a backoff.

Set ``DIVERGEFORK_NO_PIDFD=1`` to force the fallback on Linux (the test-suite does, to test it).
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Final

__all__ = [
    "HAVE_FORK",
    "HAVE_PDEATHSIG",
    "have_pidfd",
    "pidfd_open",
    "signal_process",
    "signal_group",
]

HAVE_FORK: Final = hasattr(os, "fork")

# The C-level pthread_sigmask: signal.pthread_sigmask converts its answer into a set of enum
# members; this one takes and returns plain ints. Used around every fork.
raw_pthread_sigmask: Final[Callable[[int, Iterable[int]], set[int]]] = importlib.import_module(
    "_signal"
).pthread_sigmask
#: The C-level getsignal: signal.getsignal wraps its answer in an enum member.
raw_getsignal: Final[Callable[[int], object]] = importlib.import_module("_signal").getsignal
#: Every signal that can be blocked: blocked around fork() so that no Python handler can raise
#: between the child's creation and its registration.
ALL_SIGNALS: Final = frozenset(int(s) for s in signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}

_PR_SET_PDEATHSIG: Final = 1
_PR_GET_PDEATHSIG: Final = 2


def _load_prctl() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    return prctl


# Bound once in the parent so the child, which pays a copy-on-write fault for every page it
# touches, only makes the call. Measured in a child: plain int arguments and no use_errno
# cost 4 page faults, prebuilt c_ulong arguments 8, and argtypes conversion with errno 24.
# Plain Python ints travel as C ints sign-extended to a register, which is what prctl's
# unsigned long arguments read for the small non-negative values passed here.
_prctl: Final = _load_prctl()
HAVE_PDEATHSIG: Final = _prctl is not None


def prctl_function() -> ctypes._NamedFuncPointer | None:
    """libc's ``prctl`` as a ctypes function (plain int arguments), or None off Linux."""
    return _prctl


def parent_death_signal() -> int:
    """This process's parent-death signal (0 for none); for tests."""
    if _prctl is None:
        return 0
    sig = ctypes.c_int(0)
    _prctl(_PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    return sig.value


def _probe_pidfd() -> bool:
    if os.environ.get("DIVERGEFORK_NO_PIDFD"):
        return False
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        return False
    os.close(fd)
    return True


_have_pidfd: bool | None = None


def have_pidfd() -> bool:
    """Whether this kernel and Python offer pidfds (probed once, lazily)."""
    global _have_pidfd
    if _have_pidfd is None:
        _have_pidfd = _probe_pidfd()
    return _have_pidfd


def pidfd_open(pid: int) -> int | None:
    """A close-on-exec pidfd for ``pid``, or ``None`` where pidfds are unavailable."""
    if not have_pidfd():
        return None
    return os.pidfd_open(pid)


def signal_process(pid: int, pidfd: int | None, sig: int) -> bool:
    """Send ``sig`` to one process; False if it is already gone."""
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if the group is empty or not ours.

    Only called with the pid of a child we have not reaped yet, or just reaped: a pid that is
    some live process's group id is never handed out again, so this cannot hit a stranger.
    """
    try:
        os.killpg(pgid, sig)
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.EPERM):
            return False
        raise
    return True
