"""Waiting: the one loop that reaps children, reads their pipes and enforces deadlines.

A :class:`Proc` is the parent's record of one child (``Child`` is its public face). A
:class:`Waiter` watches a set of them with ``poll``:

* each child's pidfd, readable once the child has ended (it is then a zombie);
* each child's status pipe and capture pipes, read as data arrives, so output, messages and
  the stack a deadline asks for are kept as they come;

and keeps deadlines in a heap (the stack signal at the deadline, SIGTERM once the stack is
written, SIGKILL ``grace`` seconds later). Without pidfds (old kernels, other systems,
``DIVERGEFORK_NO_PIDFD=1``, or out of descriptors) a child is found by
``waitid(P_PID, pid, WNOHANG | WNOWAIT)`` with a backoff. Never ``waitpid(-1)``: that would
steal the children of other code in the same process. No SIGCHLD handler either.

Every child is reaped in two steps: ``waitid(WNOWAIT)`` reads how it ended without reaping it,
and only then ``wait4`` reaps it for its rusage, so the exit status is kept before the
zombie is gone. The bookkeeping runs with signals blocked (see :meth:`Waiter.step`).
"""

from __future__ import annotations

import ctypes
import heapq
import os
import resource
import select
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol, TypeAlias

from . import _contain, _forensics, _limits, _linux, _status
from ._options import Options, entry_name
from ._report import RETURNED_EXIT_CODE, Outcome, Report

__all__ = ["CAPTURE_LIMIT", "Driver", "OutputCallback", "Proc", "Waiter", "finish"]

#: ``on_output(child_name, "stdout" | "stderr", chunk)``: captured output as it arrives.
OutputCallback: TypeAlias = Callable[[str, str, bytes], None]

#: Bytes of captured stdout and of stderr kept per child; past it the oldest bytes are dropped.
CAPTURE_LIMIT: Final = 1024 * 1024

_READ_SIZE: Final = 65536
_STATUS, _OUT, _ERR, _PIDFD = range(4)
_BACKOFF_MIN: Final = 0.0005
_BACKOFF_MAX: Final = 0.05
#: How long a child may take to write its stack once asked, and the quiet after its first
#: bytes that says it is done; then SIGTERM follows.
_STACK_WAIT: Final = 1.0
_STACK_QUIET: Final = 0.02
_POLLIN: Final = select.POLLIN | select.POLLHUP | select.POLLERR

# Stages of ending a child: running; stack asked for (SIGTERM due); SIGTERM sent (SIGKILL
# due); SIGKILL sent.
RUNNING, STACKING, TERMINATING, KILLED = range(4)


class Driver(Protocol):
    """What moves a child that a ``Scope`` may still be holding in its queue."""

    def drive(self, until: float | None) -> None: ...

    def withdraw(self, proc: Proc) -> bool: ...


class Proc:
    """The parent's record of one child, from fork to report."""

    __slots__ = (
        "pid",
        "_name",
        "_entry",
        "options",
        "pidfd",
        "status_fd",
        "out_fd",
        "err_fd",
        "status_buf",
        "out_buf",
        "err_buf",
        "started",
        "deadline",
        "due",
        "stage",
        "grace",
        "sigterm_at",
        "killed_at",
        "reason",
        "ended_how",
        "leftovers",
        "report",
        "waiter",
        "driver",
        "owner",
        "__weakref__",
    )

    def __init__(self, entry: Callable[..., object], options: Options) -> None:
        self.pid: int | None = None
        self._name: str | None = None
        self._entry = entry
        self.options = options
        self.pidfd: int | None = None
        self.status_fd = -1
        self.out_fd = -1
        self.err_fd = -1
        self.status_buf = bytearray()
        self.out_buf = bytearray()
        self.err_buf = bytearray()
        self.started = 0.0
        #: Absolute (monotonic) once started.
        self.deadline: float | None = None
        #: When the next step of ending it is due (monotonic), while it is being ended.
        self.due = 0.0
        self.stage = RUNNING
        #: The grace to give between SIGTERM and SIGKILL once ending it has begun.
        self.grace = options.grace
        self.sigterm_at: float | None = None
        self.killed_at = 0.0
        #: Why we are ending it: None, "timed_out", "cancelled" or "terminated".
        self.reason: str | None = None
        #: (si_code, si_status) from waitid, kept before the zombie is reaped.
        self.ended_how: tuple[int, int] | None = None
        #: Descendants the parent killed when it ended the child (containment).
        self.leftovers = 0
        self.report: Report | None = None
        self.waiter: Waiter | None = None
        self.driver: Driver | None = None
        self.owner = _linux.THIS_PROCESS.pid

    @property
    def name(self) -> str:
        """The child's name in reports: ``name=`` or the entry's qualified name."""
        name = self._name
        if name is None:
            name = self._name = self.options.name or entry_name(self._entry)
        return name


class Waiter:
    """Reaps a set of children. Not thread-safe; one per ``Scope`` or per lone ``Child``."""

    def __init__(self, *, on_output: OutputCallback | None = None) -> None:
        self._on_output = on_output
        #: The process that made this waiter: only it may add children.
        self.owner = _linux.THIS_PROCESS.pid
        self._poll = select.poll()  # registering costs no system call, unlike epoll
        self._watched: dict[int, tuple[Proc, int]] = {}
        self._heap: list[tuple[float, int, Proc]] = []
        self._seq = 0
        self._polled: list[Proc] = []
        self._backoff = _BACKOFF_MIN
        self._output: list[tuple[str, str, bytes]] = []
        #: The children added and not yet reaped, in the order they were added.
        self.running: dict[int, Proc] = {}
        #: Reaped children (their report set) not yet collected by a Scope, in order of ending.
        self.ended: deque[Proc] = deque()

    def add(self, proc: Proc) -> None:
        """Watch a child that has just been forked (called with signals blocked)."""
        assert proc.pid is not None
        if proc.pidfd is None:
            proc.pidfd = _linux.pidfd_open(proc.pid)
        if proc.pidfd is None:
            self._polled.append(proc)
        else:
            self._watch(proc.pidfd, proc, _PIDFD)
        self._watch(proc.status_fd, proc, _STATUS)
        if proc.out_fd >= 0:
            self._watch(proc.out_fd, proc, _OUT)
            self._watch(proc.err_fd, proc, _ERR)
        if proc.deadline is not None:
            self._schedule(proc, proc.deadline)
        self.running[id(proc)] = proc  # last: only a fully watched child is waited for

    def silence(self) -> None:
        """Stop calling ``on_output``; captured output is still kept in the reports."""
        self._on_output = None
        self._output.clear()

    def step(self, until: float | None) -> list[Proc]:
        """Wait until at least one child is reaped or ``until`` (monotonic) passes.

        Returns the children reaped (their ``report`` is set). With ``until`` in the past it
        makes one pass without blocking. Signals are blocked except while we sleep in poll,
        so a Python handler (Ctrl-C's KeyboardInterrupt) can only raise where nothing is
        half-done: not between a deadline popped and enforced, bytes read and kept, or a
        child reaped and its report set. ``on_output`` is called after, with the caller's
        mask, so a stalled terminal never makes the loop deaf to Ctrl-C.
        """
        reaped: list[Proc] = []
        with _linux.signals_blocked() as callers_mask:
            self._step(until, reaped, callers_mask)
        # Not on the way out of an interrupt: the caller is leaving, not listening.
        self._deliver_output()
        return reaped

    def _deliver_output(self) -> None:
        callback = self._on_output
        while self._output:
            name, stream, data = self._output.pop(0)
            if callback is not None:
                callback(name, stream, data)

    def _step(self, until: float | None, reaped: list[Proc], mask: ctypes.Array[ctypes.c_ubyte]) -> None:
        while self.running:
            self._enforce_deadlines()
            if self._polled:
                self._poll_exited(reaped)
                if reaped:
                    return
            timeout = self._timeout(until)
            _linux.restore_signals(mask)  # the caller's mask, to sleep
            events = self._poll.poll(timeout)  # level-triggered: events lost to an interrupt come back
            _linux.block_signals(_linux.mask_buffer())
            ended: list[Proc] = []
            for fd, _ in events:
                proc, kind = self._watched[fd]
                if kind == _PIDFD:
                    ended.append(proc)
                else:
                    self._read(fd, proc, kind)
            for proc in ended:
                self._reap(proc)
                reaped.append(proc)
            if reaped or (until is not None and time.monotonic() >= until):
                return
            if self._polled and not events:
                self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _timeout(self, until: float | None) -> int | None:
        """poll()'s timeout in milliseconds (None: until something happens)."""
        limit = float("inf") if until is None else until
        if self._heap:
            limit = min(limit, self._heap[0][0])
        now = time.monotonic()
        if self._polled:
            limit = min(limit, now + self._backoff)
        if limit == float("inf"):
            return None
        return max(0, int((limit - now) * 1000 + 0.999))

    def _enforce_deadlines(self) -> None:
        heap = self._heap
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            when, _, proc = heapq.heappop(heap)
            if proc.report is None and when == proc.due:
                self._advance(proc, now)

    def _advance(self, proc: Proc, now: float) -> None:
        if proc.stage == RUNNING:
            self.end(proc, proc.options.grace, "timed_out")
        elif proc.stage == STACKING:
            self._terminate(proc, now)
        elif proc.stage == TERMINATING:
            self._kill(proc, now)

    def end(self, proc: Proc, grace: float, reason: str, *, kill: bool = False, stack: bool = True) -> None:
        """Start ending a child: (stack signal ->) SIGTERM -> ``grace`` -> SIGKILL, or SIGKILL.

        ``reason`` ("timed_out", "cancelled", "terminated") is recorded on the first call. A
        child that already ended on its own is left alone: it is reaped with the outcome it
        earned, even when nobody waited for it until after its deadline.
        """
        if proc.report is not None or proc.stage == KILLED or _has_ended(proc):
            return
        # Blocked, so that an interrupt cannot leave a child marked as being ended with no
        # next step scheduled (inside step(), where they are blocked already, this changes nothing).
        with _linux.signals_blocked():
            if proc.reason is None:
                proc.reason = reason
            now = time.monotonic()
            if kill:
                self._kill(proc, now)
            elif proc.stage == RUNNING:
                proc.grace = grace
                if stack and self._can_take_stack(proc):
                    proc.stage = STACKING
                    _linux.signal_process(proc.pid or 0, proc.pidfd, _forensics.STACK_SIGNAL)
                    self._schedule(proc, now + _STACK_WAIT)
                else:
                    self._terminate(proc, now)

    def _can_take_stack(self, proc: Proc) -> bool:
        """A Python child can write its stack; an exec'd program would die of the signal."""
        return _forensics.stack_fd() >= 0 and proc.status_fd >= 0 and not self._execed(proc)

    def _execed(self, proc: Proc) -> bool:
        if proc.status_fd >= 0:
            self._drain(proc)  # an exec record may be waiting in the pipe
        return b"X" in {kind for kind, _ in _status.parse(proc.status_buf).records}

    def _kill_tree(self, proc: Proc) -> None:
        """Contained: freeze and kill the child's descendants while it still holds them all.

        Done first: a child that died of the SIGTERM would orphan them to init. The child is
        left stopped; the SIGCONT after SIGTERM (or the SIGKILL) ends that.
        """
        if proc.options.contain and proc.pid is not None and not _has_ended(proc):
            try:
                proc.leftovers += _contain.kill_descendants(proc.pid, proc.pidfd)
            except OSError:
                # Out of descriptors to read /proc with: the group signal that follows still
                # reaches every descendant that stayed in the child's group.
                pass

    def _terminate(self, proc: Proc, now: float) -> None:
        if not self._execed(proc):
            # An exec'd contained child is a supervisor: it forwards the SIGTERM to the
            # program, and kills what the program leaves once it ends.
            self._kill_tree(proc)
        proc.stage = TERMINATING
        proc.sigterm_at = now
        self._schedule(proc, now + proc.grace)
        _signal_child(proc, signal.SIGTERM)
        # A stopped process (SIGSTOP, or SIGTTIN from a terminal) keeps SIGTERM pending until
        # it is continued: continue it, as init systems do.
        _signal_child(proc, signal.SIGCONT)

    def _kill(self, proc: Proc, now: float) -> None:
        self._kill_tree(proc)
        proc.stage = KILLED
        proc.killed_at = now
        _signal_child(proc, signal.SIGKILL)

    def _schedule(self, proc: Proc, when: float) -> None:
        self._seq += 1
        proc.due = when
        heapq.heappush(self._heap, (when, self._seq, proc))

    def _poll_exited(self, reaped: list[Proc]) -> None:
        for proc in list(self._polled):
            if _has_ended(proc):
                self._polled.remove(proc)
                self._reap(proc)
                reaped.append(proc)
                self._backoff = _BACKOFF_MIN

    def _watch(self, fd: int, proc: Proc, kind: int) -> None:
        self._watched[fd] = (proc, kind)
        self._poll.register(fd, select.POLLIN)

    def _unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def _read(self, fd: int, proc: Proc, kind: int) -> None:
        got = _read(fd, proc, kind, self._output if self._on_output is not None else None)
        if proc.stage == STACKING and kind == _STATUS and got == _DATA:
            # The stack is arriving: SIGTERM once the child has been quiet for a moment.
            self._schedule(proc, min(proc.due, time.monotonic() + _STACK_QUIET))
        if got == _EOF:
            self._unwatch(fd)
            _close(proc, kind)

    def _drain(self, proc: Proc) -> None:
        output = self._output if self._on_output is not None else None
        for kind, fd in ((_STATUS, proc.status_fd), (_OUT, proc.out_fd), (_ERR, proc.err_fd)):
            if fd >= 0:
                while _read(fd, proc, kind, output) == _DATA:
                    pass

    def _reap(self, proc: Proc) -> None:
        for fd in (proc.pidfd, proc.status_fd, proc.out_fd, proc.err_fd):
            if fd is not None and fd >= 0:
                self._unwatch(fd)
        if proc in self._polled:
            self._polled.remove(proc)
        finish(proc, self._output if self._on_output is not None else None)
        del self.running[id(proc)]
        self.ended.append(proc)


def _signal_child(proc: Proc, sig: int) -> None:
    pid = proc.pid or 0
    _linux.signal_process(pid, proc.pidfd, sig)
    if proc.options.new_group:
        # The child's own children share its group: they get the same signal.
        _linux.signal_group(pid, sig)


def _has_ended(proc: Proc) -> bool:
    """Whether the child has ended (it is a zombie), keeping how it ended; never reaps."""
    if proc.ended_how is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid or 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        proc.ended_how = (-1, -1)  # reaped by other code: nothing left to signal
        return True
    if info is None or info.si_pid != proc.pid:
        return False
    proc.ended_how = (info.si_code, info.si_status)
    return True


def wait_blocking(proc: Proc) -> None:
    """Sleep until the child ends and keep how it ended, without reaping it.

    Used by a lone ``Child.wait()`` with nothing else to watch. An interrupt here (Ctrl-C)
    leaves everything as it was: the child is not reaped yet.
    """
    try:
        info = os.waitid(os.P_PID, proc.pid or 0, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        proc.ended_how = (-1, -1)
        return
    if info is not None:
        proc.ended_how = (info.si_code, info.si_status)


_DATA, _AGAIN, _EOF = range(3)


def _read(fd: int, proc: Proc, kind: int, output: list[tuple[str, str, bytes]] | None) -> int:
    """Read what is there into the child's buffer: ``_DATA``, ``_AGAIN`` or ``_EOF``."""
    try:
        data = os.read(fd, _READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return _AGAIN
    except OSError:
        return _EOF
    if not data:
        return _EOF
    if kind == _STATUS:
        proc.status_buf += data
        return _DATA
    buf = proc.out_buf if kind == _OUT else proc.err_buf
    buf += data
    if len(buf) > 2 * CAPTURE_LIMIT:
        # Trimmed only past twice the limit (and for good when the report is built), so a
        # child writing gigabytes costs linear time, not a megabyte memmove per read.
        del buf[: len(buf) - CAPTURE_LIMIT]
    if output is not None:
        output.append((proc.name, "stdout" if kind == _OUT else "stderr", data))
    return _DATA


def _close(proc: Proc, kind: int) -> None:
    if kind == _STATUS:
        fd, proc.status_fd = proc.status_fd, -1
    elif kind == _OUT:
        fd, proc.out_fd = proc.out_fd, -1
    elif kind == _ERR:
        fd, proc.err_fd = proc.err_fd, -1
    else:
        fd = -1 if proc.pidfd is None else proc.pidfd
        proc.pidfd = None
    if fd >= 0:
        os.close(fd)


def finish(proc: Proc, output: list[tuple[str, str, bytes]] | None = None) -> Report:
    """The child has ended (it is a zombie): read what it left, reap it, build its report.

    Called with signals blocked: an interrupt just after ``wait4`` returned would otherwise
    lose the rusage; how it ended was kept by ``waitid`` before.
    """
    pid = proc.pid or 0
    if proc.ended_how is None:
        _has_ended(proc)
    if proc.options.new_group:
        # Leftover grandchildren die with the child; the zombie still reserves the pid,
        # so this group id cannot belong to anyone else yet.
        _linux.signal_group(pid, signal.SIGKILL)
    usage: resource.struct_rusage | None
    try:
        _, _, usage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        usage = None
    ended = time.monotonic()
    try:
        # Whatever the child wrote before it ended is in the pipes now; a grandchild may
        # still hold them open, so read only what is there.
        for kind, fd in ((_STATUS, proc.status_fd), (_OUT, proc.out_fd), (_ERR, proc.err_fd)):
            if fd >= 0:
                while _read(fd, proc, kind, output) == _DATA:
                    pass
    finally:
        for kind in (_STATUS, _OUT, _ERR, _PIDFD):
            _close(proc, kind)
        report = proc.report = build_report(proc, usage, ended)
    return report


def build_report(proc: Proc, usage: resource.struct_rusage | None, ended: float) -> Report:
    exit_code: int | None = None
    sig: signal.Signals | None = None
    core = False
    error: str | None = None
    outcome = Outcome.EXITED
    how = proc.ended_how or (-1, -1)
    if how[0] == -1:
        error = (
            "the child was reaped by other code (a waitpid(-1) elsewhere, or SIGCHLD set to "
            "SIG_IGN after the fork): its exit status is lost"
        )
    elif how[0] == os.CLD_EXITED:
        exit_code = how[1]
    else:
        sig = signal.Signals(how[1])
        core = how[0] == os.CLD_DUMPED
        outcome = Outcome.SIGNALED
    parsed = _status.parse(proc.status_buf)
    codec = proc.options.codec
    result: object = None
    messages: list[object] = []
    execed = False
    kinds: dict[bytes, bytes] = {}
    for kind, payload in parsed.records:
        if kind == b"M":
            try:
                messages.append(_status.decode(codec, payload))
            except Exception as exc:  # noqa: BLE001 - a broken message must not lose the report
                error = f"a message from the child could not be decoded: {exc}"
        else:
            kinds[kind] = payload
    if b"V" in kinds:
        try:
            result = _status.decode(codec, kinds[b"V"])
        except Exception as exc:  # noqa: BLE001
            error = f"the child's result could not be decoded: {exc}"
    if b"F" in kinds:
        outcome = Outcome.EXEC_FAILED
        error = kinds[b"F"].decode("utf-8", "replace")
    elif b"R" in kinds and exit_code == RETURNED_EXIT_CODE:
        outcome = Outcome.RETURNED
        error = kinds[b"R"].decode("utf-8", "replace")
    elif b"E" in kinds and (exit_code == 1 or sig is not None):
        outcome = Outcome.RAISED
        error = kinds[b"E"].decode("utf-8", "replace")
    elif b"X" in kinds:
        execed = True
    if parsed.truncated and error is None:
        error = "the status pipe ended inside a record: part of what the child sent is lost"
    leftovers = proc.leftovers
    if b"C" in kinds:
        leftovers += int(kinds[b"C"] or b"0")
    # Linux counts max_rss in KiB.
    user, system, rss = (0.0, 0.0, 0) if usage is None else (usage.ru_utime, usage.ru_stime, usage.ru_maxrss * 1024)
    limit = _limits.limit_hit(
        proc.options.limits,
        signal=sig,
        user_time=user,
        system_time=system,
        raised_memory_error=outcome is Outcome.RAISED and _last_line(error).startswith("MemoryError"),
    )
    if limit is not None:
        outcome = Outcome.LIMIT_EXCEEDED
    stack: str | None = None
    if parsed.text and not execed and (sig in _forensics.FATAL_SIGNALS or proc.reason in ("timed_out", "cancelled")):
        stack = _forensics.trim(parsed.text) or None
    reason = proc.reason
    if reason == "timed_out":
        outcome = Outcome.TIMED_OUT
        deadline = "" if proc.options.timeout is None else f" of {proc.options.timeout:g} s"
        error = _ended_text(proc, f"its deadline{deadline} passed")
    elif reason == "cancelled":
        outcome = Outcome.CANCELLED
        error = _ended_text(proc, "its scope was left by an exception")
    return Report(
        name=proc.name,
        pid=proc.pid or 0,
        outcome=outcome,
        exit_code=exit_code,
        signal=sig,
        core_dumped=core,
        execed=execed,
        duration=ended - proc.started,
        user_time=user,
        system_time=system,
        max_rss=rss,
        error=error,
        result=result,
        stdout=bytes(proc.out_buf[-CAPTURE_LIMIT:]),
        stderr=bytes(proc.err_buf[-CAPTURE_LIMIT:]),
        stack=stack,
        limit=limit,
        leftovers=leftovers,
        messages=tuple(messages),
    )


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


def _ended_text(proc: Proc, why: str) -> str:
    sigterm_at = proc.sigterm_at
    if proc.stage < KILLED:
        how = "sent SIGTERM"
    elif sigterm_at is None:
        how = "sent SIGKILL"
    else:
        how = f"sent SIGTERM, then SIGKILL {proc.killed_at - sigterm_at:.3g} s later"
    group = " and its process group" if proc.options.new_group else ""
    return f"{why}: {how} to pid {proc.pid}{group}"
