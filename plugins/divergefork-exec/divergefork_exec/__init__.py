"""Example divergefork plugin: the classic fork-then-exec child.

The ``exec`` child replaces itself with a program through ``df.exec_child`` (a ``PATH``
lookup like ``execvp``). The report says ``execed`` and carries the program's own exit
status. The default program is the running Python interpreter, so it exists on any machine
divergefork runs on; ``--exec-argv`` picks another command line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import NoReturn

import divergefork as df

__all__ = ["DEFAULT_ARGV", "divergefork_addoption", "divergefork_children", "run_program"]

DEFAULT_ARGV = (sys.executable, "-c", "import os; print(f'exec: pid {os.getpid()} is now a new program')")


def run_program(argv: Sequence[str]) -> NoReturn:
    """The child's entry: become ``argv`` (if that fails the report says ``exec_failed``)."""
    df.exec_child(argv)


@df.hookimpl
def divergefork_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("divergefork-exec")
    group.add_argument(
        "--exec-argv",
        metavar="COMMAND",
        help="command line the exec child runs, split like a shell would (default: a Python one-liner)",
    )


@df.hookimpl
def divergefork_children(config: df.Config) -> Sequence[df.ChildSpec[Sequence[str]]]:
    text = config.options.exec_argv
    argv: Sequence[str] = DEFAULT_ARGV if text is None else shlex.split(str(text))
    return [df.ChildSpec("exec", argv, run_program, timeout=10.0)]
