"""``fork()`` and the ``Child`` handle. The only place in divergefork that calls ``os.fork``."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, NoReturn, TypeVar, final

from . import _child, _linux
from ._errors import DivergeforkError, ForkUnsafeError
from ._limits import Limits

from ._reap import Waiter

from ._report import Outcome, Report

__all__ = ["Child", "Options", "fork", "start"]

T = TypeVar("T")

OnParentExit = Literal["kill", "keep"]
Threads = Literal["refuse", "warn", "allow"]
Codec = Literal["json", "pickle"]

_PIPE_FLAGS: Final = os.O_CLOEXEC
# Bound here, not looked up per fork: reading os.fork writes the os module's reference count,
# one more page copied per fork (see start()).
_os_fork: Final = os.fork
_os_pipe2: Final = os.pipe2
_os_close: Final = os.close
_monotonic: Final = time.monotonic
_pidfd_open: Final[Callable[[int], int]] = getattr(os, "pidfd_open", _linux.no_pidfd_open)
_HAVE_FORK: Final = _linux.HAVE_FORK
_pthread_sigmask: Final = _linux.pthread_sigmask
_spare_masks: Final = _linux.spare_masks
_SigSet: Final = _linux.SigSet
_UNSAVED_BYTE: Final = _linux.UNSAVED_BYTE
_UNSAVED_BIT: Final = _linux.UNSAVED_BIT
_SIG_SETMASK: Final = _linux.SIG_SETMASK
_SIG_BLOCK: Final = _linux.SIG_BLOCK
_EVERY_SIGNAL: Final = _linux.EVERY_SIGNAL

# The C-level getsignal: signal.getsignal wraps its answer in an enum member, and in a parent
# that forks hundreds of children every object touched per fork is a page copied per fork.
_getsignal: Final = _linux.raw_getsignal
_SIGCHLD: Final = int(signal.SIGCHLD)
_SIG_IGN: Final = int(signal.SIG_IGN)

# threading.active_count() takes a lock and touches a dozen pages; the two registries it
# counts are what we need (Python threads, running or starting).
_active: Final[dict[int, threading.Thread]] = getattr(threading, "_active", {})
_limbo: Final[dict[object, threading.Thread]] = getattr(threading, "_limbo", {})


# This process's pid, kept current by an at-fork hook instead of a getpid() per fork.
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def current_pid() -> int:
    """This process's pid (cheap)."""
    return _pid


@final
@dataclass(frozen=True, slots=True)
class Options:
    """The validated keyword options of one ``fork`` call (or a ``Scope``'s defaults)."""

    name: str | None = None
    timeout: float | None = None
    grace: float = 2.0
    on_parent_exit: OnParentExit = "kill"
    new_group: bool = True
    threads: Threads = "refuse"
    capture: bool = False
    contain: bool = True
    limits: Limits | None = None
    codec: Codec = "json"

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(f"fork(name=...) must be a non-empty str or None, not {self.name!r}")
        if self.timeout is not None:
            _check_seconds("timeout", self.timeout)
            if self.timeout <= 0:
                raise ValueError(f"fork(timeout=...) must be > 0 seconds or None, not {self.timeout!r}")
        _check_seconds("grace", self.grace)
        if self.grace < 0:
            raise ValueError(f"fork(grace=...) must be >= 0 seconds, not {self.grace!r}")
        if self.on_parent_exit not in ("kill", "keep"):
            raise ValueError(f"fork(on_parent_exit=...) must be 'kill' or 'keep', not {self.on_parent_exit!r}")
        if self.threads not in ("refuse", "warn", "allow"):
            raise ValueError(f"fork(threads=...) must be 'refuse', 'warn' or 'allow', not {self.threads!r}")
        if self.limits is not None and not isinstance(self.limits, Limits):
            raise TypeError(f"fork(limits=...) must be a df.Limits or None, not {type(self.limits).__name__}")
        if self.codec not in ("json", "pickle"):
            raise ValueError(f"fork(codec=...) must be 'json' or 'pickle', not {self.codec!r}")
        for flag in ("new_group", "capture", "contain"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"fork({flag}=...) must be True or False, not {getattr(self, flag)!r}")


def _check_seconds(option: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"fork({option}=...) must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"fork({option}=...) must be finite, not {value!r}")


def fork(
    value: T,
    entry: Callable[[T], NoReturn],
    *,
    name: str | None = None,
    timeout: float | None = None,
    grace: float = 2.0,
    on_parent_exit: OnParentExit = "kill",
    new_group: bool = True,
    threads: Threads = "refuse",
    capture: bool = False,
    contain: bool = True,
    limits: Limits | None = None,
    codec: Codec = "json",
) -> Child:
    """Fork a child that runs ``entry(value)`` and never returns; return its handle at once.

    The child gets a copy-on-write copy of ``value``: whatever it does to it, the parent's
    object is untouched. ``entry`` must diverge: exit (``exit_child``), exec
    (``exec_child``), raise, or loop until killed. See the README for every option.
    """
    check_entry(entry)
    options = Options(name, timeout, grace, on_parent_exit, new_group, threads, capture, contain, limits, codec)
    return start(value, entry, options)


def check_entry(entry: object) -> None:
    if not callable(entry):
        raise TypeError(
            f"fork(value, entry): entry must be a callable taking the value and never returning, "
            f"not {type(entry).__name__} {entry!r}"
        )


def entry_name(entry: Callable[..., object]) -> str:
    """The default child name: the entry's qualified name (of the function for a partial)."""
    name = getattr(entry, "__qualname__", None)
    if isinstance(name, str):
        return name
    func = getattr(entry, "func", None)  # functools.partial
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(entry).__name__


def start(
    value: T,
    entry: Callable[[T], NoReturn],
    options: Options,
    waiter: Waiter | None = None,
    child: Child | None = None,
) -> Child:
    """Fork now with already validated options.

    Written flat on purpose. A parent forking many children re-shares all its pages with each
    new child, so every page it writes afterwards is copied again (about 4.5 us a page, measured
    in benchmarks/bench_fanout.py). Each Python function called per fork writes to its function,
    code and globals objects (reference counts), so helpers are inlined on this path.
    """
    if not _HAVE_FORK:
        raise ForkUnsafeError(
            f"this platform ({sys.platform}) has no fork(); divergefork needs a POSIX system "
            "(use subprocess or multiprocessing's 'spawn' context instead)"
        )
    if _getsignal(_SIGCHLD) == _SIG_IGN:
        raise ForkUnsafeError(
            "SIGCHLD is set to SIG_IGN, so the kernel would discard every child's exit status; "
            "restore it with signal.signal(signal.SIGCHLD, signal.SIG_DFL) before forking"
        )
    if options.threads != "allow" and (
        len(_active) + len(_limbo) != 1 if _active else threading.active_count() != 1
    ):
        _threads_at_fork(options.threads)
    if _orphans:
        _reap_orphans()
    if waiter is not None and waiter.owner != _pid:
        raise DivergeforkError(
            f"this Scope belongs to process {waiter.owner}; process {os.getpid()} cannot fork "
            "into it: a child must open a Scope of its own"
        )

    # Text still in a buffer would be written twice: once by the parent, once by the child.
    stream = sys.stdout
    if stream is not None:
        stream.flush()
    stream = sys.stderr
    if stream is not None:
        stream.flush()

    # Every signal is blocked from before the fork until the child is registered: a Python
    # handler (Ctrl-C's KeyboardInterrupt) raising in between would lose the child's pid, and
    # with it the only way to reap and supervise it. The child restores the mask itself.
    # Block inside the try: a Python handler may raise as soon as any call returns, and the
    # finally below must then restore the mask if (and only if) it was saved. This is
    # _linux.signals_blocked(), inlined (no generator and two fewer functions called).
    mask = _spare_masks.pop() if _spare_masks else _SigSet()
    mask[_UNSAVED_BYTE] = _UNSAVED_BIT
    status_r = status_w = -1
    capture = None
    pid = -1
    try:
        _pthread_sigmask(_SIG_BLOCK, _EVERY_SIGNAL, mask)
        status_r, status_w = _os_pipe2(_PIPE_FLAGS)
        if options.capture:
            capture = _capture_pipes()
        parent = _pid
        # Everything the parent needs is built before the fork: while the child lives, each
        # page the parent writes is copied (a few microseconds a page), so the parent does
        # as little as possible between fork and wait.
        if child is None:
            child = Child(entry, options)
        child.status_fd = status_r
        if capture is not None:
            child.out_fd, child.err_fd = capture[0], capture[2]
        child.started = _monotonic()
        pid = _os_fork()
        if pid == 0:
            _child.run(
                value,
                entry,
                status_w,
                parent,
                kill_on_parent_exit=options.on_parent_exit == "kill",
                new_group=options.new_group,
                capture=capture,
                sigmask=mask,
            )
        child.pid = pid
        _os_close(status_w)
        status_w = -1
        if capture is not None:
            os.close(capture[1])
            os.close(capture[3])
            capture = (capture[0], -1, capture[2], -1)
        # No setpgid(pid, pid) here as shells do: the child makes its group before it runs
        # anything that could fork, and until then a deadline's signal still reaches it
        # through its pidfd (or pid); a killpg that finds no group yet has nobody else to hit.
        # Opened after fork: if the child is already a zombie the pidfd still refers to it.
        # Without one (no kernel support, or out of descriptors) the waiter polls instead.
        try:
            if waiter is None:
                child.pidfd = _linux.pidfd_open(pid)
            elif waiter.pidfds:
                child.pidfd = _pidfd_open(pid)
        except OSError:
            pass
        if child.deadline is not None:
            child.deadline += child.started
        if waiter is not None:
            child.waiter = waiter
            waiter.add(child)
    except BaseException:
        _abandon(pid, status_r, status_w, capture, child if pid > 0 and child is not None else None)
        raise
    finally:
        if not mask[_UNSAVED_BYTE] & _UNSAVED_BIT:
            _pthread_sigmask(_SIG_SETMASK, mask, None)
        _spare_masks.append(mask)
    return child


def _capture_pipes() -> tuple[int, int, int, int]:
    out_r, out_w = os.pipe2(_PIPE_FLAGS)
    try:
        err_r, err_w = os.pipe2(_PIPE_FLAGS)
    except BaseException:
        os.close(out_r)
        os.close(out_w)
        raise
    return out_r, out_w, err_r, err_w


def _abandon(
    pid: int, status_r: int, status_w: int, capture: tuple[int, int, int, int] | None, child: Child | None
) -> None:
    """Undo a start() that failed part-way; a child already forked is killed and reaped."""
    if child is not None:
        # Forked, but it could not be registered: never leave it running or unreaped.
        _linux.signal_process(pid, None, signal.SIGKILL)
        os.waitpid(pid, 0)
        fds = [child.status_fd, child.out_fd, child.err_fd, -1 if child.pidfd is None else child.pidfd]
        child.status_fd = child.out_fd = child.err_fd = -1
        child.pidfd = None
        child.report = Report(name=child.name, pid=pid, outcome=Outcome.SIGNALED, signal=signal.SIGKILL)
        # Only the write ends are still ours; the read ends were the child's.
        fds += (status_w, -1, -1) if capture is None else (status_w, capture[1], capture[3])
    else:
        fds = [status_r, status_w, *(capture or ())]
    for fd in fds:
        if fd >= 0:
            os.close(fd)


@final
class Child:
    """The parent's handle on one forked child.

    Signals go through a pidfd where the kernel has them, so a pid reused after the child was
    reaped is never hit. Every method that waits also enforces the child's deadline.
    """

    __slots__ = (
        "pid",
        "_name",
        "_entry",
        "pidfd",
        "status_fd",
        "out_fd",
        "err_fd",
        "status_buf",
        "out_buf",
        "err_buf",
        "started",
        "deadline",
        "options",
        "stage",
        "sigterm_at",
        "killed_at",
        "reason",
        "report",
        "waiter",
        "owner",
        "__weakref__",
    )

    def __init__(self, entry: Callable[..., object], options: Options) -> None:
        #: The child's process id (read-only).
        self.pid = 0
        self.report: Report | None = None
        # The default name is computed when first asked for, not while forking.
        self._name: str | None = None
        self._entry = entry
        #: As given to fork() (grace, new_group...); read when needed, not copied per fork.
        self.options = options
        self.pidfd: int | None = None
        self.status_fd = -1
        self.out_fd = -1
        self.err_fd = -1
        # Filled by the waiting loop; most children never write to the status pipe.
        self.status_buf: bytes | bytearray = b""
        self.out_buf: bytes | bytearray = b""
        self.err_buf: bytes | bytearray = b""
        self.started = 0.0
        #: Relative to ``started`` until the fork, then absolute (monotonic clock).
        self.deadline = options.timeout
        #: 0 running; 1 SIGTERM sent, SIGKILL due; 2 SIGKILL sent.
        self.stage = 0
        self.sigterm_at: float | None = None
        self.killed_at = 0.0
        #: Why we are ending it: None, "timed_out", "cancelled" or "terminated".
        self.reason: str | None = None
        self.waiter: Waiter | None = None
        self.owner = _pid

    @property
    def name(self) -> str:
        """The child's name in reports: ``name=`` or the entry's qualified name."""
        name = self._name
        if name is None:
            name = self._name = self.options.name or entry_name(self._entry)
        return name

    def __repr__(self) -> str:
        state = "running" if self.report is None else self.report.describe()
        return f"<Child {self.name!r} pid={self.pid} {state}>"

    def wait(self, timeout: float | None = None) -> Report:
        """Wait for the child to end and return its report.

        Raises ``TimeoutError`` if ``timeout`` seconds pass first (the child keeps running;
        its own deadline, if any, is still enforced while waiting).
        """
        if self.report is not None:
            return self.report
        until = None
        if timeout is not None:
            _check_seconds("timeout", timeout)
            until = time.monotonic() + timeout
        waiter = self._waiter()
        while True:
            report = self._current_report()
            if report is not None:
                return report
            if not waiter.step(until) and until is not None and time.monotonic() >= until:
                raise TimeoutError(f"child {self.name!r} (pid {self.pid}) still running after {timeout} s")

    def poll(self) -> Report | None:
        """The report if the child has ended (reaping it now), else ``None``. Never blocks."""
        if self.report is None:
            self._waiter().step(0.0)
        return self._current_report()

    def _current_report(self) -> Report | None:
        return self.report

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child (not its group). A no-op once the child was reaped."""
        if self.report is None:
            self._check_owner()
            _linux.signal_process(self.pid, self.pidfd, sig)

    def terminate(self, grace: float = 2.0) -> Report:
        """SIGTERM the child and its group, SIGKILL after ``grace`` seconds, reap, report."""
        _check_seconds("grace", grace)
        if self.report is None:
            self._waiter().escalate(self, grace, "terminated")
        return self.wait()

    def kill(self) -> Report:
        """SIGKILL the child and its group, reap, report."""
        if self.report is None:
            self._waiter().escalate(self, 0.0, "terminated", kill=True)
        return self.wait()

    def _waiter(self) -> Waiter:
        self._check_owner()
        waiter = self.waiter
        if waiter is None:
            waiter = Waiter(private=True)
            waiter.add(self)
            self.waiter = waiter  # only once it watches the child
        return waiter

    def _check_owner(self) -> None:
        if self.owner != _pid:
            raise DivergeforkError(
                f"child {self.name!r} (pid {self.pid}) belongs to process {self.owner}; "
                f"process {os.getpid()} cannot wait for or signal it"
            )

    def __del__(self) -> None:
        # pid 0: the fork itself failed and start() already closed the descriptors. A handle
        # interrupted while being built may lack attributes.
        if getattr(self, "report", True) is None and self.pid and self.owner == _pid:
            _orphans.append((self.pid, self.pidfd, self.name))
            for fd in (self.status_fd, self.out_fd, self.err_fd):
                if fd >= 0:
                    os.close(fd)
            if self.waiter is not None:
                self.waiter.close()
            warnings.warn(
                f"child {self.name!r} (pid {self.pid}) was never waited for; it will be reaped "
                "by a later fork() but its report is lost. Call wait() or use df.Scope.",
                ResourceWarning,
                stacklevel=1,
            )


# Children whose handle was dropped unwaited: reaped later, so they do not stay zombies.
_orphans: list[tuple[int, int | None, str]] = []


def _reap_orphans() -> None:
    if not _orphans:
        return
    for item in list(_orphans):
        pid, pidfd, _ = item
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _orphans.remove(item)
            if pidfd is not None:
                os.close(pidfd)


def _threads_at_fork(policy: str) -> None:
    current = threading.current_thread()
    others = [t.name for t in threading.enumerate() if t is not current]
    if not others:
        return
    message = (
        f"{len(others)} other thread(s) are running ({', '.join(sorted(others))}); a forked "
        "child gets only the calling thread and any lock another thread held stays locked forever"
    )
    if policy == "refuse":
        raise ForkUnsafeError(message + ". Fork before starting threads, or pass threads='allow'.")
    warnings.warn(message, RuntimeWarning, stacklevel=4)
