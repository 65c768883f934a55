"""Where the command's text goes, and what happens when its reader goes away.

Every write of ``divergefork run`` goes through one :class:`Pipe`. A reader that closes our
stdout (``divergefork run | head``) must neither kill the run (children would be cancelled
for it) nor make the interpreter complain at exit: the descriptor is pointed at
``/dev/null``, as the Python documentation recommends (signal module, "Note on SIGPIPE"), and
``broken`` makes the exit code 141.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import TextIO, final

__all__ = ["Pipe", "hook_stdout", "isatty", "to_devnull"]


@final
class Pipe:
    """Writes whole texts to a stream and copes with a reader that went away."""

    __slots__ = ("broken",)

    def __init__(self) -> None:
        self.broken = False

    def emit(self, stream: TextIO, text: str) -> None:
        if not text:
            return
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            self.broken = True
            to_devnull(stream)


def to_devnull(stream: TextIO) -> None:
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return  # not a real file (a test's capture): nothing at the descriptor level to fix
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def hook_stdout(json_to_stdout: bool) -> AbstractContextManager[object]:
    """Around plugin hooks: with ``--json -``, what a hook prints goes to stderr, not into the JSON."""
    if json_to_stdout:
        return contextlib.redirect_stdout(sys.stderr)
    return nullcontext()
