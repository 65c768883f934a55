"""The pytest plugin: ``pytest --fork`` runs each test in a forked child (entry point ``divergefork``).

Inert unless asked for: ``--fork`` forks every test, ``@pytest.mark.fork`` (optionally
``fork(timeout=..., limits=df.Limits(...))``) forks the marked ones, ``--fork-timeout`` sets a
deadline per forked test.

How one forked test runs (modelled on pytest-xdist, which carries reports between processes
with pytest's own serialisation hooks, and on pytest-forked, which runs the protocol in a
child):

1. In the parent, the test's collectors (session, package, module, class) are set up on the
   session's ``SetupState`` and its fixtures wider than a function are executed, so they are
   set up once and cached there (``_prepare``). An error is cached by pytest as it would be
   for the next test of that scope, and the child re-raises it in its own setup.
2. ``df.fork`` forks; the child inherits the cached fixtures copy-on-write and runs pytest's
   ``runtestprotocol`` (setup, call, teardown). Every report it produces (subtest reports
   too) goes to the parent at once with ``df.send(pytest_report_to_serializable(...))``: no
   plugin of the child sees it, so nothing is printed, counted or sent to an xdist
   controller twice. The child tears down only the test's own function-scoped fixtures.
3. The parent rebuilds each report with ``pytest_report_from_serializable`` and logs it with
   ``pytest_runtest_logreport``; it tears down the wider scopes the next test does not share
   and folds that into the teardown report, as plain pytest would. A child that dies before
   its last report (a signal, ``os._exit``, a deadline, a resource limit) fails the phase it
   died in, saying how it ended and where (``Report.stack``).
"""

from __future__ import annotations

import argparse
import math
import os
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn, cast, final

import _pytest
import pluggy
import pytest
from _pytest._code.code import TerminalRepr
from _pytest._io import TerminalWriter
from _pytest.runner import CallInfo, runtestprotocol

import divergefork as df

from . import _child, _forensics, _plugins, _status
from ._hookspecs import Config as DfConfig

__all__ = ["df_run", "df_scope"]

_Threads = Literal["refuse", "warn", "allow"]
_When = Literal["setup", "call", "teardown"]

_MARKER: Final = "fork"
_MARKER_KWARGS: Final = frozenset({"timeout", "limits"})
_MARKER_HELP: Final = (
    "fork(timeout=None, limits=None): run this test in its own forked child (divergefork); "
    "timeout in seconds, limits a divergefork.Limits"
)

try:  # pytest >= 9: built-in subtests count failed subtests to fail the test that has them.
    from _pytest.subtests import SubtestReport, failed_subtests_key
except ImportError:  # pragma: no cover - pytest 8
    SubtestReport = None  # type: ignore[assignment,misc]
    failed_subtests_key = None  # type: ignore[assignment]

try:
    from _pytest.skipping import evaluate_xfail_marks, xfailed_key
except ImportError:  # pragma: no cover - a pytest that moved them: crashes are never xfailed
    evaluate_xfail_marks = None  # type: ignore[assignment]
    xfailed_key = None  # type: ignore[assignment]

try:
    from _pytest.warnings import catch_warnings_for_item
except ImportError:  # pragma: no cover
    catch_warnings_for_item = None  # type: ignore[assignment]


# -- options and marker ----------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("divergefork", "forked tests (divergefork)")
    group.addoption(
        "--fork",
        action="store_true",
        default=False,
        help="run every test in its own forked child process (divergefork)",
    )
    group.addoption(
        "--fork-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="deadline for each forked test (with --fork or @pytest.mark.fork); past it the "
        "test fails with the stack where it was",
    )
    group.addoption(
        "--fork-threads",
        choices=("refuse", "warn", "allow"),
        default="refuse",
        help="what to do when other threads run at a fork (default: refuse, failing the test "
        "with their names); inside a pytest-xdist worker it is always allow",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)
    # Registered here, inert in this process: registering it in every child would cost each
    # forked test a plugin registration (and a replay of the session's warnings).
    config.pluginmanager.register(_Relay(config), _RELAY)


@final
@dataclass(frozen=True, slots=True)
class _Plan:
    """How to fork one test."""

    timeout: float | None
    limits: df.Limits | None
    threads: _Threads
    #: False under --pdb/--trace: the debugger in the child needs the terminal, which only
    #: its foreground process group may read.
    new_group: bool = True


@final
class _Unforkable(Exception):
    """The test cannot be forked (a bad marker, a refused fork); it fails at setup."""


def _plan(item: pytest.Item) -> _Plan | None:
    """How to fork ``item``, or ``None`` when it runs in this process as usual."""
    marker = item.get_closest_marker(_MARKER)
    config = item.config
    if marker is None and not config.option.fork:
        return None
    if config.getoption("setupplan", False) or config.getoption("setuponly", False):
        return None  # no test runs: nothing to isolate, and their listing is written directly
    timeout: float | None = config.option.fork_timeout
    limits: df.Limits | None = None
    if marker is not None:
        if marker.args:
            raise _Unforkable(
                f"@pytest.mark.fork takes keyword arguments only (timeout=, limits=), not {marker.args!r}"
            )
        unknown = sorted(set(marker.kwargs) - _MARKER_KWARGS)
        if unknown:
            raise _Unforkable(
                f"@pytest.mark.fork got unknown argument(s) {', '.join(unknown)}; it takes timeout= and limits="
            )
        if "timeout" in marker.kwargs:
            timeout = marker.kwargs["timeout"]
            if timeout is not None and (
                isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
            ):
                raise _Unforkable(f"@pytest.mark.fork(timeout=...) must be seconds > 0 or None, not {timeout!r}")
        limits = marker.kwargs.get("limits")
        if limits is not None and not isinstance(limits, df.Limits):
            raise _Unforkable(
                f"@pytest.mark.fork(limits=...) must be a divergefork.Limits, not {type(limits).__name__}"
            )
    # An xdist worker always runs execnet's I/O thread beside the tests: the fork is still
    # safe, since the child never touches execnet (it hands every report and warning back to
    # this process, which alone talks to the controller).
    threads: _Threads = "allow" if hasattr(config, "workerinput") else config.option.fork_threads
    debugging = bool(config.getoption("usepdb", False) or config.getoption("trace", False))
    return _Plan(timeout, limits, threads, new_group=not debugging)


# -- the protocol, in the parent ----------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    plan: _Plan | _Unforkable | None
    try:
        plan = _plan(item)
    except _Unforkable as exc:
        plan = exc
    if plan is None:
        return None
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    _run_forked(item, nextitem, plan)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@final
@dataclass(slots=True)
class _Received:
    """What the parent learned from one forked test."""

    #: The child's end (None if it was never forked).
    ended: df.Report | None = None
    #: Every report, rebuilt, in the order the child made them.
    reports: list[pytest.TestReport] = field(default_factory=list)
    #: The warnings the child recorded (see _send_warning).
    warned: list[dict[str, Any]] = field(default_factory=list)
    #: Why the test fails beyond its reports (not forked, interrupted wait, internal error).
    problem: str | None = None
    #: pytest.exit() or Ctrl-C in the child: raised here once its reports are logged.
    stop: BaseException | None = None


def _run_child(item: pytest.Item, nextitem: pytest.Item | None, plan: _Plan | _Unforkable) -> _Received:
    received = _Received()
    try:
        if isinstance(plan, _Unforkable):
            raise plan
        _prepare(item)
        child = _fork(_Job(item, nextitem, tuple(item.session._setupstate.stack)), plan)
        try:
            received.ended = child.wait()
        except (Exception, pytest.fail.Exception, pytest.skip.Exception) as exc:
            # Something in this process (pytest-timeout's signal, say) interrupted the wait:
            # the child is ended here; the test fails with why.
            received.ended = child.terminate(grace=0.5)
            received.problem = f"{type(exc).__name__}: {exc}"
        except BaseException:
            child.terminate(grace=0.5)
            raise
    except _Unforkable as exc:
        received.problem = str(exc)
        return received
    config = item.config
    assert received.ended is not None
    for message in received.ended.messages:
        if not isinstance(message, dict):
            continue
        if "report" in message:
            received.reports.append(_rebuild(config, message["report"]))
        elif "warning" in message:
            received.warned.append(message["warning"])
        elif "exit" in message:
            msg, code = message["exit"]
            received.stop = pytest.exit.Exception(msg, code)
        elif "interrupted" in message:
            received.stop = KeyboardInterrupt()
        elif "internal" in message:
            received.problem = "divergefork: the forked test process failed:\n" + str(message["internal"])
    return received


def _run_forked(item: pytest.Item, nextitem: pytest.Item | None, plan: _Plan | _Unforkable) -> None:
    received = _run_child(item, nextitem, plan)
    reports, ended, problem, stop = received.reports, received.ended, received.problem, received.stop
    phases = [rep for rep in reports if rep.when != "teardown" or _is_subtest(rep)]
    teardown = next((rep for rep in reports if rep.when == "teardown" and not _is_subtest(rep)), None)
    for rep in phases:
        _log(item, rep)
    if teardown is None and stop is None:
        # It died before its last report: the phase it was in fails, saying how and where.
        if problem is None:
            assert ended is not None
            problem = _death_text(ended, plan)
        when: _When = "setup"
        last = next((rep for rep in reversed(phases) if not _is_subtest(rep)), None)
        if last is not None:
            when = "call" if last.when == "setup" and last.passed else "teardown"
        if when != "teardown":
            _log(item, _failure(item, when, problem, last))
        else:
            teardown = _failure(item, "teardown", problem, last)
    elif problem is not None and teardown is not None:
        _add_section(teardown, "divergefork", problem)
    if stop is None:
        _log(item, _teardown_here(item, nextitem, teardown))
    for data in received.warned:
        _replay_warning(item, data)
    item_request = getattr(item, "_request", None)
    if item_request is not None:
        item._request = False  # type: ignore[attr-defined]  # as runtestprotocol's finally
        item.funcargs = None  # type: ignore[attr-defined]
    if stop is not None:
        raise stop


def _fork(job: _Job, plan: _Plan) -> df.Child:
    try:
        return df.fork(
            job,
            _child_main,
            name=job.item.nodeid,
            timeout=plan.timeout,
            threads=plan.threads,
            limits=plan.limits,
            new_group=plan.new_group,
            # pytest's own capturing in the child makes the report sections, as without
            # --fork; capture=True would put pipes under it and change nothing it reports.
            capture=False,
            codec="pickle",
        )
    except df.ForkUnsafeError as exc:
        raise _Unforkable(f"divergefork could not fork this test: {exc}") from exc


def _is_subtest(report: pytest.TestReport) -> bool:
    return SubtestReport is not None and isinstance(report, SubtestReport)


def _log(item: pytest.Item, report: pytest.TestReport) -> None:
    item.ihook.pytest_runtest_logreport(report=report)


def _rebuild(config: pytest.Config, data: dict[str, Any]) -> pytest.TestReport:
    report = cast("pytest.TestReport", config.hook.pytest_report_from_serializable(config=config, data=data))
    # A JSON message turns tuples into lists; pytest and its plugins test for tuples
    # (a skip's longrepr is (path, lineno, reason)).
    report.location = cast("tuple[str, int | None, str]", tuple(report.location))
    longrepr: object = report.longrepr
    if isinstance(longrepr, list):
        report.longrepr = cast("tuple[str, int, str]", tuple(longrepr))
    report.sections = _merged([cast("tuple[str, str]", tuple(section)) for section in report.sections])
    report.user_properties = [cast("tuple[str, object]", tuple(prop)) for prop in report.user_properties]
    failed_subtests = data.get(_FAILED_SUBTESTS)
    if isinstance(failed_subtests, int) and failed_subtests_key is not None:
        # The subtests plugin fails a passing test that has failed subtests when its call
        # report is shown, from a count it keeps: the child's count, not a guess (unittest's
        # subTest failures, for one, are not counted).
        config.stash[failed_subtests_key][report.id] = failed_subtests
    if data.get(_TEXT_REPR) and isinstance(report.longrepr, str):
        report.longrepr = _TextRepr(report.longrepr)
    context = data.get("_subtest.context")
    if _is_subtest(report) and isinstance(context, dict):
        # SubtestContext repr()s its kwargs when made, and again when rebuilt from JSON
        # (i=1 would show as i='1'): keep the text the child made.
        object.__setattr__(report.context, "kwargs", dict(context["kwargs"]))
    return report


def _merged(sections: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One section per title, its texts in order: what the parent captured of a phase (wider
    fixtures set up or torn down) and what the child did, as plain pytest shows it."""
    if len({title for title, _ in sections}) == len(sections):
        return sections
    texts: dict[str, str] = {}
    for title, text in sections:
        texts[title] = texts.get(title, "") + text
    return list(texts.items())


_TEXT_REPR: Final = "$divergefork_text_repr"
_FAILED_SUBTESTS: Final = "$divergefork_failed_subtests"


@final
class _TextRepr(TerminalRepr):
    """A longrepr that travelled as text (a fixture lookup error, say): shown as it was."""

    def __init__(self, text: str) -> None:
        self.text = text

    def toterminal(self, tw: TerminalWriter) -> None:
        for line in self.text.split("\n"):
            tw.line(line, red=line.startswith("E "))


def _capturing(item: pytest.Item, when: _When) -> AbstractContextManager[None]:
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        return nullcontext()
    return cast("AbstractContextManager[None]", capman.item_capture(when, item))


def _left_to_the_child(exc: BaseException) -> bool:
    """Whether an error of the parent's setup is the child's to raise again and report.

    Everything pytest's setup phase would report (it catches all but Exit and Ctrl-C):
    either pytest cached it, or the child runs the same code and meets it again.
    """
    return not isinstance(exc, pytest.exit.Exception | KeyboardInterrupt)


def _prepare(item: pytest.Item) -> None:
    """Set up, in this process, what the test shares with others: collectors and wider fixtures.

    pytest caches a failed setup (a collector's, or a fixture's in ``cached_result``) and
    raises it again for every test that needs it, so an error here is left for the child's
    setup to raise, which reports it exactly as pytest reports it for a test of that scope.
    """
    setupstate = item.session._setupstate
    chain = item.listchain()[:-1]
    wider = _wider_fixtures(item)
    if list(setupstate.stack) == chain and all(ready for _, ready in wider):
        return  # the usual case: all of it is already set up (and captured nothing)
    with _capturing(item, "setup"):
        try:
            if chain:
                # SetupState.setup only walks listchain(): given the parent it stops short
                # of the item, whose own setup is the child's.
                setupstate.setup(cast(pytest.Item, chain[-1]))
        except BaseException as exc:
            if not _left_to_the_child(exc):
                raise
            return
        request = getattr(item, "_request", None)
        if not request or not wider:
            return
        # getfixturevalue() refuses a request whose item is not set up (it would be a fixture
        # requested during teardown); the item is on the stack only while we ask. Wider
        # fixtures put their finalizers on their own node, never on the item's entry.
        setupstate.stack[item] = ([], None)
        try:
            for name, _ in wider:
                request.getfixturevalue(name)
        except BaseException as exc:
            if not _left_to_the_child(exc):
                raise
        finally:
            del setupstate.stack[item]


def _wider_fixtures(item: pytest.Item) -> list[tuple[str, bool]]:
    """The item's fixtures wider than a function, in setup order, each with whether it is
    already set up for this item (cached, and not parametrized: a parameter may differ)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None or not getattr(item, "_request", None):
        return []  # not a python test function: its fixtures, if any, are its own affair
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    wider = []
    for name in cast("Sequence[str]", getattr(item, "fixturenames", ())):
        defs = info.name2fixturedefs.get(name)
        if defs and defs[-1].scope != "function":
            wider.append((name, defs[-1].cached_result is not None and name not in params))
    return wider


def _teardown_here(
    item: pytest.Item, nextitem: pytest.Item | None, child_report: pytest.TestReport | None
) -> pytest.TestReport:
    """The teardown report: the child's, plus the wider scopes torn down here (as pytest does)."""
    session = item.session
    if session.shouldfail or session.shouldstop:
        nextitem = None  # as runtestprotocol: tear everything down to report its errors
    setupstate = session._setupstate
    needed = nextitem.listchain() if nextitem is not None else []
    stacked = list(setupstate.stack)
    if stacked == needed[: len(stacked)] and child_report is not None:
        return child_report
    sections_before = len(item._report_sections)
    with _capturing(item, "teardown"):
        call = CallInfo.from_call(
            lambda: setupstate.teardown_exact(nextitem), "teardown", reraise=_reraise(item)
        )
    here = [(f"Captured {key} {when}", content) for when, key, content in item._report_sections[sections_before:]]
    if call.excinfo is None:
        if child_report is None:
            child_report = _report(item, "teardown", "passed", None, [], call.duration)
        child_report.sections = _merged([*child_report.sections, *here])
        child_report.duration += call.duration
        return child_report
    made = cast(pytest.TestReport, item.ihook.pytest_runtest_makereport(item=item, call=call))
    if child_report is None:
        made.sections = here
        return made
    if child_report.failed:
        _add_section(child_report, "teardown of wider fixtures", str(made.longrepr))
        child_report.sections = _merged([*child_report.sections, *here])
        child_report.duration += call.duration
        return child_report
    made.sections = _merged([*child_report.sections, *here])
    made.duration += child_report.duration
    made.user_properties = child_report.user_properties  # record_property ran in the child
    return made


def _reraise(item: pytest.Item) -> tuple[type[BaseException], ...]:
    if item.config.getoption("usepdb", False):
        return (pytest.exit.Exception,)
    return (pytest.exit.Exception, KeyboardInterrupt)


def _report(
    item: pytest.Item,
    when: _When,
    outcome: Literal["passed", "failed", "skipped"],
    longrepr: str | None,
    sections: list[tuple[str, str]],
    duration: float,
) -> pytest.TestReport:
    return pytest.TestReport(
        item.nodeid,
        item.location,
        {name: 1 for name in item.keywords},
        outcome,
        longrepr,
        when,
        sections,
        duration,
        user_properties=list(item.user_properties),
    )


def _add_section(report: pytest.TestReport, title: str, text: str) -> None:
    report.sections.append((title, text))


def _failure(item: pytest.Item, when: _When, text: str, last: pytest.TestReport | None) -> pytest.TestReport:
    """The report of a phase the child did not finish, made as pytest makes a ``pytest.fail``."""

    def fail() -> NoReturn:
        pytest.fail(text, pytrace=False)

    if evaluate_xfail_marks is not None and xfailed_key is not None:
        # The xfail marks were evaluated in the child: evaluate them here too, so that a test
        # marked xfail that crashes is xfailed (unless its raises= names an exception).
        try:
            item.stash[xfailed_key] = evaluate_xfail_marks(item)
        except Exception:  # noqa: BLE001 - the child already reported a bad condition
            pass
    call = CallInfo.from_call(fail, when)
    report = cast(pytest.TestReport, item.ihook.pytest_runtest_makereport(item=item, call=call))
    sections = list(last.sections) if last is not None else []
    # With fd capturing the child wrote into pytest's capture file, which it shares with
    # this process: what the dead phase printed is still there.
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None and capman.is_globally_capturing():
        try:
            out, err = capman.read_global_capture()
        except Exception:  # noqa: BLE001 - sys capture keeps its text in the dead child
            out = err = ""
        for key, content in (("stdout", out), ("stderr", err)):
            if content:
                sections.append((f"Captured {key} {when}", content))
    report.sections = sections
    if last is not None:
        report.user_properties = last.user_properties
    return report


def _death_text(ended: df.Report, plan: _Plan | _Unforkable) -> str:
    if ended.outcome is df.Outcome.TIMED_OUT and isinstance(plan, _Plan):
        head = f"the forked test timed out after {plan.timeout:g} s: {ended.describe()}"
    else:
        head = f"the forked test process died: {ended.describe()}"
    parts = [head]
    if ended.error:
        parts.append(ended.error.rstrip())
    if ended.stack:
        parts.append("Python stack where it was:\n" + _without_pytest(ended.stack).rstrip())
    return "\n\n".join(parts)


_RUNNER_DIRS: Final = tuple(
    f'File "{os.path.dirname(os.path.abspath(module.__file__ or ""))}{os.sep}' for module in (_pytest, pluggy)
)


def _without_pytest(stack: str) -> str:
    """A faulthandler dump cut, in each thread, where pytest's and pluggy's frames begin.

    Most recent call first: the test's frames come first; below them is the runner calling
    it, the same for every test.
    """
    kept: list[str] = []
    cut = False
    for line in stack.splitlines():
        if not line.startswith("  File "):
            cut = False  # a thread's header, or text around the frames
        elif not cut and line.lstrip().startswith(_RUNNER_DIRS):
            cut = True
            kept.append("  ... (pytest running the test)")
        if not cut or not line.startswith("  File "):
            kept.append(line)
    return "\n".join(kept) + "\n"


def _replay_warning(item: pytest.Item, data: dict[str, Any]) -> None:
    category: type[Warning] = UserWarning
    module, _, name = str(data.get("category", "")).rpartition(".")
    try:
        found = getattr(__import__(module, fromlist=[name]), name) if module else None
        if isinstance(found, type) and issubclass(found, Warning):
            category = found
    except Exception:  # noqa: BLE001 - an unimportable category is shown as a UserWarning
        pass
    try:
        message: Warning = category(data["message"])
    except Exception:  # noqa: BLE001 - a category whose constructor wants other arguments
        message = UserWarning(data["message"])
    record = warnings.WarningMessage(
        message, category, data["filename"], data["lineno"], None, data.get("line")
    )
    item.ihook.pytest_warning_recorded.call_historic(
        kwargs={"warning_message": record, "nodeid": data["nodeid"], "when": data["when"], "location": None}
    )


# -- in the child ------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class _Job:
    """What a forked child runs, handed over by ``df.fork``."""

    item: pytest.Item
    nextitem: pytest.Item | None
    #: The collectors the parent set up (and will tear down): the child must not.
    shared: tuple[Any, ...]


def _child_main(job: _Job) -> NoReturn:
    item = job.item
    config = item.config
    try:
        # pytest's own faulthandler plugin may have pointed faulthandler elsewhere since our
        # first fork: point it back at this child's status pipe, for Report.stack.
        _forensics.reclaim()
        _divert(config, job)
        # The warnings plugin's context for this test, entered in the parent before the fork,
        # records the child's warnings in its list: they are sent from there, as the parent's
        # context would report them (cheaper than entering a context of our own, which is
        # the fallback, and whose warnings the relay sends).
        caught = config.pluginmanager.has_plugin("warnings")
        log = _inherited_warning_log() if caught else None
        start = 0 if log is None else len(log)
        warned: AbstractContextManager[None] = nullcontext()
        if caught and log is None and catch_warnings_for_item is not None:
            warned = catch_warnings_for_item(config, ihook=item.ihook, when="runtest", item=item)
        with warned, _not_a_child():
            runtestprotocol(item, log=True, nextitem=job.nextitem)
        for record in log[start:] if log is not None else ():
            _send_warning(record, item.nodeid, "runtest")
    except pytest.exit.Exception as exc:
        df.send({"exit": [exc.msg, exc.returncode]})
    except KeyboardInterrupt:
        df.send({"interrupted": True})
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        df.send({"internal": traceback.format_exc()})
    df.exit_child(0)


@contextmanager
def _not_a_child() -> Iterator[None]:
    """While the test runs, this process does not look like a divergefork child to it.

    So a test of code that uses divergefork sees what it would see without --fork:
    ``df.exit_child()`` and ``df.send()`` outside a child of its own raise, as they should.
    Only our sends (``_send``) use the channel to the parent.
    """
    global _channel
    _channel = _child._sender
    if _channel is None:
        yield
        return
    _child._sender = None
    try:
        yield
    finally:
        _child._sender = _channel


#: The sender to the parent while it is hidden from the test (see _not_a_child).
_channel: _status.Sender | None = None


def _send(value: object) -> None:
    if _channel is None:  # not hidden
        df.send(value)
        return
    hidden = _child._sender
    _child._sender = _channel
    try:
        df.send(value)
    finally:
        _child._sender = hidden


def _inherited_warning_log() -> list[warnings.WarningMessage] | None:
    """The list that ``warnings.catch_warnings(record=True)``, active now, records into."""
    append = getattr(warnings, "_showwarnmsg_impl", None)
    log = getattr(append, "__self__", None)
    return log if isinstance(log, list) and getattr(append, "__name__", "") == "append" else None


def _send_warning(record: warnings.WarningMessage, nodeid: str, when: str) -> None:
    category = record.category
    _send(
        {
            "warning": {
                "category": f"{category.__module__}.{category.__qualname__}",
                "message": str(record.message),
                "filename": record.filename,
                "lineno": record.lineno,
                "line": record.line,
                "nodeid": nodeid,
                "when": when,
            }
        }
    )


def _divert(config: pytest.Config, job: _Job) -> None:
    """Only our relay hears reports and warnings in the child: it sends them to the parent.

    Every other plugin hears them in the parent (terminal, junitxml, cache, an xdist worker
    talking to its controller). The session's own report hook stays: it keeps the child's
    ``shouldfail`` true to ``-x``, which subtests consult.
    """
    pm = config.pluginmanager
    relay = _relay_of(config)
    relay.job = job
    session = pm.get_plugin("session")
    for name in ("pytest_runtest_logreport", "pytest_warning_recorded"):
        # pluggy has no public way to drop one plugin from one hook; this process ends soon.
        impls = getattr(pm.hook, name)._hookimpls
        impls[:] = [impl for impl in impls if impl.plugin is relay or impl.plugin is session]


_RELAY: Final = "divergefork-relay"


def _relay_of(config: pytest.Config) -> _Relay:
    relay = config.pluginmanager.get_plugin(_RELAY)
    if not isinstance(relay, _Relay):
        raise RuntimeError(f"divergefork: the plugin {_RELAY!r} is missing (was it unregistered?)")
    return relay


@final
class _Relay:
    """In a forked test's child: hands reports and warnings to the parent, tears down only the
    test. Registered with every session, and inert until ``job`` is set (in the child)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.job: _Job | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.job is None:
            return
        config = self.config
        data = config.hook.pytest_report_to_serializable(config=config, report=report)
        longrepr: object = report.longrepr
        if not isinstance(longrepr, str | tuple | None) and not hasattr(longrepr, "reprcrash"):
            # Serialised as its text, which the parent would take for a plain string (pytest
            # then shows it in the short summary, where it does not show this kind).
            data[_TEXT_REPR] = True
        if failed_subtests_key is not None and report.when == "call" and not _is_subtest(report):
            data[_FAILED_SUBTESTS] = config.stash[failed_subtests_key].get(report.id, 0)
        _send({"report": data})

    def pytest_warning_recorded(self, warning_message: warnings.WarningMessage, when: str, nodeid: str) -> None:
        if self.job is not None:
            _send_warning(warning_message, nodeid, when)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Iterator[None]:
        job = self.job
        if job is not None and item is job.item:
            # The collectors and wider fixtures are the parent's: it tears them down when
            # the next test no longer needs them. Here only the test itself is torn down.
            stack = item.session._setupstate.stack
            for node in job.shared:
                stack.pop(node, None)
        return (yield)


# -- fixtures for plugin authors -------------------------------------------------------------------


@pytest.fixture
def df_scope() -> Iterator[df.Scope]:
    """A ``divergefork.Scope`` bound to the test: a child still running at teardown fails it.

    Every child is ended (SIGTERM, grace, SIGKILL) and reaped at teardown either way.
    """
    scope = df.Scope()
    scope.__enter__()
    try:
        yield scope
    except BaseException as exc:
        scope.__exit__(type(exc), exc, exc.__traceback__)
        raise
    running = _unfinished(scope)
    if not running:
        scope.__exit__(None, None, None)
        return
    # Leave the scope as an exception would: it terminates and reaps every child.
    try:
        raise _StillRunning()
    except _StillRunning as exc:
        scope.__exit__(type(exc), exc, exc.__traceback__)
    names = ", ".join(f"{child.name!r} (pid {child.pid})" for child in running)
    pytest.fail(
        f"df_scope: child {names} still running when the test ended; wait for it "
        "(scope.wait(), child.wait()) or end it (child.terminate()) in the test",
        pytrace=False,
    )


@final
class _StillRunning(Exception):
    """Leaves a ``df_scope`` the way an exception would: its children are terminated."""


def _unfinished(scope: df.Scope) -> list[df.Child]:
    """The scope's children that have not ended (running or waiting for a slot)."""
    waiter = getattr(scope, "_waiter", None)
    if waiter is not None:
        try:
            waiter.step(0.0)  # reap what has already ended
        except Exception:  # noqa: BLE001 - the scope's exit will say what is wrong
            pass
    # The scope keeps no public list of its children: read its waiter's and its queue's
    # (whatever their shape: a queue entry is a tuple holding the Child).
    running: Any = getattr(waiter, "running", ())
    children = list(running.values() if isinstance(running, dict) else running)
    children += [part for entry in getattr(scope, "_queue", ()) for part in entry]
    return [child for child in children if isinstance(child, df.Child) and child.report is None]


@final
class _Runner:
    """``df_run``: run the children of plugin modules as ``divergefork run -p MODULE`` would."""

    def __call__(
        self,
        *modules: str,
        args: Sequence[str] = (),
        only: Sequence[str] = (),
        timeout: float | None = None,
        autoload: bool = False,
    ) -> list[df.Report]:
        """Load ``modules`` (``-p`` specs, ``no:NAME`` too), fork their children, wait.

        ``args`` are the plugins' own options (as on the command line), ``only`` selects
        children by name, ``timeout`` caps every child's deadline. Installed plugins are loaded
        too with ``autoload=True``. Returns the reports in the order the plugins contributed
        the children; ``divergefork_report`` and ``divergefork_finished`` are called as in a run.
        A broken plugin raises ``divergefork.PluginError``, and nothing is forked.
        """
        plugins = _plugins.load_plugins(list(modules), autoload=autoload)
        parser = argparse.ArgumentParser(prog="df_run", add_help=False)
        plugins.add_options(parser)
        options = parser.parse_args(list(args))
        collected = plugins.collect(DfConfig(options, plugins.pm))
        unknown = sorted(set(only) - {item.spec.name for item in collected})
        if unknown:
            raise ValueError(f"df_run(only=...): no child is named {', '.join(map(repr, unknown))}")
        selected = [item for item in collected if not only or item.spec.name in only]
        failed: set[str] = set()
        by_name: dict[str, df.Report] = {}
        with df.Scope() as scope:
            for item in selected:
                spec = item.spec
                deadline = spec.timeout if timeout is None else min(timeout, spec.timeout or timeout)
                scope.fork(
                    spec.value,
                    spec.entry,
                    name=spec.name,
                    timeout=deadline,
                    capture=spec.capture,
                    grace=spec.grace,
                    new_group=spec.new_group,
                    threads=spec.threads,
                    contain=spec.contain,
                    limits=spec.limits,
                    codec=spec.codec,
                )
            for report in scope.as_completed():
                by_name[report.name] = report
                for error in plugins.report(report, skip=failed):
                    raise error
        reports = [by_name[item.spec.name] for item in selected]
        for error in plugins.finished(reports, skip=failed):
            raise error
        return reports


@pytest.fixture
def df_run() -> Callable[..., list[df.Report]]:
    """Run the children a plugin module contributes, in-process; returns their reports.

    ``df_run("my_plugin", args=["--my-count", "3"])`` is ``divergefork run -p my_plugin
    --my-count 3`` without the table: the reports, in the plugins' order.
    """
    return _Runner()

