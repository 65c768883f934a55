"""What ``divergefork run`` shows while children run: a live view, plain lines, or nothing.

:class:`Live` (stderr is a terminal): a status region at the bottom of the screen, redrawn in
place: done/running/queued counts and the running children with their elapsed time. Above it
scroll a line per child as it ends and the children's output lines, prefixed with their name.
The region is erased before anything else is written (the final table, a plugin hook's
print), so it is never torn. It is plain ANSI: cursor up, erase to end of screen, nothing a
terminal since the VT100 lacks. Not ``rich``: the runtime depends on pluggy and
typing-extensions only (SPEC section 8), the view needs five escape codes, and a library
imported for it would be paid by every plain, piped or ``-q`` run too.

:class:`Plain` (not a terminal): the same finished lines and output lines, no region, no
control codes. :class:`Quiet` (``-q``): output lines only.

A view never waits and never raises ``BrokenPipeError``: its writes go through ``Pipe``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Final, Protocol, TextIO, final

from .._fork import Child
from .._report import Report
from ._streams import Pipe
from ._style import Style
from ._summary import duration, finished_line

__all__ = ["Board", "Live", "Plain", "Quiet", "View"]

#: Running children listed in the live region at most (the rest are counted).
_MAX_RUNNING_ROWS: Final = 8
#: The region is redrawn at most this often when lines scroll above it in a burst.
_MIN_REDRAW: Final = 0.05
_NAME_WIDTH_CAP: Final = 32


@final
class Board:
    """What the run knows of its children right now: the view's model."""

    __slots__ = ("total", "started", "active", "done", "not_ok", "name_width", "stopping")

    def __init__(self, names: Sequence[str]) -> None:
        self.total = len(names)
        self.started = time.monotonic()
        #: Children forked or queued and not yet ended, in the order they were handed to the scope.
        self.active: dict[str, Child] = {}
        self.done = 0
        self.not_ok = 0
        self.name_width = min(max((len(name) for name in names), default=0), _NAME_WIDTH_CAP)
        #: Why children are being cancelled (``"interrupted"``, ``"fail-fast"``...), if they are.
        self.stopping: str | None = None

    def ended(self, report: Report) -> None:
        self.active.pop(report.name, None)
        self.done += 1
        if not report.ok:
            self.not_ok += 1


class View(Protocol):
    def refresh(self) -> None:
        """Redraw what changes with time (the live region); cheap, called ten times a second."""

    def finished(self, report: Report) -> None:
        """A child ended."""

    def output(self, name: str, stream: str, text: str) -> None:
        """One whole line a captured child wrote."""

    def note(self, text: str) -> None:
        """A line of the run's own (to stderr), above the live region."""

    def flush(self) -> None:
        """Write the lines waiting to scroll, unless the terminal was written a moment ago."""

    def pause(self) -> None:
        """Erase the live region until the next refresh: someone else is about to write."""

    def close(self) -> None:
        """Erase the live region for good; the final text follows."""


class _Lines:
    """Output lines (stdout lines to ``out``, the rest to ``err``) and nothing drawn in place."""

    def __init__(self, board: Board, out: TextIO, err: TextIO, pipe: Pipe, style: Style) -> None:
        self.board = board
        self.out = out
        self.err = err
        self.pipe = pipe
        self.style = style

    def _prefixed(self, name: str, text: str) -> str:
        return f"{self.style(name.ljust(self.board.name_width), 'cyan')} | {text}\n"

    def refresh(self) -> None:
        pass

    def finished(self, report: Report) -> None:
        pass

    def output(self, name: str, stream: str, text: str) -> None:
        self.pipe.emit(self.err if stream == "stderr" else self.out, self._prefixed(name, text))

    def note(self, text: str) -> None:
        self.pipe.emit(self.err, text + "\n")

    def flush(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def close(self) -> None:
        pass


@final
class Quiet(_Lines):
    """``-q``: nothing but the children's output lines (with ``--capture``)."""


@final
class Plain(_Lines):
    """Not a terminal: one line per child as it ends, output lines, no control codes."""

    def finished(self, report: Report) -> None:
        self.pipe.emit(self.err, finished_line(report, 0, self.style) + "\n")


@final
class Live(_Lines):
    """The in-place view on a terminal (stderr)."""

    def __init__(self, board: Board, out: TextIO, err: TextIO, pipe: Pipe, style: Style) -> None:
        super().__init__(board, out, err, pipe, style)
        #: Visible lengths of the region's lines as drawn (cursor rests at the end of the last).
        self.drawn: list[int] = []
        self.drawn_width = 0
        self.last_draw = 0.0
        self.last_write = 0.0
        #: Lines to scroll above the region at the next write: a burst (500 children ending
        #: at once) costs a few writes to the terminal, not one each.
        self.pending: list[str] = []
        self.closed = False

    # -- the region --------------------------------------------------------------------

    def _size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self.err.fileno())
        except (OSError, ValueError, AttributeError):
            return 80, 24
        return max(size.columns, 20), max(size.lines, 4)

    def _erase(self, width: int) -> str:
        """Codes that erase the region, cursor left at its first line's start.

        After a resize the terminal may have rewrapped the region's lines: count the rows they
        take at the new width (a narrower terminal that rewraps needs more rows up).
        """
        if not self.drawn:
            return ""
        if width >= self.drawn_width:
            rows = len(self.drawn)
        else:
            rows = sum(max(1, -(-length // width)) for length in self.drawn)
        up = rows - 1
        return "\r" + (f"\x1b[{up}A" if up > 0 else "") + "\x1b[J"

    def _region(self, width: int, height: int) -> list[tuple[str, str]]:
        board = self.board
        now = time.monotonic()
        running = [child for child in board.active.values() if child.pid]
        queued = len(board.active) - len(running)
        state = "STOPPING" if board.stopping else "RUNNING"
        counts = [f"{board.done}/{board.total} done", f"{len(running)} running"]
        if queued:
            counts.append(f"{queued} queued")
        if board.not_ok:
            counts.append(f"{board.not_ok} not ok")
        head = f"{state:>14} [{now - board.started:8.1f}s] {', '.join(counts)}"
        if board.stopping:
            head += f" ({board.stopping}: cancelling the rest)"
        color = "yellow" if board.stopping else ("red" if board.not_ok else "cyan")
        lines = [(head, color)]
        rows = max(1, min(_MAX_RUNNING_ROWS, height - 3))
        # The longest-running first: what a person watching wants to know about.
        running.sort(key=lambda child: child.started)
        shown = running if len(running) <= rows else running[: rows - 1]
        for child in shown:
            started = child.started or now
            lines.append((f"{'':>14} [{now - started:8.1f}s] {child.name}", "dim"))
        if len(shown) < len(running):
            lines.append((f"{'':>14} ... and {len(running) - len(shown)} more running", "dim"))
        return [(text[: width - 1], style) for text, style in lines]

    def _frame(self, scroll: str, draw: bool) -> None:
        width, height = self._size()
        text = self._erase(width) + "".join(self.pending) + scroll
        self.pending.clear()
        self.last_write = time.monotonic()
        self.drawn = []
        if draw and not self.closed:
            region = self._region(width, height)
            text += "\n".join(self.style(line, color) for line, color in region)
            self.drawn = [len(line) for line, _ in region]
            self.drawn_width = width
            self.last_draw = time.monotonic()
        self.pipe.emit(self.err, text)

    def refresh(self) -> None:
        self._frame("", True)

    def _scroll(self, text: str) -> None:
        self.pending.append(text)
        now = time.monotonic()
        if now - self.last_write >= _MIN_REDRAW:
            self._frame("", now - self.last_draw >= _MIN_REDRAW)

    # -- events ------------------------------------------------------------------------

    def finished(self, report: Report) -> None:
        self._scroll(finished_line(report, 0, self.style) + "\n")

    def output(self, name: str, stream: str, text: str) -> None:
        line = self._prefixed(name, text)
        if stream == "stderr" or self.out is self.err:
            self._scroll(line)
        else:
            # Another stream onto the same screen: erase the region (writing what scrolls
            # first), write, draw it again.
            self._frame("", False)
            self.pipe.emit(self.out, line)
            if time.monotonic() - self.last_draw >= _MIN_REDRAW:
                self.refresh()

    def note(self, text: str) -> None:
        self._scroll(text + "\n")

    def flush(self) -> None:
        if self.pending and time.monotonic() - self.last_write >= _MIN_REDRAW:
            self._frame("", True)

    def pause(self) -> None:
        if self.drawn or self.pending:
            self._frame("", False)

    def close(self) -> None:
        self.pause()
        self.closed = True
