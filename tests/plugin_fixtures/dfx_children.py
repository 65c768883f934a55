"""A test plugin (loaded with ``-p dfx_children``): children of every kind, chosen by options.

``--dfx-child NAME=KIND`` (repeatable) contributes a child ``NAME``; ``--dfx-dir DIR`` is where
children leave pid and timing files for the tests to read. Kinds:

``ok``     exit 0 with ``result={"name": NAME}``
``fail``   exit 42
``raise``  raise ``ValueError("fixture boom")``
``print``  print a line to stdout and to stderr, then an unterminated line, exit 0
``loop``   write its pid to ``DIR/NAME.pid``, then sleep forever (until killed)
``span``   write ``DIR/NAME.span`` holding its start and end time, 0.3 s apart, exit 0
``slow``   sleep 1.5 s, exit 0 (long enough to be seen running)
``rlimit`` exit 0 with ``result`` the soft limits it runs with: address space, CPU, files, file size
``talk``   print ``NAME says N`` five times, 0.2 s apart, exit 0

With ``DFX_LOG=FILE`` in the environment, ``divergefork_report`` and ``divergefork_finished``
append a line each to FILE.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, final

import divergefork as df

KINDS = ("ok", "fail", "raise", "print", "loop", "span", "slow", "talk", "rlimit")


@final
@dataclass(frozen=True)
class Job:
    name: str
    kind: str
    directory: str


def entry(job: Job) -> NoReturn:
    if job.kind == "fail":
        df.exit_child(42)
    if job.kind == "raise":
        raise ValueError("fixture boom")
    if job.kind == "print":
        print("line one")
        print("line two", file=sys.stderr)
        sys.stdout.write("partial")
        df.exit_child(0)
    if job.kind == "loop":
        Path(job.directory, f"{job.name}.pid").write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
    if job.kind == "rlimit":
        kinds = (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE)
        df.exit_child(0, result=[resource.getrlimit(kind)[0] for kind in kinds])
    if job.kind == "slow":
        time.sleep(1.5)
        df.exit_child(0)
    if job.kind == "talk":
        for count in range(5):
            print(f"{job.name} says {count}", flush=True)
            time.sleep(0.2)
        df.exit_child(0)
    if job.kind == "span":
        start = time.monotonic()
        time.sleep(0.3)
        Path(job.directory, f"{job.name}.span").write_text(f"{start} {time.monotonic()}")
        df.exit_child(0)
    df.exit_child(0, result={"name": job.name})


def _child(text: str) -> tuple[str, str]:
    name, sep, kind = text.partition("=")
    if not sep or kind not in KINDS:
        raise argparse.ArgumentTypeError(f"expected NAME=KIND with KIND one of {', '.join(KINDS)}")
    return name, kind


@df.hookimpl
def divergefork_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dfx_children (test plugin)")
    group.add_argument("--dfx-child", type=_child, action="append", default=[], metavar="NAME=KIND")
    group.add_argument("--dfx-dir", default=".", metavar="DIR")


@df.hookimpl
def divergefork_children(config: df.Config) -> Sequence[df.ChildSpec[Job]]:
    options = config.options
    return [df.ChildSpec(name, Job(name, kind, options.dfx_dir), entry) for name, kind in options.dfx_child]


@df.hookimpl
def divergefork_report(report: df.Report) -> None:
    _log(f"report {report.name} {report.outcome.value}")


@df.hookimpl
def divergefork_finished(reports: Sequence[df.Report]) -> None:
    _log(f"finished {len(reports)}")


def _log(line: str) -> None:
    path = os.environ.get("DFX_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(line + "\n")
