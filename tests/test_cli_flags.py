"""``divergefork run``'s turn-2 options and messages, run for real in a subprocess."""

from __future__ import annotations

import json
import resource
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NoReturn

import pytest

from test_cli import dfx, divergefork, json_reports, table_rows, verdict

import divergefork as df

BROKEN_IMPORT = "import divergefork_no_such_module_anywhere\n"

BAD_SPEC = """\
import divergefork as df


def entry(value: int):
    df.exit_child(0)


@df.hookimpl
def divergefork_children(config):
    good = df.ChildSpec("good", 1, entry)
    return [good, df.ChildSpec("bad", 1, entry, timeout=-1)]
"""

TWINS = """\
import divergefork as df


def entry(value):
    df.exit_child(0)


@df.hookimpl
def divergefork_children(config):
    first = df.ChildSpec("twin", 1, entry)
    second = df.ChildSpec("twin", 2, entry)
    return [first, second]
"""


def site(tmp_path: Path, **modules: str) -> Path:
    directory = tmp_path / "site"
    directory.mkdir(exist_ok=True)
    for name, text in modules.items():
        (directory / f"{name}.py").write_text(text)
    return directory


def test_version_top_level_and_on_run() -> None:
    for args in (["--version"], ["run", "--version"]):
        done = divergefork(*args)
        assert done.returncode == 0
        assert done.stdout == f"divergefork {df.__version__}\n"


def test_fail_fast_cancels_the_rest(tmp_path: Path) -> None:
    out_json = tmp_path / "r.json"
    done = divergefork(
        "run", *dfx("bad=fail", "l1=loop", "l2=loop", "q=loop"), "-x", "--jobs", "2", "--dfx-dir", str(tmp_path),
        "--json", str(out_json),
    )
    assert done.returncode == 1, done.stderr
    reports = {r["name"]: r for r in json_reports(out_json.read_text())}
    assert reports["bad"]["exit_code"] == 42
    assert [reports[name]["outcome"] for name in ("l1", "l2", "q")] == ["cancelled"] * 3
    assert reports["q"]["pid"] == 0
    assert "-x/--fail-fast: bad exited 42" in done.stderr
    line = verdict(done.stdout)
    assert line.startswith("1 failed, 3 cancelled in ") and line.endswith("(-x: stopped after bad)")


def test_quiet_prints_the_verdict_only() -> None:
    done = divergefork("run", *dfx("a=ok", "b=fail"), "-q")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [verdict(done.stdout)]
    assert done.stderr == ""


def test_verbose_prints_every_report_whole() -> None:
    done = divergefork("run", *dfx("a=ok", "c=raise", "p=print"), "-v", "--capture")
    assert done.returncode == 1
    assert "=== a (pid " in done.stdout and "=== c (pid " in done.stdout
    assert '  result     {"name": "a"}' in done.stdout
    assert "  error:" in done.stdout and "ValueError: fixture boom" in done.stdout
    assert "  stdout:\n    line one\n    partial" in done.stdout
    assert "_child.py" not in done.stdout  # divergefork's own frames are left out


def _runtime_applies_limits() -> bool:
    def entry(value: int) -> NoReturn:
        df.exit_child(0, result=resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    return df.fork(0, entry, limits=df.Limits(open_files=64)).wait().result == 64


def test_limits_reach_every_child_merged_with_its_own() -> None:
    assert _runtime_applies_limits()
    done = divergefork(
        "run", *dfx("r=rlimit"), "--limit-memory", "512M", "--limit-cpu", "10", "--limit-files", "64",
        "--limit-fsize", "1M", "--json", "-",
    )
    assert done.returncode == 0, done.stderr
    (report,) = json_reports(done.stdout)
    assert report["result"] == [512 * 1024**2, 10, 64, 1024**2]


def test_merge_limits_takes_the_stricter_of_each() -> None:
    from divergefork._cli._parse import merge_limits

    own = df.Limits(memory_bytes=100, open_files=500, core_dumps=True)
    cap = df.Limits(memory_bytes=200, open_files=50, cpu_seconds=3)
    assert merge_limits(own, cap) == df.Limits(memory_bytes=100, open_files=50, cpu_seconds=3, core_dumps=True)
    assert merge_limits(own, None) is own and merge_limits(None, cap) is cap


def test_timeout_inf_and_bad_sizes_are_usage_errors() -> None:
    done = divergefork("run", *dfx("a=ok"), "--timeout", "inf")
    assert done.returncode == 2
    assert "must be a finite number of seconds, not 'inf'; leave the option out for no limit" in done.stderr
    done = divergefork("run", *dfx("a=ok"), "--limit-memory", "lots")
    assert done.returncode == 2 and "512M" in done.stderr


def test_json_holds_the_whole_run(tmp_path: Path) -> None:
    done = divergefork("run", *dfx("a=ok", "b=fail"), "--json", "-")
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert document["exit_status"] == 1 and document["stopped"] is None
    assert document["started"].endswith("+00:00") and document["duration"] > 0
    assert [p["name"] for p in document["plugins"]] == ["dfx_children"]
    assert document["verdict"].startswith("1 ok, 1 failed in ")
    assert [r["plugin"] for r in document["reports"]] == ["dfx_children"] * 2
    assert {"stack", "limit", "leftovers", "messages"} <= set(document["reports"][0])


def test_junit_suite_time_is_the_wall_time(tmp_path: Path) -> None:
    out_xml, out_json = tmp_path / "r.xml", tmp_path / "r.json"
    done = divergefork("run", *dfx("s1=span", "s2=span", "s3=span"), "--dfx-dir", str(tmp_path),
                       "--junit-xml", str(out_xml), "--json", str(out_json))
    assert done.returncode == 0, done.stderr
    suite = ET.parse(out_xml).getroot().find("testsuite")
    assert suite is not None
    wall = json.loads(out_json.read_text())["duration"]
    total = float(suite.get("time") or 0)
    assert abs(total - wall) < 0.01
    assert total < sum(float(case.get("time") or 0) for case in suite.iter("testcase"))  # not the sum


def test_run_help_works_when_a_plugin_fails_to_import(tmp_path: Path) -> None:
    done = divergefork("run", "-p", "dfx_broken", *dfx(), "--help", paths=(site(tmp_path, dfx_broken=BROKEN_IMPORT),))
    assert done.returncode == 0, done.stderr
    assert "--dfx-child NAME=KIND" in done.stdout  # the plugins that loaded still add their options
    assert "plugins that failed to load:" in done.stdout
    assert "plugin 'dfx_broken' (-p dfx_broken): cannot import dfx_broken" in done.stdout
    # Without --help the same plugin is an error that names it (exit 2).
    done = divergefork("run", "-p", "dfx_broken", paths=(site(tmp_path),))
    assert done.returncode == 2 and done.stderr.count("plugin 'dfx_broken'") == 1


def test_a_bad_childspec_points_at_the_plugins_line(tmp_path: Path) -> None:
    directory = site(tmp_path, dfx_badspec=BAD_SPEC)
    done = divergefork("run", "-p", "dfx_badspec", paths=(directory,))
    assert done.returncode == 2
    where = f"{directory / 'dfx_badspec.py'}:11:"
    assert f"plugin 'dfx_badspec' (-p dfx_badspec): {where} ChildSpec 'bad': timeout must be > 0" in done.stderr
    assert "<string>" not in done.stderr and done.stderr.count("ChildSpec 'bad'") == 1


def test_two_children_with_one_name_in_one_plugin(tmp_path: Path) -> None:
    directory = site(tmp_path, dfx_twins=TWINS)
    done = divergefork("run", "-p", "dfx_twins", paths=(directory,))
    assert done.returncode == 2
    path = directory / "dfx_twins.py"
    assert (
        f"plugin 'dfx_twins' (-p dfx_twins): it contributes two children named 'twin' (built at {path}:10 and "
        f"at {path}:11); child names must be unique" in done.stderr
    )


def test_a_raised_childs_traceback_is_printed_once() -> None:
    done = divergefork("run", *dfx("c=raise"))  # not captured: the child prints it itself
    assert done.returncode == 1
    both = done.stdout + done.stderr
    assert both.count("Traceback (most recent call last)") == 1
    assert "ValueError: fixture boom (traceback above, on the child's stderr)" in done.stdout
    done = divergefork("run", *dfx("c=raise"), "--capture")
    both = done.stdout + done.stderr
    assert both.count("Traceback (most recent call last)") == 1 and "_child.py" not in both


def test_table_shows_limit_leftovers_and_stack_notes() -> None:
    from divergefork._cli._style import Style
    from divergefork._cli._summary import table

    reports = [
        df.Report(name="m", pid=7, outcome=df.Outcome.LIMIT_EXCEEDED, limit="memory_bytes", leftovers=2),
        df.Report(name="s", pid=8, outcome=df.Outcome.SIGNALED, stack='Current thread 0x1:\n  File "t.py", line 3 in crash\n'),
    ]
    rows = table(reports, Style(False))
    assert rows[0].split()[-1] == "NOTE"
    assert rows[1].endswith("limit memory_bytes; 2 leftover processes killed")
    assert rows[2].endswith("at crash (t.py:3)")


_ = (resource, table_rows)
