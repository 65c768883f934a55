"""Scope: structured forking with real processes."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from conftest import child_pids, pid_alive, wait_until

import divergefork as df


# Every test runs twice: with pidfds, and with the fallback that polls waitid.
pytestmark = pytest.mark.usefixtures("reaping")


def sleep_then_exit(seconds_and_code: tuple[float, int]) -> NoReturn:
    seconds, code = seconds_and_code
    time.sleep(seconds)
    df.exit_child(code, result=code)


def sleep_forever(_: object) -> NoReturn:
    while True:
        time.sleep(1)


def ignore_sigterm(ready: Path) -> NoReturn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.touch()
    while True:
        time.sleep(1)


def test_many_children_in_random_order_reported_once() -> None:
    delays = [random.uniform(0, 0.3) for _ in range(40)]
    seen: list[df.Report] = []
    with df.Scope() as scope:
        for i, delay in enumerate(delays):
            scope.fork((delay, i), sleep_then_exit, name=f"child-{i}")
        for report in scope.as_completed():
            seen.append(report)
    assert sorted(r.name for r in seen) == sorted(f"child-{i}" for i in range(40))
    assert all(r.exit_code == r.result for r in seen)
    assert scope.reports == seen
    # Reported in order of ending (durations grow, give or take scheduling).
    order = [int(r.name.split("-")[1]) for r in seen]
    assert order != list(range(40)) or sorted(delays) == delays


def test_leaving_normally_waits_for_all() -> None:
    with df.Scope() as scope:
        for i in range(5):
            scope.fork((0.05 * i, 40 + i), sleep_then_exit)
    assert sorted(r.exit_code for r in scope.reports if r.exit_code is not None) == [40, 41, 42, 43, 44]


def test_wait_returns_all_reports() -> None:
    with df.Scope() as scope:
        scope.fork((0, 7), sleep_then_exit)
        reports = scope.wait()
        assert [r.exit_code for r in reports] == [7]
        scope.fork((0, 8), sleep_then_exit)
        assert [r.exit_code for r in scope.wait()] == [7, 8]


def test_exception_cancels_and_reaps_everything(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(LookupError, match="distinctive"):
        with df.Scope(grace=0.3) as scope:
            for _ in range(3):
                scope.fork(None, sleep_forever)
            scope.fork(tmp_path / "ready", ignore_sigterm, name="stubborn")
            assert wait_until((tmp_path / "ready").exists, timeout=10)
            raise LookupError("distinctive")
    assert time.monotonic() - start < 5
    assert len(scope.reports) == 4
    assert all(r.outcome is df.Outcome.CANCELLED for r in scope.reports)
    stubborn = next(r for r in scope.reports if r.name == "stubborn")
    assert stubborn.signal is signal.SIGKILL
    assert not child_pids()


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Python's own SIGINT handler, even if the test run was started with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_raises")
def test_sigint_in_block_cancels_and_reraises_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt):
        with df.Scope(grace=1, timeout=30) as scope:  # the timeout only bounds a failure
            for _ in range(4):
                scope.fork(None, sleep_forever)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert [r.outcome for r in scope.reports] == [df.Outcome.CANCELLED] * 4
    assert not child_pids()


def test_sigint_while_waiting_at_block_end_cancels() -> None:
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            with df.Scope(grace=1) as scope:
                scope.fork(None, sleep_forever)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert [r.outcome for r in scope.reports] == [df.Outcome.CANCELLED]


def test_max_parallel_is_never_exceeded() -> None:
    limit = 3
    peak = 0
    with df.Scope(max_parallel=limit) as scope:
        for i in range(12):
            scope.fork((random.uniform(0.02, 0.1), i), sleep_then_exit)
            peak = max(peak, len(child_pids()))
        for _ in scope.as_completed():
            peak = max(peak, len(child_pids()))
    assert 0 < peak <= limit
    assert len(scope.reports) == 12


def test_queued_child_gets_the_value_of_its_own_fork_call() -> None:
    def echo(value: list[int]) -> NoReturn:
        df.exit_child(0, result=value)

    with df.Scope(max_parallel=1) as scope:
        for i in range(4):
            scope.fork([i], echo, name=f"e{i}")
    assert sorted(r.result for r in scope.reports) == [[0], [1], [2], [3]]  # type: ignore[type-var]


def test_queued_children_are_cancelled_without_forking() -> None:
    with pytest.raises(RuntimeError):
        with df.Scope(max_parallel=1, grace=0.5) as scope:
            scope.fork(None, sleep_forever, name="running")
            scope.fork(None, sleep_forever, name="queued")
            raise RuntimeError
    queued = next(r for r in scope.reports if r.name == "queued")
    assert queued.outcome is df.Outcome.CANCELLED and queued.pid == 0


def test_scope_defaults_and_per_child_override() -> None:
    with df.Scope(timeout=0.2, grace=0.2) as scope:
        scope.fork(None, sleep_forever, name="default-deadline")
        scope.fork((0.4, 3), sleep_then_exit, name="own-deadline", timeout=5)
    by_name = {r.name: r for r in scope.reports}
    assert by_name["default-deadline"].outcome is df.Outcome.TIMED_OUT
    assert by_name["own-deadline"].exit_code == 3


def test_output_callback_streams_capture() -> None:
    def chatty(n: int) -> NoReturn:
        print(f"line from {n}", flush=True)
        df.exit_child(0)

    chunks: list[tuple[str, str, bytes]] = []
    with df.Scope(capture=True, on_output=lambda *chunk: chunks.append(chunk)) as scope:
        for i in range(3):
            scope.fork(i, chatty, name=f"c{i}")
    assert sorted(chunks) == [(f"c{i}", "stdout", f"line from {i}\n".encode()) for i in range(3)]
    assert all(r.stdout for r in scope.reports)


def test_nested_scope_in_a_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchildren"

    def supervisor(n: int) -> NoReturn:
        with df.Scope() as inner:
            for i in range(n):
                inner.fork((0.01, i), sleep_then_exit)
        df.exit_child(0, result=sorted(r.exit_code or 0 for r in inner.reports))

    def doomed_supervisor(_: None) -> NoReturn:
        with df.Scope() as inner:
            inner.fork(None, sleep_forever)
            inner.fork(None, sleep_forever)
            pidfile.write_text(" ".join(str(p) for p in child_pids()))
            while True:
                time.sleep(1)

    with df.Scope(grace=0.5) as scope:
        scope.fork(4, supervisor, name="ok")
        scope.fork(None, doomed_supervisor, name="doomed", timeout=3)
    by_name = {r.name: r for r in scope.reports}
    assert by_name["ok"].result == [0, 1, 2, 3]
    assert by_name["doomed"].outcome is df.Outcome.TIMED_OUT
    grandchildren = [int(p) for p in pidfile.read_text().split()]
    assert len(grandchildren) == 2
    assert wait_until(lambda: not any(pid_alive(p) for p in grandchildren), timeout=2)


def test_no_zombies_and_no_leaked_descriptors() -> None:
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with df.Scope(capture=True, timeout=5) as scope:
            for i in range(20):
                scope.fork((0, i), sleep_then_exit)
        assert not child_pids()
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_child_cannot_use_its_parents_scope() -> None:
    with df.Scope() as scope:

        def misuse(_: None) -> NoReturn:
            errors = []
            try:
                scope.fork(None, sleep_forever)
            except df.DivergeforkError as exc:
                errors.append(str(exc))
            try:
                list(scope.as_completed())
            except df.DivergeforkError as exc:
                errors.append(str(exc))
            df.exit_child(0, result=errors)

        scope.fork(None, misuse)
    [report] = scope.reports
    assert report.ok, report.describe()
    assert isinstance(report.result, list) and len(report.result) == 2
    assert all("a child must open a Scope of its own" in error for error in report.result)


def test_a_cancelled_report_says_when_sigkill_really_followed(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    with pytest.raises(LookupError):
        with df.Scope(grace=0.3) as scope:
            scope.fork(ready, ignore_sigterm, name="stubborn")
            assert wait_until(ready.exists)
            raise LookupError("leave")
    [report] = scope.reports
    assert report.outcome is df.Outcome.CANCELLED and report.signal == signal.SIGKILL
    assert report.error is not None
    found = re.search(r"sent SIGTERM, then SIGKILL ([0-9.]+) s later", report.error)
    assert found is not None, report.error
    assert 0.3 <= float(found.group(1)) < 10


def test_misuse_is_a_clear_error() -> None:
    scope = df.Scope()
    with pytest.raises(df.DivergeforkError, match="with df.Scope"):
        scope.fork(None, sleep_forever)
    with scope:
        pass
    with pytest.raises(df.DivergeforkError, match="closed"):
        scope.fork(None, sleep_forever)
    with pytest.raises(df.DivergeforkError, match="only once"):
        with scope:
            pass
    with pytest.raises(ValueError, match="max_parallel"):
        df.Scope(max_parallel=0)
    with pytest.raises(ValueError, match="timeout"):
        df.Scope(timeout=-1)


def test_bad_fork_arguments_in_scope_fork_nothing() -> None:
    with df.Scope() as scope:
        with pytest.raises(ValueError, match="threads"):
            scope.fork(None, sleep_forever, threads="maybe")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="entry"):
            scope.fork(None, 42)  # type: ignore[arg-type]
        assert not child_pids()
    assert scope.reports == []
