"""``Limits``: the resource limits a child runs within (``setrlimit`` in the child).

Each field is optional; ``None`` leaves the limit the parent had. What each means on Linux:

=================  ===============  ======================================================
field              rlimit           what the child sees when it is hit
=================  ===============  ======================================================
``cpu_seconds``    ``RLIMIT_CPU``   SIGXCPU at the limit (rounded up to whole seconds),
                                    SIGKILL one second of CPU later
``memory_bytes``   ``RLIMIT_AS``    allocations fail: ``MemoryError`` in Python, ``ENOMEM``
                                    from ``mmap``/``brk`` in C
``open_files``     ``RLIMIT_NOFILE``  ``open()`` fails with ``EMFILE`` ("Too many open files")
``file_size_bytes``  ``RLIMIT_FSIZE``  SIGXFSZ on a write past the size (``EFBIG`` if ignored)
``core_dumps``     ``RLIMIT_CORE``  ``False`` (the default): no core file is written
=================  ===============  ======================================================

A child can lower its limits but never raise a hard limit again, so each is set as both
the soft and the hard limit (``cpu_seconds`` keeps one second between them, for SIGXCPU to
come first). The parent's own hard limits bound them: :func:`check` refuses, in the parent
and before anything is forked, a value above them.

Python ignores SIGXFSZ for itself, so a write past ``RLIMIT_FSIZE`` would only raise
``OSError(EFBIG)``, which the entry may catch or turn into any other error. With
``file_size_bytes`` set, :func:`apply` restores the kernel's default instead: the write
kills the child with SIGXFSZ and the outcome is unambiguous (it also holds for writes from
C code and exec'd programs).
"""

from __future__ import annotations

import math
import resource
import signal as _signal
from dataclasses import dataclass
from typing import Final, final

__all__ = ["Limits", "apply", "check", "limit_hit"]

_INFINITY: Final = resource.RLIM_INFINITY


@final
@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits applied in the child before its entry runs.

    A child stopped by one of them is reported ``limit_exceeded`` and ``Report.limit`` names
    the field (``"cpu_seconds"``, ``"memory_bytes"``, ...).
    """

    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    open_files: int | None = None
    file_size_bytes: int | None = None
    core_dumps: bool = False

    def __post_init__(self) -> None:
        cpu = self.cpu_seconds
        if cpu is not None:
            if isinstance(cpu, bool) or not isinstance(cpu, int | float):
                raise TypeError(f"Limits(cpu_seconds=...) must be a number of seconds, not {type(cpu).__name__}")
            if not math.isfinite(cpu) or cpu <= 0:
                raise ValueError(f"Limits(cpu_seconds=...) must be a finite number > 0, not {cpu!r}")
        for field, least in (("memory_bytes", 1), ("open_files", 1), ("file_size_bytes", 0)):
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Limits({field}=...) must be an int or None, not {type(value).__name__}")
            if value < least:
                raise ValueError(f"Limits({field}=...) must be >= {least}, not {value!r}")
        if not isinstance(self.core_dumps, bool):
            raise TypeError(f"Limits(core_dumps=...) must be True or False, not {self.core_dumps!r}")


def _wanted(limits: Limits) -> list[tuple[str, int, int, int]]:
    """``(field, resource, soft, hard)`` for each limit set; hard may be above the parent's."""
    wanted = []
    if limits.cpu_seconds is not None:
        soft = math.ceil(limits.cpu_seconds)
        wanted.append(("cpu_seconds", resource.RLIMIT_CPU, soft, soft + 1))
    if limits.memory_bytes is not None:
        wanted.append(("memory_bytes", resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes))
    if limits.open_files is not None:
        wanted.append(("open_files", resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    if limits.file_size_bytes is not None:
        size = limits.file_size_bytes
        wanted.append(("file_size_bytes", resource.RLIMIT_FSIZE, size, size))
    return wanted


_NAMES: Final = {
    resource.RLIMIT_CPU: "RLIMIT_CPU",
    resource.RLIMIT_AS: "RLIMIT_AS",
    resource.RLIMIT_NOFILE: "RLIMIT_NOFILE",
    resource.RLIMIT_FSIZE: "RLIMIT_FSIZE",
}


def check(limits: Limits) -> None:
    """In the parent, before forking: refuse a value no child could be given.

    A process may never raise a hard limit, so a value above this process's hard limit
    raises ``ValueError`` naming the field and the limit in force.
    """
    for field, res, soft, _hard in _wanted(limits):
        _, parent_hard = resource.getrlimit(res)
        if parent_hard != _INFINITY and soft > parent_hard:
            raise ValueError(
                f"Limits({field}={getattr(limits, field)!r}) is above this process's hard limit "
                f"{_NAMES[res]} = {parent_hard}, and a child can never raise a hard limit: lower "
                f"the value, or start the parent with a higher limit (ulimit -H)"
            )


def apply(limits: Limits) -> None:
    """In the child, before the entry runs: set every limit (soft and hard)."""
    for _field, res, soft, hard in _wanted(limits):
        _, parent_hard = resource.getrlimit(res)
        if parent_hard != _INFINITY:
            hard = min(hard, parent_hard)  # check() made sure soft <= parent_hard
        resource.setrlimit(res, (soft, hard))
        if res == resource.RLIMIT_FSIZE:
            _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    _, core_hard = resource.getrlimit(resource.RLIMIT_CORE)
    # core_dumps=True: as large a core as this process may write (many shells start with a
    # soft limit of 0); False: none at all, not even a soft limit the entry could raise.
    resource.setrlimit(resource.RLIMIT_CORE, (core_hard, core_hard) if limits.core_dumps else (0, 0))


def limit_hit(
    limits: Limits | None,
    *,
    signal: int | None,
    user_time: float,
    system_time: float,
    raised_memory_error: bool,
) -> str | None:
    """The ``Limits`` field that ended a child, or None.

    ``signal`` is the signal that killed it (None if it exited); the times come from its
    rusage; ``raised_memory_error`` says a ``MemoryError`` escaped its entry.
    """
    if limits is None:
        return None
    if limits.cpu_seconds is not None:
        if signal == _signal.SIGXCPU:
            return "cpu_seconds"
        # Past the soft limit a child that handles or ignores SIGXCPU is killed at the hard
        # one, a second later, with SIGKILL.
        if signal == _signal.SIGKILL and user_time + system_time >= math.ceil(limits.cpu_seconds):
            return "cpu_seconds"
    if limits.file_size_bytes is not None and signal == _signal.SIGXFSZ:
        return "file_size_bytes"
    if limits.memory_bytes is not None and raised_memory_error:
        return "memory_bytes"
    return None
