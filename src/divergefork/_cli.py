"""The ``divergefork`` command line: a thin layer that parses, calls the API, prints and maps
outcomes to exit codes.

Exit codes: 0 every child ``ok``; 1 some child not ok; 2 usage, configuration or plugin error
(nothing forked, except for a plugin failing in ``divergefork_report``/``divergefork_finished``,
which happens after the children ran); 130 interrupted (every child terminated and reaped first).

Plugins add options, so the command line is parsed in two steps: a pre-scan finds the
subcommand and every ``-p`` (``-p no:NAME`` included), plugins load, they add their options
through ``divergefork_addoption``, and only then is the full command line parsed.

``--traceback`` (or ``DIVERGEFORK_TRACEBACK=1``) prints the full traceback of a plugin error
before the one-line message; by default the user reads the message, not a stack.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Final, TextIO, final

from ._errors import DivergeforkError, PluginError
from ._hookspecs import Config
from ._plugins import Collected, Plugins, describe_entry, load_plugins
from ._report import Outcome, Report
from ._scope import Scope

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

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
    parser.add_argument("--junit-xml", metavar="PATH", help="write a JUnit XML report to PATH")
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


_EPILOG: Final = (
    "exit codes: 0 every child ok, 1 some child not ok, 2 usage, configuration or plugin error "
    "(nothing forked), 130 interrupted (children terminated and reaped first)"
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
    # -- check wiring (the mypy gate): _check.configure sets check_main on the namespace. --
    try:
        from . import _check  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # until the mypy gate lands
        pass
    else:
        _check.configure(check)
    demo = sub.add_parser("demo", help="demonstrations (demo race: the shared-counter race)")
    try:
        from . import _demo  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # until the demo lands
        pass
    else:
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


# -- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (never calls ``sys.exit`` itself)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(arguments)
    except KeyboardInterrupt:
        # Interrupted outside a run (while plugins load, say): nothing was forked.
        print("divergefork: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


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
    if args.command in _PLUGIN_COMMANDS:
        assert plugins is not None
        try:
            if args.command == "list":
                return _list(args, plugins)
            return _run(args, plugins)
        except PluginError as exc:
            _print_plugin_error(exc, want_traceback)
            return EXIT_USAGE
    if args.command == "check" and hasattr(args, "check_main"):
        check_code: int = args.check_main(args)
        return check_code
    if args.command == "demo" and hasattr(args, "demo_main"):
        code: int = args.demo_main(args)
        return code
    print(f"divergefork {args.command}: not implemented yet in this version", file=sys.stderr)
    return EXIT_USAGE


def _print_plugin_error(exc: PluginError, want_traceback: bool) -> None:
    if want_traceback:
        sys.stderr.write("".join(traceback.format_exception(exc.__cause__ or exc)))
    print(f"divergefork: error: {exc}", file=sys.stderr)
    hint = "" if want_traceback else f" (--traceback or {TRACEBACK_ENV}=1 shows the full traceback)"
    print(f"divergefork: nothing was forked{hint}", file=sys.stderr)


def _usage_error(command: str, message: str) -> int:
    print(f"divergefork {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# -- list --------------------------------------------------------------------------------------


def _list(args: argparse.Namespace, plugins: Plugins) -> int:
    out = sys.stdout
    collected = plugins.collect(Config(args, plugins.pm))
    if not plugins.plugins:
        print(
            "no plugins found: install a distribution with a 'divergefork' entry point, "
            "or pass -p MODULE",
            file=out,
        )
    else:
        rows = [
            [plugin.name, plugin.distribution or f"-p {plugin.module}", f"module {plugin.module}"]
            for plugin in plugins.plugins
        ]
        print(f"plugins ({len(rows)}):", file=out)
        for line in _columns(rows):
            print("  " + line, file=out)
    if plugins.blocked:
        print(f"blocked: {', '.join(plugins.blocked)}", file=out)
    print(f"children ({len(collected)}):", file=out)
    rows = []
    for item in collected:
        spec = item.spec
        details = [f"from {item.plugin.name}", f"entry {describe_entry(spec.entry)}"]
        details.append("no timeout" if spec.timeout is None else f"timeout {spec.timeout:g}s")
        if spec.capture:
            details.append("capture")
        rows.append([spec.name, *details])
    for line in _columns(rows):
        print("  " + line, file=out)
    return EXIT_OK


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


# -- run ---------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, plugins: Plugins) -> int:
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
    return _Run(args, plugins, selected).execute()


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

    def __init__(self, args: argparse.Namespace, plugins: Plugins, selected: list[Collected]) -> None:
        self.args = args
        self.plugins = plugins
        self.selected = selected
        json_to_stdout = args.json == "-"
        # With `--json -` stdout carries the JSON document and nothing else.
        self.out: TextIO = sys.stderr if json_to_stdout else sys.stdout
        # Children inherit our stdout: with `--json -` their output must be captured too.
        self.capture_all = bool(args.capture) or json_to_stdout
        self.progress = _Progress(sys.stderr, len(selected), in_place=self.capture_all)
        width = max(len(item.spec.name) for item in selected)
        self.lines = _LinePrinter(self.out, sys.stderr, width, self.progress) if args.capture else None
        self.reports: list[Report] = []
        self.hook_error: PluginError | None = None

    def execute(self) -> int:
        # Captured output is printed line by line as the scope's loop reads it.
        on_output = None if self.lines is None else self.lines.feed
        started = time.monotonic()
        interrupted = False
        scope = Scope(max_parallel=self.args.jobs, on_output=on_output)
        try:
            with scope:
                for item in self.selected:
                    spec = item.spec
                    scope.fork(
                        spec.value,
                        spec.entry,
                        name=spec.name,
                        timeout=_deadline(spec.timeout, self.args.timeout),
                        capture=spec.capture or self.capture_all,
                    )
                self.progress.show(self.reports)
                for report in scope.as_completed():
                    self._reaped(report)
        except KeyboardInterrupt:
            interrupted = True
            # The scope terminated and reaped every child before re-raising; its reports say so.
            self.reports = list(scope.reports)
        except DivergeforkError as exc:  # ForkUnsafeError: a plugin started a thread, say
            self.progress.clear()
            return _usage_error("run", f"cannot fork: {exc}")
        self.progress.clear()
        elapsed = time.monotonic() - started
        if not interrupted and self.hook_error is None:
            try:
                self.plugins.finished(list(self.reports))
            except PluginError as exc:
                self.hook_error = exc
        ordered = self._ordered()
        self._print_table(ordered, elapsed, interrupted)
        written = self._write_files(ordered)
        if interrupted:
            cancelled = sum(report.outcome is Outcome.CANCELLED for report in ordered)
            print(
                f"divergefork run: interrupted; {cancelled} children were cancelled "
                "(terminated and reaped, or never started)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        if not written:
            return EXIT_USAGE
        if self.hook_error is not None:
            print(f"divergefork: error: {self.hook_error}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK if all(report.ok for report in ordered) else EXIT_FAILED

    def _reaped(self, report: Report) -> None:
        self.reports.append(report)
        # Plugins' report hooks may print too: no status line may be half-drawn under them.
        self.progress.clear()
        if self.lines is not None:
            self.lines.flush(report.name)
        if self.hook_error is None:
            # A broken observer must not cancel children that are running fine: remember the
            # error, stop calling hooks, and report it (exit 2) once all children are reaped.
            try:
                self.plugins.report(report)
            except PluginError as exc:
                self.hook_error = exc
        self.progress.show(self.reports)

    def _ordered(self) -> list[Report]:
        """Reports in collection order (stable from run to run), not in order of ending."""
        position = {item.spec.name: index for index, item in enumerate(self.selected)}
        return sorted(self.reports, key=lambda report: position.get(report.name, len(position)))

    def _print_table(self, reports: Sequence[Report], elapsed: float, interrupted: bool) -> None:
        out = self.out
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
        for line in _columns(rows):
            print(line, file=out)
        bad = [report for report in reports if not report.ok]
        summary = f"{len(reports)} {'child' if len(reports) == 1 else 'children'}: {len(reports) - len(bad)} ok"
        if bad:
            summary += f", {len(bad)} not ok ({', '.join(f'{r.name} {r.describe()}' for r in bad)})"
        if interrupted:
            summary += ", interrupted"
        print(f"{summary} in {elapsed:.2f}s", file=out)
        for report in bad:
            if report.error:
                print(f"\n--- {report.name} (pid {report.pid}): {report.describe()} ---", file=out)
                print(report.error.rstrip("\n"), file=out)
        out.flush()

    def _write_files(self, reports: Sequence[Report]) -> bool:
        ok = True
        if self.args.json is not None:
            text = json.dumps([report.to_dict() for report in reports], indent=2) + "\n"
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
class _Progress:
    """Live progress on stderr, only when stderr is a terminal.

    When the children's output is captured, nothing else writes to the terminal behind our
    back, so one status line is redrawn in place. Otherwise children write to the terminal
    whenever they like and a half-drawn status line would be torn; then each reap gets a
    line of its own instead.
    """

    def __init__(self, stream: TextIO, total: int, *, in_place: bool) -> None:
        self.stream = stream
        self.total = total
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
            self.stream.write("\r\x1b[K" + text)
            self.shown = True
        elif reports:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@final
class _LinePrinter:
    """Prints children's output line by line, each line prefixed with the child's name."""

    def __init__(self, out: TextIO, err: TextIO, width: int, progress: _Progress) -> None:
        self.out = out
        self.err = err
        self.width = width
        self.progress = progress
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
        target = self.err if stream == "stderr" else self.out
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        self.progress.clear()  # redrawn at the next reap
        target.write(f"{name.ljust(self.width)} | {text}\n")
        target.flush()


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
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
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
