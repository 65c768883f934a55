"""``fork()`` and the ``Child`` handle. The only place in divergefork that calls ``os.fork``."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import NoReturn, TypeVar, final

from . import _child, _forensics, _linux
from ._errors import DivergeforkError, ForkUnsafeError
from ._limits import Limits
from ._options import Codec, OnParentExit, Options, Threads, check_entry, check_seconds
from ._report import Outcome, Report
from ._waiter import Proc, Waiter, finish, wait_blocking

__all__ = ["Child", "fork", "start"]

T = TypeVar("T")


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


def start(
    value: T,
    entry: Callable[[T], NoReturn],
    options: Options,
    waiter: Waiter | None = None,
    child: Child | None = None,
    callers: tuple[ctypes.Array[ctypes.c_ubyte], dict[int, object]] | None = None,
) -> Child:
    """Fork now with already validated options; register the child with ``waiter`` if given.

    ``callers`` is the signal mask and dispositions the child must start with when they are
    not the ones in force now (a child a Scope queued starts with what its caller had then).
    """
    if not _linux.HAVE_FORK:
        raise ForkUnsafeError(
            f"this platform ({sys.platform}) has no fork(); divergefork needs a POSIX system "
            "(use subprocess or multiprocessing's 'spawn' context instead)"
        )
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        raise ForkUnsafeError(
            "SIGCHLD is set to SIG_IGN, so the kernel would discard every child's exit status; "
            "restore it with signal.signal(signal.SIGCHLD, signal.SIG_DFL) before forking"
        )
    if options.threads != "allow" and _linux.thread_count() != 1:
        _threads_at_fork(options.threads)
    me = _linux.THIS_PROCESS.pid
    if waiter is not None and waiter.owner != me:
        raise DivergeforkError(
            f"this Scope belongs to process {waiter.owner}; process {me} cannot fork "
            "into it: a child must open a Scope of its own"
        )
    if _orphans:
        _reap_orphans()
    # Text still in a buffer would be written twice: once by the parent, once by the child.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    stack_fd = _forensics.stack_fd()
    if child is None:
        child = Child(entry, options)
    # Every signal is blocked from before the fork until the child is registered: a Python
    # handler (Ctrl-C's KeyboardInterrupt) raising in between would lose the child's pid, and
    # with it the only way to reap and supervise it. The child restores its caller's mask.
    saved = _linux.mask_buffer()
    status_r = status_w = -1
    capture: tuple[int, int, int, int] | None = None
    pid = -1
    try:
        _linux.block_signals(saved)
        status_r, status_w = _pipe(os.O_NONBLOCK)
        if options.capture:
            capture = _capture_pipes()
        mask, dispositions = (saved, None) if callers is None else callers
        child.started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child.run(value, entry, options, (status_w, stack_fd), me, mask, dispositions, capture)
        child.pid = pid
        child.status_fd = status_r
        os.close(status_w)
        status_w = -1
        if capture is not None:
            child.out_fd, child.err_fd = capture[0], capture[2]
            os.close(capture[1])
            os.close(capture[3])
            capture = None
        if options.timeout is not None:
            child.deadline = child.started + options.timeout
        if waiter is not None:
            child.waiter = waiter
            waiter.add(child)
    except BaseException:
        _abandon(pid, status_r, status_w, capture, child)
        _linux.restore_signals(saved)
        raise
    try:
        _linux.restore_signals(saved)  # a pending Ctrl-C raises here, now
    except BaseException:
        if waiter is None:
            # The caller never gets this child's handle, so nothing could ever wait for it.
            with _linux.signals_blocked():
                _abandon(pid, -1, -1, None, child)
        raise
    return child


def _pipe(flags: int = 0) -> tuple[int, int]:
    """A close-on-exec pipe whose ends are never 0, 1 or 2.

    A parent whose standard descriptors were closed would otherwise get them, and the child's
    own output to them would land in the pipe.
    """
    read, write = os.pipe2(os.O_CLOEXEC | flags)
    if read > 2 and write > 2:
        return read, write
    try:
        return fcntl.fcntl(read, fcntl.F_DUPFD_CLOEXEC, 3), fcntl.fcntl(write, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(read)
        os.close(write)


def _capture_pipes() -> tuple[int, int, int, int]:
    out_r, out_w = _pipe()
    try:
        err_r, err_w = _pipe()
    except BaseException:
        os.close(out_r)
        os.close(out_w)
        raise
    # The parent reads only what is there (a grandchild may keep a write end open for ever);
    # the child's ends stay blocking, as a program expects of its stdout.
    os.set_blocking(out_r, False)
    os.set_blocking(err_r, False)
    return out_r, out_w, err_r, err_w


def _abandon(pid: int, status_r: int, status_w: int, capture: tuple[int, int, int, int] | None, child: Child) -> None:
    """Undo a start() that failed part-way; a child already forked is killed and reaped."""
    fds = {status_r, status_w, *(capture or ()), child.status_fd, child.out_fd, child.err_fd}
    if child.pidfd is not None:
        fds.add(child.pidfd)
    child.status_fd = child.out_fd = child.err_fd = -1
    child.pidfd = None
    if pid > 0:
        # Forked, but it could not be registered: never leave it running or unreaped.
        _linux.signal_process(pid, None, signal.SIGKILL)
        os.waitpid(pid, 0)
        child.pid = pid
        child.report = Report(name=child.name, pid=pid, outcome=Outcome.SIGNALED, signal=signal.SIGKILL)
    else:
        child.pid = None
    for fd in fds:
        if fd >= 0:
            os.close(fd)


@final
class Child(Proc):
    """The parent's handle on one forked child.

    ``pid`` is the child's process id (``None`` while a Scope holds it in its queue). Signals
    go through a pidfd where the kernel has them, so a pid reused after the child was reaped
    is never hit. Every method that waits also enforces the child's deadline. As a context
    manager, leaving the block normally waits for the child; leaving it by an exception
    (``KeyboardInterrupt`` included) terminates and reaps it first.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        state = "queued" if self.pid is None else "running" if self.report is None else self.report.describe()
        return f"<Child {self.name!r} pid={self.pid} {state}>"

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.wait()
            return
        # Another interrupt while waiting out the grace (a second Ctrl-C) skips the rest of
        # it: SIGKILL, and we still return only once the child is reaped.
        graceful = True
        while self.report is None:
            try:
                if self.pid is None:
                    self.terminate()
                elif graceful:
                    self._waiter().end(self, self.options.grace, "cancelled")
                    self.wait()
                else:
                    self._waiter().end(self, 0.0, "cancelled", kill=True)
                    self.wait()
            except BaseException:  # noqa: BLE001 - the block's own exception propagates
                graceful = False

    def wait(self, timeout: float | None = None) -> Report:
        """Wait for the child to end and return its report.

        Raises ``TimeoutError`` if ``timeout`` seconds pass first (the child keeps running;
        its own deadline, if any, is still enforced while waiting).
        """
        if self.report is not None:
            return self.report
        self._check_owner()
        until = None
        if timeout is not None:
            check_seconds("timeout", timeout)
            until = time.monotonic() + timeout
        if until is None and self.waiter is None and self.driver is None and self.deadline is None and self.out_fd < 0:
            # Nothing to watch but the exit: sleep in waitid, then reap with signals blocked.
            wait_blocking(self)
            with _linux.signals_blocked():
                if self.report is None:
                    finish(self)
        while (report := self._done()) is None:
            if self.driver is not None:
                self.driver.drive(until)
            else:
                self._waiter().step(until)
            if self._done() is None and until is not None and time.monotonic() >= until:
                raise TimeoutError(f"child {self.name!r} (pid {self.pid}) still running after {timeout} s")
        return report

    def _done(self) -> Report | None:
        # A method, not the attribute: what the calls above did to it is not what mypy assumes.
        return self.report

    def poll(self) -> Report | None:
        """The report if the child has ended (reaping it now), else ``None``. Never blocks."""
        if self.report is None:
            self._check_owner()
            if self.driver is not None:
                self.driver.drive(0.0)
            elif self.pid is not None:
                self._waiter().step(0.0)
        return self.report

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child (not its group). A no-op once the child was reaped."""
        if self.report is not None:
            return
        self._check_owner()
        if self.pid is None:
            raise DivergeforkError(f"child {self.name!r} has not started yet (its Scope is holding it in a queue)")
        self._open_pidfd()
        _linux.signal_process(self.pid, self.pidfd, sig)

    def terminate(self, grace: float = 2.0) -> Report:
        """SIGTERM the child and its group, SIGKILL after ``grace`` seconds, reap, report.

        A child a Scope still holds in its queue is never started: it is reported
        ``cancelled`` with pid 0.
        """
        check_seconds("grace", grace)
        if self.report is None:
            self._check_owner()
            if self.pid is None and self.driver is not None and self.driver.withdraw(self):
                return self.wait()
            self._waiter().end(self, grace, "terminated", stack=False)
        return self.wait()

    def kill(self) -> Report:
        """SIGKILL the child and its group, reap, report."""
        if self.report is None:
            self._check_owner()
            if self.pid is None and self.driver is not None and self.driver.withdraw(self):
                return self.wait()
            self._waiter().end(self, 0.0, "terminated", kill=True)
        return self.wait()

    def _open_pidfd(self) -> None:
        """Open the pidfd a lone child gets only once something needs it."""
        if self.pidfd is None and self.pid is not None and self.ended_how is None:
            pidfd = _linux.pidfd_open(self.pid)
            if pidfd is None:
                return
            try:
                # The pid is ours only if it is still our unreaped child (other code may have
                # reaped it with waitpid(-1), and the kernel may have reused the number).
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                os.close(pidfd)
                self.ended_how = (-1, -1)
                return
            self.pidfd = pidfd

    def _waiter(self) -> Waiter:
        waiter = self.waiter
        if waiter is None:
            self._open_pidfd()
            waiter = Waiter()
            with _linux.signals_blocked():
                waiter.add(self)
                self.waiter = waiter  # only once it watches the child
        return waiter

    def _check_owner(self) -> None:
        me = _linux.THIS_PROCESS.pid
        if self.owner != me:
            raise DivergeforkError(
                f"child {self.name!r} (pid {self.pid}) belongs to process {self.owner}; "
                f"process {me} cannot wait for or signal it"
            )

    def __del__(self) -> None:
        # A handle interrupted while being built may lack attributes.
        if getattr(self, "report", True) is None and self.pid and self.owner == _linux.THIS_PROCESS.pid:
            _orphans.append((self.pid, self.pidfd, self.name))
            for fd in (self.status_fd, self.out_fd, self.err_fd):
                if fd >= 0:
                    os.close(fd)
            warnings.warn(
                f"child {self.name!r} (pid {self.pid}) was never waited for; it will be reaped "
                "by a later fork() but its report is lost. Call wait() or use df.Scope.",
                ResourceWarning,
                stacklevel=1,
            )


# Children whose handle was dropped unwaited: reaped later, so they do not stay zombies.
_orphans: list[tuple[int, int | None, str]] = []


def _reap_orphans() -> None:
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
    python = sorted(t.name for t in threading.enumerate() if t is not current)
    native = max(_linux.thread_count() - 1 - len(python), 0)
    # A thread just joined is gone for Python a moment before the kernel is done with it:
    # give such a count a moment to settle before calling it a native thread.
    settle = time.monotonic() + 0.1
    while native and time.monotonic() < settle:
        time.sleep(0.001)
        native = max(_linux.thread_count() - 1 - len(python), 0)
    if not python and not native:
        return
    parts = []
    if python:
        parts.append(f"{len(python)} Python thread(s) ({', '.join(python)})")
    if native:
        parts.append(f"{native} native thread(s) the threading module does not know (started by an extension)")
    message = (
        f"{' and '.join(parts)} are running besides this one; a forked child gets only the calling "
        "thread, and any lock another thread held stays locked forever"
    )
    if policy == "refuse":
        raise ForkUnsafeError(message + ". Fork before starting threads, or pass threads='allow'.")
    warnings.warn(message, RuntimeWarning, stacklevel=4)
