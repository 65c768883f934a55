"""The core runtime: fork(), Child, every outcome and every promise, with real processes."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest
from conftest import child_pids, pid_alive, python_command, wait_until

import divergefork as df
from divergefork import _linux


# Every test runs twice: with pidfds, and with the fallback that polls waitid.
pytestmark = pytest.mark.usefixtures("reaping")


# --- entries -------------------------------------------------------------------------------


def exit_42(_: object) -> NoReturn:
    df.exit_child(42)


def exit_with_result(value: list[int]) -> NoReturn:
    value.append(99)  # the child's copy
    df.exit_child(0, result=value)


def raise_value_error(_: object) -> NoReturn:
    raise ValueError("distinctive failure 4711")


def returns(_: object) -> NoReturn:
    return None  # type: ignore[misc]  # the contract violation under test


def sys_exit(code: object) -> NoReturn:
    sys.exit(code)  # type: ignore[arg-type]


def raw_exit_70(_: object) -> NoReturn:
    os._exit(70)


def kill_self(sig: int) -> NoReturn:
    os.kill(os.getpid(), sig)
    time.sleep(10)
    raise AssertionError("not killed")


def sleep_forever(_: object) -> NoReturn:
    while True:
        time.sleep(1)


def ignore_sigterm(ready: Path | None) -> NoReturn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if ready is not None:
        ready.touch()  # the test waits for this, not for a guessed delay
    while True:
        time.sleep(1)


def exec_program(argv: list[str]) -> NoReturn:
    df.exec_child(argv)


# --- outcomes ------------------------------------------------------------------------------


def test_exit_code_and_result() -> None:
    report = df.fork(None, exit_42, name="answer").wait()
    assert report.outcome is df.Outcome.EXITED
    assert report.exit_code == 42
    assert report.name == "answer"
    assert not report.ok
    assert report.signal is None and not report.execed and report.error is None


def test_borrowed_value_is_copy_on_write_and_result_carries_childs_copy() -> None:
    value = [1, 2, 3]
    report = df.fork(value, exit_with_result).wait()
    assert report.ok
    assert report.result == [1, 2, 3, 99]
    assert value == [1, 2, 3], "the child's mutation must not reach the parent"


def test_raised_reports_traceback_and_exits_1() -> None:
    report = df.fork(None, raise_value_error).wait()
    assert report.outcome is df.Outcome.RAISED
    assert report.exit_code == 1
    assert report.error is not None
    assert "ValueError: distinctive failure 4711" in report.error
    assert "raise_value_error" in report.error


def test_returned_is_a_contract_violation_with_reserved_code() -> None:
    report = df.fork(None, returns).wait()
    assert report.outcome is df.Outcome.RETURNED
    assert report.exit_code == df.RETURNED_EXIT_CODE == 70
    assert report.error is not None and "returned None instead of diverging" in report.error


def test_exit_code_70_without_returning_is_exited() -> None:
    # Exit codes collide; the status pipe tells them apart.
    report = df.fork(None, raw_exit_70).wait()
    assert report.outcome is df.Outcome.EXITED
    assert report.exit_code == 70


@pytest.mark.parametrize(("code", "expected"), [(None, 0), (42, 42), ("bye", 1)])
def test_system_exit(code: object, expected: int) -> None:
    report = df.fork(code, sys_exit).wait()
    assert report.outcome is df.Outcome.EXITED
    assert report.exit_code == expected


@pytest.mark.parametrize("code", [256, 300, -1])
def test_sys_exit_out_of_range_is_refused_like_exit_child(code: int) -> None:
    # The kernel keeps 8 bits: sys.exit(256) would otherwise read as success.
    for entry in (sys_exit, exit_child_with):
        report = df.fork(code, entry).wait()
        assert report.outcome is df.Outcome.RAISED, (entry, report)
        assert "between 0 and 255" in (report.error or "")
        assert report.exit_code == 1


def exit_child_with(code: int) -> NoReturn:
    df.exit_child(code)


def test_raised_code_1_vs_exit_1_told_apart() -> None:
    assert df.fork(1, sys_exit).wait().outcome is df.Outcome.EXITED
    assert df.fork(None, raise_value_error).wait().outcome is df.Outcome.RAISED


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGUSR1])
def test_signaled(sig: signal.Signals) -> None:
    report = df.fork(int(sig), kill_self).wait()
    assert report.outcome is df.Outcome.SIGNALED
    assert report.signal is sig
    assert report.exit_code is None
    assert report.to_dict()["signal"] == sig.name


def test_exec_success_reports_programs_status() -> None:
    report = df.fork([sys.executable, "-c", "import sys; sys.exit(17)"], exec_program).wait()
    assert report.execed
    assert report.outcome is df.Outcome.EXITED
    assert report.exit_code == 17


def test_exec_failure() -> None:
    report = df.fork(["divergefork-no-such-program-xyz"], exec_program).wait()
    assert report.outcome is df.Outcome.EXEC_FAILED
    assert report.exit_code == 127
    assert not report.execed
    assert report.error is not None
    assert "divergefork-no-such-program-xyz" in report.error and "No such file" in report.error


def test_exec_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    report = df.fork([str(script)], exec_program).wait()
    assert report.outcome is df.Outcome.EXEC_FAILED
    assert report.error is not None and "Permission denied" in report.error


def test_exec_with_env() -> None:
    def entry(_: None) -> NoReturn:
        df.exec_child(["sh", "-c", 'exit "$DF_CODE"'], env={"DF_CODE": "23", "PATH": os.environ["PATH"]})

    report = df.fork(None, entry).wait()
    assert report.execed and report.exit_code == 23


def test_rusage_and_duration() -> None:
    def burn(_: None) -> NoReturn:
        data = bytearray(32 * 1024 * 1024)
        for i in range(0, len(data), 4096):
            data[i] = 1
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
        df.exit_child(0)

    report = df.fork(None, burn).wait()
    assert report.ok
    assert report.max_rss > 32 * 1024 * 1024
    assert report.user_time + report.system_time >= 0.04
    assert report.duration >= 0.04


# --- results -------------------------------------------------------------------------------


def test_large_result_larger_than_pipe_buffer_does_not_deadlock() -> None:
    def big(_: None) -> NoReturn:
        df.exit_child(0, result="x" * (4 * 1024 * 1024))

    report = df.fork(None, big, timeout=30).wait()
    assert report.ok
    assert report.result == "x" * (4 * 1024 * 1024)


def test_result_not_json_is_type_error() -> None:
    def not_json(_: None) -> NoReturn:
        df.exit_child(0, result={1, 2})

    report = df.fork(None, not_json).wait()
    assert report.outcome is df.Outcome.RAISED
    assert report.error is not None and "TypeError" in report.error and "JSON" in report.error


def test_exit_child_outside_a_child_is_an_error() -> None:
    with pytest.raises(df.DivergeforkError, match="outside a child"):
        df.exit_child(0)


def test_exit_child_in_a_raw_grandchild_is_an_error() -> None:
    def entry(arg: None) -> NoReturn:
        pid = os.fork()
        if pid == 0:
            try:
                df.exit_child(5)
            except df.DivergeforkError:
                os._exit(33)
            os._exit(34)
        _, status = os.waitpid(pid, 0)
        df.exit_child(os.waitstatus_to_exitcode(status))

    assert df.fork(None, entry).wait().exit_code == 33


def test_report_to_dict_is_json() -> None:
    report = df.fork(None, raise_value_error, capture=True).wait()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["outcome"] == "raised"
    assert data["ok"] is False
    assert "distinctive failure 4711" in data["stderr"]


# --- the child never unwinds into the parent -----------------------------------------------


def run_script(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a Python script in a fresh interpreter, its stdout a pipe (so fully buffered)."""
    return subprocess.run(
        python_command(textwrap.dedent(code)), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_no_double_output_with_stdout_a_pipe() -> None:
    proc = run_script(
        """
        import divergefork as df
        print("buffered before fork")
        def entry(_):
            print("from child")
            df.exit_child(0)
        print(df.fork(None, entry).wait().exit_code)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["buffered before fork", "from child", "0"]


def test_parent_atexit_and_finally_run_once_whatever_the_child_does() -> None:
    proc = run_script(
        """
        import atexit, sys, divergefork as df
        atexit.register(print, "atexit ran")
        def raises(_): raise RuntimeError("boom")
        def returns(_): return None
        def exits(_): sys.exit(3)
        for entry in (raises, returns, exits):
            try:
                report = df.fork(None, entry).wait()
                print(entry.__name__, report.outcome)
            finally:
                print("finally ran")
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines.count("atexit ran") == 1
    assert lines.count("finally ran") == 3
    assert lines[:6] == [
        "raises raised",
        "finally ran",
        "returns returned",
        "finally ran",
        "exits exited",
        "finally ran",
    ]
    assert "RuntimeError: boom" in proc.stderr  # printed by the child to its stderr


def test_child_does_not_run_pytest() -> None:
    # If the child unwound, it would continue this test and the rest of the session: the
    # parent would then see a second pytest summary on the terminal and the child exit non-zero.
    marker: list[object] = []
    report = df.fork(marker, raise_value_error).wait()
    marker.append(report)
    assert report.exit_code == 1


# --- deadlines, termination, signals -------------------------------------------------------


def test_timeout_sends_sigterm() -> None:
    report = df.fork(None, sleep_forever, timeout=0.2, grace=5).wait()
    assert report.outcome is df.Outcome.TIMED_OUT
    assert report.signal is signal.SIGTERM
    assert report.error is not None and "SIGTERM" in report.error
    assert 0.2 <= report.duration < 4


def test_child_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = df.fork(ready, ignore_sigterm, timeout=2.0, grace=0.3)
    assert wait_until(ready.exists, timeout=10)  # SIGTERM is ignored before the deadline
    report = child.wait()
    assert report.outcome is df.Outcome.TIMED_OUT
    assert report.signal is signal.SIGKILL
    assert report.duration >= 2.3
    assert report.error is not None and "SIGKILL" in report.error


def test_parent_sigterm_handler_does_not_reach_the_child() -> None:
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        report = df.fork(None, sleep_forever, timeout=0.2, grace=5).wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert report.signal is signal.SIGTERM and report.duration < 4


def test_grandchild_dies_on_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"

    def spawn_grandchild(_: None) -> NoReturn:
        proc = subprocess.Popen(["sleep", "60"])
        pidfile.write_text(str(proc.pid))
        while True:
            time.sleep(1)

    report = df.fork(None, spawn_grandchild, timeout=2.0, grace=0.5).wait()
    assert report.outcome is df.Outcome.TIMED_OUT
    grandchild = int(pidfile.read_text())
    assert wait_until(lambda: not pid_alive(grandchild), timeout=2)


def test_grandchild_left_behind_by_an_exited_child_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"

    def leave_grandchild(_: None) -> NoReturn:
        proc = subprocess.Popen(["sleep", "60"])
        pidfile.write_text(str(proc.pid))
        df.exit_child(0)

    assert df.fork(None, leave_grandchild).wait().ok
    assert wait_until(lambda: not pid_alive(int(pidfile.read_text())), timeout=2)


def test_wait_timeout_raises_and_child_keeps_running() -> None:
    child = df.fork(None, sleep_forever)
    with pytest.raises(TimeoutError, match="sleep_forever"):
        child.wait(timeout=0.1)
    assert child.poll() is None
    assert child.pid is not None and pid_alive(child.pid)
    report = child.terminate(grace=1)
    assert report.outcome is df.Outcome.SIGNALED and report.signal is signal.SIGTERM


def test_wait_timeout_shorter_than_deadline_then_deadline() -> None:
    child = df.fork(None, sleep_forever, timeout=0.4, grace=1)
    with pytest.raises(TimeoutError):
        child.wait(timeout=0.05)
    report = child.wait()
    assert report.outcome is df.Outcome.TIMED_OUT


def test_poll_enforces_deadline() -> None:
    child = df.fork(None, sleep_forever, timeout=0.1, grace=1)
    assert wait_until(lambda: child.poll() is not None, timeout=5)
    report = child.poll()
    assert report is not None and report.outcome is df.Outcome.TIMED_OUT


def test_terminate_escalates_to_kill(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = df.fork(ready, ignore_sigterm)
    assert wait_until(ready.exists, timeout=10)
    start = time.monotonic()
    report = child.terminate(grace=0.2)
    assert report.signal is signal.SIGKILL
    assert time.monotonic() - start >= 0.2


def test_kill_and_send_signal() -> None:
    child = df.fork(None, sleep_forever)
    child.send_signal(signal.SIGUSR2)
    report = child.wait()
    assert report.signal is signal.SIGUSR2
    child.send_signal(signal.SIGKILL)  # reaped: a no-op, never hits a reused pid
    assert df.fork(None, sleep_forever).kill().signal is signal.SIGKILL


def test_wait_is_idempotent() -> None:
    child = df.fork(None, exit_42)
    assert child.wait() is child.wait()
    assert child.poll() is child.wait()
    assert "exited 42" in repr(child)


# --- parent death --------------------------------------------------------------------------


PARENT_SCRIPT = """
import os, sys, time, divergefork as df
def entry(_):
    while True:
        time.sleep(1)
child = df.fork(None, entry, on_parent_exit=sys.argv[1])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("policy", ["kill", "keep"])
def test_child_dies_with_sigkilled_parent_unless_keep(policy: str) -> None:
    with subprocess.Popen([*python_command(PARENT_SCRIPT), policy], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        assert pid_alive(grandchild)
        parent.kill()
        parent.wait()
    try:
        if policy == "kill":
            assert wait_until(lambda: not pid_alive(grandchild), timeout=1.0)
        else:
            time.sleep(0.3)
            assert pid_alive(grandchild)
    finally:
        if policy == "keep":
            os.kill(grandchild, signal.SIGKILL)


# --- stdio capture -------------------------------------------------------------------------


def test_capture_python_and_exec_output() -> None:
    def chatty(_: None) -> NoReturn:
        print("python out")
        print("python err", file=sys.stderr)
        df.exec_child(["sh", "-c", "echo shell out; echo shell err >&2; exit 4"])

    report = df.fork(None, chatty, capture=True).wait()
    assert report.stdout == b"python out\nshell out\n"
    assert report.stderr == b"python err\nshell err\n"
    assert report.exit_code == 4 and report.execed


def test_capture_even_when_parent_replaced_sys_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    def chatty(_: None) -> NoReturn:
        print("not lost")
        df.exit_child(0)

    report = df.fork(None, chatty, capture=True).wait()
    assert report.stdout == b"not lost\n"


def test_capture_is_bounded_keeping_newest() -> None:
    def flood(arg: None) -> NoReturn:
        chunk = b"a" * 65536
        for _ in range(40):
            os.write(1, chunk)
        os.write(1, b"THE END")
        df.exit_child(0)

    report = df.fork(None, flood, capture=True, timeout=30).wait()
    assert len(report.stdout) == df.CAPTURE_LIMIT
    assert report.stdout.endswith(b"THE END")


def test_without_capture_output_is_empty() -> None:
    def quiet(_: None) -> NoReturn:
        df.exit_child(0)

    report = df.fork(None, quiet).wait()
    assert report.stdout == b"" and report.stderr == b""


# --- refusing unsafe or wrong input --------------------------------------------------------


def test_threads_refused_then_warned_then_allowed() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="distinctive-worker")
    worker.start()
    try:
        before = child_pids()
        with pytest.raises(df.ForkUnsafeError, match="distinctive-worker"):
            df.fork(None, exit_42)
        assert child_pids() == before
        with pytest.warns(RuntimeWarning, match="distinctive-worker"):
            report = df.fork(None, exit_42, threads="warn").wait()
        assert report.exit_code == 42
        assert df.fork(None, exit_42, threads="allow").wait().exit_code == 42
    finally:
        stop.set()
        worker.join()
    assert df.fork(None, exit_42).wait().exit_code == 42


def test_sigchld_ignored_is_refused() -> None:
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with pytest.raises(df.ForkUnsafeError, match="SIGCHLD"):
            df.fork(None, exit_42)
    finally:
        signal.signal(signal.SIGCHLD, previous)


BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": float("nan")}, ValueError, "timeout"),
    ({"timeout": "1"}, TypeError, "timeout"),
    ({"timeout": True}, TypeError, "timeout"),
    ({"grace": -0.5}, ValueError, "grace"),
    ({"grace": float("inf")}, ValueError, "grace"),
    ({"on_parent_exit": "ignore"}, ValueError, "on_parent_exit"),
    ({"threads": "sometimes"}, ValueError, "threads"),
    ({"new_group": 1}, TypeError, "new_group"),
    ({"capture": "yes"}, TypeError, "capture"),
    ({"name": ""}, TypeError, "name"),
    ({"name": 3}, TypeError, "name"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_ARGUMENTS)
def test_bad_arguments_fork_nothing(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    before = child_pids()
    with pytest.raises(error, match=match):
        df.fork(None, exit_42, **kwargs)
    assert child_pids() == before


def test_entry_not_callable() -> None:
    with pytest.raises(TypeError, match="entry must be a callable"):
        df.fork(None, "exit_42")  # type: ignore[arg-type]


# --- resources -----------------------------------------------------------------------------


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_no_descriptor_leak_over_hundreds_of_forks() -> None:
    for entry, kwargs in ((exit_42, {}), (exit_42, {"capture": True}), (raise_value_error, {"timeout": 5.0})):
        df.fork(None, entry, **kwargs).wait()
    before = open_fds()
    for i in range(100):
        df.fork(None, exit_42).wait()
        df.fork(None, raise_value_error, capture=True).wait()
        child = df.fork(None, sleep_forever, timeout=5.0)
        if i % 10 == 0:
            with pytest.raises(TimeoutError):
                child.wait(0.001)
        child.kill()
    assert open_fds() == before


def test_dropped_handle_warns_and_is_reaped_later() -> None:
    child = df.fork(None, exit_42)
    pid = child.pid
    assert pid is not None
    with pytest.warns(ResourceWarning, match="never waited for"):
        del child
        gc.collect()
    assert wait_until(lambda: not pid_alive(pid))
    df.fork(None, exit_42).wait()  # reaps the orphan
    assert pid not in child_pids()


def test_child_handle_is_unusable_in_another_process() -> None:
    sibling = df.fork(None, sleep_forever)

    def entry(_: None) -> NoReturn:
        try:
            sibling.wait()
        except df.DivergeforkError:
            df.exit_child(21)
        df.exit_child(0)

    assert df.fork(None, entry).wait().exit_code == 21
    sibling.kill()


def test_nested_fork_in_child() -> None:
    def parent_entry(_: None) -> NoReturn:
        inner = df.fork([5], exit_with_result).wait()
        df.exit_child(0, result=inner.to_dict())

    report = df.fork(None, parent_entry).wait()
    assert report.ok
    assert isinstance(report.result, dict) and report.result["result"] == [5, 99]


FAILED_FORK_SCRIPT = """
import gc, os, sys, divergefork as df
cgroup = sys.argv[1]
with open(os.path.join(cgroup, "pids.max"), "w") as f:
    f.write("1")
with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
def entry(_):
    df.exit_child(0)
from divergefork import _forensics
_forensics.stack_fd()  # opened once per process, at the first fork: not a leak
before = sorted(os.listdir("/proc/self/fd"))
try:
    df.fork(None, entry)
    print("forked")
except BlockingIOError:
    print("refused")
gc.collect()
print("same fds" if sorted(os.listdir("/proc/self/fd")) == before else "leaked fds")
"""


def test_failed_fork_leaks_nothing() -> None:
    # A real EAGAIN from fork(): a pids cgroup that allows one process (root ignores
    # RLIMIT_NPROC, but not a cgroup's pids.max).
    cgroup = Path("/sys/fs/cgroup/pids") / f"divergefork-test-{os.getpid()}"
    try:
        cgroup.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a pids cgroup here: {exc}")
    try:
        proc = subprocess.run(
            [*python_command(FAILED_FORK_SCRIPT), str(cgroup)], capture_output=True, text=True, timeout=30, check=False
        )
    finally:
        assert wait_until(lambda: not (cgroup / "cgroup.procs").read_text().strip())
        cgroup.rmdir()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["refused", "same fds"], proc.stderr
    assert proc.stderr == "", "the handle of a child that was never forked must not close anything"


def test_parent_death_signal_is_set_in_the_child() -> None:
    def report_pdeathsig(_: None) -> NoReturn:
        df.exit_child(0, result=_linux.parent_death_signal())

    if not _linux.HAVE_PDEATHSIG:
        pytest.skip("no PR_SET_PDEATHSIG on this platform")
    assert df.fork(None, report_pdeathsig).wait().result == signal.SIGKILL
    assert df.fork(None, report_pdeathsig, on_parent_exit="keep").wait().result == 0


# --- found in review: each of these once misbehaved ----------------------------------------


def test_child_that_ended_before_its_deadline_is_not_timed_out_when_waited_late() -> None:
    child = df.fork(None, exit_42, timeout=1.0, grace=5)
    time.sleep(1.3)  # the deadline passes while nobody waits
    report = child.wait()
    assert report.outcome is df.Outcome.EXITED and report.exit_code == 42
    assert report.error is None


def test_exec_arguments_that_cannot_be_execed_are_raised_not_execed() -> None:
    report = df.fork(["echo\0oops"], exec_program).wait()
    assert report.outcome is df.Outcome.RAISED
    assert not report.execed
    assert report.error is not None and "NUL" in report.error


def test_exec_env_must_be_strings() -> None:
    def entry(_: None) -> NoReturn:
        df.exec_child(["true"], env={"A": 1})  # type: ignore[dict-item]

    report = df.fork(None, entry).wait()
    assert report.outcome is df.Outcome.RAISED and not report.execed


def test_execed_program_gets_default_sigpipe() -> None:
    # Python ignores SIGPIPE for itself; a shell pipeline must not inherit that.
    def entry(_: None) -> NoReturn:
        df.exec_child(["sh", "-c", "grep SigIgn /proc/self/status"])

    report = df.fork(None, entry, capture=True).wait()
    ignored = int(report.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))


def test_child_that_closed_its_status_pipe_never_writes_into_its_own_files(tmp_path: Path) -> None:
    target = tmp_path / "user-data"

    def daemonish(_: None) -> NoReturn:
        os.closerange(3, 4096)
        with open(target, "w") as f:  # likely reuses the status pipe's descriptor number
            f.write("mine")
            f.flush()
            df.exit_child(0, result={"lost": True})

    report = df.fork(None, daemonish, capture=True).wait()
    assert target.read_text() == "mine"
    assert report.exit_code == 0 and report.result is None
    assert b"closed its status pipe" in report.stderr


def test_huge_traceback_is_truncated_keeping_its_end() -> None:
    def loud(_: None) -> NoReturn:
        raise ValueError("x" * (2 * 1024 * 1024) + " the end")

    report = df.fork(None, loud).wait()
    assert report.outcome is df.Outcome.RAISED
    assert report.error is not None
    assert report.error.rstrip().endswith("the end")
    assert len(report.error) < 2 * 1024 * 1024


@pytest.mark.parametrize("code", [256, -1])
def test_exit_code_out_of_range_is_an_error_not_a_silent_success(code: int) -> None:
    def entry(_: None) -> NoReturn:
        df.exit_child(code)

    report = df.fork(None, entry).wait()
    assert report.outcome is df.Outcome.RAISED
    assert report.error is not None and "between 0 and 255" in report.error


def test_interrupts_during_the_fork_loop_never_lose_a_child() -> None:
    # A KeyboardInterrupt raised right after fork() returned used to lose the child's pid.
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    interrupted = 0
    try:
        for attempt in range(25):
            signal.setitimer(signal.ITIMER_REAL, 0.001 + attempt * 0.0015)
            try:
                with df.Scope(capture=True, grace=1) as scope:
                    for _ in range(15):
                        scope.fork(None, sleep_forever)
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    scope.fork(None, exit_42)
                    for child_report in scope.as_completed():
                        if child_report.exit_code == 42:
                            raise LookupError("done")
            except KeyboardInterrupt:
                interrupted += 1
            except LookupError:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            assert not child_pids(), f"attempt {attempt} left children behind"
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert interrupted > 0  # the interrupts really landed inside the loop


def test_a_mask_buffer_restores_only_what_it_saved() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    _linux.restore_signals(_linux.mask_buffer())  # never saved: must not touch the mask
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    saved = _linux.mask_buffer()
    try:
        _linux.block_signals(saved)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.SIGINT in blocked and signal.SIGTERM in blocked
    finally:
        _linux.restore_signals(saved)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_the_child_runs_with_the_callers_signal_mask() -> None:
    def report_mask(_: None) -> NoReturn:
        df.exit_child(0, result=sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))

    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        report = df.fork(None, report_mask).wait()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
    assert report.ok, report.describe()
    assert report.result == [int(signal.SIGUSR1)]


CAPTURE_CLOSED_STDIO_SCRIPT = """
import os, sys, divergefork as df
log = open(sys.argv[1], "w")  # takes descriptor 0: 0, 1 and 2 were closed
def entry(_):
    os.write(1, b"to stdout\\n")
    os.write(2, b"to stderr\\n")
    raise RuntimeError("boom")
child = df.fork(None, entry, capture=True)
fds = sorted(fd for fd in (child.status_fd, child.out_fd, child.err_fd) if fd >= 0)
report = child.wait()
log.write(repr((fds, report.outcome.value, report.stdout, report.stderr, report.error)))
"""


def test_capture_in_a_parent_with_closed_stdio_keeps_the_status_pipe_apart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = python_command(CAPTURE_CLOSED_STDIO_SCRIPT) + [str(out)]
    proc = subprocess.run(
        ["sh", "-c", '"$@" <&- >&- 2>&-', "sh", *script], capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc
    fds, outcome, stdout, stderr, error = eval(out.read_text())  # noqa: S307 - our own repr
    assert min(fds) > 2  # never the standard numbers, which the child's own output uses
    assert outcome == "raised" and "RuntimeError: boom" in error
    assert stdout == b"to stdout\n"
    assert stderr.startswith(b"to stderr\n") and b"RuntimeError: boom" in stderr
    assert b"E\x00" not in stderr  # no status record leaked into the captured stderr


CAPTURE_EMFILE_SCRIPT = """
import os, resource, divergefork as df
def entry(_):
    df.exit_child(0)
from divergefork import _forensics
_forensics.stack_fd()  # opened once per process, at the first fork: not a leak
before = sorted(os.listdir("/proc/self/fd"))
# Room for the status pipe and one capture pipe, not the second one.
resource.setrlimit(resource.RLIMIT_NOFILE, (len(before) + 4, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    df.fork(None, entry, capture=True)
    print("forked")
except OSError as exc:
    print("refused", exc.errno)
print("same fds" if sorted(os.listdir("/proc/self/fd")) == before else "leaked fds")
"""


def test_running_out_of_descriptors_for_capture_leaks_none() -> None:
    proc = subprocess.run(python_command(CAPTURE_EMFILE_SCRIPT), capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("refused"), proc.stdout
    assert lines[1] == "same fds"


def test_a_stopped_child_is_continued_so_sigterm_ends_it() -> None:
    def stop_self(_: None) -> NoReturn:
        os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(60)
        df.exit_child(0)

    report = df.fork(None, stop_self, timeout=0.5, grace=30).wait()
    assert report.outcome is df.Outcome.TIMED_OUT
    assert report.signal is signal.SIGTERM  # not SIGKILL after the 30 s grace
    assert report.duration < 10
