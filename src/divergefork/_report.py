"""How a child ended: :class:`Outcome` and the frozen :class:`Report`."""

from __future__ import annotations

import enum
import re
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
    #: A resource limit (``Limits``) stopped it; ``Report.limit`` names which.
    LIMIT_EXCEEDED = "limit_exceeded"
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
    #: Where the child's Python code was when it crashed or its deadline struck, else None.
    stack: str | None = None
    #: The ``Limits`` field that stopped it (outcome ``limit_exceeded``), else None.
    limit: str | None = None
    #: Descendants still running when the child ended, killed by containment.
    leftovers: int = 0
    #: Everything the child sent with ``df.send``, in order.
    messages: tuple[object, ...] = ()

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
            "result": _jsonable(self.result),
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "stack": self.stack,
            "limit": self.limit,
            "leftovers": self.leftovers,
            "messages": [_jsonable(message) for message in self.messages],
        }

    def describe(self) -> str:
        """One short human phrase: ``exited 0``, ``signaled SIGKILL (core dumped)``, ...

        With a ``stack``, it ends with where the child was: ``... at crash (tests/t.py:12)``.
        """
        if self.limit is not None:
            how = f"{self.outcome.value} {self.limit}"
        elif self.signal is not None:
            how = f"{self.outcome.value} {self.signal.name}"
            if self.core_dumped:
                how += " (core dumped)"
        elif self.exit_code is not None:
            how = f"{self.outcome.value} {self.exit_code}"
        else:
            how = self.outcome.value
        where = innermost_frame(self.stack)
        return how if where is None else f"{how} at {where}"


_FRAME: Final = re.compile(r'^\s*File "(?P<file>[^"]*)", line (?P<line>\d+) in (?P<name>.*)$', re.MULTILINE)


def innermost_frame(stack: str | None) -> str | None:
    """``name (file:line)`` of the first (innermost) frame of a faulthandler dump, if any."""
    if not stack:
        return None
    # faulthandler writes the current thread first, most recent call first.
    current = stack.find("Current thread")
    match = _FRAME.search(stack, max(current, 0))
    if match is None:
        return None
    return f"{match['name']} ({match['file']}:{match['line']})"


def _jsonable(value: object) -> object:
    """``value`` if JSON can carry it as it is (a ``json`` codec message), else its repr."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _jsonable(item) for key, item in value.items()}
    return repr(value)
