"""The ``divergefork`` command line, run for real: ``python -m divergefork`` in a subprocess.

Entry-point autoloading is switched off (``DIVERGEFORK_DISABLE_PLUGIN_AUTOLOAD``) except in the
discovery tests, so installed plugins do not join these runs; children come from the test
plugin ``tests/plugin_fixtures/dfx_children.py`` loaded with ``-p dfx_children``.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import resource
import signal
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from conftest import act_when_ready, pid_alive
from plugin_fixtures.distributions import make_distribution, marker_plugin, unique

import divergefork as df
from divergefork._cli import junit_xml, main, prescan, write_atomic
from divergefork._plugins import AUTOLOAD_ENV

FIXTURES = Path(__file__).parent / "plugin_fixtures"


def environment(*paths: Path, autoload: bool = False, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(FIXTURES)])
    env.pop(AUTOLOAD_ENV, None)
    if not autoload:
        env[AUTOLOAD_ENV] = "1"
    env.pop("DIVERGEFORK_TRACEBACK", None)
    env.update(extra)
    return env


def divergefork(
    *args: str, paths: tuple[Path, ...] = (), autoload: bool = False, cwd: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "divergefork", *args],
        env=environment(*paths, autoload=autoload, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def dfx(*children: str) -> list[str]:
    """``-p dfx_children --dfx-child NAME=KIND ...``"""
    args = ["-p", "dfx_children"]
    for child in children:
        args += ["--dfx-child", child]
    return args


def installed_plugin_blocks() -> list[str]:
    """``-p no:NAME`` for every plugin installed in this environment (discovery tests)."""
    return [f"-p no:{ep.name}" for ep in metadata.entry_points(group="divergefork")]


#: The verdict line: ``12 ok, 1 timed out, 1 raised in 3.2 s``.
VERDICT = re.compile(r"^\d+ [a-z ]+(, \d+ [a-z ]+)* in [\d.]+ [ms]", re.MULTILINE)


def json_reports(text: str) -> list[dict[str, Any]]:
    """The reports of a ``--json`` run document."""
    document = json.loads(text)
    assert isinstance(document, dict), document
    reports: list[dict[str, Any]] = document["reports"]
    return reports


def verdict(text: str) -> str:
    found = VERDICT.findall(text)
    assert found, text
    return [line for line in text.splitlines() if VERDICT.match(line)][-1]


def table_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NAME "))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line or VERDICT.match(line):
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


# -- exit codes, table, JSON, JUnit ------------------------------------------------------------


def test_all_ok_exits_0_with_a_table_json_and_junit(tmp_path: Path) -> None:
    out_json, out_xml = tmp_path / "r.json", tmp_path / "r.xml"
    done = divergefork("run", *dfx("a=ok", "b=ok"), "--json", str(out_json), "--junit-xml", str(out_xml))
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert set(rows) == {"a", "b"}
    assert rows["a"][2:4] == ["exited", "0"]
    assert verdict(done.stdout).startswith("2 ok in ")
    reports = json_reports(out_json.read_text())
    assert [r["name"] for r in reports] == ["a", "b"]
    assert all(r["ok"] and r["outcome"] == "exited" for r in reports)
    assert reports[0]["result"] == {"name": "a"}
    assert int(rows["a"][1]) == reports[0]["pid"]
    suite = ET.parse(out_xml).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "0"
    assert [case.get("name") for case in suite.iter("testcase")] == ["a", "b"]
    assert list(suite.iter("failure")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.xml"]  # no temporary files left


def test_any_child_not_ok_exits_1_and_failures_are_reported(tmp_path: Path) -> None:
    out_json, out_xml = tmp_path / "r.json", tmp_path / "r.xml"
    done = divergefork(
        "run", *dfx("a=ok", "b=fail", "c=raise"), "--json", str(out_json), "--junit-xml", str(out_xml), "--capture"
    )
    assert done.returncode == 1, done.stderr
    rows = table_rows(done.stdout)
    assert rows["b"][2:4] == ["exited", "42"]
    assert rows["c"][2:4] == ["raised", "1"]
    assert verdict(done.stdout).startswith("1 ok, 1 failed, 1 raised in ")
    assert "ValueError: fixture boom" in done.stdout  # the failure section under the table
    by_name = {r["name"]: r for r in json_reports(out_json.read_text())}
    assert by_name["b"]["exit_code"] == 42 and not by_name["b"]["ok"]
    assert by_name["c"]["outcome"] == "raised" and "fixture boom" in by_name["c"]["error"]
    assert "fixture boom" in by_name["c"]["stderr"]
    root = ET.parse(out_xml).getroot()
    assert root.get("failures") == "2"
    failures = {case.get("name"): case.find("failure") for case in root.iter("testcase")}
    assert failures["a"] is None
    b_failure, c_failure = failures["b"], failures["c"]
    assert b_failure is not None and b_failure.get("type") == "exited"
    assert c_failure is not None and c_failure.get("type") == "raised"
    assert "fixture boom" in (c_failure.text or "")
    c_case = next(case for case in root.iter("testcase") if case.get("name") == "c")
    assert "fixture boom" in (c_case.findtext("system-err") or "")


def test_json_to_stdout_is_pure_json_even_when_children_print() -> None:
    done = divergefork("run", *dfx("p=print", "a=ok"), "--json", "-")
    assert done.returncode == 0, done.stderr
    reports = json_reports(done.stdout)  # the table went to stderr, the child's output was captured
    assert {r["name"] for r in reports} == {"p", "a"}
    assert next(r for r in reports if r["name"] == "p")["stdout"] == "line one\npartial"
    assert "NAME" in done.stderr


def test_capture_prefixes_every_line_with_the_child_name() -> None:
    done = divergefork("run", *dfx("printer=print", "a=ok"), "--capture")
    assert done.returncode == 0, done.stderr
    assert "printer | line one\n" in done.stdout
    assert "printer | partial\n" in done.stdout  # the unterminated last line too
    assert "printer | line two\n" in done.stderr
    assert "line one" not in done.stdout.replace("printer | line one", "")


def test_without_capture_children_write_straight_to_our_output() -> None:
    done = divergefork("run", *dfx("printer=print"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("line one\npartial") and "|" not in done.stdout.splitlines()[0]


def test_only_selects_children_and_an_unknown_name_is_a_usage_error(tmp_path: Path) -> None:
    done = divergefork("run", *dfx("a=ok", "b=fail"), "--only", "a")
    assert done.returncode == 0, done.stderr
    assert set(table_rows(done.stdout)) == {"a"}
    done = divergefork("run", *dfx("a=ok", "b=loop"), "--only", "nope", "--dfx-dir", str(tmp_path))
    assert done.returncode == 2
    assert "--only nope: no child has that name (the children are: a, b)" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing forked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs", "0"], "argument --jobs/-j: must be >= 1"),
        (["--timeout", "-1"], "argument --timeout: must be a number of seconds > 0"),
        (["--json", "/nonexistent-dir/r.json"], "--json /nonexistent-dir/r.json: directory /nonexistent-dir does not exist"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_usage_errors_exit_2_before_forking(tmp_path: Path, args: list[str], message: str) -> None:
    done = divergefork("run", *dfx("a=loop"), "--dfx-dir", str(tmp_path), *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_nothing_to_run_is_a_configuration_error() -> None:
    done = divergefork("run")
    assert done.returncode == 2
    assert "nothing to run" in done.stderr


def test_no_command_prints_help_and_exits_2() -> None:
    done = divergefork()
    assert done.returncode == 2
    assert "run" in done.stderr and "list" in done.stderr


def test_run_help_shows_the_plugins_options() -> None:
    done = divergefork("run", "--help", "-p", "dfx_children")
    assert done.returncode == 0
    assert "--dfx-child" in done.stdout and "--junit-xml" in done.stdout and "exit codes:" in done.stdout


def test_timeout_caps_every_child(tmp_path: Path) -> None:
    out_json = tmp_path / "r.json"
    done = divergefork(
        "run", *dfx("slow=loop", "a=ok"), "--dfx-dir", str(tmp_path), "--timeout", "0.3", "--json", str(out_json)
    )
    assert done.returncode == 1
    by_name = {r["name"]: r for r in json_reports(out_json.read_text())}
    assert by_name["slow"]["outcome"] == "timed_out"
    assert by_name["a"]["ok"]


def test_jobs_limits_how_many_children_run_at_once(tmp_path: Path) -> None:
    names = [f"s{i}" for i in range(5)]
    done = divergefork("run", *dfx(*(f"{n}=span" for n in names)), "--dfx-dir", str(tmp_path), "--jobs", "2")
    assert done.returncode == 0, done.stderr
    spans = [tuple(map(float, (tmp_path / f"{n}.span").read_text().split())) for n in names]
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most <= 2
    assert most == 2  # and the slots are used: it is a limit, not serialisation


def test_report_and_finished_hooks_run_in_the_parent(tmp_path: Path) -> None:
    log = tmp_path / "log"
    done = divergefork("run", *dfx("a=ok", "b=fail"), DFX_LOG=str(log))
    assert done.returncode == 1
    lines = log.read_text().splitlines()
    assert sorted(lines[:2]) == ["report a exited", "report b exited"]
    assert lines[2:] == ["finished 2"]


# -- SIGINT and SIGTERM -------------------------------------------------------------------------


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "said"), [(signal.SIGINT, "interrupted by Ctrl-C"), (signal.SIGTERM, "terminated by SIGTERM")]
)
def test_sigint_or_sigterm_terminates_and_reaps_every_child_then_exits_130(
    tmp_path: Path, sig: signal.Signals, said: str
) -> None:
    out_json = tmp_path / "r.json"
    pidfiles = [tmp_path / "l1.pid", tmp_path / "l2.pid"]
    done = act_when_ready(
        [sys.executable, "-m", "divergefork", "run", *dfx("l1=loop", "l2=loop"), "--dfx-dir", str(tmp_path),
         "--json", str(out_json)],
        ready=lambda _: all(p.exists() and p.read_text() for p in pidfiles),
        act=lambda proc: proc.send_signal(sig),
        env=environment(),
        # A harness that started us with SIGINT ignored (a background job of a
        # non-interactive shell) would pass that on, and Python would keep ignoring it.
        preexec_fn=default_sigint,
    )
    pids = [int(p.read_text()) for p in pidfiles]
    stderr = done.stderr
    assert done.returncode == 130, stderr
    assert not any(pid_alive(pid) for pid in pids)
    assert f"divergefork run: {said}: 2 running children were stopped (l1, l2) by SIGTERM" in stderr
    assert "none is left running" in stderr
    assert verdict(done.stdout) == verdict(done.stdout)  # the verdict is printed
    assert f"2 cancelled in" in done.stdout and f"({said})" in done.stdout
    assert "Traceback" not in stderr
    reports = json_reports(out_json.read_text())
    assert {r["name"] for r in reports} == {"l1", "l2"}
    # Ended gracefully, by the scope's SIGTERM: not by the parent-death signal's SIGKILL.
    assert [(r["outcome"], r["signal"]) for r in reports] == [("cancelled", "SIGTERM")] * 2


def test_an_interrupt_while_children_wait_for_a_slot_reports_them_all(tmp_path: Path) -> None:
    out_json = tmp_path / "r.json"
    pidfile = tmp_path / "l1.pid"
    done = act_when_ready(
        [sys.executable, "-m", "divergefork", "run", *dfx("l1=loop", "l2=loop", "l3=loop"), "--dfx-dir",
         str(tmp_path), "--jobs", "1", "--json", str(out_json)],
        ready=lambda _: pidfile.exists() and pidfile.read_text(),
        act=lambda proc: proc.send_signal(signal.SIGTERM),
        env=environment(),
    )
    stderr = done.stderr
    assert done.returncode == 130, stderr
    reports = {r["name"]: r for r in json_reports(out_json.read_text())}
    assert sorted(reports) == ["l1", "l2", "l3"]  # the two never started are reported too
    assert all(r["outcome"] == "cancelled" for r in reports.values())
    assert reports["l1"]["pid"] != 0 and reports["l2"]["pid"] == reports["l3"]["pid"] == 0
    assert "1 running child was stopped (l1)" in stderr
    assert "2 queued children were never started (l2, l3)" in stderr


def low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def test_running_out_of_descriptors_part_way_reports_every_child(tmp_path: Path) -> None:
    out_json = tmp_path / "r.json"
    names = [f"l{i}" for i in range(40)]
    done = subprocess.run(
        [sys.executable, "-m", "divergefork", "run", *dfx(*(f"{n}=loop" for n in names)), "--dfx-dir",
         str(tmp_path), "--json", str(out_json)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=low_descriptor_limit,
    )
    assert done.returncode == 1, done.stderr
    assert "_cli.py" not in done.stderr  # no traceback of ours (children short of descriptors may print theirs)
    assert "a fork failed after" in done.stderr and "Too many open files" in done.stderr
    reports = json_reports(out_json.read_text())
    assert sorted(r["name"] for r in reports) == sorted(names)
    assert not any(r["ok"] for r in reports)
    started = [r for r in reports if r["pid"] != 0]
    assert 0 < len(started) < len(names)
    assert all(
        r["outcome"] == "cancelled" and "never forked: the fork failed" in r["error"] for r in reports if r["pid"] == 0
    )
    assert not any(pid_alive(r["pid"]) for r in started)


# -- plugins through the command line ---------------------------------------------------------


def test_a_broken_entry_point_plugin_exits_2_plainly_and_forks_nothing(tmp_path: Path) -> None:
    module = unique("dfx_broken")
    site = make_distribution(
        tmp_path / "site", "dfx-broken", {module: "import dfx_no_such_dependency\n"}, {"broken": module}
    )
    marker = tmp_path / "forked"
    (site / "dfx_marker_ok.py").write_text(marker_plugin("ok", marker))
    blocks = [arg for block in installed_plugin_blocks() for arg in block.split(" ", 1)]
    done = divergefork("run", *blocks, "-p", "dfx_marker_ok", paths=(site,), autoload=True)
    assert done.returncode == 2
    first = done.stderr.splitlines()[0]
    assert first.startswith("divergefork: error: plugin 'broken' (distribution dfx-broken 0.1.0): cannot import")
    assert "ModuleNotFoundError" in first and "-p no:broken" in first
    assert "Traceback" not in done.stderr
    assert "nothing was forked" in done.stderr
    assert not marker.exists()
    with_tb = divergefork("run", *blocks, "--traceback", paths=(site,), autoload=True)
    assert with_tb.returncode == 2
    assert with_tb.stderr.startswith("Traceback") and "dfx_no_such_dependency" in with_tb.stderr
    blocked = divergefork("run", *blocks, "-p", "no:broken", "-p", "dfx_marker_ok", paths=(site,), autoload=True)
    assert blocked.returncode == 0, blocked.stderr
    assert marker.read_text() == "forked"


def test_duplicate_names_across_plugins_exit_2_and_fork_nothing(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "dfx_first.py").write_text(marker_plugin("same", tmp_path / "first"))
    (site / "dfx_second.py").write_text(marker_plugin("same", tmp_path / "second"))
    done = divergefork("run", "-p", "dfx_first", "-p", "dfx_second", paths=(site,))
    assert done.returncode == 2
    assert "plugin 'dfx_second' (-p dfx_second)" in done.stderr
    assert "plugin 'dfx_first' (-p dfx_first)" in done.stderr
    assert not (tmp_path / "first").exists() and not (tmp_path / "second").exists()


BAD_OBSERVER = """\
import os
import divergefork as df

@df.hookimpl
def divergefork_report(report):
    raise KeyError(report.name)

@df.hookimpl
def divergefork_finished(reports):
    with open(os.environ["DFX_LOG"], "a") as log:
        log.write("bad observer finished\\n")
"""


def test_a_failing_report_hook_does_not_cancel_children_or_silence_other_plugins(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "dfx_bad_observer.py").write_text(BAD_OBSERVER)
    out_json, log = tmp_path / "r.json", tmp_path / "log"
    args = ["run", "-p", "dfx_bad_observer", *dfx("a=ok", "b=span"), "--dfx-dir", str(tmp_path), "--json", str(out_json)]
    done = divergefork(*args, paths=(site,), DFX_LOG=str(log))
    assert done.returncode == 1  # after forking: not 2, which means "nothing was forked"
    error = "divergefork run: error: plugin 'dfx_bad_observer' (-p dfx_bad_observer): divergefork_report raised KeyError"
    assert done.stderr.count(error) == 1  # not called again after its first failure
    assert "--traceback" in done.stderr and "Traceback" not in done.stderr
    assert set(table_rows(done.stdout)) == {"a", "b"}
    assert all(r["ok"] for r in json_reports(out_json.read_text()))
    assert (tmp_path / "b.span").exists()
    # The other plugin saw every report and the end; the failing one is not called again.
    lines = log.read_text().splitlines()
    assert sorted(lines[:2]) == ["report a exited", "report b exited"] and lines[2:] == ["finished 2"]
    log.unlink()
    with_tb = divergefork(*args, "--traceback", paths=(site,), DFX_LOG=str(log))
    assert with_tb.returncode == 1
    assert "Traceback (most recent call last)" in with_tb.stderr and "raise KeyError(report.name)" in with_tb.stderr


FAILING_FINISH = """\
import divergefork as df

@df.hookimpl(tryfirst=True)
def divergefork_finished(reports):
    raise RuntimeError("cannot finish")
"""


def test_a_failing_finished_hook_still_lets_the_other_plugins_finish(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "dfx_bad_finish.py").write_text(FAILING_FINISH)
    log = tmp_path / "log"
    done = divergefork("run", "-p", "dfx_bad_finish", *dfx("a=ok"), paths=(site,), DFX_LOG=str(log))
    assert done.returncode == 1
    assert "dfx_bad_finish): divergefork_finished raised RuntimeError: cannot finish" in done.stderr
    assert log.read_text().splitlines() == ["report a exited", "finished 1"]


THREAD_STARTER = """\
import threading
import divergefork as df

_stop = threading.Event()

@df.hookimpl
def divergefork_report(report):
    threading.Thread(target=_stop.wait, daemon=True, name="observer-thread").start()
"""


def test_a_fork_refused_mid_run_keeps_the_finished_childrens_reports(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "dfx_threads.py").write_text(THREAD_STARTER)
    out_json = tmp_path / "r.json"
    done = divergefork(
        "run", "-p", "dfx_threads", *dfx("a=ok", "b=ok", "c=ok", "d=ok"), "--jobs", "1", "--json", str(out_json),
        paths=(site,),
    )
    assert done.returncode == 1, done.stderr  # something failed after forking
    rows = table_rows(done.stdout)
    assert rows["a"][2:4] == ["exited", "0"]
    assert rows["d"][1:3] == ["0", "cancelled"]  # never started
    reports = {r["name"]: r for r in json_reports(out_json.read_text())}
    assert set(reports) == {"a", "b", "c", "d"} and reports["a"]["ok"]
    assert "a fork was refused after" in done.stderr and "observer-thread" in done.stderr
    assert "divergefork_report of plugin 'dfx_threads' (-p dfx_threads)" in done.stderr
    assert "threads at fork are refused" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_thread_started_before_the_first_fork_is_a_plain_error_nothing_forked(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "dfx_early_thread.py").write_text(
        THREAD_STARTER.replace("def divergefork_report(report):", "def divergefork_addoption(parser):")
    )
    done = divergefork("run", "-p", "dfx_early_thread", *dfx("a=loop"), "--dfx-dir", str(tmp_path), paths=(site,))
    assert done.returncode == 2
    assert "cannot fork:" in done.stderr and "nothing was forked" in done.stderr
    # Said once, naming the plugin that left the thread running; no table of never-forked children.
    assert done.stderr.count("observer-thread") == 1
    assert "divergefork_addoption of plugin 'dfx_early_thread' (-p dfx_early_thread)" in done.stderr
    assert "NAME" not in done.stdout
    assert not (tmp_path / "a.pid").exists()


STDOUT_PRINTER = """\
import divergefork as df

@df.hookimpl
def divergefork_children(config):
    print("collecting")
    return []

@df.hookimpl
def divergefork_report(report):
    print("saw", report.name)

@df.hookimpl
def divergefork_finished(reports):
    print("finished")
"""


def test_json_to_stdout_stays_pure_when_plugin_hooks_print(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "dfx_chatty.py").write_text(STDOUT_PRINTER)
    done = divergefork("run", "-p", "dfx_chatty", *dfx("a=ok"), "--json", "-", paths=(site,))
    assert done.returncode == 0, done.stderr
    assert [r["name"] for r in json_reports(done.stdout)] == ["a"]
    assert "collecting\n" in done.stderr and "saw a\n" in done.stderr and "finished\n" in done.stderr


def test_junit_xml_to_stdout_is_a_usage_error(tmp_path: Path) -> None:
    done = divergefork("run", *dfx("a=loop"), "--dfx-dir", str(tmp_path), "--junit-xml", "-")
    assert done.returncode == 2
    assert "--junit-xml -: JUnit XML cannot go to stdout" in done.stderr
    assert done.stdout == "" and list(tmp_path.iterdir()) == []


# -- a reader that goes away (`divergefork ... | head`) -----------------------------------------


def run_into_a_closed_pipe(*args: str) -> tuple[int, str]:
    """Run the CLI with stdout a pipe whose reading end is already closed; (status, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "divergefork", *args],
            env=environment(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


def test_a_closed_stdout_lets_the_children_finish_and_exits_141(tmp_path: Path) -> None:
    out_json = tmp_path / "r.json"
    status, stderr = run_into_a_closed_pipe(
        "run", *dfx("p=print", "s=span", "a=ok"), "--dfx-dir", str(tmp_path), "--capture", "--json", str(out_json)
    )
    assert status == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
    assert "p | line two" in stderr  # stderr still works
    assert (tmp_path / "s.span").exists()  # not cancelled
    reports = json_reports(out_json.read_text())
    assert {r["name"] for r in reports} == {"p", "s", "a"} and all(r["ok"] for r in reports)


@pytest.mark.parametrize("args", [["list", *dfx("a=ok")], ["run", *dfx("a=ok"), "--json", "-"]])
def test_other_output_into_a_closed_pipe_exits_quietly(args: list[str]) -> None:
    status, stderr = run_into_a_closed_pipe(*args)
    assert status == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr and "Exception ignored" not in stderr


def test_list_shows_plugins_and_children_without_forking(tmp_path: Path) -> None:
    done = divergefork("list", *dfx("a=loop", "b=ok"), "--dfx-dir", str(tmp_path), "-p", "no:someplugin")
    assert done.returncode == 0, done.stderr
    assert "plugins (1):" in done.stdout
    assert "dfx_children  -p dfx_children" in done.stdout
    assert "blocked: someplugin" in done.stdout
    assert "children (2):" in done.stdout
    assert "a  from dfx_children  entry dfx_children:entry  no timeout" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_list_discovers_installed_entry_points(tmp_path: Path) -> None:
    module = unique("dfx_listed")
    site = make_distribution(tmp_path / "site", "dfx-listed", {module: marker_plugin("m", tmp_path / "m")},
                             {"listed": module})
    done = divergefork("list", paths=(site,), autoload=True)
    assert done.returncode == 0, done.stderr
    assert "listed" in done.stdout and "dfx-listed 0.1.0" in done.stdout and f"module {module}" in done.stdout
    assert re.search(r"^  m +from listed ", done.stdout, re.MULTILINE)
    assert not (tmp_path / "m").exists()


def test_the_example_plugins_run_green() -> None:
    examples = ["-p", "divergefork_hello", "-p", "divergefork_exec", "-p", "divergefork_serve"]
    done = divergefork("run", *examples, "--capture")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(table_rows(done.stdout)) == {"hello", "exec", "serve"}
    assert "hello | hello from pid" in done.stdout
    assert "exec  | exec: pid" in done.stdout
    assert "hello: the child sent back {'greeting': 'hello, world'" in done.stderr


def test_serve_forever_shows_deadline_enforcement() -> None:
    done = divergefork("run", "-p", "divergefork_serve", "--serve-forever", "--serve-timeout", "0.3", "--json", "-")
    assert done.returncode == 1
    (report,) = json_reports(done.stdout)
    assert report["outcome"] == "timed_out" and report["signal"] == "SIGTERM"


def test_exec_reports_a_missing_program() -> None:
    done = divergefork("run", "-p", "divergefork_exec", "--exec-argv", "dfx-no-such-program --flag", "--json", "-")
    assert done.returncode == 1
    (report,) = json_reports(done.stdout)
    assert report["outcome"] == "exec_failed" and report["exit_code"] == 127


# -- pieces, in process ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "-p", "a", "--only", "x", "-pb", "-p", "no:c"], ("run", ["a", "b", "no:c"], False)),
        (["--traceback", "list"], ("list", [], True)),
        (["demo", "race", "-p", "x"], ("demo", [], False)),
        (["run", "--", "-p", "x"], ("run", [], False)),
    ],
)
def test_prescan_finds_plugins_before_the_full_parse(
    argv: list[str], expected: tuple[str, list[str], bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIVERGEFORK_TRACEBACK", raising=False)
    scan = prescan(argv)
    assert (scan.command, scan.specs, scan.want_traceback) == expected


def test_main_returns_codes_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert main(["run", "--jobs", "x"]) == 2
    assert "must be a whole number" in capsys.readouterr().err


def test_write_atomic_replaces_and_keeps_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(str(target), "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_atomic_failing_mid_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    # A lone surrogate cannot be encoded: the temporary file exists, then the write fails.
    with pytest.raises(UnicodeEncodeError):
        write_atomic(str(target), "new text \ud800")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_atomic_failing_in_the_os_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    # A real write(2) failure half way: a file size limit (EFBIG), in a child interpreter.
    target = tmp_path / "out.json"
    target.write_text("old")
    code = (
        "import resource, signal, sys\n"
        "from divergefork._cli import write_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    write_atomic(sys.argv[1], 'x' * 100_000)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == str(errno.EFBIG), done.stderr
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_junit_xml_survives_control_characters_and_signals() -> None:
    reports: list[Any] = [
        df.Report(name="k", pid=7, outcome=df.Outcome.SIGNALED, signal=signal.SIGKILL, stdout=b"a\x00b\x1bc\xff"),
        df.Report(name="ok", pid=8, outcome=df.Outcome.EXITED, exit_code=0),
    ]
    root = ET.fromstring(junit_xml(reports, {"k": "plug"}))
    case = next(root.iter("testcase"))
    assert case.get("classname") == "divergefork.plug"
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "k (pid 7) signaled SIGKILL"
    assert case.findtext("system-out") == "a\ufffdb\ufffdc\ufffd"
