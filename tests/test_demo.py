"""``divergefork demo race`` (the real command line, in a subprocess) and the race plugin's hooks."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import divergefork_race
import pluggy
import pytest
from conftest import ATOMIC, act_when_ready, pid_alive

import divergefork as df
from divergefork._demo import race
from divergefork._shared import Sync


def demo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "divergefork", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_lockstep_log_looks_like_the_c_program() -> None:
    done = demo("race", "--lockstep", "-n", "300")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 4, done.stderr
    pids = {int(m) for m in re.findall(r"^\[pid (\d+)\] Done\.$", "\n".join(lines[:2]), re.M)}
    assert len(pids) == 2
    waiting = re.fullmatch(r"\[pid (\d+)\] Waiting for child (\d+) to end\.\.\.", lines[2])
    assert waiting is not None
    parent = int(waiting[1])
    (child,) = pids - {parent}
    assert lines[2] == f"[pid {parent}] Waiting for child {child} to end..."
    assert lines[3] == f"[pid {parent}] Child {child} exited with status 0"
    out = done.stdout.splitlines()
    assert out[0] == "shared_int = 300 (expected 600)."
    assert out[1] == "lost 300 of 600 updates (50.00%) with --sync none."
    assert re.fullmatch(r"[\d.]+ million increments/second per process \(parent [\d.]+, child [\d.]+\)\.", out[2])
    assert "exactly half" in out[3]


def test_json_has_the_result_and_the_child_report() -> None:
    done = demo("race", "--lockstep", "-n", "1,000", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result = json.loads(done.stdout)
    assert {k: result[k] for k in ("n", "sync", "lockstep", "expected", "value", "lost_fraction")} == {
        "n": 1000,
        "sync": "none",
        "lockstep": True,
        "expected": 2000,
        "value": 1000,
        "lost_fraction": 0.5,
    }
    assert result["increments_per_second"] > 0
    assert result["child"]["name"] == "race-child"
    assert result["child"]["outcome"] == "exited" and result["child"]["exit_code"] == 0
    assert result["child"]["pid"] == result["child_run"]["pid"] != result["parent"]["pid"]


@pytest.mark.parametrize("sync", ["lock", ATOMIC, "sharded"])
def test_synchronised_races_are_exact(sync: str) -> None:
    done = demo("race", "--sync", sync, "-n", "20000")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "shared_int = 40000 (expected 40000).",
        f"lost 0 of 40,000 updates (0.00%) with --sync {sync}.",
    ]
    assert f"--sync {sync} made every update count." in done.stdout


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a free-running race needs two CPUs")
def test_free_running_race_loses_some_updates_and_says_it_varies() -> None:
    done = demo("race", "-n", "2000000", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["expected"] == 4_000_000
    assert 0 < result["lost_fraction"] < 1
    text = demo("race", "-n", "200")
    assert "varies with the machine and its load" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["race", "-n", "0"], "argument -n: must be between 1 and 1,000,000,000,000, not 0"),
        (["race", "-n", "many"], "argument -n: expected a whole number of increments, not 'many'"),
        (["race", "--sync", "fast"], "argument --sync: invalid choice: 'fast'"),
        (["race", "--lockstep", "--sync", "atomic"], "--lockstep splits each update into its read and its write"),
        ([], "choose a demo: race"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    done = demo(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""


def test_missing_libatomic_is_a_clear_error() -> None:
    env = {**os.environ, "DIVERGEFORK_NO_LIBATOMIC": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "divergefork", "demo", "race", "--sync", "atomic", "-n", "10"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert "--sync atomic needs libatomic" in done.stderr
    assert "--sync sharded (exact, no library needed) or --sync lock" in done.stderr
    assert "sync='" not in done.stderr  # the API's spelling has no place on the command line


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_race_child_killed_mid_lockstep_is_a_runtime_failure_exit_1() -> None:
    killed: list[int] = []

    def kill_the_child(proc: subprocess.Popen[str]) -> None:
        (child,) = children_of(proc.pid)
        killed.append(child)
        os.kill(child, signal.SIGKILL)

    done = act_when_ready(
        [sys.executable, "-m", "divergefork", "demo", "race", "--lockstep", "-n", "100000000"],
        ready=lambda proc: children_of(proc.pid),
        act=kill_the_child,
    )
    (child,) = killed
    assert done.returncode == 1, done.stderr
    assert f"the race child (pid {child}) ended" in done.stderr and "SIGKILL" in done.stderr
    assert done.stdout == ""
    assert not pid_alive(child)


def test_race_rejects_bad_arguments_before_forking() -> None:
    with pytest.raises(ValueError, match="only sync='none' allows"):
        race(10, "lock", lockstep=True)
    with pytest.raises(ValueError, match=r"race\(n=...\) must be between 1"):
        race(0)
    with pytest.raises(TypeError, match=r"race\(n=...\) must be an int"):
        race(True)


# --- the race plugin, through its hooks (no `divergefork run` needed) --------------------


def run_plugin(argv: list[str], only: int | None = None) -> tuple[list[df.Report], str]:
    """What `divergefork run` does with the plugin, minus the table: options, collect, fork, wait."""
    parser = argparse.ArgumentParser()
    divergefork_race.divergefork_addoption(parser=parser)
    config = df.Config(parser.parse_args(argv), pluggy.PluginManager("divergefork"))
    specs = list(divergefork_race.divergefork_children(config=config))
    kids = [df.fork(spec.value, spec.entry, name=spec.name, timeout=spec.timeout) for spec in specs[:only]]
    reports = [kid.wait() for kid in kids]
    return reports, str(specs[0].value.counter.sync)


@pytest.mark.parametrize("sync", ["sharded", ATOMIC, "lock"])
def test_plugin_children_share_one_counter_and_the_count_is_exact(
    sync: Sync, capsys: pytest.CaptureFixture[str]
) -> None:
    reports, used = run_plugin(["--race-sync", sync, "--race-n", "5000"])
    assert used == sync
    assert [r.name for r in reports] == ["race-1", "race-2", "race-3"]
    assert all(r.ok and r.result == {"added": 5000} for r in reports)
    divergefork_race.divergefork_finished(reports=reports)
    assert capsys.readouterr().err == (
        f"race: shared counter = 15,000 (expected 15,000, 3 children, --race-sync {sync}): exact\n"
    )


def test_plugin_default_is_exact_and_expects_only_children_that_ran(capsys: pytest.CaptureFixture[str]) -> None:
    # As with `divergefork run --only race-1`: the other race children are never forked.
    reports, used = run_plugin(["--race-n", "100"], only=1)
    assert used == "sharded"
    divergefork_race.divergefork_finished(reports=reports)
    assert capsys.readouterr().err == (
        "race: shared counter = 100 (expected 100, 1 child, --race-sync sharded): exact\n"
    )


def test_plugin_with_sync_none_reports_lost_updates_yet_children_are_ok(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("a free-running race needs two CPUs")
    reports, _ = run_plugin(["--race-sync", "none", "--race-children", "2", "--race-n", "1000000"])
    assert all(r.ok for r in reports)
    divergefork_race.divergefork_finished(reports=reports)
    assert re.fullmatch(
        r"race: shared counter = [\d,]+ \(expected 2,000,000, 2 children, --race-sync none\): "
        r"[\d,]+ updates lost \([\d.]+%\); try --race-sync sharded\n",
        capsys.readouterr().err,
    )


def test_plugin_options_are_validated() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    divergefork_race.divergefork_addoption(parser=parser)
    for argv in (["--race-children", "0"], ["--race-children", "65"], ["--race-n", "x"]):
        with pytest.raises(argparse.ArgumentError):
            parser.parse_args(argv)
