"""Waiting: the one loop that reaps children, reads their pipes and enforces deadlines.

``Child.wait`` (a private ``Waiter`` per child) and ``Scope`` (one ``Waiter`` for all of
its children) share this code. A ``Waiter`` watches, in one epoll:

* each child's pidfd, readable once the child has ended (it is then a zombie and
  ``wait4(pid)`` returns at once with its rusage);
* each child's status pipe and capture pipes, read as data arrives so a child writing more
  than a pipe buffer never blocks on a parent that is waiting for its exit;

and keeps deadlines in a heap (SIGTERM at the deadline, SIGKILL ``grace`` seconds later).
Without pidfds (old kernels, other systems, ``DIVERGEFORK_NO_PIDFD=1``) children are found by
``waitid(P_PID, pid, WNOHANG | WNOWAIT)`` with a backoff. Never ``waitpid(-1)``: that would
steal the children of other code in the same process. No SIGCHLD handler either.
"""

from __future__ import annotations

import ctypes
import heapq
from collections import deque
import json
import os
import resource
import select
import signal
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias

from . import _linux
from ._child import MAX_RESULT_BYTES
from ._report import RETURNED_EXIT_CODE, Outcome, Report

if TYPE_CHECKING:
    from ._fork import Child

__all__ = ["CAPTURE_LIMIT", "OutputCallback", "Waiter"]

#: ``on_output(child_name, "stdout" | "stderr", chunk)``: captured output as it arrives.
OutputCallback: TypeAlias = Callable[[str, str, bytes], None]

#: Bytes of captured stdout and of stderr kept per child; past it the oldest bytes are dropped.
CAPTURE_LIMIT: Final = 1024 * 1024

_READ_SIZE: Final = 65536
_STATUS_LIMIT: Final = MAX_RESULT_BYTES + 2 * _READ_SIZE
_HEADER: Final = struct.Struct("!cI")
_PIDFD, _STATUS, _OUT, _ERR = range(4)
_DATA, _AGAIN, _EOF = object(), object(), object()
_EPOLLIN: Final = select.EPOLLIN
_BACKOFF_MIN: Final = 0.0005
_BACKOFF_MAX: Final = 0.05


class Waiter:
    """Reaps a set of children. Not thread-safe; one per ``Scope`` or per lone ``Child``."""

    __slots__ = (
        "_ep",
        "_child_of",
        "_heap",
        "_seq",
        "_polled",
        "_backoff",
        "_private",
        "_on_output",
        "running",
        "ended",
        "owner",
        "pidfds",
    )

    def __init__(self, *, private: bool = False, on_output: OutputCallback | None = None) -> None:
        self._on_output = on_output
        #: The process that made this waiter: only it may add children.
        self.owner = os.getpid()
        #: Whether children get a pidfd (probed once per waiter: tests switch it per test).
        self.pidfds = _linux.have_pidfd()
        self._ep: select.epoll | None = select.epoll()
        # Indexed by descriptor number (descriptors are small and dense): no dict, no tuple per
        # child, so a parent forking hundreds of children touches few pages per fork.
        self._child_of: list[Child | None] = []
        self._heap: list[tuple[float, int, Child, int]] = []
        self._seq = 0
        self._polled: list[Child] = []
        self._backoff = _BACKOFF_MIN
        #: A private waiter serves one child and closes itself when that child is reaped.
        self._private = private
        #: The children added and not yet reaped, in the order they were added. A list, not an
        #: ordered dict: appending writes fewer pages per fork than a dict insert, and
        #: removing one of 500 (a scan of pointers) costs about a microsecond.
        self.running: list[Child] = []
        #: Reaped children (their report set) not yet collected by a Scope, in order of ending.
        self.ended: deque[Child] = deque()

    def add(self, child: Child) -> None:
        ep = self._ep
        assert ep is not None, "waiter closed"
        children = self._child_of
        pidfd = child.pidfd
        status = child.status_fd
        # Inlined, and no builtins called: see _fork.start() on pages copied per fork.
        # Descriptors are allocated lowest first: the pidfd (opened last) is the highest.
        top = status if pidfd is None else pidfd
        if child.err_fd > top:
            top = child.err_fd
        if top >= len(children):
            children.extend([None] * (top + 64 - len(children)))
        if pidfd is not None:
            children[pidfd] = child
            ep.register(pidfd, _EPOLLIN)
        else:
            self._polled.append(child)
        children[status] = child
        ep.register(status, _EPOLLIN)
        if child.out_fd >= 0:
            children[child.out_fd] = children[child.err_fd] = child
            ep.register(child.out_fd, _EPOLLIN)
            ep.register(child.err_fd, _EPOLLIN)
        if child.deadline is not None:
            self._schedule(child, child.deadline)
        self.running.append(child)  # last: only a fully watched child is waited for

    def silence(self) -> None:
        """Stop calling ``on_output``; captured output is still kept in the reports."""
        self._on_output = None

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()
            self._ep = None

    def step(self, until: float | None) -> list[Child]:
        """Wait until at least one child is reaped or ``until`` (monotonic) passes.

        Returns the children reaped (their ``report`` is set). With ``until`` in the past it
        makes one pass without blocking.
        """
        ep = self._ep
        assert ep is not None, "waiter closed"
        reaped: list[Child] = []
        # Signals are blocked except while we sleep in epoll, so a Python handler (Ctrl-C's
        # KeyboardInterrupt) can only raise where nothing is half-done: not between a deadline
        # popped and enforced, bytes read and kept, a child unwatched and reaped, or a wait4()
        # and its report.
        with _linux.signals_blocked() as callers_mask:
            self._step(ep, until, reaped, callers_mask)
        return reaped

    def _step(
        self, ep: select.epoll, until: float | None, reaped: list[Child], mask: ctypes.Array[ctypes.c_ubyte]
    ) -> None:
        while self.running:
            heap = self._heap
            if heap:
                now = time.monotonic()
                while heap and heap[0][0] <= now:
                    _, _, child, stage = heapq.heappop(heap)
                    if child.report is None and child.stage == stage:
                        self.escalate(child, child.options.grace, "timed_out")
            if self._polled:
                self._poll_exited(reaped)
                if reaped:
                    return
            timeout = -1.0
            if until is not None or heap or self._polled:
                now = time.monotonic()
                limit = until if until is not None else float("inf")
                if heap:
                    limit = min(limit, heap[0][0])
                if self._polled:
                    limit = min(limit, now + self._backoff)
                timeout = max(limit - now, 0.0)
            _linux.pthread_sigmask(_linux.SIG_SETMASK, mask, None)  # the caller's mask, to sleep
            events = ep.poll(timeout)  # level-triggered: events lost to an interrupt come back
            _linux.pthread_sigmask(_linux.SIG_BLOCK, _linux.EVERY_SIGNAL, None)
            ended: list[Child] = []
            for fd, _ in events:
                owner = self._child_of[fd]
                assert owner is not None
                if fd == owner.pidfd:
                    ended.append(owner)
                    continue
                kind = _STATUS if fd == owner.status_fd else _OUT if fd == owner.out_fd else _ERR
                if self._read(fd, owner, kind) is _EOF and owner.pidfd is None:
                    # EOF on the status pipe: without a pidfd it is our best hint of an exit.
                    self._backoff = _BACKOFF_MIN
            for child in ended:
                self._reap(child)
                reaped.append(child)
            if reaped:
                return
            if until is not None and time.monotonic() >= until:
                return
            if self._polled and not events:
                self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def escalate(self, child: Child, grace: float, reason: str, *, kill: bool = False) -> None:
        """Move a child one step down SIGTERM -> (grace) -> SIGKILL, for it and its group.

        ``kill`` goes straight to SIGKILL. ``reason`` ("timed_out", "cancelled", "terminated")
        is recorded on the first step. A child that already ended on its own is left alone:
        the loop reaps it with the outcome it earned, even when nobody waited for it until
        after its deadline.
        """
        if child.report is not None or has_ended(child):
            return
        # Blocked, so that an interrupt cannot leave a child marked SIGTERMed with no SIGKILL
        # scheduled (nested inside step(), where they are blocked already, this changes nothing).
        with _linux.signals_blocked():
            self._escalate(child, grace, reason, kill)

    def _escalate(self, child: Child, grace: float, reason: str, kill: bool) -> None:
        if child.reason is None:
            child.reason = reason
        if child.stage == 0 and not kill:
            sig = signal.SIGTERM
            child.stage = 1
            child.sigterm_at = time.monotonic()
            self._schedule(child, child.sigterm_at + grace)
        else:
            sig = signal.SIGKILL
            child.stage = 2
            child.killed_at = time.monotonic()
        _linux.signal_process(child.pid, child.pidfd, sig)
        if child.options.new_group:
            # The child's own children share its group: they get the same signal.
            _linux.signal_group(child.pid, sig)
        if sig == signal.SIGTERM:
            # A stopped process (SIGSTOP, or SIGTTIN for reading the terminal from a background
            # group) keeps SIGTERM pending until it is continued: continue it, as init systems do.
            _linux.signal_process(child.pid, child.pidfd, signal.SIGCONT)
            if child.options.new_group:
                _linux.signal_group(child.pid, signal.SIGCONT)

    def _schedule(self, child: Child, when: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, child, child.stage))

    def _poll_exited(self, reaped: list[Child]) -> None:
        for child in list(self._polled):
            try:
                # WNOWAIT: look without reaping, so the group can be killed while the pid is
                # still reserved by the zombie.
                info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
                gone = True
            else:
                gone = info is not None and info.si_pid == child.pid
            if gone:
                self._polled.remove(child)
                self._reap(child)
                reaped.append(child)
                self._backoff = _BACKOFF_MIN

    def _read(self, fd: int, child: Child, kind: int) -> object:
        got = _read(fd, child, kind, self._on_output)
        if got is _EOF:
            self._forget(fd, child, kind)
        return got

    def _forget(self, fd: int, child: Child, kind: int) -> None:
        self._unwatch(fd)
        _close(child, kind)

    def _unwatch(self, fd: int) -> None:
        # Explicitly: closing would not remove it from the epoll set while a forked child still
        # holds a copy of the descriptor, and a later descriptor with the same number would
        # then receive its events.
        self._child_of[fd] = None
        if self._ep is not None:
            self._ep.unregister(fd)

    def _reap(self, child: Child) -> None:
        for fd in (child.pidfd, child.status_fd, child.out_fd, child.err_fd):
            if fd is not None and fd >= 0 and self._child_of[fd] is child:
                self._unwatch(fd)
        try:
            _finish(child, self._on_output)  # sets the report even if on_output raises
        finally:
            if child.report is not None:
                self.running.remove(child)
                self.ended.append(child)
                if self._private:
                    self.close()
            elif child not in self._polled:
                # _finish failed before it reaped (signals are blocked here, so not by an
                # interrupt): the child is unwatched now, so look for it by polling instead.
                self._polled.append(child)


def _read(fd: int, child: Child, kind: int, on_output: OutputCallback | None = None) -> object:
    """Read what is there into the child's buffer: ``_DATA``, ``_AGAIN`` or ``_EOF``."""
    try:
        data = os.read(fd, _READ_SIZE)
    except BlockingIOError:
        return _AGAIN
    if not data:
        return _EOF
    if kind == _STATUS:
        if len(child.status_buf) < _STATUS_LIMIT:
            child.status_buf = _append(child.status_buf, data)
    else:
        buf = _append(child.out_buf if kind == _OUT else child.err_buf, data)
        if len(buf) > 2 * CAPTURE_LIMIT:
            # Trimmed only past twice the limit (and for good when the report is built), so a
            # child writing gigabytes costs linear time, not a megabyte memmove per read.
            del buf[: len(buf) - CAPTURE_LIMIT]
        if kind == _OUT:
            child.out_buf = buf
        else:
            child.err_buf = buf
        if on_output is not None:
            on_output(child.name, "stdout" if kind == _OUT else "stderr", data)
    return _DATA


def _append(buf: bytes | bytearray, data: bytes) -> bytearray:
    if isinstance(buf, bytearray):
        buf += data
        return buf
    return bytearray(data)


def _close(child: Child, kind: int) -> None:
    if kind == _STATUS:
        fd, child.status_fd = child.status_fd, -1
    elif kind == _OUT:
        fd, child.out_fd = child.out_fd, -1
    elif kind == _ERR:
        fd, child.err_fd = child.err_fd, -1
    else:
        fd = -1 if child.pidfd is None else child.pidfd
        child.pidfd = None
    if fd >= 0:
        os.close(fd)


def has_ended(child: Child) -> bool:
    """Whether the child has ended (it is a zombie), without reaping it."""
    try:
        info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True  # reaped by other code: nothing left to signal
    return info is not None and info.si_pid == child.pid


def _finish(child: Child, on_output: OutputCallback | None = None) -> Report:
    """The child has ended (it is a zombie): kill its group, reap it, build its report.

    Called only from ``Waiter.step``, with signals blocked: a KeyboardInterrupt raised just
    after wait4() returned would otherwise lose the exit status for good.
    """
    pid = child.pid
    if child.options.new_group:
        # Leftover grandchildren die with the child; the zombie still reserves the pid,
        # so this group id cannot belong to anyone else yet.
        _linux.signal_group(pid, signal.SIGKILL)
    usage: resource.struct_rusage | None
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        status, usage = -1, None
    ended = time.monotonic()
    try:
        # Whatever the child wrote before it ended is in the pipes now; a grandchild may
        # still hold them open, so read without blocking.
        for kind in (_STATUS, _OUT, _ERR):
            fd = child.status_fd if kind == _STATUS else child.out_fd if kind == _OUT else child.err_fd
            if fd >= 0:
                os.set_blocking(fd, False)
                while _read(fd, child, kind, on_output) is _DATA:
                    pass
    finally:
        for kind in (_STATUS, _OUT, _ERR, _PIDFD):
            _close(child, kind)
        report = child.report = _report(child, status, usage, ended)
    return report


def _messages(buf: bytes | bytearray, sent: list[object]) -> dict[bytes, bytes]:
    """The status-pipe records by kind (the last of each kind wins); ``M`` ones go to ``sent``."""
    found: dict[bytes, bytes] = {}
    pos, size = 0, len(buf)
    while pos + _HEADER.size <= size:
        kind, length = _HEADER.unpack_from(buf, pos)
        pos += _HEADER.size
        if pos + length > size:
            found[b"!"] = b"truncated status record"
            break
        if kind == b"M":
            sent.append(json.loads(bytes(buf[pos : pos + length])))
        else:
            found[kind] = bytes(buf[pos : pos + length])
        pos += length
    return found


def _report(child: Child, status: int, usage: resource.struct_rusage | None, ended: float) -> Report:
    exit_code: int | None = None
    sig: signal.Signals | None = None
    core = False
    error: str | None = None
    outcome = Outcome.EXITED
    if status == -1:
        error = (
            "the child was reaped by other code (a waitpid(-1) elsewhere, or SIGCHLD set to "
            "SIG_IGN after the fork): its exit status is lost"
        )
    elif os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status))
        core = os.WCOREDUMP(status)
        outcome = Outcome.SIGNALED
    else:
        exit_code = os.waitstatus_to_exitcode(status)
    result: object = None
    sent: list[object] = []
    execed = False
    if child.status_buf:
        records = _messages(child.status_buf, sent)
        if b"V" in records:
            try:
                result = json.loads(records[b"V"])
            except ValueError:
                error = "the child's result record could not be decoded"
        if b"F" in records:
            outcome = Outcome.EXEC_FAILED
            error = records[b"F"].decode("utf-8", "replace")
        elif b"R" in records and exit_code == RETURNED_EXIT_CODE:
            outcome = Outcome.RETURNED
            error = records[b"R"].decode("utf-8", "replace")
        elif b"E" in records:
            outcome = Outcome.RAISED
            error = records[b"E"].decode("utf-8", "replace")
        elif b"X" in records:
            execed = True
        if b"!" in records and error is None:
            error = "the status pipe ended inside a record: part of what the child sent is lost"
    reason = child.reason
    if reason == "timed_out":
        outcome = Outcome.TIMED_OUT
        limit = "" if child.deadline is None else f" of {child.deadline - child.started:g} s"
        error = _ended_text(child, f"its deadline{limit} passed")
    elif reason == "cancelled":
        outcome = Outcome.CANCELLED
        error = _ended_text(child, "its scope was left by an exception")
    if usage is None:
        user = system = 0.0
        rss = 0
    else:
        user, system = usage.ru_utime, usage.ru_stime
        rss = usage.ru_maxrss * 1024  # Linux counts KiB
    return Report(
        name=child.name,
        pid=child.pid,
        outcome=outcome,
        exit_code=exit_code,
        signal=sig,
        core_dumped=core,
        execed=execed,
        duration=ended - child.started,
        user_time=user,
        system_time=system,
        max_rss=rss,
        error=error,
        result=result,
        stdout=bytes(child.out_buf[-CAPTURE_LIMIT:]),
        stderr=bytes(child.err_buf[-CAPTURE_LIMIT:]),
        messages=tuple(sent),
    )


def _ended_text(child: Child, why: str) -> str:
    sigterm_at = child.sigterm_at
    if child.stage < 2:
        how = "sent SIGTERM"
    elif sigterm_at is None:
        how = "sent SIGKILL"
    else:
        how = f"sent SIGTERM, then SIGKILL {child.killed_at - sigterm_at:.3g} s later"
    return f"{why}: {how} to pid {child.pid}" + (" and its process group" if child.options.new_group else "")
