"""``divergefork run``: the run loop.

Fork every selected child through one ``Scope``, follow them as they end (view, plugin
hooks, ``-x``), then print the final text, write the report files and pick the exit code.

Cancelling: ``-x`` raises :class:`_FailFast` inside the ``with scope:`` block, Ctrl-C and
SIGTERM raise ``KeyboardInterrupt`` there; either way the scope terminates and reaps every
child and reports the unfinished ones ``cancelled`` before the block is left.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Final, TextIO, final

from .._errors import DivergeforkError, PluginError
from .._exitcodes import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .._hookspecs import Config
from .._plugins import Collected, Plugins
from .._report import Outcome, Report
from .._scope import Scope
from . import _summary
from ._files import RunFacts, junit_xml, output_path_problem, run_document, write_atomic
from ._lines import LinePrinter
from ._parse import TRACEBACK_ENV, cli_limits, merge_limits
from ._signals import TICK, Terminated, Tick, Ticker, sigterm_cancels
from ._streams import Pipe, hook_stdout, isatty
from ._style import Style, wants_color
from ._view import Board, Live, Plain, Quiet, View

__all__ = ["run_command", "print_plugin_error", "traceback_hint", "usage_error"]

#: Children named in a message at most; the table lists them all.
_NAMES_SHOWN: Final = 10
#: File descriptors kept free for everything but capture pipes when deciding to capture.
_FD_MARGIN: Final = 64


def usage_error(command: str, message: str) -> int:
    print(f"divergefork {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def traceback_hint(want_traceback: bool) -> str:
    return "" if want_traceback else f" (--traceback or {TRACEBACK_ENV}=1 shows the full traceback)"


def print_traceback(exc: PluginError, want_traceback: bool) -> None:
    if want_traceback:
        import traceback

        sys.stderr.write("".join(traceback.format_exception(exc.__cause__ or exc)))


def print_plugin_error(exc: PluginError, want_traceback: bool) -> None:
    """A plugin error before anything was forked: said once, with what to do."""
    print_traceback(exc, want_traceback)
    print(f"divergefork: error: {exc}", file=sys.stderr)
    print(f"divergefork: nothing was forked{traceback_hint(want_traceback)}", file=sys.stderr)


def run_command(
    args: argparse.Namespace, plugins: Plugins, argv: Sequence[str], pipe: Pipe, want_traceback: bool
) -> int:
    """Check the command line against what the plugins contribute, then run."""
    if args.junit_xml == "-":
        return usage_error(
            "run",
            "--junit-xml -: JUnit XML cannot go to stdout, where it would mix with the table; "
            "give a file name (e.g. --junit-xml report.xml), or use --json - for a report on stdout",
        )
    with hook_stdout(args.json == "-"):
        collected = plugins.collect(Config(args, plugins.pm))
    names = [item.spec.name for item in collected]
    unknown = [name for name in args.only if name not in names]
    if unknown:
        known = ", ".join(names) if names else "none"
        return usage_error("run", f"--only {unknown[0]}: no child has that name (the children are: {known})")
    selected = [item for item in collected if not args.only or item.spec.name in args.only]
    if not selected:
        return usage_error(
            "run",
            "nothing to run: no plugin contributes a child (see `divergefork list`; install a "
            "plugin distribution or pass -p MODULE)",
        )
    for option, path in (("--json", args.json), ("--junit-xml", args.junit_xml)):
        problem = output_path_problem(path)
        if problem:
            return usage_error("run", f"{option} {path}: {problem}")
    return _Run(args, plugins, selected, argv, pipe, want_traceback).execute()


class _ForkFailed(Exception):
    """An ``OSError`` from forking (or waiting), told apart from our own output's."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _FailFast(Exception):
    """``-x``: a child was not ok; leaving the scope by this cancels the rest."""

    def __init__(self, report: Report) -> None:
        super().__init__(report.name)
        self.report = report


@contextlib.contextmanager
def _fork_failures() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise  # our stdout's reader went away: handled as such, not as a failed fork
    except OSError as exc:
        raise _ForkFailed(exc) from exc


def _deadline(own: float | None, cap: float | None) -> float | None:
    if own is None:
        return cap
    return own if cap is None else min(own, cap)


def _capture_fits(children: int) -> bool:
    """Whether capturing ``children`` at once (two more descriptors each) stays under ``ulimit -n``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft == resource.RLIM_INFINITY or children * 4 + _FD_MARGIN <= soft


@final
class _Run:
    """One ``divergefork run``."""

    def __init__(
        self,
        args: argparse.Namespace,
        plugins: Plugins,
        selected: list[Collected],
        argv: Sequence[str],
        pipe: Pipe,
        want_traceback: bool,
    ) -> None:
        self.args = args
        self.plugins = plugins
        self.selected = selected
        self.by_name = {item.spec.name: item for item in selected}
        self.argv = argv
        self.pipe = pipe
        self.want_traceback = want_traceback
        self.json_to_stdout = args.json == "-"
        # With `--json -` stdout carries the JSON document and nothing else.
        self.out: TextIO = sys.stderr if self.json_to_stdout else sys.stdout
        self.style = Style(wants_color(args.color, self.out))
        err_style = Style(wants_color(args.color, sys.stderr))
        at_once = min(args.jobs or len(selected), len(selected))
        live = isatty(sys.stderr) and not args.quiet
        # On a terminal the view captures the children's output so that nothing writes to the
        # screen behind its back (a torn status line); their lines are shown prefixed, and
        # the reports keep the output only where it was asked for (as off a terminal).
        self.auto_capture = live and not args.capture and not self.json_to_stdout and _capture_fits(at_once)
        self.capture_all = bool(args.capture) or self.json_to_stdout or self.auto_capture
        echo = bool(args.capture) or self.auto_capture
        self.board = Board([item.spec.name for item in selected])
        view_type = Quiet if args.quiet else Live if live and self.capture_all else Plain
        self.view: View = view_type(self.board, self.out, sys.stderr, pipe, err_style)
        self.live = view_type is Live
        self.lines = LinePrinter(self.view.output) if echo else None
        self.limits = cli_limits(args)
        self.has_report_hooks = bool(plugins.pm.hook.divergefork_report.get_hookimpls())
        self.reports: list[Report] = []
        self.seen = 0
        self.hook_errors: list[PluginError] = []
        #: Plugins whose report hook raised: not called again in this run.
        self.failed_plugins: set[str] = set()
        self.ticker = Ticker()

    # -- running -----------------------------------------------------------------------

    def execute(self) -> int:
        on_output = None if self.lines is None else self.lines.feed
        wall_start = datetime.now(timezone.utc)
        started = time.monotonic()
        stopped: str | None = None
        fail: Report | None = None
        refused: DivergeforkError | OSError | None = None
        scope = Scope(max_parallel=self.args.jobs, on_output=on_output)
        try:
            with sigterm_cancels(), scope:
                try:
                    self._fork_all(scope)
                    self.view.refresh()
                    # Armed only now: a signal that lands during fork() makes the kernel start
                    # the fork over, so a clock ticking through the forks would slow them.
                    # (Forks of queued children happen in the wait, with signals blocked.)
                    with self.ticker.armed_while(self.live):
                        self._wait(scope)
                except KeyboardInterrupt as exc:
                    # Said now: the scope is about to spend the children's grace on them.
                    self.board.stopping = "terminated" if isinstance(exc, Terminated) else "interrupted"
                    self._stopping_note(scope, "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C")
                    raise
        except _FailFast as exc:
            stopped, fail = "fail-fast", exc.report
            self._add_unforked(scope, "the run was cancelled by -x/--fail-fast first")
        except KeyboardInterrupt as exc:
            stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
            self._add_unforked(scope, "the run was interrupted first")
        except (DivergeforkError, _ForkFailed) as exc:
            # A fork refused (ForkUnsafeError: a plugin hook started a thread, say) or failed
            # (out of processes or descriptors). The scope cancelled and reaped the other
            # children; their reports are kept and shown.
            refused = exc.error if isinstance(exc, _ForkFailed) else exc
            stopped = "fork failed" if isinstance(refused, OSError) else "fork refused"
            self._add_unforked(scope, f"the fork {'failed' if isinstance(refused, OSError) else 'was refused'}")
        self._take(scope, fail_fast=False)
        self.view.close()
        elapsed = time.monotonic() - started
        if stopped in (None, "fail-fast"):
            with hook_stdout(self.json_to_stdout):
                self.hook_errors += self.plugins.finished(list(self.reports), skip=self.failed_plugins)
        return self._finish(wall_start, elapsed, stopped, fail, refused)

    def _fork_all(self, scope: Scope) -> None:
        args = self.args
        last = time.monotonic()
        for item in self.selected:
            spec = item.spec
            with _fork_failures():
                child = scope.fork(
                    spec.value,
                    spec.entry,
                    name=spec.name,
                    timeout=_deadline(spec.timeout, args.timeout),
                    capture=spec.capture or self.capture_all,
                    grace=spec.grace,
                    new_group=spec.new_group,
                    threads=spec.threads,
                    contain=spec.contain,
                    limits=merge_limits(spec.limits, self.limits),
                    codec=spec.codec,
                )
            self.board.active[spec.name] = child
            now = time.monotonic()
            if now - last >= TICK:
                last = now
                self.view.refresh()

    def _wait(self, scope: Scope) -> None:
        """Follow the children until every one has ended; the view redraws on each tick."""
        ticker = self.ticker
        completed = scope.as_completed()
        while True:
            self._take(scope, fail_fast=bool(self.args.fail_fast))
            if ticker.due:
                ticker.due = False
                self.view.refresh()
            try:
                ticker.waiting = True
                more = next(completed, None) is not None
                ticker.waiting = False
            except Tick:
                # The scope is whole (see _signals); its reports are read from scope.reports.
                self.view.refresh()
                completed = scope.as_completed()
                continue
            finally:
                ticker.waiting = False
            if not more:
                return

    def _take(self, scope: Scope, *, fail_fast: bool) -> None:
        """Handle the reports the scope gathered since last time, in the order children ended."""
        fresh = scope.reports[self.seen :]
        self.seen = len(scope.reports)
        failed: Report | None = None
        for report in fresh:
            report = self._kept(report)
            self.reports.append(report)
            self.board.ended(report)
            if self.lines is not None:
                self.lines.ended(report)
            self.view.finished(report)
            self._report_hooks(report)
            if fail_fast and failed is None and not report.ok:
                failed = report
        if fresh:
            self.view.flush()
        if failed is not None and self.board.active:
            self.board.stopping = "fail-fast"
            self._stopping_note(scope, f"-x/--fail-fast: {failed.name} {failed.describe()}")
            raise _FailFast(failed)

    def _kept(self, report: Report) -> Report:
        """The report as the user asked for it: output captured only for the view is dropped."""
        if not self.auto_capture or (not report.stdout and not report.stderr):
            return report
        item = self.by_name.get(report.name)
        if item is not None and item.spec.capture:
            return report
        return dataclasses.replace(report, stdout=b"", stderr=b"")

    def _report_hooks(self, report: Report) -> None:
        if not self.has_report_hooks:
            return
        # Plugins' report hooks may print too: no status region may be drawn under them.
        self.view.pause()
        # A broken observer must not cancel children that are running fine, nor silence the
        # other plugins: remember its error, stop calling it, report it once all are reaped.
        with hook_stdout(self.json_to_stdout):
            errors = self.plugins.report(report, skip=self.failed_plugins)
        for error in errors:
            self.hook_errors.append(error)
            owner = self.plugins.owner_of(error)
            if owner is not None:
                self.failed_plugins.add(owner.name)

    def _stopping_note(self, scope: Scope, why: str) -> None:
        running = sum(1 for child in self.board.active.values() if child.pid)
        queued = len(self.board.active) - running
        parts = []
        if running:
            parts.append(f"stopping {running} running {'child' if running == 1 else 'children'} (SIGTERM, then SIGKILL after their grace)")
        if queued:
            parts.append(f"{queued} queued will not start")
        if parts:
            self.view.note(f"divergefork run: {why}: {'; '.join(parts)}")
            self.view.refresh()

    def _add_unforked(self, scope: Scope, why: str) -> None:
        """A ``cancelled`` report for each selected child the scope never got to fork."""
        reported = {report.name for report in scope.reports} | {report.name for report in self.reports}
        for item in self.selected:
            if item.spec.name not in reported and item.spec.name not in self.board.active:
                report = Report(name=item.spec.name, pid=0, outcome=Outcome.CANCELLED, error=f"never forked: {why}")
                self.reports.append(report)
                self.board.ended(report)

    # -- the end -----------------------------------------------------------------------

    def _ordered(self) -> list[Report]:
        """Reports in collection order (stable from run to run), not in order of ending."""
        position = {item.spec.name: index for index, item in enumerate(self.selected)}
        return sorted(self.reports, key=lambda report: position.get(report.name, len(position)))

    def _finish(
        self,
        wall_start: datetime,
        elapsed: float,
        stopped: str | None,
        fail: Report | None,
        refused: DivergeforkError | OSError | None,
    ) -> int:
        reports = self._ordered()
        if stopped == "interrupted" and isatty(sys.stderr) and not self.live:
            self.pipe.emit(sys.stderr, "\r\x1b[K")  # the terminal's own "^C" echo: not into our text
        forked = sum(report.pid != 0 for report in reports)
        if refused is not None and not forked:
            return self._refused(refused, reports, forked)
        why = {
            "interrupted": "interrupted by Ctrl-C",
            "terminated": "terminated by SIGTERM",
            "fail-fast": f"-x: stopped after {fail.name}" if fail is not None else "-x",
            "fork refused": "a fork was refused",
            "fork failed": "a fork failed",
        }.get(stopped or "")
        verdict = _summary.verdict(reports, elapsed, self.style, why=why)
        if not self.args.quiet:
            self.pipe.emit(self.out, "".join(line + "\n" for line in self._body(reports)))
        messages = self._messages(reports, stopped, fail)
        if stopped in ("interrupted", "terminated"):
            status = EXIT_INTERRUPTED
        elif refused is not None or self.hook_errors:
            status = EXIT_FAILED
        else:
            status = EXIT_OK if all(report.ok for report in reports) else EXIT_FAILED
        facts = RunFacts(
            started=wall_start,
            duration=elapsed,
            exit_status=status,
            stopped=stopped,
            argv=self.argv,
            plugins=[
                {"name": p.name, "module": p.module, "distribution": p.distribution} for p in self.plugins.plugins
            ],
            owners={item.spec.name: item.plugin.name for item in self.selected},
            verdict=_summary.verdict(reports, elapsed, Style(False), why=why),
        )
        written = self._write_files(reports, facts)
        for message in messages:
            self.pipe.emit(sys.stderr, message + "\n")
        if refused is not None:
            self._refused(refused, reports, forked)
        self.pipe.emit(self.out, verdict + "\n")
        if self.json_to_stdout:
            self.pipe.emit(sys.stdout, json.dumps(run_document(reports, facts), indent=2) + "\n")
        if status == EXIT_INTERRUPTED:
            return status
        if self.pipe.broken:
            return EXIT_BROKEN_PIPE
        if not written:
            return EXIT_FAILED
        return status

    def _body(self, reports: Sequence[Report]) -> list[str]:
        """The table, then for each child not ok what the table cannot say (every report with -v)."""
        lines = _summary.table(reports, self.style)
        for report in reports:
            if self.args.verbose:
                lines.append("")
                lines += _summary.whole_report(report)
            elif not report.ok and report.outcome is not Outcome.CANCELLED and (report.error or report.stack):
                lines.append("")
                lines += _summary.details(report, traceback_shown=not self._captured(report))
        if len(lines) > len(reports) + 1:
            lines.append("")  # the verdict apart from the details above it
        return lines

    def _captured(self, report: Report) -> bool:
        item = self.by_name.get(report.name)
        return self.capture_all or (item is not None and item.spec.capture)

    def _messages(self, reports: Sequence[Report], stopped: str | None, fail: Report | None) -> list[str]:
        messages: list[str] = []
        for error in self.hook_errors:
            print_traceback(error, self.want_traceback)
            messages.append(f"divergefork run: error: {error}")
        if self.hook_errors:
            messages.append(
                "divergefork run: the children ran to their end; a failing plugin was not called "
                f"again{traceback_hint(self.want_traceback)}"
            )
        if stopped in ("interrupted", "terminated", "fail-fast"):
            how = {
                "interrupted": "interrupted by Ctrl-C",
                "terminated": "terminated by SIGTERM",
                "fail-fast": f"-x/--fail-fast: {fail.name} {fail.describe()}" if fail else "-x/--fail-fast",
            }[stopped]
            messages.append(f"divergefork run: {how}: {_fates(reports)}")
        return messages

    def _refused(self, exc: DivergeforkError | OSError, reports: Sequence[Report], forked: int) -> int:
        total = len(self.selected)
        if isinstance(exc, OSError):
            if not forked:
                return usage_error("run", f"cannot fork: {exc}; nothing was forked")
            print(
                f"divergefork run: error: a fork failed after {forked} of {total} children had "
                f"started, so the rest were cancelled: {exc}. Raise the limit it hit (ulimit -n "
                "for descriptors, -u for processes) or run fewer at once with --jobs.",
                file=sys.stderr,
            )
            return EXIT_FAILED
        starter = self.plugins.thread_starter
        if starter is not None:
            culprit = (
                f" The thread was started by {starter}: stop or join it before the hook returns"
                " (or fork before starting it)."
            )
        elif self.plugins.last_call is not None:
            culprit = f" The last plugin hook that ran before it was {self.plugins.last_call}."
        else:
            culprit = ""
        if not forked:
            return usage_error("run", f"cannot fork: {exc}{culprit} So nothing was forked.")
        print(
            f"divergefork run: error: a fork was refused after {forked} of {total} children had "
            f"started, so the rest were cancelled: {exc}{culprit} A plugin hook that leaves a thread "
            "running makes every later fork unsafe, and threads at fork are refused; or run "
            "without --jobs so that every child is forked before the first hook runs.",
            file=sys.stderr,
        )
        return EXIT_FAILED

    def _write_files(self, reports: Sequence[Report], facts: RunFacts) -> bool:
        ok = True
        if self.args.json is not None and not self.json_to_stdout:
            text = json.dumps(run_document(reports, facts), indent=2) + "\n"
            ok &= _write("--json", self.args.json, text)
        if self.args.junit_xml is not None:
            ok &= _write("--junit-xml", self.args.junit_xml, junit_xml(reports, facts.owners, wall_time=facts.duration))
        return ok


def _fates(reports: Sequence[Report]) -> str:
    """What became of each child when the run was cut short, grouped."""
    stopped = [r for r in reports if r.outcome is Outcome.CANCELLED and r.pid != 0]
    killed = [r for r in stopped if "SIGKILL" in (r.error or "")]
    never = [r for r in reports if r.outcome is Outcome.CANCELLED and r.pid == 0]
    ended = [r for r in reports if r.outcome is not Outcome.CANCELLED]
    parts: list[str] = []
    if stopped:
        text = f"{_count(stopped, 'running')} {_were(stopped)} stopped ({_names(stopped)})"
        text += " by SIGTERM" if not killed else f", {len(killed)} of them by SIGKILL after the grace period"
        parts.append(text)
    if never:
        parts.append(f"{_count(never, 'queued')} {_were(never)} never started ({_names(never)})")
    if ended:
        parts.append(f"{_count(ended, 'other')} had already ended")
    return "; ".join(parts) + "; every child was reaped, none is left running"


def _count(reports: Sequence[Report], adjective: str) -> str:
    return f"1 {adjective} child" if len(reports) == 1 else f"{len(reports)} {adjective} children"


def _were(reports: Sequence[Report]) -> str:
    return "was" if len(reports) == 1 else "were"


def _names(reports: Sequence[Report]) -> str:
    names = ", ".join(report.name for report in reports[:_NAMES_SHOWN])
    if len(reports) > _NAMES_SHOWN:
        names += f", and {len(reports) - _NAMES_SHOWN} more"
    return names


def _write(option: str, path: str, text: str) -> bool:
    try:
        write_atomic(path, text)
    except OSError as exc:
        print(f"divergefork run: error: {option} {path}: cannot write: {exc}", file=sys.stderr)
        return False
    return True
