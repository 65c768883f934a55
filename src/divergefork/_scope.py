"""``Scope``: structured forking. No child started inside the block outlives it."""

from __future__ import annotations

import os
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final, NoReturn, TypeVar, final

import ctypes

from . import _linux
from ._errors import DivergeforkError
from ._fork import Child, start
from ._limits import Limits
from ._options import Codec, OnParentExit, Options, Threads, check_entry
from ._report import Outcome, Report
from ._waiter import KILLED, RUNNING, OutputCallback, Proc, Waiter

__all__ = ["Scope"]

T = TypeVar("T")

# "Not given: take the scope's default". Typed Any so each option keeps its honest type.
_DEFAULT: Final[Any] = object()

# This process's pid, kept by an at-fork hook: __exit__ and __del__ compare it without a call.
_this: Final = _linux.THIS_PROCESS

_Queued = tuple[Any, Callable[[Any], NoReturn], Child, tuple[ctypes.Array[ctypes.c_ubyte], dict[int, object]]]


@final
class Scope:
    """Fork children that all end (or are ended) before the ``with`` block is left.

    ::

        with df.Scope(timeout=30, max_parallel=8) as scope:
            scope.fork(value, entry_a, name="a")
            scope.fork(value, entry_b, name="b")
            for report in scope.as_completed():
                ...
        # here no child of the scope (nor its process group) is alive or a zombie

    The keyword options are defaults for every ``fork`` call. With ``max_parallel`` extra
    children wait in a queue and start (getting their value then) as others end.
    ``on_output(name, stream, chunk)`` receives captured output (``capture=True``) as it
    arrives; ``stream`` is ``"stdout"`` or ``"stderr"``.

    Leaving the block normally waits for every child, deadlines enforced. Leaving it by an
    exception, ``KeyboardInterrupt`` included, sends SIGTERM to every child and its group,
    SIGKILL after the grace period, reaps them all, reports them ``cancelled`` (children
    still queued are reported ``cancelled`` with pid 0) and re-raises the exception unchanged.
    """

    __slots__ = ("__weakref__", "_defaults", "_max_parallel", "_on_output", "_waiter", "_queue", "_unseen", "_owner", "_state", "reports")

    def __init__(
        self,
        *,
        timeout: float | None = None,
        max_parallel: int | None = None,
        grace: float = 2.0,
        on_parent_exit: OnParentExit = "kill",
        new_group: bool = True,
        threads: Threads = "refuse",
        capture: bool = False,
        contain: bool = True,
        limits: Limits | None = None,
        codec: Codec = "json",
        on_output: OutputCallback | None = None,
    ) -> None:
        self._defaults = Options(
            None, timeout, grace, on_parent_exit, new_group, threads, capture, contain, limits, codec
        )
        if max_parallel is not None and (
            isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1
        ):
            raise ValueError(f"Scope(max_parallel=...) must be a positive int or None, not {max_parallel!r}")
        if on_output is not None and not callable(on_output):
            raise TypeError(f"Scope(on_output=...) must be callable(name, stream, chunk) or None, not {on_output!r}")
        self._max_parallel = max_parallel
        self._on_output = on_output
        self._waiter: Waiter | None = None
        self._queue: deque[_Queued] = deque()
        #: Reports not yet yielded by as_completed().
        self._unseen: deque[Report] = deque()
        self._owner = _this.pid
        self._state = "new"
        #: Every report so far, in the order the children ended.
        self.reports: list[Report] = []

    def __repr__(self) -> str:
        return (
            f"<Scope {self._state} running={0 if self._waiter is None else len(self._waiter.running)} "
            f"queued={len(self._queue)} "
            f"ended={len(self.reports)}>"
        )

    def __enter__(self) -> Scope:
        if self._state != "new":
            raise DivergeforkError("a Scope can be entered only once; make a new one")
        self._waiter = Waiter(on_output=self._on_output)
        self._state = "open"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # No call before the try: a signal's handler can only raise after a call returns (or
        # as a function starts: for an interrupt landing right there, see __del__).
        try:
            if _this.pid != self._owner:
                return  # a forked child that unwinds here must not touch the parent's children
            if exc is None:
                for _ in self.as_completed():
                    pass
            else:
                self._cancel()
        except BaseException:
            if _this.pid == self._owner:
                self._cancel()  # returns at once if every child is already reaped
            raise
        finally:
            if _this.pid == self._owner:
                self._state = "closed"  # last: until then __del__ would finish the job
        # Returning None re-raises the block's exception unchanged.

    def __del__(self) -> None:
        # A backstop. Python runs a pending signal's handler as a function starts, so an
        # interrupt landing just as __exit__ is called skips all of it, and no code can guard
        # that instant. The scope then dies open: end and reap what it left, loudly.
        waiter = getattr(self, "_waiter", None)
        if waiter is None or getattr(self, "_state", None) != "open" or self._owner != _this.pid:
            return
        left = len(waiter.running) + len(self._queue)
        self._queue.clear()
        waiter.silence()
        for child in list(waiter.running.values()):
            waiter.end(child, 0.0, "cancelled", kill=True)
        while waiter.running:
            waiter.step(None)
        self._collect()
        self._state = "closed"
        if left:
            warnings.warn(
                f"a Scope was dropped without its `with` block ending normally (an interrupt "
                f"as it was left?); its {left} remaining children were killed and reaped",
                ResourceWarning,
                stacklevel=1,
            )

    def fork(
        self,
        value: T,
        entry: Callable[[T], NoReturn],
        *,
        name: str | None = None,
        timeout: float | None = _DEFAULT,
        grace: float = _DEFAULT,
        on_parent_exit: OnParentExit = _DEFAULT,
        new_group: bool = _DEFAULT,
        threads: Threads = _DEFAULT,
        capture: bool = _DEFAULT,
        contain: bool = _DEFAULT,
        limits: Limits | None = _DEFAULT,
        codec: Codec = _DEFAULT,
    ) -> Child:
        """Fork ``entry(value)`` in this scope, now or, with ``max_parallel``, when a slot frees.

        Takes the same arguments as ``divergefork.fork``; options not given are the scope's.
        """
        # Inlined checks: see start() on why this path calls as few functions as it can.
        # (start() refuses a child process forking into its parent's scope.)
        if self._state != "open":
            self._check_open("fork")
        maybe_entry: object = entry  # typed as what a caller may really pass
        if not callable(maybe_entry):
            check_entry(maybe_entry)
        d = self._defaults
        # Identity tests, not a tuple compare: nothing is built per call (see start()). Through
        # names typed object, so that mypy does not narrow one option against another.
        t: object = timeout
        g: object = grace
        o: object = on_parent_exit
        n: object = new_group
        r: object = threads
        c: object = capture
        k: object = contain
        lim: object = limits
        cod: object = codec
        if name is None and t is _DEFAULT and g is _DEFAULT and o is _DEFAULT and n is _DEFAULT and r is _DEFAULT and c is _DEFAULT and k is _DEFAULT and lim is _DEFAULT and cod is _DEFAULT:
            options = d  # validated once, shared by every child that takes the defaults
        else:
            options = Options(
                name,
                d.timeout if timeout is _DEFAULT else timeout,
                d.grace if grace is _DEFAULT else grace,
                d.on_parent_exit if on_parent_exit is _DEFAULT else on_parent_exit,
                d.new_group if new_group is _DEFAULT else new_group,
                d.threads if threads is _DEFAULT else threads,
                d.capture if capture is _DEFAULT else capture,
                d.contain if contain is _DEFAULT else contain,
                d.limits if limits is _DEFAULT else limits,
                d.codec if codec is _DEFAULT else codec,
            )
        waiter = self._waiter
        assert waiter is not None
        child = Child(entry, options)
        # A proxy, not the scope: a strong one would make scope -> child -> scope a cycle, and
        # __del__'s backstop would then wait for the garbage collector.
        child.driver = weakref.proxy(self)
        if self._max_parallel is not None and len(waiter.running) >= self._max_parallel:
            # Started later, from inside the loop where the runtime blocks signals: keep what
            # the caller has now, for the child to start with.
            child.waiter = waiter
            self._queue.append((value, entry, child, (_linux.current_mask(), _linux.dispositions())))
            return child
        return start(value, entry, options, waiter, child)  # registered with the waiter before it returns

    def as_completed(self) -> Iterator[Report]:
        """Yield each child's report as it ends, until no child is running or queued."""
        self._check_open("as_completed")
        waiter = self._waiter
        assert waiter is not None
        unseen = self._unseen
        while True:
            while unseen:
                yield unseen.popleft()
            if not waiter.running:
                if not self._queue:
                    return
                self._fill()
                continue
            try:
                waiter.step(None)
            finally:
                self._collect()
            self._fill()

    def wait(self) -> list[Report]:
        """Wait for every child (queued ones included) and return all reports so far."""
        for _ in self.as_completed():
            pass
        return list(self.reports)

    def _fill(self) -> None:
        waiter = self._waiter
        assert waiter is not None
        limit = self._max_parallel
        if not self._queue or (limit is not None and len(waiter.running) >= limit):
            return
        # Blocked: an interrupt between a child's start and taking it off the queue would
        # report it twice (started, and cancelled before it started).
        with _linux.signals_blocked():
            while self._queue and (limit is None or len(waiter.running) < limit):
                value, entry, child, callers = self._queue[0]
                start(value, entry, child.options, waiter, child, callers)
                self._queue.popleft()  # only once it started: a failed start stays queued

    def _collect(self) -> None:
        """Move the reports of reaped children into ``reports``, in the order they ended."""
        waiter = self._waiter
        assert waiter is not None
        ended = waiter.ended
        if not ended:
            return
        # Blocked: an interrupt between taking a child off `ended` and keeping its report
        # would lose the report.
        with _linux.signals_blocked():
            while ended:
                report = ended.popleft().report
                assert report is not None
                self.reports.append(report)
                self._unseen.append(report)

    def _cancel(self) -> None:
        """End every child: SIGTERM, grace, SIGKILL; reap all, whatever interrupts us.

        Another exception while waiting out the grace period (a second Ctrl-C) skips the rest
        of the grace: everything left gets SIGKILL. We return only when no child is left, then
        re-raise the last such exception (else the scope's own exception propagates).
        """
        waiter = self._waiter
        assert waiter is not None
        # A failing on_output callback may be why we are here; it must not stop the reaping.
        waiter.silence()
        if self._queue:
            # Blocked: an interrupt between taking a child off the queue and reporting it
            # would lose it.
            with _linux.signals_blocked():
                while self._queue:
                    self._never_started(self._queue[0][2])
                    self._queue.popleft()
        interrupted: BaseException | None = None
        graceful = True
        while waiter.running:
            try:
                for child in list(waiter.running.values()):
                    if graceful:
                        if child.stage == RUNNING:
                            waiter.end(child, child.options.grace, "cancelled")
                    elif child.stage < KILLED:
                        waiter.end(child, 0.0, "cancelled", kill=True)
                while waiter.running:
                    try:
                        waiter.step(None)
                    finally:
                        self._collect()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, once all are reaped
                interrupted = exc
                graceful = False
        self._collect()
        if interrupted is not None:
            raise interrupted

    def _never_started(self, child: Child) -> None:
        child.report = Report(
            name=child.name,
            pid=0,
            outcome=Outcome.CANCELLED,
            error="cancelled before it was started: its scope was left by an exception",
        )
        self.reports.append(child.report)

    # The Driver protocol: how a queued Child's own wait(), poll() and terminate() work.

    def drive(self, until: float | None) -> None:
        """One turn of the scope's loop: wait for a child to end (or ``until``), start queued ones."""
        self._check_open("wait")
        waiter = self._waiter
        assert waiter is not None
        if waiter.running:
            try:
                waiter.step(until)
            finally:
                self._collect()
        self._fill()

    def withdraw(self, proc: Proc) -> bool:
        """Take a child that has not started off the queue, reported ``cancelled``; False if started."""
        with _linux.signals_blocked():
            for index, queued in enumerate(self._queue):
                if queued[2] is proc:
                    del self._queue[index]
                    self._never_started(queued[2])
                    self._unseen.append(queued[2].report)  # type: ignore[arg-type]
                    return True
        return False

    def _check_open(self, what: str) -> None:
        if _this.pid != self._owner:
            raise DivergeforkError(
                f"Scope.{what}() called in process {os.getpid()}, but the scope belongs to "
                f"process {self._owner}; a child must open a Scope of its own"
            )
        if self._state != "open":
            raise DivergeforkError(
                f"Scope.{what}() needs an open scope: use it inside `with df.Scope() as scope:`"
                + (" (this one is already closed)" if self._state == "closed" else "")
            )
