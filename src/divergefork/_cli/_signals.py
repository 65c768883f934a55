"""The signals ``divergefork run`` handles: SIGTERM (cancel, like Ctrl-C) and its view's clock.

The clock: the live view redraws elapsed times ten times a second, but the run's thread
spends its time asleep in the scope's wait (epoll, no timeout), and a thread of our own is
out of the question (threads at fork are refused). So an interval timer sends SIGALRM, and
while the run waits its handler raises :class:`Tick` there. The scope is built for that: an
exception raised while it waits (Ctrl-C's) leaves it whole; the run catches ``Tick``, redraws
and waits again with a fresh ``as_completed()``, reading reports from ``scope.reports``. Away
from the wait the handler only sets ``due``, so it never raises in a plugin hook or a fork.

Children inherit the handler's disposition (not the timer: timers are not inherited). In a
child it puts back the default action and re-sends the signal to itself, so a child's own
``signal.alarm`` still ends it as it would have.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Final, final

__all__ = ["TICK", "Terminated", "Tick", "Ticker", "sigterm_cancels"]

#: How often the live view redraws, in seconds.
TICK: Final = 0.1


class Terminated(KeyboardInterrupt):
    """SIGTERM while ``run`` supervises its children: handled as Ctrl-C is."""


class Tick(BaseException):
    """Time to redraw. A ``BaseException`` so that no ``except Exception`` swallows it."""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_cancels() -> Iterator[None]:
    """Make SIGTERM cancel the run like Ctrl-C: children get SIGTERM and their grace, are
    reaped, and the report files are still written (exit 130).

    Without this a supervisor's SIGTERM would kill us outright, the children would die by the
    parent-death signal (SIGKILL, no grace) and no report would be written. Only where SIGTERM
    has its default action (a caller's own handler is left alone) and in the main thread.
    Children never run this handler: each resets an inherited SIGTERM handler first.
    """
    if not _main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def cancel(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@final
class Ticker:
    """SIGALRM every :data:`TICK` seconds while armed; see the module's docstring."""

    __slots__ = ("waiting", "due", "armed", "_owner", "_previous")

    def __init__(self) -> None:
        #: True only while the run waits in the scope: then the handler raises ``Tick``.
        self.waiting = False
        #: A tick came while the run was busy: redraw at the next chance.
        self.due = False
        self.armed = False
        self._owner = os.getpid()
        self._previous: object = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:
            # A child that inherited us: behave as the default action would (end the process).
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGALRM)
            return
        if self.waiting:
            self.waiting = False  # one Tick per wait, even if two signals land together
            raise Tick
        self.due = True

    @contextlib.contextmanager
    def armed_while(self, enabled: bool) -> Iterator[Ticker]:
        """Arm the timer for the block (when ``enabled``, SIGALRM is free, in the main thread)."""
        if not enabled or not _main_thread() or signal.getsignal(signal.SIGALRM) != signal.SIG_DFL:
            yield self
            return
        signal.signal(signal.SIGALRM, self._handler)
        # Other system calls restart instead of failing with EINTR; epoll_wait never restarts,
        # which is what wakes the wait.
        signal.siginterrupt(signal.SIGALRM, False)
        signal.setitimer(signal.ITIMER_REAL, TICK, TICK)
        self.armed = True
        try:
            yield self
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            self.armed = False
            self.waiting = False
            # SIG_IGN first discards a SIGALRM still pending, which SIG_DFL would die of.
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
