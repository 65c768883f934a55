"""The pytest plugin (``pytest --fork``, ``@pytest.mark.fork``, ``df_scope``, ``df_run``).

Each test runs a real pytest on a crafted test file with ``pytester``: in this process where
that is enough (the inner pytest forks this process's children), in a subprocess where the
inner run must be a fresh interpreter (pytest-xdist starts its own workers). Where an outcome
must be "exactly plain pytest's", the same file is run plain and with ``--fork`` and the
terminal lines and the JUnit XML are compared after removing times and addresses.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import _pytest
import pytest

import divergefork as df

pytest_plugins = ["pytester"]


def _runtime_fills_stack() -> bool:
    """Whether this runtime puts the Python stack of a crashed child in ``Report.stack``."""

    def crash(_: None) -> NoReturn:
        os.kill(os.getpid(), signal.SIGSEGV)
        raise AssertionError("unreachable")

    return df.fork(None, crash, threads="allow").wait().stack is not None


NEEDS_STACK = pytest.mark.xfail(
    not _runtime_fills_stack(), strict=True, reason="needs Report.stack from the runtime"
)


def _runtime_applies_limits() -> bool:
    def opens(_: None) -> NoReturn:
        try:
            files = [open(os.devnull) for _ in range(8)]  # noqa: SIM115
        except OSError:
            df.exit_child(42)
        del files
        df.exit_child(0)

    return df.fork(None, opens, limits=df.Limits(open_files=5), threads="allow").wait().exit_code == 42


NEEDS_LIMITS = pytest.mark.xfail(
    not _runtime_applies_limits(), strict=True, reason="needs df.Limits applied by the runtime"
)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short summary lines whole, not cut at 80 columns."""
    monkeypatch.setenv("COLUMNS", "400")


def run(pytester: pytest.Pytester, *args: str, subprocess: bool = False) -> pytest.RunResult:
    if subprocess:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def normalized(lines: Sequence[str]) -> list[str]:
    """Terminal lines without what differs from run to run (times, addresses, file names)."""
    out = []
    for line in lines:
        if "generated xml file" in line or line.startswith("rootdir:") or line.startswith("platform "):
            continue
        line = re.sub(r"0x[0-9a-f]+", "0x?", line)
        line = re.sub(r"in \d+\.\d+s", "in ?s", line)
        line = re.sub(r"\d+\.\d+s (setup|call|teardown)", r"?s \1", line)
        out.append(line.rstrip("= ").lstrip("= "))
    return out


def junit(path: Path) -> list[str]:
    """The JUnit XML as sorted lines of its elements, without times, hosts and addresses."""
    root = ET.parse(path).getroot()
    lines = []
    for element in root.iter():
        attrib = {k: v for k, v in element.attrib.items() if k not in ("time", "timestamp", "hostname")}
        text = re.sub(r"0x[0-9a-f]+", "0x?", (element.text or "").strip())
        lines.append(f"{element.tag} {sorted(attrib.items())} {text}")
    return [re.sub(r"0x[0-9a-f]+", "0x?", line) for line in lines]


def compare_with_plain(
    pytester: pytest.Pytester, *args: str, subprocess: bool = False, summary_only: bool = False
) -> pytest.RunResult:
    """Run plain and with --fork; assert identical terminal report and JUnit XML."""
    common = ("-rA", "-o", "junit_family=legacy", *args)
    plain = run(pytester, *common, f"--junitxml={pytester.path / 'plain.xml'}", subprocess=subprocess)
    forked = run(pytester, "--fork", *common, f"--junitxml={pytester.path / 'fork.xml'}", subprocess=subprocess)
    ours, theirs = normalized(forked.outlines), normalized(plain.outlines)
    if subprocess or summary_only:
        # Uncaptured output interleaves with the progress letters differently: the parent
        # logs a child's reports once it has ended. The summary must still be the same.
        ours, theirs = ours[ours.index("short test summary info") :], theirs[theirs.index("short test summary info") :]
    assert ours == theirs
    assert junit(pytester.path / "fork.xml") == junit(pytester.path / "plain.xml")
    assert forked.ret == plain.ret
    return forked


# -- inert unless asked for -------------------------------------------------------------------

PIDS = """
    import os

    def note():
        with open("pids", "a") as f:
            f.write(f"{os.getpid()}\\n")

    def test_a(): note()
    def test_b(): note()
"""


def pids(pytester: pytest.Pytester) -> list[int]:
    return [int(line) for line in (pytester.path / "pids").read_text().split()]


def test_without_fork_tests_run_in_this_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PIDS)
    run(pytester).assert_outcomes(passed=2)
    assert pids(pytester) == [os.getpid(), os.getpid()]


def test_fork_runs_each_test_in_its_own_child(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PIDS)
    run(pytester, "--fork").assert_outcomes(passed=2)
    first, second = pids(pytester)
    assert os.getpid() not in (first, second) and first != second


def test_the_marker_forks_only_the_marked_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, pytest

        def note():
            with open("pids", "a") as f:
                f.write(f"{os.getpid()}\\n")

        @pytest.mark.fork
        def test_forked(): note()
        def test_here(): note()
        """
    )
    run(pytester, "--strict-markers").assert_outcomes(passed=2)
    forked, here = pids(pytester)
    assert here == os.getpid() and forked != os.getpid()


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.fork(timeout=None, limits=None):*"])


def test_a_bad_marker_fails_the_test_at_setup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fork(timeout=-1)
        def test_negative(): pass
        @pytest.mark.fork(deadline=3)
        def test_unknown(): pass
        @pytest.mark.fork(limits=3)
        def test_limits(): pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_negative*",
            "@pytest.mark.fork(timeout=...) must be seconds > 0 or None, not -1",
            "*ERROR at setup of test_unknown*",
            "@pytest.mark.fork got unknown argument(s) deadline; it takes timeout= and limits=",
            "*ERROR at setup of test_limits*",
            "@pytest.mark.fork(limits=...) must be a divergefork.Limits, not int",
        ]
    )


# -- outcomes exactly plain pytest's ----------------------------------------------------------

OUTCOMES = """
    import logging, sys, warnings
    import pytest

    @pytest.fixture(scope="module")
    def shared():
        print("module setup")
        yield [1]
        print("module teardown")

    @pytest.fixture
    def broken_setup():
        raise RuntimeError("setup boom")

    @pytest.fixture
    def broken_teardown():
        yield
        raise RuntimeError("teardown boom")

    def test_pass(shared, record_property):
        print("to stdout")
        print("to stderr", file=sys.stderr)
        logging.getLogger("t").warning("to the log")
        record_property("answer", 42)

    def test_fail(shared):
        assert shared == [2]

    def test_skip():
        pytest.skip("not today")

    @pytest.mark.skipif(True, reason="never")
    def test_skipif():
        pass

    @pytest.mark.xfail(reason="known")
    def test_xfail():
        assert 0

    @pytest.mark.xfail(reason="lucky")
    def test_xpass():
        pass

    @pytest.mark.xfail(strict=True)
    def test_xpass_strict():
        pass

    def test_setup_error(broken_setup):
        pass

    def test_teardown_error(broken_teardown):
        pass

    def test_missing_fixture(no_such_fixture):
        pass

    def test_subtests(subtests):
        for i in range(3):
            with subtests.test(msg="each", i=i):
                print(f"subtest {i}")
                assert i != 1

    def test_warns():
        warnings.warn("careful", DeprecationWarning)

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    def test_warns_hushed():
        warnings.warn("hushed", DeprecationWarning)

    @pytest.mark.parametrize("n", [1, 2])
    def test_param(n):
        assert n == 1

    class TestClass:
        def test_method(self, shared):
            assert shared
"""


def test_outcomes_sections_and_junitxml_are_plain_pytests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(OUTCOMES)
    forked = compare_with_plain(pytester)
    forked.assert_outcomes(passed=6, failed=5, skipped=2, xfailed=1, xpassed=1, errors=3, warnings=1)
    forked.stdout.fnmatch_lines(["*Captured stdout call*", "to stdout", "*Captured log call*"])


@pytest.mark.parametrize("mode", ["fd", "sys", "no", "tee-sys"])
def test_every_capture_mode(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(OUTCOMES)
    # Uncaptured output goes to the real stdout: in-process, pytester's own capture of this
    # process's sys.stdout would not see what a child prints.
    compare_with_plain(pytester, f"--capture={mode}", subprocess=mode in ("no", "tee-sys"))


@pytest.mark.parametrize("option", ["-p no:warnings", "-p no:logging", "--setup-plan", "-p no:junitxml", "-v"])
def test_other_options_as_plain_pytest(pytester: pytest.Pytester, option: str) -> None:
    pytester.makepyfile(OUTCOMES)
    if option == "-p no:junitxml":
        plain = run(pytester, "-rA", "-p", "no:junitxml")
        forked = run(pytester, "--fork", "-rA", "-p", "no:junitxml")
        assert normalized(forked.outlines) == normalized(plain.outlines)
    else:
        compare_with_plain(pytester, *option.split())


def test_unittest_subtests_as_plain_pytest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import unittest

        class T(unittest.TestCase):
            def test_sub(self):
                for i in range(3):
                    with self.subTest(i=i):
                        self.assertLess(i, 2)
        """
    )
    # Plain pytest prints the subtest's progress letter while the test's output is captured,
    # so "u" shows up as captured stdout; the parent prints it on the progress line instead.
    compare_with_plain(pytester, summary_only=True).assert_outcomes(passed=1, failed=1)


def test_durations_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import time\ndef test_slow(): time.sleep(0.2)\n")
    result = run(pytester, "--fork", "--durations=0", "-vv")
    result.stdout.re_match_lines([r"0\.[2-9]\d*s call .*test_slow"])


def test_exitfirst_stops_as_plain_pytest_does(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass\ndef test_b(): assert 0\ndef test_c(): pass\n")
    forked = compare_with_plain(pytester, "-x")
    forked.assert_outcomes(passed=1, failed=1)


def test_last_failed_works(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass\ndef test_b(): assert 0\n")
    pytester.runpytest("--fork").assert_outcomes(passed=1, failed=1)
    result = pytester.runpytest("--fork", "--lf", "-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_b FAILED*"])


def test_pdb_runs_in_the_child(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    answer = 42\n    assert answer == 1\n")
    command = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--fork", "--pdb")
    result = pytester.run(*command, stdin=b"p answer\nc\n")
    result.stdout.fnmatch_lines(["*entering PDB*", "(Pdb) 42", "*1 failed*"])


def test_pytest_exit_in_a_forked_test_ends_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\ndef test_a(): pytest.exit('enough', returncode=3)\ndef test_b(): pass\n")
    result = run(pytester, "--fork")
    assert result.ret == 3
    result.stdout.fnmatch_lines(["*Exit: enough*"])
    result.assert_outcomes()


# -- wider fixtures: once, in the parent ------------------------------------------------------

SCOPES = """
    import os, pytest

    def log(what):
        with open(os.path.join(os.path.dirname(__file__), "log"), "a") as f:
            f.write(f"{what} {os.getpid()}\\n")

    @pytest.fixture(scope="session")
    def session_thing():
        log("session-setup")
        yield
        log("session-teardown")

    @pytest.fixture(scope="module")
    def module_thing(session_thing):
        log("module-setup")
        yield {"mutable": []}
        log("module-teardown")

    @pytest.fixture(scope="class")
    def class_thing():
        log("class-setup")
        yield
        log("class-teardown")

    @pytest.fixture
    def function_thing(module_thing):
        log("function-setup")
        yield
        log("function-teardown")

    @pytest.mark.parametrize("n", range(3))
    def test_uses_module(module_thing, function_thing, n):
        module_thing["mutable"].append(n)
        assert module_thing["mutable"] == [n]  # each child has its own copy

    class TestOne:
        def test_a(self, class_thing, module_thing): pass
        def test_b(self, class_thing, module_thing): pass
"""


def test_pytests_fixtures_and_xunit_setup_as_plain_pytest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(FIXTURES)
    # Output of what the parent set up (a session fixture, setup_class) and of what the
    # child did in the same phase is one section, as in plain pytest.
    compare_with_plain(pytester, "-v").assert_outcomes(passed=10, failed=1)


FIXTURES = """
    import logging, os, sys, warnings
    import pytest

    @pytest.fixture(scope="session", autouse=True)
    def everywhere():
        print("session autouse")
        yield

    @pytest.fixture(scope="module")
    def with_finalizer(request):
        request.addfinalizer(lambda: print("module finalizer"))
        return 1

    class TestX:
        def setup_method(self, method): print("setup_method", method.__name__)
        def teardown_method(self, method): print("teardown_method", method.__name__)
        @classmethod
        def setup_class(cls): print("setup_class")
        @classmethod
        def teardown_class(cls): print("teardown_class")
        def test_one(self, with_finalizer): assert with_finalizer
        def test_two(self, capsys):
            print("hi"); assert capsys.readouterr().out == "hi\\n"

    def test_caplog(caplog):
        logging.getLogger("x").error("boom")
        assert "boom" in caplog.text

    def test_tmp(tmp_path, monkeypatch):
        monkeypatch.setenv("X", "1"); (tmp_path / "f").write_text("x")
        assert os.environ["X"] == "1"

    def test_warns():
        with pytest.warns(UserWarning): warnings.warn("w")

    def test_recwarn(recwarn):
        warnings.warn("r"); assert len(recwarn) == 1

    @pytest.mark.usefixtures("with_finalizer")
    def test_usefixtures(): pass

    def test_capfd(capfd):
        os.write(1, b"fd\\n"); assert capfd.readouterr().out == "fd\\n"

    def test_approx(): assert 0.1 + 0.2 == pytest.approx(0.3)

    def test_raises():
        with pytest.raises(ZeroDivisionError): 1 / 0

    def test_fails_with_diff(): assert {"a": 1, "b": [1, 2]} == {"a": 1, "b": [1, 3]}
"""


def test_wider_fixtures_are_set_up_once_in_the_parent(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SCOPES)
    run(pytester, "--fork").assert_outcomes(passed=5)
    entries = [line.split() for line in (pytester.path / "log").read_text().splitlines()]
    events = [what for what, _ in entries]
    assert events == [
        "session-setup",
        "module-setup",
        *["function-setup", "function-teardown"] * 3,
        "class-setup",
        "class-teardown",
        "module-teardown",
        "session-teardown",
    ]
    where = {what: int(pid) for what, pid in entries}
    for what in ("session-setup", "module-setup", "class-setup", "class-teardown", "module-teardown"):
        assert where[what] == os.getpid(), what
    assert where["function-setup"] != os.getpid()


def test_parametrized_wider_fixtures_as_plain_pytest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, pytest

        def log(what):
            with open(os.path.join(os.path.dirname(__file__), "log"), "a") as f:
                f.write(what + "\\n")

        @pytest.fixture(scope="module", params=["a", "b"])
        def backend(request):
            log(f"up {request.param}")
            print(f"starting {request.param}")
            yield request.param
            log(f"down {request.param}")
            print(f"stopping {request.param}")

        @pytest.mark.parametrize("n", [1, 2])
        def test_uses(backend, n):
            assert backend in "ab"

        def test_other(backend):
            assert backend != "b"
        """
    )
    compare_with_plain(pytester).assert_outcomes(passed=5, failed=1)
    # The same setups and teardowns, once in each run.
    lines = (pytester.path / "log").read_text().splitlines()
    assert lines[: len(lines) // 2] == lines[len(lines) // 2 :] == ["up a", "down a", "up b", "down b"]


def test_an_error_in_a_module_fixture_is_reported_as_plain_pytest_does(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture(scope="module")
        def broken():
            raise RuntimeError("no database")

        @pytest.fixture(scope="module")
        def skipper():
            pytest.skip("no network")

        def test_a(broken): pass
        def test_b(broken): pass
        def test_c(skipper): pass
        def test_d(): pass
        """
    )
    compare_with_plain(pytester).assert_outcomes(passed=1, skipped=1, errors=2)


def test_a_teardown_error_of_a_module_fixture_is_reported_as_plain_pytest_does(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture(scope="module")
        def flaky():
            yield
            print("tearing down")
            raise RuntimeError("could not clean up")

        def test_a(flaky): pass
        def test_b(flaky, record_property):
            print("in the last test")
            record_property("kept", "yes")
        """
    )
    compare_with_plain(pytester).assert_outcomes(passed=2, errors=1)


def test_xunit_setup_module_and_unittest_classes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, unittest

        def note(what):
            with open("setups", "a") as f:
                f.write(what + "\\n")

        def setup_module(module):
            note("module")

        class T(unittest.TestCase):
            @classmethod
            def setUpClass(cls):
                note("class")
            def test_one(self): pass
            def test_two(self): self.assertEqual(1, 2)

        def test_plain(): pass
        """
    )
    compare_with_plain(pytester).assert_outcomes(passed=2, failed=1)
    # Once in each of the two runs.
    assert (pytester.path / "setups").read_text().split() == ["module", "class"] * 2


# -- nothing leaks into the next test ----------------------------------------------------------


def test_nothing_a_forked_test_does_leaks_into_the_next(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, sys, textwrap

        STATE = {"touched": False}

        def test_changes_everything(tmp_path):
            STATE["touched"] = True
            os.environ["DF_LEAK"] = "1"
            os.chdir(tmp_path)
            sys.modules["df_leaked_module"] = sys
            textwrap.dedent = None  # not even through a monkeypatch

        def test_sees_nothing():
            assert STATE == {"touched": False}
            assert "DF_LEAK" not in os.environ
            assert os.getcwd() == os.path.dirname(__file__)
            assert "df_leaked_module" not in sys.modules
            assert textwrap.dedent is not None
        """
    )
    run(pytester, "--fork").assert_outcomes(passed=2)
    assert "DF_LEAK" not in os.environ


def test_a_forked_test_is_not_a_divergefork_child_to_its_code(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import divergefork as df

        def test_exit_child_outside_a_child():
            with pytest.raises(df.DivergeforkError, match="outside a child"):
                df.exit_child(0)
            with pytest.raises(df.DivergeforkError, match="outside a child"):
                df.send("hello")
        """
    )
    run(pytester, "--fork").assert_outcomes(passed=1)


def test_a_forked_test_can_run_pytest_with_fork_itself(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["pytester"]')
    pytester.makepyfile(
        """
        def test_inner(pytester):
            pytester.makepyfile("def test_a(): pass\\ndef test_b(): assert 0\\n")
            pytester.runpytest("--fork", "-p", "no:cacheprovider").assert_outcomes(passed=1, failed=1)
        """
    )
    run(pytester, "--fork").assert_outcomes(passed=1)


# -- crashes and deadlines --------------------------------------------------------------------

CRASHES = """
    import ctypes, os, signal, sys, time
    import pytest

    @pytest.fixture
    def noisy():
        print("setting up")
        yield

    def test_segfault_in_c(noisy):
        print("about to crash")
        ctypes.string_at(0)

    def test_os_exit():
        os._exit(3)

    def test_abort():
        os.abort()

    def test_killed():
        os.kill(os.getpid(), signal.SIGKILL)

    @pytest.mark.xfail(reason="crashes on purpose")
    def test_xfail_crash():
        os._exit(4)

    @pytest.fixture
    def dies_in_teardown():
        yield
        os._exit(5)

    def test_teardown_crash(dies_in_teardown):
        pass

    def test_still_runs():
        pass
"""


def test_a_crash_fails_that_test_and_the_session_goes_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CRASHES)
    result = run(pytester, "--fork", "-rA", f"--junitxml={pytester.path / 'out.xml'}")
    result.assert_outcomes(passed=2, failed=4, xfailed=1, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED *test_segfault_in_c - Failed: the forked test process died: signaled SIGSEGV*",
            "FAILED *test_os_exit - Failed: the forked test process died: exited 3*",
            "FAILED *test_abort - Failed: the forked test process died: signaled SIGABRT*",
            "FAILED *test_killed - Failed: the forked test process died: signaled SIGKILL*",
            "XFAIL *test_xfail_crash - crashes on purpose",
            "ERROR *test_teardown_crash - Failed: the forked test process died: exited 5*",
            "PASSED *test_still_runs",
        ]
    )
    # The setup report arrived before the crash: its output is kept, and so is what the
    # crashing phase printed (fd capturing shares pytest's capture file with the child).
    result.stdout.fnmatch_lines(["*_ test_segfault_in_c _*", "*Captured stdout setup*", "setting up", "*Captured stdout call*", "about to crash"])
    cases = {case.get("name"): case for case in ET.parse(pytester.path / "out.xml").getroot().iter("testcase")}
    failure = cases["test_segfault_in_c"].find("failure")
    assert failure is not None and "SIGSEGV" in failure.get("message", "")


@NEEDS_STACK
def test_a_crash_says_where_it_died(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CRASHES)
    # A fresh process: in this one, the inner pytest's faulthandler plugin would take over
    # the handler the runtime set up when this process first forked.
    result = run(pytester, "--fork", "-k", "segfault", subprocess=True)
    result.stdout.fnmatch_lines(["*signaled SIGSEGV at *", "*Python stack where it was:*", "*test_segfault_in_c*"])


def test_the_failure_text_names_the_end_and_shows_the_stack() -> None:
    from divergefork._pytest_plugin import _death_text, _Plan

    stack = 'Current thread 0x00007f (most recent call first):\n  File "t.py", line 3 in test_x\n'
    crashed = df.Report(name="t.py::test_x", pid=7, outcome=df.Outcome.SIGNALED, signal=signal.SIGSEGV, stack=stack)
    text = _death_text(crashed, _Plan(None, None, "refuse"))
    assert text.splitlines()[0] == "the forked test process died: signaled SIGSEGV at test_x (t.py:3)"
    assert text.endswith("Python stack where it was:\n" + stack.rstrip())
    runner = f'  File "{os.path.dirname(_pytest.__file__)}/runner.py", line 1 in call_and_report\n'
    deep = df.Report(name="t", pid=7, outcome=df.Outcome.SIGNALED, signal=signal.SIGSEGV, stack=stack + runner)
    assert _death_text(deep, _Plan(None, None, "refuse")).endswith(stack + "  ... (pytest running the test)")
    late = df.Report(name="t.py::test_x", pid=7, outcome=df.Outcome.TIMED_OUT, signal=signal.SIGTERM)
    assert _death_text(late, _Plan(2.5, None, "refuse")).startswith("the forked test timed out after 2.5 s: timed_out SIGTERM")


DEADLINES = """
    import time
    import pytest

    @pytest.mark.fork(timeout=0.5)
    def test_hangs():
        time.sleep(60)

    def test_fine():
        pass
"""


def test_a_test_past_its_deadline_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(DEADLINES)
    result = run(pytester, "--durations=1")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs - Failed: the forked test timed out after 0.5 s*"])
    assert result.duration < 30


def test_fork_timeout_sets_every_deadline(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import time\ndef test_hangs(): time.sleep(60)\ndef test_fine(): pass\n")
    result = run(pytester, "--fork", "--fork-timeout=0.5")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs - Failed: the forked test timed out after 0.5 s*"])


@NEEDS_STACK
def test_a_deadline_says_where_the_test_was(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(DEADLINES)
    result = run(pytester, subprocess=True)
    result.stdout.fnmatch_lines(["*timed out after 0.5 s: timed_out * at test_hangs (*", "*Python stack where it was:*", "*line * in test_hangs*"])


@NEEDS_LIMITS
def test_a_resource_limit_fails_the_test_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import divergefork as df

        @pytest.mark.fork(timeout=3, limits=df.Limits(cpu_seconds=1))
        def test_spins():
            while True:
                pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_spins - Failed: the forked test process died: limit_exceeded cpu_seconds*"])


# -- pytest-xdist -----------------------------------------------------------------------------


def test_pytest_xdist_with_fork(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(OUTCOMES)
    pytester.makepyfile(test_crash=CRASHES)
    args = ("-p", "no:cacheprovider", "-n", "2", "-rA")
    plain = pytester.runpytest_subprocess(*args, "--deselect=test_crash.py")
    plain.assert_outcomes(passed=6, failed=5, skipped=2, xfailed=1, xpassed=1, errors=3, warnings=1)
    forked = pytester.runpytest_subprocess("--fork", *args)
    forked.assert_outcomes(passed=8, failed=9, skipped=2, xfailed=2, xpassed=1, errors=4, warnings=1)
    forked.stdout.fnmatch_lines_random(["FAILED *test_segfault_in_c - Failed: the forked test process died: signaled SIGSEGV*"])


# -- fixtures for plugin authors ----------------------------------------------------------------


def test_df_scope_waits_for_children(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from typing import NoReturn
        import divergefork as df

        def entry(code: int) -> NoReturn:
            df.exit_child(code)

        def test_children(df_scope):
            df_scope.fork(42, entry, name="answer")
            assert [r.exit_code for r in df_scope.wait()] == [42]
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_df_scope_fails_a_test_that_leaves_a_child_running(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        from typing import NoReturn
        import divergefork as df

        def sleeper(seconds: float) -> NoReturn:
            time.sleep(seconds)
            df.exit_child(0)

        def test_leaves_one(df_scope):
            df_scope.fork(60, sleeper, name="lingering")
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*df_scope: child 'lingering' (pid *) still running when the test ended*"])
    assert result.duration < 30


def test_df_run_runs_a_plugin_modules_children(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        dfx_plugin="""
        import argparse
        from typing import NoReturn
        import divergefork as df

        def entry(code: int) -> NoReturn:
            df.exit_child(code)

        @df.hookimpl
        def divergefork_addoption(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("--dfx-code", type=int, default=0)

        @df.hookimpl
        def divergefork_children(config: df.Config) -> list[df.ChildSpec[int]]:
            return [df.ChildSpec("first", config.options.dfx_code, entry), df.ChildSpec("second", 0, entry)]
        """,
        test_it="""
        def test_run(df_run):
            reports = df_run("dfx_plugin", args=["--dfx-code", "7"])
            assert [(r.name, r.exit_code) for r in reports] == [("first", 7), ("second", 0)]
            assert [r.name for r in df_run("dfx_plugin", only=["second"])] == ["second"]
        """,
    )
    pytester.syspathinsert()
    run(pytester, "test_it.py").assert_outcomes(passed=1)


def test_df_run_raises_the_plugin_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        dfx_broken="import divergefork as df\n\n@df.hookimpl\ndef divergefork_children(config):\n    return None\n",
        test_it="""
        import pytest, divergefork as df

        def test_run(df_run):
            with pytest.raises(df.PluginError, match="returned None"):
                df_run("dfx_broken")
        """,
    )
    pytester.syspathinsert()
    run(pytester, "test_it.py").assert_outcomes(passed=1)


def test_docs_name_every_option() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "pytest.md").read_text()
    for needle in ("--fork", "--fork-timeout", "--fork-threads", "pytest.mark.fork", "df_scope", "df_run", "-n 2"):
        assert needle in docs, needle

