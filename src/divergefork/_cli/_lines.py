"""Children's captured output, line by line, each line whole and prefixed with the child's name.

Bytes arrive in chunks (``Scope(on_output=...)``), cut anywhere; a line is printed only once
its newline came (or its child ended), so two children's bytes never share a line.

A child whose entry raises prints its traceback on its stderr and sends it to the parent too.
To show it once, a captured child's stderr from a ``Traceback (most recent call last):`` line
on is held back until the child ends: if that text is the traceback its report carries, the
failure details print it (without divergefork's own frames); otherwise the lines are printed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, final

from .._report import Outcome, Report

__all__ = ["LinePrinter"]

_TRACEBACK: Final = b"Traceback (most recent call last):"

#: ``emit(name, stream, text)`` prints one whole line (without its newline).
Emit = Callable[[str, str, str], None]


@final
class LinePrinter:
    """Splits each child's output into whole lines and hands them to ``emit``."""

    __slots__ = ("emit", "pending", "held")

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        #: (name, stream) -> bytes after the last newline.
        self.pending: dict[tuple[str, str], bytes] = {}
        #: name -> stderr lines held back from a traceback's first line on.
        self.held: dict[str, list[bytes]] = {}

    def feed(self, name: str, stream: str, chunk: bytes) -> None:
        key = (name, stream)
        data = self.pending.pop(key, b"") + chunk if key in self.pending else chunk
        *lines, rest = data.split(b"\n")
        for line in lines:
            self._line(name, stream, line)
        if rest:
            self.pending[key] = rest

    def ended(self, report: Report) -> None:
        """A child ended: print what it wrote after its last newline, and what was held back."""
        name = report.name
        for stream in ("stdout", "stderr"):
            rest = self.pending.pop((name, stream), b"")
            if rest:
                self._line(name, stream, rest)
        held = self.held.pop(name, None)
        if held is None:
            return
        text = b"\n".join(held).decode("utf-8", "replace").strip()
        if report.outcome is Outcome.RAISED and report.error and text and text in report.error:
            return  # the failure details show it, once
        for line in held:
            self._print(name, "stderr", line)

    def _line(self, name: str, stream: str, line: bytes) -> None:
        if stream == "stderr":
            held = self.held.get(name)
            if held is not None:
                held.append(line)
                return
            if line.rstrip(b"\r") == _TRACEBACK:
                self.held[name] = [line]
                return
        self._print(name, stream, line)

    def _print(self, name: str, stream: str, line: bytes) -> None:
        self.emit(name, stream, line.rstrip(b"\r").decode("utf-8", "replace"))
