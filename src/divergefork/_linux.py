"""The platform seam: everything that differs between Linux and other POSIX systems.

Linux gives us pidfds (a reaped-and-reused pid can never be signalled by mistake, and the
exit of a child is a readable file descriptor we can put in one epoll) and
``PR_SET_PDEATHSIG`` (the kernel kills a child whose parent died, even by SIGKILL). Elsewhere
both degrade: signals go by pid (safe while the child is unreaped, because an unreaped pid is
never reused) and children are found by polling ``wait4(pid, WNOHANG)`` with a backoff.

Set ``DIVERGEFORK_NO_PIDFD=1`` to force the fallback on Linux (the test-suite does, to test it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
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

#: The C-level getsignal: signal.getsignal wraps its answer in an enum member.
raw_getsignal: Final[Callable[[int], object]] = importlib.import_module("_signal").getsignal

# pthread_sigmask through ctypes, on pre-built sigset_t buffers. Signals are blocked around
# every fork and every reap, and in a parent that has just forked every page it writes is
# copied (see _fork.start). _signal.pthread_sigmask builds a set of ~62 ints per call: the
# three calls it took to save, block and restore wrote about 19 pages per fork; the two
# ctypes calls here write about 10 (measured in a fork loop with 150 children alive).
#: A sigset_t (128 bytes on glibc and musl, more than any other libc uses).
SigSet: Final = ctypes.c_ubyte * 128
SIG_BLOCK: Final = int(signal.SIG_BLOCK)
SIG_SETMASK: Final = int(signal.SIG_SETMASK)
# SIGKILL can never be blocked, so a mask the kernel saved never has its bit set: a buffer
# still holding it was never written. Signal n is bit n - 1 of the first unsigned long.
_WORD: Final = ctypes.sizeof(ctypes.c_ulong)
UNSAVED_BYTE: Final = (
    (signal.SIGKILL - 1) // 8 if sys.byteorder == "little" else _WORD - 1 - (signal.SIGKILL - 1) // 8
)
UNSAVED_BIT: Final = 1 << (signal.SIGKILL - 1) % 8


def _load_sigmask() -> tuple[ctypes._NamedFuncPointer, ctypes.Array[ctypes.c_ubyte]]:
    try:
        libc = ctypes.CDLL(None)
        sigmask = libc.pthread_sigmask
    except (OSError, AttributeError) as exc:
        raise ImportError(f"divergefork needs the C library's pthread_sigmask through ctypes: {exc}") from exc
    sigmask.restype = ctypes.c_int
    every = SigSet()
    libc.sigfillset(every)  # the kernel silently keeps SIGKILL and SIGSTOP unblocked
    return sigmask, every


#: ``pthread_sigmask(how, set, oldset)`` with ``SigSet`` buffers (or None); returns 0 or an errno.
pthread_sigmask, EVERY_SIGNAL = _load_sigmask()
# Spare buffers for saved masks (one per nested use; a signal handler may fork while we hold one).
spare_masks: Final[list[ctypes.Array[ctypes.c_ubyte]]] = []


def mask_buffer() -> ctypes.Array[ctypes.c_ubyte]:
    """A buffer for the mask that blocking every signal saves, marked as not yet written.

    Use :func:`signals_blocked`; ``_fork.start`` inlines the same calls on the fork path.
    """
    saved = spare_masks.pop() if spare_masks else SigSet()
    saved[UNSAVED_BYTE] = UNSAVED_BIT
    return saved


def restore_signals(saved: ctypes.Array[ctypes.c_ubyte]) -> None:
    """Restore the mask saved in ``saved`` (nothing if it was never saved); recycle the buffer."""
    if not saved[UNSAVED_BYTE] & UNSAVED_BIT:
        pthread_sigmask(SIG_SETMASK, saved, None)
    spare_masks.append(saved)


@contextlib.contextmanager
def signals_blocked() -> Iterator[ctypes.Array[ctypes.c_ubyte]]:
    """Block every signal for the ``with`` body; yield the mask saved (the caller's).

    For bookkeeping that an interrupt must not split: a Python handler then raises only where
    the mask is restored, with nothing half-done. (The fork path inlines the same calls.)
    """
    saved = mask_buffer()
    try:
        pthread_sigmask(SIG_BLOCK, EVERY_SIGNAL, saved)
        yield saved
    finally:
        restore_signals(saved)


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


def no_pidfd_open(pid: int) -> int:
    """Stands in for ``os.pidfd_open`` where Python lacks it (never called: no pidfds there)."""
    raise OSError(errno.ENOSYS, "pidfd_open is not available")


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
