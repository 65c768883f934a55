"""Parsing the command line.

Plugins add options, so the command line is parsed in two steps: :func:`prescan` finds the
subcommand, every ``-p`` (``-p no:NAME`` included), ``--traceback`` and ``--help``; plugins
load; they add their options through ``divergefork_addoption``; only then does
:func:`build_parser` parse the whole command line.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

from .. import _check, _demo
from .._errors import PluginError
from .._limits import Limits
from .._plugins import Plugins

__all__ = [
    "PLUGIN_COMMANDS",
    "TRACEBACK_ENV",
    "Prescan",
    "build_parser",
    "cli_limits",
    "merge_limits",
    "prescan",
]

TRACEBACK_ENV: Final = "DIVERGEFORK_TRACEBACK"
PLUGIN_COMMANDS: Final = ("run", "list")

_EPILOG: Final = (
    "exit codes: 0 every child ok; 1 something failed after forking (a child not ok, a plugin's "
    "report/finished hook, a refused fork, a report file); 2 usage, configuration or plugin "
    "error (nothing forked); 130 interrupted by Ctrl-C or SIGTERM (children terminated and "
    "reaped first); 141 stdout closed by its reader (children still finished and were reaped)"
)


def _version() -> str:
    from .. import __version__

    return f"divergefork {__version__}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if math.isinf(value) or math.isnan(value):
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds, not {text!r}; leave the option out for no limit"
        )
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


_SIZE: Final = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"must be a size such as 4096, 64K, 512M or 2G (powers of 1024), not {text!r}"
        )
    value = int(float(match["number"]) * _UNITS[match["unit"].lower()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, not {text!r}")
    return value


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only the child NAME (repeatable); an unknown name is a usage error",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="deadline in seconds for every child (a child's own shorter timeout still applies)",
    )
    parser.add_argument(
        "--jobs", "-j", type=_positive_int, metavar="N", help="run at most N children at once (default: all)"
    )
    parser.add_argument(
        "-x",
        "--fail-fast",
        action="store_true",
        help="the first child that is not ok cancels the rest (reported cancelled)",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="capture every child's stdout and stderr and print its lines prefixed with the child's name",
    )
    shown = parser.add_argument_group("what is shown")
    loud = shown.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="print the verdict line only")
    loud.add_argument(
        "-v", "--verbose", action="store_true", help="print every report whole (error, stack, output, result)"
    )
    shown.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output: auto (the default) on a terminal unless NO_COLOR is set",
    )
    files = parser.add_argument_group("report files")
    files.add_argument(
        "--json",
        metavar="PATH",
        help="write the whole run (run-level fields and every report) as JSON to PATH "
        "('-': stdout, the table then goes to stderr)",
    )
    files.add_argument(
        "--junit-xml", metavar="PATH", help="write a JUnit XML report to PATH (a file; '-' is refused)"
    )
    limits = parser.add_argument_group(
        "limits for every child (df.Limits; a child's own stricter limit still applies)"
    )
    limits.add_argument("--limit-memory", type=_size, metavar="SIZE", help="address space, e.g. 512M")
    limits.add_argument("--limit-cpu", type=_seconds, metavar="S", help="CPU seconds, e.g. 10")
    limits.add_argument("--limit-files", type=_positive_int, metavar="N", help="open file descriptors")
    limits.add_argument("--limit-fsize", type=_size, metavar="SIZE", help="largest file it may write, e.g. 10M")


def cli_limits(args: argparse.Namespace) -> Limits | None:
    """The ``df.Limits`` the ``--limit-*`` options ask for, or ``None`` when none is given."""
    values = {
        "memory_bytes": args.limit_memory,
        "cpu_seconds": args.limit_cpu,
        "open_files": args.limit_files,
        "file_size_bytes": args.limit_fsize,
    }
    if all(value is None for value in values.values()):
        return None
    return Limits(**values)


def merge_limits(own: Limits | None, cap: Limits | None) -> Limits | None:
    """A child's own limits and the command line's: for each field the stricter one."""
    if cap is None:
        return own
    if own is None:
        return cap

    def stricter(a: float | None, b: float | None) -> float | None:
        if a is None:
            return b
        return a if b is None else min(a, b)

    memory = stricter(own.memory_bytes, cap.memory_bytes)
    files = stricter(own.open_files, cap.open_files)
    fsize = stricter(own.file_size_bytes, cap.file_size_bytes)
    return Limits(
        cpu_seconds=stricter(own.cpu_seconds, cap.cpu_seconds),
        memory_bytes=None if memory is None else int(memory),
        open_files=None if files is None else int(files),
        file_size_bytes=None if fsize is None else int(fsize),
        core_dumps=own.core_dumps,
    )


def _run_option_strings() -> list[str]:
    probe = argparse.ArgumentParser(add_help=False)
    _add_run_options(probe)
    return [option for action in probe._actions for option in action.option_strings]


def _common_parser(plugins: Plugins | None, failed: Sequence[PluginError]) -> argparse.ArgumentParser:
    """Options shared by ``run`` and ``list``: ``-p``, ``--traceback`` and the plugins' own."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-p",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="load MODULE as a plugin (repeatable); -p no:NAME blocks a plugin by entry-point or module name",
    )
    common.add_argument(
        "--traceback",
        action="store_true",
        help=f"show the full traceback of a plugin error (or set {TRACEBACK_ENV}=1)",
    )
    if plugins is not None:
        plugins.add_options(common, reserved=_run_option_strings(), errors=None if not failed else list(failed))
    return common


def _help_note(failed: Sequence[PluginError]) -> str:
    if not failed:
        return _EPILOG
    lines = [f"{error} (its options are not listed)" for error in failed]
    return "plugins that failed to load:\n  " + "\n  ".join(lines) + "\n\n" + _EPILOG


def build_parser(plugins: Plugins | None = None, *, failed: Sequence[PluginError] = ()) -> argparse.ArgumentParser:
    """The full parser; with ``plugins``, ``run`` and ``list`` carry the plugins' options too.

    ``failed`` are plugins that could not load (only when the parser is built for ``--help``):
    the help then says which, instead of failing.
    """
    parser = argparse.ArgumentParser(
        prog="divergefork",
        description="Fork child processes safely: every child diverges, is reaped and reported.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    errors = list(failed)
    common = _common_parser(plugins, errors)
    run = sub.add_parser(
        "run",
        parents=[common],
        help="fork every child the plugins contribute and report how each ended",
        description="Fork every child the plugins contribute, wait, and print one row per child.",
        epilog=_help_note(errors),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_options(run)
    sub.add_parser(
        "list",
        parents=[common],
        help="list plugins and their children without forking",
        description="Print the plugins found and the children each contributes, without forking.",
        epilog=_help_note(errors) if errors else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check = sub.add_parser("check", help="type-check plugin code with mypy and the divergefork plugin")
    _check.configure(check)
    demo = sub.add_parser("demo", help="demonstrations (demo race: the shared-counter race)")
    _demo.configure(demo)
    return parser


@final
@dataclass(frozen=True, slots=True)
class Prescan:
    """What must be known before plugins load."""

    command: str | None
    specs: list[str]
    want_traceback: bool
    want_help: bool


def prescan(argv: Sequence[str]) -> Prescan:
    """The subcommand, the ``-p`` values, ``--traceback`` and ``--help``, before plugins add options.

    A plain scan rather than a second argparse parser: it must not fail or print on options
    only the full parser knows (the plugins' own).
    """
    command: str | None = None
    specs: list[str] = []
    want_traceback = bool(os.environ.get(TRACEBACK_ENV))
    want_help = False
    args = iter(argv)
    for arg in args:
        if arg == "--":
            break
        if arg == "-p":
            value = next(args, None)
            if value is not None:
                specs.append(value)
        elif arg.startswith("-p") and not arg.startswith("--"):
            specs.append(arg[2:].removeprefix("="))
        elif arg == "--traceback":
            want_traceback = True
        elif arg in ("-h", "--help"):
            want_help = True
        elif command is None and not arg.startswith("-"):
            command = arg
            if command not in PLUGIN_COMMANDS:
                break
    return Prescan(command, specs, want_traceback, want_help)
