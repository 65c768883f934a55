"""Colour: whether to use it (``--color``, ``NO_COLOR``, a terminal) and what each outcome wears.

Hand-written SGR codes rather than a library: the command uses eight of them, and the plain
path (a pipe, a CI log) must not pay an import for colour it never shows.
"""

from __future__ import annotations

import os
from typing import Final, TextIO, final

from .._report import Outcome, Report
from ._streams import isatty

__all__ = ["Style", "wants_color"]

_RESET: Final = "\x1b[0m"
_CODES: Final = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "magenta": "35",
    "cyan": "36",
    "bold red": "1;31",
}

#: The colour of each outcome: green only for ``ok``, set apart from the rest by ``ok``.
_OUTCOME_COLOR: Final = {
    Outcome.EXITED: "red",  # an exit status other than 0; ``ok`` is handled first
    Outcome.SIGNALED: "bold red",
    Outcome.RAISED: "red",
    Outcome.RETURNED: "red",
    Outcome.EXEC_FAILED: "red",
    Outcome.LIMIT_EXCEEDED: "magenta",
    Outcome.TIMED_OUT: "yellow",
    Outcome.CANCELLED: "yellow",
}


def wants_color(choice: str, stream: TextIO) -> bool:
    """``--color auto|always|never``: auto means a terminal, no ``NO_COLOR``, and not ``TERM=dumb``.

    ``NO_COLOR`` (https://no-color.org) counts when set to anything but the empty string; an
    explicit ``--color always`` wins over it, as the convention asks.
    """
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return isatty(stream) and os.environ.get("TERM") != "dumb"


@final
class Style:
    """Paints text, or leaves it alone when colour is off."""

    __slots__ = ("on",)

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, text: str, color: str) -> str:
        if not self.on or not text:
            return text
        return f"\x1b[{_CODES[color]}m{text}{_RESET}"

    def outcome(self, report: Report, text: str) -> str:
        return self(text, "green" if report.ok else _OUTCOME_COLOR[report.outcome])
