"""The mypy plugin, tested like any other behaviour: snippets and the errors mypy must report.

Every snippet is strict-mode code; a line that must produce an error ends in
``# E: code`` or ``# E: code: part of the message`` (several markers may follow one another;
``code|other`` where mypy versions differ),
and every error mypy reports must be marked. mypy runs are slow (seconds each), so all
snippets are checked in one run over one directory, sharing one cache for the session.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from mypy import api as mypy_api

from divergefork import mypy as plugin_module

HAVE_SCOPE = importlib.util.find_spec("divergefork._scope") is not None

CONFIG = """\
[mypy]
python_version = 3.11
strict = True
warn_unreachable = True
plugins = divergefork.mypy
"""

HEADER = """\
from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, NoReturn

import pluggy

import divergefork as df
from divergefork import hookimpl


def entry(n: int) -> NoReturn:
    df.exit_child(n)


"""


@dataclass(frozen=True)
class Case:
    name: str
    source: str

    @property
    def text(self) -> str:
        return HEADER + textwrap.dedent(self.source)

    @property
    def first_line(self) -> int:
        return HEADER.count("\n") + 1

    def expected(self) -> list[tuple[int, str, str]]:
        """(line, code, message fragment) for every ``# E:`` marker."""
        found = []
        for number, line in enumerate(self.text.splitlines(), start=1):
            for code, fragment in re.findall(r"# E: ([\w|-]+)(?:: (.*?))?\s*(?=# E:|$)", line):
                found.append((number, code, fragment))
        return found


CASES: list[Case] = [
    # --- entries that plain mypy and the plugin accept ------------------------------------
    Case(
        "entry_ok",
        """
        def with_extra(n: int, extra: str) -> NoReturn:
            raise SystemExit(n)


        def execs(n: int) -> NoReturn:
            df.exec_child(["true"])


        class Runner:
            def __call__(self, n: int) -> NoReturn:
                os._exit(n)

            def method(self, n: int) -> NoReturn:
                while True:
                    pass


        def takes(entry_param: Callable[[int], NoReturn]) -> None:
            df.fork(1, entry_param)


        def run() -> None:
            df.fork(1, entry)
            df.fork(1, execs, name="execs", timeout=1.0)
            df.fork(1, lambda n: df.exit_child(n))
            df.fork(1, functools.partial(with_extra, extra="x"))
            df.fork(1, Runner())
            df.fork(1, Runner().method)
            df.ChildSpec("a", 1, entry)
            df.ChildSpec(name="b", value=1, entry=entry, timeout=2.0)
            df.ChildSpec[int]("c", 1, entry)
        """,
    ),
    # --- entries whose return is Any: mypy lets them through, the plugin does not -----------
    Case(
        "entry_any",
        """
        def unannotated(n):  # E: no-untyped-def
            os._exit(n)


        def partly(n: int):  # E: no-untyped-def
            os._exit(n)


        def returns_any(n: int) -> Any:
            os._exit(n)


        def untyped_decorator(function):  # E: no-untyped-def
            return function


        @untyped_decorator  # E: untyped-decorator|misc
        def decorated(n: int) -> NoReturn:
            os._exit(n)


        class AnyCall:
            def __call__(self, n: int) -> Any:
                os._exit(n)


        def anything() -> Any:
            return entry


        def run(loose: Callable[..., Any]) -> None:
            df.fork(1, unannotated)  # E: divergefork-entry: Entry "unannotated" given to divergefork.fork() is not provably NoReturn (it returns "Any"); annotate the entry "-> NoReturn"
            df.fork(1, partly)  # E: divergefork-entry: Entry "partly" given to divergefork.fork()
            df.fork(1, returns_any)  # E: divergefork-entry: (it returns "Any")
            df.fork(1, decorated)  # E: divergefork-entry: Entry "decorated" given to divergefork.fork() is not provably NoReturn (its type is "Any")
            df.fork(1, loose)  # E: divergefork-entry: Entry "loose"
            df.fork(1, functools.partial(returns_any))  # E: divergefork-entry: Entry given to divergefork.fork() is not provably NoReturn (it returns "Any")
            df.fork(1, AnyCall())  # E: divergefork-entry: (it returns "Any")
            df.fork(1, anything())  # E: divergefork-entry: (its type is "Any")
            df.fork(1, lambda n: returns_any(n))  # E: divergefork-entry
            df.ChildSpec("a", 1, returns_any)  # E: divergefork-entry: given to ChildSpec()
            df.ChildSpec(name="b", value=1, entry=partly)  # E: divergefork-entry: given to ChildSpec()
            df.ChildSpec(
                "c",
                1,
                unannotated,  # E: divergefork-entry
            )
        """,
    ),
    # --- what plain mypy reports stays plain mypy's: no second, redundant error -------------
    Case(
        "entry_plain_mypy",
        """
        def returns_none(n: int) -> None:
            pass


        def takes_str(s: str) -> NoReturn:
            raise SystemExit(s)


        def run() -> None:
            df.fork(1, returns_none)  # E: arg-type
            df.fork(1, takes_str)  # E: arg-type
            df.ChildSpec("a", 1, returns_none)  # E: arg-type
        """,
    ),
    # --- the ignore comment names the code precisely -----------------------------------------
    Case(
        "entry_ignored",
        """
        def returns_any(n: int) -> Any:
            os._exit(n)


        def run() -> None:
            df.fork(1, returns_any)  # type: ignore[divergefork-entry]
            df.fork(1, returns_any)  # type: ignore[misc]  # E: divergefork-entry # E: unused-ignore
        """,
    ),
    # --- hook implementations that fit their specs -----------------------------------------
    Case(
        "hookimpl_ok",
        """
        pytest_hookimpl = pluggy.HookimplMarker("pytest")


        @df.hookimpl
        def divergefork_addoption(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("--spam")


        @hookimpl(tryfirst=True)
        def divergefork_children(config: df.Config) -> list[df.ChildSpec[int]]:
            return [df.ChildSpec("spam", 1, entry)]


        @df.hookimpl
        def divergefork_report() -> None:
            pass


        @df.hookimpl(specname="divergefork_report", trylast=True)
        def on_report(report: df.Report) -> None:
            pass


        @df.hookimpl(specname="divergefork_report")
        def wider(report: object, verbose: bool = False, *args: int, quiet: bool = True) -> None:
            pass


        @df.hookimpl(specname="divergefork_children")
        def generated(config: df.Config) -> Iterator[df.ChildSpec[int]]:
            yield df.ChildSpec("g", 1, entry)


        @df.hookimpl(optionalhook=True)
        def divergefork_hook_of_a_newer_version(anything: int) -> str:
            return ""


        @df.hookimpl(wrapper=True)
        def divergefork_finished(reports: Sequence[df.Report]) -> Generator[None, list[None], list[None]]:
            result = yield
            return result


        @pytest_hookimpl
        def not_ours(x: int) -> int:
            return x


        def divergefork_children_unmarked(cfg: int) -> None:
            pass


        class Plugin:
            @df.hookimpl
            def divergefork_report(self, report: df.Report) -> None:
                pass

            @df.hookimpl(hookwrapper=True)
            def divergefork_children(
                self, config: df.Config
            ) -> Generator[None, pluggy.Result[list[Iterable[df.ChildSpec[Any]]]], None]:
                outcome = yield
                outcome.get_result()

            @df.hookimpl(hookwrapper=True, specname="divergefork_finished")
            def ignores_outcome(self) -> Generator[None, None, None]:
                yield

            @staticmethod
            @df.hookimpl
            def divergefork_finished(reports: Sequence[df.Report]) -> None:
                pass

            @classmethod
            @df.hookimpl(specname="divergefork_addoption")
            def add(cls, parser: argparse.ArgumentParser) -> None:
                pass
        """,
    ),
    # --- hook implementations pluggy would accept or that would fail at run time -------------
    Case(
        "hookimpl_bad",
        """
        @df.hookimpl
        def divergefork_chidren(config: df.Config) -> list[df.ChildSpec[int]]:  # E: divergefork-hookimpl: "divergefork_chidren" is not a divergefork hook (did you mean "divergefork_children"?)
            return []


        @df.hookimpl(specname="divergefork_finish")
        def finished(reports: Sequence[df.Report]) -> None:  # E: divergefork-hookimpl: "divergefork_finish" is not a divergefork hook (did you mean "divergefork_finished"?)
            pass


        @df.hookimpl
        def divergefork_report(report: df.Report, extra: int) -> None:  # E: divergefork-hookimpl: Hook implementation "divergefork_report" asks for "extra", which the hookspec does not pass: divergefork_report(report: Report) -> None
            pass


        @df.hookimpl(specname="divergefork_report")
        def wrong_type(report: int) -> None:  # E: divergefork-hookimpl: Parameter "report" of hook implementation "divergefork_report" has type "int", but the hookspec passes "Report"
            pass


        @df.hookimpl(specname="divergefork_children")
        def wrong_return(config: df.Config) -> list[str]:  # E: divergefork-hookimpl: Hook implementation "divergefork_children" returns "list[str]", but the hookspec expects "Iterable[ChildSpec[Any]]"
            return []


        @df.hookimpl(specname="divergefork_addoption")
        def returns_value(parser: argparse.ArgumentParser) -> int:  # E: divergefork-hookimpl: returns "int", but the hookspec expects "None"
            return 1


        @df.hookimpl(specname="divergefork_report")
        def keyword_only(report: df.Report, *, verbose: bool) -> None:  # E: divergefork-hookimpl: keyword-only parameter "verbose"
            pass


        @df.hookimpl(specname="divergefork_report")
        async def coroutine(report: df.Report) -> None:  # E: divergefork-hookimpl: is a coroutine function
            pass


        @df.hookimpl(wrapper=True, specname="divergefork_report")
        def not_a_generator(report: df.Report) -> None:  # E: divergefork-hookimpl: (wrapper=True) must be a generator
            pass


        @df.hookimpl(wrapper=True, specname="divergefork_finished")
        def drops_result(reports: Sequence[df.Report]) -> Generator[None, None, None]:  # E: divergefork-hookimpl: Hook wrapper "divergefork_finished" receives and must return "list[None]"
            yield


        @df.hookimpl(hookwrapper=True, specname="divergefork_finished")
        def wrong_outcome(reports: Sequence[df.Report]) -> Generator[None, int, None]:  # E: divergefork-hookimpl: receives "Result[list[None]]"
            yield


        class Plugin:
            @df.hookimpl
            def divergefork_children(self, cfg: df.Config) -> list[df.ChildSpec[int]]:  # E: divergefork-hookimpl: asks for "cfg"
                return []

            @df.hookimpl(tryfirst=True)
            def divergefork_reprot(self, report: df.Report) -> None:  # E: divergefork-hookimpl: did you mean "divergefork_report"
                pass


        @df.hookimpl
        def divergefork_addoption(  # E: divergefork-hookimpl: returns "str"
            parser: argparse.ArgumentParser,
            verbose: int,  # E: divergefork-hookimpl: asks for "verbose"
        ) -> str:
            return ""


        @df.hookimpl(specname="divergefork_report")
        def ignored(report: int) -> None:  # type: ignore[divergefork-hookimpl]
            pass
        """,
    ),
]

if HAVE_SCOPE:
    CASES.append(
        Case(
            "scope_entry",
            """
            def returns_any(n: int) -> Any:
                os._exit(n)


            def run() -> None:
                with df.Scope() as scope:
                    scope.fork(1, entry, name="ok")
                    scope.fork(1, returns_any)  # E: divergefork-entry: given to Scope.fork()
            """,
        )
    )


Error = tuple[str, int, str, str]  # file stem, line, code, message
ERROR_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<message>.*?)  \[(?P<code>[\w-]+)\]$")


def run_mypy(paths: Sequence[Path], config: Path, cache: Path, *extra: str) -> tuple[list[Error], str, int]:
    stdout, stderr, status = mypy_api.run(
        ["--config-file", str(config), "--cache-dir", str(cache), "--hide-error-context", *extra, *map(str, paths)]
    )
    errors = []
    for line in stdout.splitlines():
        match = ERROR_LINE.match(line)
        if match:
            errors.append((Path(match["file"]).stem, int(match["line"]), match["code"], match["message"]))
    return errors, stdout + stderr, status


@pytest.fixture(scope="session")
def mypy_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A config that loads the plugin and a cache shared by every mypy run of the session."""
    root = tmp_path_factory.mktemp("mypy")
    config = root / "mypy.ini"
    config.write_text(CONFIG)
    return config, root / "cache"


@pytest.fixture(scope="session")
def case_errors(mypy_env: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Error], str]:
    config, cache = mypy_env
    cases = tmp_path_factory.mktemp("cases")
    for case in CASES:
        (cases / f"{case.name}.py").write_text(case.text)
    errors, output, _ = run_mypy([cases], config, cache)
    return errors, output


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case(case: Case, case_errors: tuple[list[Error], str]) -> None:
    errors, output = case_errors
    assert "INTERNAL ERROR" not in output and "Traceback" not in output, output
    got = [error for error in errors if error[0] == case.name]
    expected = case.expected()
    unmatched = list(got)
    missing = []
    for line, code, fragment in expected:
        for error in unmatched:
            # `a|b`: the code differs between supported mypy versions (untyped-decorator was misc).
            if error[1] == line and error[2] in code.split("|") and fragment in error[3]:
                unmatched.remove(error)
                break
        else:
            missing.append((line, code, fragment))
    assert not missing and not unmatched, (
        f"missing (line, code, fragment): {missing}\nunexpected: {unmatched}\n\nmypy said:\n{output}"
    )


def test_disable_error_code(mypy_env: tuple[Path, Path], tmp_path: Path) -> None:
    config, cache = mypy_env
    snippet = tmp_path / "disabled.py"
    snippet.write_text(
        HEADER
        + textwrap.dedent(
            """
            def returns_any(n: int) -> Any:
                os._exit(n)


            df.fork(1, returns_any)


            @df.hookimpl
            def divergefork_chidren(config: df.Config) -> None:
                pass
            """
        )
    )
    errors, output, status = run_mypy([snippet], config, cache, "--disable-error-code", "divergefork-entry")
    assert [error[2] for error in errors] == ["divergefork-hookimpl"], output
    assert status == 1
    errors, output, status = run_mypy(
        [snippet],
        config,
        cache,
        "--disable-error-code",
        "divergefork-entry",
        "--disable-error-code",
        "divergefork-hookimpl",
    )
    assert errors == [] and status == 0, output


def test_error_codes_are_their_own() -> None:
    # Sub-codes of misc would be silenced by `# type: ignore[misc]`, hiding a leaking entry.
    for code in (plugin_module.ENTRY, plugin_module.HOOKIMPL):
        assert code.sub_code_of is None
        assert code.code.startswith("divergefork-")
    assert re.fullmatch(r"\d+\.\d+\.\d+", plugin_module.__version__)


def test_plugin_reports_its_version_to_the_cache() -> None:
    from mypy.options import Options
    from mypy.plugin import ReportConfigContext

    instance = plugin_module.plugin("2.4.1")(Options())
    data = instance.report_config_data(ReportConfigContext("m", "m.py", is_check=False))
    assert data == {"divergefork.mypy": plugin_module.__version__}


def test_runtime_never_imports_mypy() -> None:
    code = (
        "import sys, divergefork, divergefork._cli\n"
        "leaked = sorted(m for m in sys.modules if m == 'mypy' or m.startswith('mypy.'))\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
