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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import final

__all__ = ["Limits"]


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
