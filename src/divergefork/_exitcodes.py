"""The exit codes of every ``divergefork`` subcommand, defined once.

``run``: 0 every child ``ok``; 1 something failed after forking (a child not ``ok``, a plugin's
``divergefork_report``/``divergefork_finished`` hook raising, a fork refused part way through,
a report file that could not be written); 2 usage, configuration or plugin error, and then
nothing was forked; 130 interrupted (every child terminated and reaped first); 141 stdout was
closed by its reader (``divergefork run | head``): the children still ran to the end and were
reaped, report files were written, and the rest of the output was dropped.
``demo race`` uses 0, 1 (the child or the race failed), 2 (usage) and 130. ``check`` exits
with mypy's own status (0, 1, 2) and 2 for its own usage errors.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, what `yes | head -1` reports for `yes`
