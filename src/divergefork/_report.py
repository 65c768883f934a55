"""How a child ended: :class:`Outcome` and the frozen :class:`Report`."""

from __future__ import annotations

import enum
import signal as _signal
from dataclasses import dataclass
from typing import Any, Final, final

__all__ = ["RETURNED_EXIT_CODE", "Outcome", "Report"]

#: Exit status of a child whose entry returned instead of diverging (``EX_SOFTWARE``).
RETURNED_EXIT_CODE: Final = 70


@final
class Outcome(enum.StrEnum):
    """Why a child ended. The first matching line wins, top to bottom."""

    #: The scope it belonged to was left by an exception; it was terminated.
    CANCELLED = "cancelled"
    #: Its deadline passed; it was sent SIGTERM, then SIGKILL after the grace period.
    TIMED_OUT = "timed_out"
    #: ``exec_child`` could not start the program; the child exited 127.
    EXEC_FAILED = "exec_failed"
    #: The entry returned (a contract violation); the child exited ``RETURNED_EXIT_CODE``.
    RETURNED = "returned"
    #: The entry raised something other than ``SystemExit``; the child exited 1.
    RAISED = "raised"
    #: The process was killed by a signal.
    SIGNALED = "signaled"
    #: The process exited (``exit_child``, ``sys.exit``, ``os._exit`` or an exec'd program).
    EXITED = "exited"


@final
@dataclass(frozen=True, slots=True)
class Report:
    """Everything the parent learned about one child, from ``wait4`` and the status pipe."""

    name: str
    pid: int
    outcome: Outcome
    exit_code: int | None = None
    signal: _signal.Signals | None = None
    core_dumped: bool = False
    execed: bool = False
    duration: float = 0.0
    user_time: float = 0.0
    system_time: float = 0.0
    max_rss: int = 0
    error: str | None = None
    result: object = None
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def ok(self) -> bool:
        """True when the child exited with status 0 (and nothing else went wrong)."""
        return self.outcome is Outcome.EXITED and self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: the signal by name, output decoded with replacement."""
        return {
            "name": self.name,
            "pid": self.pid,
            "outcome": self.outcome.value,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "signal": None if self.signal is None else self.signal.name,
            "core_dumped": self.core_dumped,
            "execed": self.execed,
            "duration": self.duration,
            "user_time": self.user_time,
            "system_time": self.system_time,
            "max_rss": self.max_rss,
            "error": self.error,
            "result": self.result,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
        }

    def describe(self) -> str:
        """One short human phrase: ``exited 0``, ``signaled SIGKILL (core dumped)``, ..."""
        if self.signal is not None:
            how = f"{self.outcome.value} {self.signal.name}"
            return how + " (core dumped)" if self.core_dumped else how
        if self.exit_code is not None:
            return f"{self.outcome.value} {self.exit_code}"
        return self.outcome.value
