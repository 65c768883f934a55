"""``Options``: the validated keyword options of one ``fork`` call, shared by every module."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, final

from ._limits import Limits
from ._limits import check as check_limits

__all__ = ["Codec", "OnParentExit", "Options", "Threads", "check_entry", "check_seconds", "entry_name"]

OnParentExit = Literal["kill", "keep"]
Threads = Literal["refuse", "warn", "allow"]
Codec = Literal["json", "pickle"]


@final
@dataclass(frozen=True, slots=True)
class Options:
    """The keyword options of one ``fork`` call (or a ``Scope``'s defaults), validated once."""

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
            check_seconds("timeout", self.timeout)
            if self.timeout <= 0:
                raise ValueError(f"fork(timeout=...) must be > 0 seconds or None, not {self.timeout!r}")
        check_seconds("grace", self.grace)
        if self.grace < 0:
            raise ValueError(f"fork(grace=...) must be >= 0 seconds, not {self.grace!r}")
        if self.on_parent_exit not in ("kill", "keep"):
            raise ValueError(f"fork(on_parent_exit=...) must be 'kill' or 'keep', not {self.on_parent_exit!r}")
        if self.threads not in ("refuse", "warn", "allow"):
            raise ValueError(f"fork(threads=...) must be 'refuse', 'warn' or 'allow', not {self.threads!r}")
        if self.limits is not None:
            if not isinstance(self.limits, Limits):
                raise TypeError(f"fork(limits=...) must be a df.Limits or None, not {type(self.limits).__name__}")
            check_limits(self.limits)  # a value above this process's hard limit: refused now
        if self.codec not in ("json", "pickle"):
            raise ValueError(f"fork(codec=...) must be 'json' or 'pickle', not {self.codec!r}")
        for flag in ("new_group", "capture", "contain"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"fork({flag}=...) must be True or False, not {getattr(self, flag)!r}")


def check_seconds(option: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"fork({option}=...) must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"fork({option}=...) must be finite, not {value!r}")


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
