"""Example divergefork plugin: one child, ``hello``, that greets with the value it borrowed.

The parent builds a dict and lends it to the child. The child receives its own copy-on-write
copy: it prints what it got, changes its copy (the parent's dict is untouched), and sends a
JSON result back through ``df.exit_child(0, result=...)``, which ``divergefork run --json``
shows under ``"result"``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import divergefork as df

__all__ = ["divergefork_addoption", "divergefork_children", "divergefork_report", "greet"]


def greet(value: dict[str, str]) -> NoReturn:
    """The child's entry: print the borrowed value, then exit 0 with a result."""
    print(f"hello from pid {os.getpid()}: I borrowed {value!r}")
    value["greeted_by"] = str(os.getpid())  # our copy only: the parent never sees this
    df.exit_child(0, result={"greeting": f"hello, {value['who']}", "pid": os.getpid()})


@df.hookimpl
def divergefork_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("divergefork-hello")
    group.add_argument("--hello-who", default="world", metavar="NAME", help="whom the hello child greets")


@df.hookimpl
def divergefork_children(config: df.Config) -> Sequence[df.ChildSpec[dict[str, str]]]:
    value = {"who": str(config.options.hello_who)}
    return [df.ChildSpec("hello", value, greet, timeout=10.0)]


@df.hookimpl
def divergefork_report(report: df.Report) -> None:
    # Observers run in the parent as each child is reaped. Write to stderr: with
    # `--json -` stdout carries nothing but the JSON document.
    if report.name == "hello" and report.ok:
        print(f"hello: the child sent back {report.result!r}", file=sys.stderr)
