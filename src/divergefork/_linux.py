"""The platform seam: everything that differs between Linux and other POSIX systems.

Linux gives us pidfds (a reaped-and-reused pid can never be signalled by mistake, and a
child's exit is a pollable descriptor), ``PR_SET_PDEATHSIG`` (the kernel kills a child whose
parent died, even by SIGKILL), ``PR_SET_CHILD_SUBREAPER`` and the kernel's own thread count
(``/proc/self/task``). Elsewhere they degrade: signals go by pid (safe while the child is
unreaped, because an unreaped pid is never reused), children are found by polling
``waitid(WNOHANG)`` with a backoff, and only Python's own threads are counted.

Set ``DIVERGEFORK_NO_PIDFD=1`` to force the polling fallback on Linux (the tests do, to test it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Final, final

__all__ = [
    "HAVE_FORK",
    "HAVE_PDEATHSIG",
    "SigSet",
    "block_signals",
    "have_pidfd",
    "pidfd_open",
    "restore_signals",
    "set_parent_death_signal",
    "signal_group",
    "signal_process",
    "signals_blocked",
    "thread_count",
]

HAVE_FORK: Final = hasattr(os, "fork")

_libc = ctypes.CDLL(None)

# Signals are blocked around every fork and every reap, so this is on the per-child path. The
# public signal.pthread_sigmask turns each of ~62 signals into an enum member on every call
# (measured: +10-20 % per child); libc's through ctypes, on a raw sigset_t, does not.
#: A sigset_t (128 bytes on glibc and musl, more than any other libc uses).
SigSet: Final = ctypes.c_ubyte * 128


def _load_sigmask() -> tuple[ctypes._NamedFuncPointer, ctypes.Array[ctypes.c_ubyte]]:
    try:
        sigmask = _libc.pthread_sigmask
    except AttributeError as exc:
        raise ImportError(f"divergefork needs the C library's pthread_sigmask through ctypes: {exc}") from exc
    sigmask.restype = ctypes.c_int
    every = SigSet()
    _libc.sigfillset(every)  # the kernel silently keeps SIGKILL and SIGSTOP unblocked
    return sigmask, every


_pthread_sigmask, _EVERY_SIGNAL = _load_sigmask()


# SIGKILL can never be blocked, so a mask the kernel saved never has its bit set: a buffer
# that still holds it was never written. Signal n is bit n - 1 of the first unsigned long.
_WORD: Final = ctypes.sizeof(ctypes.c_ulong)
_UNSAVED_BYTE: Final = (
    (signal.SIGKILL - 1) // 8 if sys.byteorder == "little" else _WORD - 1 - (signal.SIGKILL - 1) // 8
)
_UNSAVED_BIT: Final = 1 << (signal.SIGKILL - 1) % 8


def mask_buffer() -> ctypes.Array[ctypes.c_ubyte]:
    """A buffer for a saved signal mask, marked as not yet written by the kernel."""
    buffer = SigSet()
    buffer[_UNSAVED_BYTE] = _UNSAVED_BIT
    return buffer


def block_signals(saved: ctypes.Array[ctypes.c_ubyte]) -> None:
    """Block every signal, saving the mask that was in force into ``saved``.

    ``saved`` comes from :func:`mask_buffer` *before* the call: Python may run a pending
    signal's handler as soon as this returns, and a ``finally`` must then know whether the
    mask was saved (and so must be restored) from the buffer alone.
    """
    _pthread_sigmask(signal.SIG_BLOCK, _EVERY_SIGNAL, saved)


def restore_signals(saved: ctypes.Array[ctypes.c_ubyte]) -> None:
    """Put back the mask in ``saved``, if :func:`block_signals` really saved one."""
    if not saved[_UNSAVED_BYTE] & _UNSAVED_BIT:
        _pthread_sigmask(signal.SIG_SETMASK, saved, None)


def current_mask() -> ctypes.Array[ctypes.c_ubyte]:
    """The calling thread's signal mask, unchanged."""
    saved = mask_buffer()
    _pthread_sigmask(signal.SIG_BLOCK, None, saved)
    return saved


@contextlib.contextmanager
def signals_blocked() -> Iterator[ctypes.Array[ctypes.c_ubyte]]:
    """Block every signal for the ``with`` body; yield the caller's mask.

    For bookkeeping that an interrupt must not split: a Python handler (Ctrl-C's
    KeyboardInterrupt) then raises only once the mask is restored, with nothing half-done.
    """
    saved = mask_buffer()
    try:
        block_signals(saved)
        yield saved
    finally:
        restore_signals(saved)


def _load_prctl() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = _libc.prctl
    except AttributeError:
        return None
    prctl.restype = ctypes.c_int
    return prctl


_prctl: Final = _load_prctl()
HAVE_PDEATHSIG: Final = _prctl is not None
_PR_SET_PDEATHSIG: Final = 1
_PR_GET_PDEATHSIG: Final = 2
_PR_SET_CHILD_SUBREAPER: Final = 36


def prctl_function() -> ctypes._NamedFuncPointer | None:
    """libc's ``prctl`` through ctypes (plain int arguments), or None off Linux."""
    return _prctl


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent thread dies (Linux)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def parent_death_signal() -> int:
    """This process's parent-death signal (0 for none); for tests."""
    if _prctl is None:
        return 0
    sig = ctypes.c_int(0)
    _prctl(_PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    return sig.value


def thread_count() -> int:
    """Threads in this process as the kernel counts them, native ones included.

    A ``stat`` of ``/proc/self/task``: its link count is 2 plus one per thread. Elsewhere,
    only the threads the ``threading`` module knows.
    """
    try:
        return os.stat("/proc/self/task").st_nlink - 2
    except OSError:
        return threading.active_count()


@final
class _ThisProcess:
    """This process's pid, kept current by an at-fork hook: read with no system call.

    (``os.getpid()`` is a system call; the fork path asks "which process am I?" several
    times per child.) An attribute read, not a call, also for ``Scope.__exit__``, which must
    call nothing where an interrupt would skip its bookkeeping.
    """

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = os.getpid()

    def refresh(self) -> None:
        self.pid = os.getpid()


THIS_PROCESS: Final = _ThisProcess()
os.register_at_fork(after_in_child=THIS_PROCESS.refresh)


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
    """A close-on-exec pidfd for ``pid``; ``None`` without pidfds or out of descriptors.

    Callers then fall back to polling ``waitid``, so running out of descriptors never stops
    a child from being waited for.
    """
    if not have_pidfd():
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            return None
        raise


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

    Only called with the pid of a child we have not reaped yet: a pid that is some live
    process's group id is never handed out again, so this cannot hit a stranger.
    """
    try:
        os.killpg(pgid, sig)
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.EPERM):
            return False
        raise
    return True


_controlling_terminal: bool | None = None


def has_controlling_terminal() -> bool:
    """Whether this process has a controlling terminal (asked once per process)."""
    global _controlling_terminal
    if _controlling_terminal is None:
        try:
            os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC))
        except OSError:
            _controlling_terminal = False
        else:
            _controlling_terminal = True
    return _controlling_terminal


def _forget_terminal() -> None:
    global _controlling_terminal
    _controlling_terminal = None


os.register_at_fork(after_in_child=_forget_terminal)


_CATCHABLE: Final = tuple(
    sig for sig in range(1, signal.NSIG) if sig not in (signal.SIGKILL, signal.SIGSTOP)
)


def dispositions() -> dict[int, object]:
    """This process's Python-level signal dispositions (what ``signal.getsignal`` knows)."""
    found: dict[int, object] = {}
    for sig in _CATCHABLE:
        try:
            found[sig] = signal.getsignal(sig)
        except ValueError:  # a signal number this platform does not have
            continue
    return found


def restore_dispositions(saved: dict[int, object]) -> None:
    """Set every disposition that differs from ``saved`` back to it (C-level ones excepted)."""
    for sig, handler in saved.items():
        if handler is None or signal.getsignal(sig) is handler:
            continue
        try:
            signal.signal(sig, handler)  # type: ignore[arg-type]  # getsignal's own values
        except (OSError, ValueError, TypeError):
            continue
