"""The ``divergefork`` command line: a thin layer that parses, calls the API, prints and maps
outcomes to exit codes.

Exit codes (see ``_exitcodes``): 0 every child ``ok``; 1 something failed after forking (a
child not ok, a plugin failing in ``divergefork_report``/``divergefork_finished``, a fork
refused part way through the run, a report file that could not be written); 2 usage,
configuration or plugin error, and then nothing was forked; 130 interrupted by Ctrl-C or
SIGTERM (every child terminated and reaped first, report files still written); 141 our stdout was closed by its reader (``divergefork run |
head``): the rest of the output is dropped, the children still run to their end and are
reaped, and report files are still written.

Plugins add options, so the command line is parsed in two steps: a pre-scan finds the
subcommand and every ``-p`` (``-p no:NAME`` included), plugins load, they add their options
through ``divergefork_addoption``, and only then is the full command line parsed.

``--traceback`` (or ``DIVERGEFORK_TRACEBACK=1``) prints the full traceback of a plugin error
(in any hook) before the one-line message; by default the user reads the message, not a stack.

With ``--json -`` stdout carries the JSON document and nothing else: the table goes to stderr,
children's output is captured, and whatever a plugin hook prints to ``sys.stdout`` is sent to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Final, TextIO, final

from . import _check, _demo
from ._errors import DivergeforkError, PluginError
from ._exitcodes import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._hookspecs import Config
from ._plugins import Collected, Plugins, describe_entry, load_plugins
from ._report import Outcome, Report
from ._scope import Scope

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

TRACEBACK_ENV: Final = "DIVERGEFORK_TRACEBACK"

_PLUGIN_COMMANDS: Final = ("run", "list")


# -- parsing ---------------------------------------------------------------------------------


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
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


def _add_run_options(parser: argparse.ArgumentParser) -> None:
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
        "--json",
        metavar="PATH",
        help="write the reports as a JSON list to PATH ('-': stdout, the table then goes to stderr)",
    )
    parser.add_argument(
        "--junit-xml", metavar="PATH", help="write a JUnit XML report to PATH (a file; '-' is refused)"
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="capture every child's stdout and stderr and print its lines prefixed with the child's name",
    )


def _run_option_strings() -> list[str]:
    probe = argparse.ArgumentParser(add_help=False)
    _add_run_options(probe)
    return [option for action in probe._actions for option in action.option_strings]


def _common_parser(plugins: Plugins | None) -> argparse.ArgumentParser:
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
        plugins.add_options(common, reserved=_run_option_strings())
    return common


#: Children not ok named in the summary line; the table above lists them all.
_SUMMARY_NAMES: Final = 10

_EPILOG: Final = (
    "exit codes: 0 every child ok; 1 something failed after forking (a child not ok, a plugin's "
    "report/finished hook, a refused fork, a report file); 2 usage, configuration or plugin "
    "error (nothing forked); 130 interrupted by Ctrl-C or SIGTERM (children terminated and "
    "reaped first); 141 stdout "
    "closed by its reader (children still finished and were reaped)"
)


def build_parser(plugins: Plugins | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``plugins``, ``run`` and ``list`` carry the plugins' options too."""
    parser = argparse.ArgumentParser(
        prog="divergefork",
        description="Fork child processes safely: every child diverges, is reaped and reported.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_parser(plugins)
    run = sub.add_parser(
        "run",
        parents=[common],
        help="fork every child the plugins contribute and report how each ended",
        description="Fork every child the plugins contribute, wait, and print one row per child.",
        epilog=_EPILOG,
    )
    _add_run_options(run)
    sub.add_parser(
        "list",
        parents=[common],
        help="list plugins and their children without forking",
        description="Print the plugins found and the children each contributes, without forking.",
    )
    check = sub.add_parser("check", help="type-check plugin code with mypy and the divergefork plugin")
    _check.configure(check)
    demo = sub.add_parser("demo", help="demonstrations (demo race: the shared-counter race)")
    _demo.configure(demo)
    return parser


def _prescan(argv: Sequence[str]) -> tuple[str | None, list[str], bool]:
    """The subcommand, the ``-p`` values and ``--traceback``, before plugins add options.

    A plain scan rather than a second argparse parser: it must not fail or print on options
    only the full parser knows (the plugins' own).
    """
    command: str | None = None
    specs: list[str] = []
    want_traceback = bool(os.environ.get(TRACEBACK_ENV))
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
        elif command is None and not arg.startswith("-"):
            command = arg
            if command not in _PLUGIN_COMMANDS:
                break
    return command, specs, want_traceback


class _ForkFailed(Exception):
    """An ``OSError`` from forking (or waiting) during ``run``, told apart from our own output's."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _fork_failures() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise  # our stdout's reader went away: handled as such, not as a failed fork
    except OSError as exc:
        raise _ForkFailed(exc) from exc


class _Terminated(KeyboardInterrupt):
    """SIGTERM while ``run`` supervises its children: handled as Ctrl-C is."""


@contextlib.contextmanager
def _sigterm_cancels() -> Iterator[None]:
    """Make SIGTERM cancel the run like Ctrl-C: children get SIGTERM and their grace, are
    reaped, and the report files are still written (exit 130).

    Without this a supervisor's SIGTERM would kill us outright, the children would die by the
    parent-death signal (SIGKILL, no grace) and no report would be written. Only where SIGTERM
    has its default action (a caller's own handler is left alone) and in the main thread.
    Children never run this handler: each resets an inherited SIGTERM handler first.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def cancel(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (never calls ``sys.exit`` itself)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(arguments)
    except KeyboardInterrupt:
        # Interrupted outside a run (while plugins load, say): nothing was forked.
        with suppress(OSError):
            print("divergefork: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # A reader went away where no finer handling applies (`divergefork --help | head -1`).
        _to_devnull(sys.stdout)
        _to_devnull(sys.stderr)
        return EXIT_BROKEN_PIPE


def _main(argv: list[str]) -> int:
    command, specs, want_traceback = _prescan(argv)
    plugins: Plugins | None = None
    try:
        if command in _PLUGIN_COMMANDS:
            plugins = load_plugins(specs)
        parser = build_parser(plugins)
    except PluginError as exc:
        _print_plugin_error(exc, want_traceback)
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        return _check.main(args)
    if args.command == "demo":
        return _demo.main(args)
    assert args.command in _PLUGIN_COMMANDS and plugins is not None
    pipe = _Pipe()
    try:
        if args.command == "list":
            return _list(args, plugins, pipe)
        return _run(args, plugins, pipe, want_traceback)
    except PluginError as exc:
        _print_plugin_error(exc, want_traceback)
        return EXIT_USAGE


def _print_plugin_error(exc: PluginError, want_traceback: bool) -> None:
    """A plugin error before anything was forked."""
    _print_traceback(exc, want_traceback)
    print(f"divergefork: error: {exc}", file=sys.stderr)
    print(f"divergefork: nothing was forked{_traceback_hint(want_traceback)}", file=sys.stderr)


def _print_traceback(exc: PluginError, want_traceback: bool) -> None:
    if want_traceback:
        sys.stderr.write("".join(traceback.format_exception(exc.__cause__ or exc)))


def _traceback_hint(want_traceback: bool) -> str:
    return "" if want_traceback else f" (--traceback or {TRACEBACK_ENV}=1 shows the full traceback)"


def _usage_error(command: str, message: str) -> int:
    print(f"divergefork {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# -- list --------------------------------------------------------------------------------------


def _list(args: argparse.Namespace, plugins: Plugins, pipe: _Pipe) -> int:
    collected = plugins.collect(Config(args, plugins.pm))
    lines: list[str] = []
    if not plugins.plugins:
        lines.append(
            "no plugins found: install a distribution with a 'divergefork' entry point, or pass -p MODULE"
        )
    else:
        rows = [
            [plugin.name, plugin.distribution or f"-p {plugin.module}", f"module {plugin.module}"]
            for plugin in plugins.plugins
        ]
        lines.append(f"plugins ({len(rows)}):")
        lines += ["  " + line for line in _columns(rows)]
    if plugins.blocked:
        lines.append(f"blocked: {', '.join(plugins.blocked)}")
    lines.append(f"children ({len(collected)}):")
    rows = []
    for item in collected:
        spec = item.spec
        details = [f"from {item.plugin.name}", f"entry {describe_entry(spec.entry)}"]
        details.append("no timeout" if spec.timeout is None else f"timeout {spec.timeout:g}s")
        if spec.capture:
            details.append("capture")
        rows.append([spec.name, *details])
    lines += ["  " + line for line in _columns(rows)]
    pipe.emit(sys.stdout, "".join(line + "\n" for line in lines))
    return EXIT_BROKEN_PIPE if pipe.broken else EXIT_OK


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


# -- run ---------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, plugins: Plugins, pipe: _Pipe, want_traceback: bool) -> int:
    if args.junit_xml == "-":
        return _usage_error(
            "run",
            "--junit-xml -: JUnit XML cannot go to stdout, where it would mix with the table; "
            "give a file name (e.g. --junit-xml report.xml), or use --json - for a report on stdout",
        )
    with _hook_stdout(args):
        collected = plugins.collect(Config(args, plugins.pm))
    names = [item.spec.name for item in collected]
    unknown = [name for name in args.only if name not in names]
    if unknown:
        known = ", ".join(names) if names else "none"
        return _usage_error(
            "run", f"--only {unknown[0]}: no child has that name (the children are: {known})"
        )
    selected = [item for item in collected if not args.only or item.spec.name in args.only]
    if not selected:
        return _usage_error(
            "run",
            "nothing to run: no plugin contributes a child (see `divergefork list`; install a "
            "plugin distribution or pass -p MODULE)",
        )
    for option, path in (("--json", args.json), ("--junit-xml", args.junit_xml)):
        problem = _output_path_problem(path)
        if problem:
            return _usage_error("run", f"{option} {path}: {problem}")
    return _Run(args, plugins, selected, pipe, want_traceback).execute()


def _hook_stdout(args: argparse.Namespace) -> AbstractContextManager[object]:
    """Around plugin hooks: with ``--json -``, what a hook prints goes to stderr, not into the JSON."""
    if args.json == "-":
        return contextlib.redirect_stdout(sys.stderr)
    return nullcontext()


def _output_path_problem(path: str | None) -> str | None:
    """Why ``path`` cannot be written, checked before anything is forked."""
    if path is None or path == "-":
        return None
    if os.path.isdir(path):
        return "is a directory; give a file name"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable"
    return None


def _deadline(own: float | None, cap: float | None) -> float | None:
    if own is None:
        return cap
    return own if cap is None else min(own, cap)


@final
class _Run:
    """One ``divergefork run``: fork through a ``Scope``, print, write files, pick the exit code."""

    def __init__(
        self,
        args: argparse.Namespace,
        plugins: Plugins,
        selected: list[Collected],
        pipe: _Pipe,
        want_traceback: bool,
    ) -> None:
        self.args = args
        self.plugins = plugins
        self.selected = selected
        self.pipe = pipe
        self.want_traceback = want_traceback
        json_to_stdout = args.json == "-"
        # With `--json -` stdout carries the JSON document and nothing else.
        self.out: TextIO = sys.stderr if json_to_stdout else sys.stdout
        # Children inherit our stdout: with `--json -` their output must be captured too.
        self.capture_all = bool(args.capture) or json_to_stdout
        self.progress = _Progress(sys.stderr, len(selected), pipe, in_place=self.capture_all)
        width = max(len(item.spec.name) for item in selected)
        self.lines = _LinePrinter(self.out, sys.stderr, width, self.progress, pipe) if args.capture else None
        self.reports: list[Report] = []
        self.hook_errors: list[PluginError] = []
        #: Plugins whose report hook raised: not called again in this run.
        self.failed_plugins: set[str] = set()

    def execute(self) -> int:
        # Captured output is printed line by line as the scope's loop reads it.
        on_output = None if self.lines is None else self.lines.feed
        started = time.monotonic()
        interrupted = False
        refused: DivergeforkError | OSError | None = None
        scope = Scope(max_parallel=self.args.jobs, on_output=on_output)
        terminated = False
        try:
            with _sigterm_cancels(), scope:
                for item in self.selected:
                    spec = item.spec
                    with _fork_failures():
                        scope.fork(
                            spec.value,
                            spec.entry,
                            name=spec.name,
                            timeout=_deadline(spec.timeout, self.args.timeout),
                            capture=spec.capture or self.capture_all,
                            grace=spec.grace,
                            new_group=spec.new_group,
                            threads=spec.threads,
                            contain=spec.contain,
                            limits=spec.limits,
                            codec=spec.codec,
                        )
                self.progress.show(self.reports)
                completed = scope.as_completed()
                while True:
                    with _fork_failures():  # with --jobs, queued children are forked in here
                        report = next(completed, None)
                    if report is None:
                        break
                    self._reaped(report)
        except KeyboardInterrupt as exc:
            interrupted = True
            terminated = isinstance(exc, _Terminated)
            # The scope terminated and reaped every child before re-raising; its reports say so.
            self._add_unforked(scope, "the run was interrupted first")
        except (DivergeforkError, _ForkFailed) as exc:
            # A fork refused (ForkUnsafeError: a plugin hook started a thread, say) or failed
            # (out of processes or descriptors). The scope cancelled and reaped the other
            # children; their reports are kept and shown.
            refused = exc.error if isinstance(exc, _ForkFailed) else exc
            how = "failed" if isinstance(refused, OSError) else "was refused"
            self._add_unforked(scope, f"the fork {how} ({refused})")
        self.progress.clear()
        elapsed = time.monotonic() - started
        if not interrupted and refused is None:
            with _hook_stdout(self.args):
                errors = self.plugins.finished(list(self.reports), skip=self.failed_plugins)
            self.hook_errors += errors
        ordered = self._ordered()
        self._print_table(ordered, elapsed, interrupted)
        written = self._write_files(ordered)
        for error in self.hook_errors:
            _print_traceback(error, self.want_traceback)
            print(f"divergefork run: error: {error}", file=sys.stderr)
        if self.hook_errors:
            print(
                "divergefork run: the children ran to their end; a failing plugin was not called "
                f"again{_traceback_hint(self.want_traceback)}",
                file=sys.stderr,
            )
        if interrupted:
            cancelled = sum(report.outcome is Outcome.CANCELLED for report in ordered)
            were = "1 child was" if cancelled == 1 else f"{cancelled} children were"
            how = "terminated by SIGTERM" if terminated else "interrupted"
            print(
                f"divergefork run: {how}; {were} cancelled (terminated and reaped, or never started)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        if self.pipe.broken:
            return EXIT_BROKEN_PIPE
        if refused is not None:
            return self._refused(refused, ordered)
        if not written or self.hook_errors:
            return EXIT_FAILED
        return EXIT_OK if all(report.ok for report in ordered) else EXIT_FAILED

    def _add_unforked(self, scope: Scope, why: str) -> None:
        """The scope's reports, plus a ``cancelled`` one for each child it never started."""
        self.reports = list(scope.reports)
        reported = {report.name for report in self.reports}
        self.reports += [
            Report(name=item.spec.name, pid=0, outcome=Outcome.CANCELLED, error=f"never forked: {why}")
            for item in self.selected
            if item.spec.name not in reported
        ]

    def _refused(self, exc: DivergeforkError | OSError, reports: Sequence[Report]) -> int:
        forked = sum(report.pid != 0 for report in reports)
        if not forked:
            return _usage_error("run", f"cannot fork: {exc}; nothing was forked")
        if isinstance(exc, OSError):
            print(
                f"divergefork run: error: a fork failed after {forked} of {len(self.selected)} "
                f"children had started, so the rest were cancelled: {exc}. Raise the limit it "
                "hit (ulimit -n for descriptors, -u for processes) or run fewer at once with --jobs.",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if self.plugins.thread_starter is not None:
            culprit = f" A thread was started by {self.plugins.thread_starter}."
        elif self.plugins.last_call is not None:
            culprit = f" The last plugin hook that ran before it was {self.plugins.last_call}."
        else:
            culprit = ""
        print(
            f"divergefork run: error: a fork was refused after {forked} of {len(self.selected)} "
            f"children had started, so the rest were cancelled: {exc}.{culprit} A plugin hook "
            "that starts a thread (and leaves it running) makes every later fork unsafe, and "
            "threads at fork are refused: stop the thread before the hook returns, or run "
            "without --jobs so that every child is forked before the first hook runs.",
            file=sys.stderr,
        )
        return EXIT_FAILED

    def _reaped(self, report: Report) -> None:
        self.reports.append(report)
        # Plugins' report hooks may print too: no status line may be half-drawn under them.
        self.progress.clear()
        if self.lines is not None:
            self.lines.flush(report.name)
        # A broken observer must not cancel children that are running fine, nor silence the
        # other plugins: remember its error, stop calling it, report it once all are reaped.
        with _hook_stdout(self.args):
            errors = self.plugins.report(report, skip=self.failed_plugins)
        for error in errors:
            self.hook_errors.append(error)
            owner = self.plugins.owner_of(error)
            if owner is not None:
                self.failed_plugins.add(owner.name)
        self.progress.show(self.reports)

    def _ordered(self) -> list[Report]:
        """Reports in collection order (stable from run to run), not in order of ending."""
        position = {item.spec.name: index for index, item in enumerate(self.selected)}
        return sorted(self.reports, key=lambda report: position.get(report.name, len(position)))

    def _print_table(self, reports: Sequence[Report], elapsed: float, interrupted: bool) -> None:
        rows = [["NAME", "PID", "OUTCOME", "EXIT", "DURATION", "MAX RSS"]]
        for report in reports:
            rows.append(
                [
                    report.name,
                    str(report.pid),
                    report.outcome.value,
                    _exit_text(report),
                    f"{report.duration:.3f}s",
                    _size(report.max_rss),
                ]
            )
        lines = _columns(rows)
        bad = [report for report in reports if not report.ok]
        summary = f"{len(reports)} {'child' if len(reports) == 1 else 'children'}: {len(reports) - len(bad)} ok"
        if bad:
            named = ", ".join(f"{r.name} {r.describe()}" for r in bad[:_SUMMARY_NAMES])
            more = f", and {len(bad) - _SUMMARY_NAMES} more" if len(bad) > _SUMMARY_NAMES else ""
            summary += f", {len(bad)} not ok ({named}{more})"
        if interrupted:
            summary += ", interrupted"
        lines.append(f"{summary} in {elapsed:.2f}s")
        for report in bad:
            if report.error:
                lines.append(f"\n--- {report.name} (pid {report.pid}): {report.describe()} ---")
                lines.append(report.error.rstrip("\n"))
        self.pipe.emit(self.out, "".join(line + "\n" for line in lines))

    def _write_files(self, reports: Sequence[Report]) -> bool:
        ok = True
        if self.args.json is not None:
            text = json.dumps([report.to_dict() for report in reports], indent=2) + "\n"
            if self.args.json == "-":
                self.pipe.emit(sys.stdout, text)
            else:
                ok &= _write("--json", self.args.json, text)
        if self.args.junit_xml is not None:
            owners = {item.spec.name: item.plugin.name for item in self.selected}
            ok &= _write("--junit-xml", self.args.junit_xml, junit_xml(reports, owners))
        return ok


def _exit_text(report: Report) -> str:
    if report.signal is not None:
        return report.signal.name + (" (core)" if report.core_dumped else "")
    return "-" if report.exit_code is None else str(report.exit_code)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


# -- output streams ------------------------------------------------------------------------


@final
class _Pipe:
    """Writes the command's output; copes with a reader that goes away (``... | head``).

    On ``BrokenPipeError`` the stream's descriptor is pointed at ``/dev/null``, as the Python
    documentation recommends (signal module, "Note on SIGPIPE"): later writes, and the
    interpreter's final flush, then succeed silently. The run goes on, so children are not
    cancelled for it; ``broken`` makes the exit code 141.
    """

    def __init__(self) -> None:
        self.broken = False

    def emit(self, stream: TextIO, text: str) -> None:
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            self.broken = True
            _to_devnull(stream)


def _to_devnull(stream: TextIO) -> None:
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return  # not a real file (a test's capture): nothing at the descriptor level to fix
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


@final
class _Progress:
    """Live progress on stderr, only when stderr is a terminal.

    When the children's output is captured, nothing else writes to the terminal behind our
    back, so one status line is redrawn in place. Otherwise children write to the terminal
    whenever they like and a half-drawn status line would be torn; then each reap gets a
    line of its own instead.
    """

    def __init__(self, stream: TextIO, total: int, pipe: _Pipe, *, in_place: bool) -> None:
        self.stream = stream
        self.total = total
        self.pipe = pipe
        self.enabled = _isatty(stream)
        self.in_place = in_place
        self.shown = False

    def show(self, reports: Sequence[Report]) -> None:
        if not self.enabled:
            return
        bad = sum(not report.ok for report in reports)
        text = f"divergefork run: {len(reports)}/{self.total} done"
        if bad:
            text += f", {bad} not ok"
        if reports:
            last = reports[-1]
            text += f" (last: {last.name} {last.describe()} in {last.duration:.2f}s)"
        if self.in_place:
            self.pipe.emit(self.stream, "\r\x1b[K" + text)
            self.shown = True
        elif reports:
            self.pipe.emit(self.stream, text + "\n")

    def clear(self) -> None:
        if self.shown:
            self.pipe.emit(self.stream, "\r\x1b[K")
            self.shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@final
class _LinePrinter:
    """Prints children's output line by line, each line prefixed with the child's name."""

    def __init__(self, out: TextIO, err: TextIO, width: int, progress: _Progress, pipe: _Pipe) -> None:
        self.out = out
        self.err = err
        self.width = width
        self.progress = progress
        self.pipe = pipe
        self.pending: dict[tuple[str, str], bytes] = {}

    def feed(self, name: str, stream: str, chunk: bytes) -> None:
        key = (name, stream)
        data = self.pending.pop(key, b"") + chunk
        *lines, rest = data.split(b"\n")
        for line in lines:
            self._emit(name, stream, line)
        if rest:
            self.pending[key] = rest

    def flush(self, name: str) -> None:
        """A child ended: print what it wrote after its last newline."""
        for stream in ("stdout", "stderr"):
            rest = self.pending.pop((name, stream), b"")
            if rest:
                self._emit(name, stream, rest)

    def _emit(self, name: str, stream: str, line: bytes) -> None:
        # Called from the scope's loop: raising here would cancel every child, so a reader
        # that went away (BrokenPipeError) is absorbed by the pipe, not raised.
        target = self.err if stream == "stderr" else self.out
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        self.progress.clear()  # redrawn at the next reap
        self.pipe.emit(target, f"{name.ljust(self.width)} | {text}\n")


# -- files ---------------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all, even escaped (C0 controls other than \t \n \r).
_XML_ILLEGAL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return _XML_ILLEGAL.sub("\ufffd", text)


def junit_xml(reports: Sequence[Report], owners: dict[str, str] | None = None) -> str:
    """A JUnit XML document: one ``testcase`` per child, a ``failure`` for each not ``ok``."""
    owners = owners or {}
    failures = sum(not report.ok for report in reports)
    total_time = sum(report.duration for report in reports)
    suites = ET.Element("testsuites", name="divergefork", tests=str(len(reports)))
    suites.set("failures", str(failures))
    suites.set("errors", "0")
    suites.set("time", f"{total_time:.3f}")
    suite = ET.SubElement(suites, "testsuite", name="divergefork", tests=str(len(reports)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    suite.set("time", f"{total_time:.3f}")
    for report in reports:
        case = ET.SubElement(suite, "testcase", name=_xml_text(report.name))
        case.set("classname", "divergefork." + _xml_text(owners.get(report.name, "run")))
        case.set("time", f"{report.duration:.3f}")
        if not report.ok:
            failure = ET.SubElement(case, "failure", type=report.outcome.value)
            failure.set("message", _xml_text(f"{report.name} (pid {report.pid}) {report.describe()}"))
            failure.text = _xml_text(report.error or report.describe())
        if report.stdout:
            ET.SubElement(case, "system-out").text = _xml_text(report.stdout)
        if report.stderr:
            ET.SubElement(case, "system-err").text = _xml_text(report.stderr)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _write(option: str, path: str, text: str) -> bool:
    try:
        write_atomic(path, text)
    except OSError as exc:
        print(f"divergefork run: error: {option} {path}: cannot write: {exc}", file=sys.stderr)
        return False
    return True


def write_atomic(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: readers see the old file or the new one.

    The temporary file lives in the target's directory so ``os.replace`` is a rename within
    one file system (atomic), and it is fsynced first so a crash never leaves an empty file.
    """
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)  # the only way to read it; restored at once (no threads here)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
