"""The runtime's promises, each tried the way someone breaking it would (issue 12).

Every test forks for real; the hostile parts (closed descriptors, a terminal, signals at the
worst moment, native threads, crashes) are real too.
"""

from __future__ import annotations

import _thread
import ctypes
import dataclasses
import inspect
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

import pytest
from conftest import child_pids, python_command

import divergefork as df
from divergefork import _child


def _blocked_mask() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def report_mask(_: object) -> NoReturn:
    df.exit_child(0, result=_blocked_mask())


def sleep_forever(_: object) -> NoReturn:
    while True:
        time.sleep(1)


def nap(seconds: float) -> NoReturn:
    time.sleep(seconds)
    df.exit_child(0)


# --- 1. what a child starts with -----------------------------------------------------------


def test_queued_children_start_with_the_callers_mask_not_the_runtimes() -> None:
    caller = _blocked_mask()
    with df.Scope(max_parallel=1) as scope:
        children = [scope.fork(None, report_mask, name=f"c{i}") for i in range(4)]
        assert children[1].pid is None  # really queued
    assert [child.report.result for child in children if child.report] == [caller] * 4


def test_a_queued_child_keeps_the_mask_its_caller_had_when_it_called_fork() -> None:
    with df.Scope(max_parallel=1) as scope:
        scope.fork(0.2, nap, name="first")
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
        try:
            queued = scope.fork(None, report_mask, name="queued")
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR2])
    assert queued.report is not None
    assert queued.report.result == _blocked_mask() | 1 << (signal.SIGUSR2 - 1)


def test_a_queued_child_ends_by_sigterm_at_its_deadline() -> None:
    with df.Scope(max_parallel=1, grace=30) as scope:
        scope.fork(0.05, nap, name="first")
        late = scope.fork(None, sleep_forever, name="late", timeout=0.3)
    assert late.report is not None
    assert late.report.outcome is df.Outcome.TIMED_OUT
    assert late.report.signal is signal.SIGTERM  # not SIGKILL after the 30 s grace
    assert late.report.duration < 10


CTRL_C_AT_FORK_SCRIPT = """
import inspect, os, signal, sys, time
import divergefork as df
from divergefork import _child

got = []
signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))  # inherited by the child
lines = inspect.getsourcelines(_child.run)
first = lines[1]
at = first + next(i for i, text in enumerate(lines[0]) if "os.setpgid(0, 0)" in text)
parent = os.getpid()

def tracer(frame, event, arg):
    if frame.f_code is _child.run.__code__:
        return local
    return None

def local(frame, event, arg):
    if event == "line" and frame.f_lineno == at and os.getpid() != parent:
        os.killpg(os.getpgrp(), signal.SIGINT)  # a terminal's Ctrl-C, just before setpgid
    return local

def entry(_):
    sys.settrace(None)
    time.sleep(0.2)
    df.exit_child(0, result=len(got))

sys.settrace(tracer)
child = df.fork(None, entry)
sys.settrace(None)
report = child.wait()
# The parent was in the group too: its own handler proves the Ctrl-C was really sent.
print(report.outcome.value, report.result, "sent" if got else "never sent")
"""


def test_ctrl_c_meant_for_the_parents_group_never_reaches_a_new_group_child() -> None:
    # Its own session: the killpg must hit only the script and its child, not pytest.
    proc = subprocess.run(
        python_command(CTRL_C_AT_FORK_SCRIPT), capture_output=True, text=True, timeout=60, start_new_session=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["exited", "0", "sent"], proc.stdout + proc.stderr


# --- 3, 4. the status pipe is never confused with the child's own descriptors --------------


def close_everything_and_reuse(_: object) -> NoReturn:
    os.closerange(3, 4096)
    mine = [os.pipe() for _ in range(150)]  # the status pipe's numbers are taken by these
    df.send("hello")  # must not be written into any of them
    leaked = 0
    for read, _write in mine:
        os.set_blocking(read, False)
        try:
            leaked += len(os.read(read, 65536))
        except BlockingIOError:
            pass
    os._exit(43 if leaked else 42)


def test_a_record_is_never_written_into_a_descriptor_the_child_reused() -> None:
    report = df.fork(None, close_everything_and_reuse).wait()
    assert report.exit_code == 42, report
    assert report.messages == ()


CLOSED_STDIO_SCRIPT = """
import os, sys, divergefork as df
log = open(sys.argv[1], "w")  # takes descriptor 0: 0, 1 and 2 were closed
def entry(_):
    for fd, data in ((1, b"\\x00\\xdfE\\x00\\x00\\x00\\x05fake!"), (2, b"junk on stderr")):
        try:
            os.write(fd, data)  # what a status record looks like, to where a pipe could be
        except OSError:
            pass  # closed, as it should be: nothing of ours was put there
    raise RuntimeError("boom")
report = df.fork(None, entry).wait()
log.write(repr((report.outcome.value, report.exit_code, report.error)))
"""


def test_a_parent_with_closed_stdio_keeps_the_childs_output_out_of_the_status_pipe(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = python_command(CLOSED_STDIO_SCRIPT) + [str(out)]
    proc = subprocess.run(["sh", "-c", '"$@" <&- >&- 2>&-', "sh", *script], capture_output=True, timeout=30)
    assert proc.returncode == 0, proc
    outcome, code, error = eval(out.read_text())  # noqa: S307 - our own repr
    assert (outcome, code) == ("raised", 1)
    assert "RuntimeError: boom" in error and "fake!" not in error


# --- 5. waiting never needs a descriptor ----------------------------------------------------

EMFILE_WAIT_SCRIPT = """
import os, resource, time, divergefork as df
def entry(_):
    while True:
        time.sleep(1)
child = df.fork(None, entry, timeout=0.3, grace=0.2)
open_now = len(os.listdir("/proc/self/fd")) - 1
resource.setrlimit(resource.RLIMIT_NOFILE, (open_now, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
report = child.wait()
print(report.outcome.value, round(report.duration) < 10)
"""


def test_wait_at_the_descriptor_limit_still_enforces_the_deadline() -> None:
    proc = subprocess.run(python_command(EMFILE_WAIT_SCRIPT), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["timed_out", "True"]


# --- 6. a stalled output callback never makes the loop deaf to Ctrl-C -----------------------


def chatter_then_interrupt_parent(_: object) -> NoReturn:
    for i in range(200):
        print("line", flush=True)
        if i == 5:
            os.kill(os.getppid(), signal.SIGUSR1)  # the parent's "Ctrl-C", while it is stalled
        time.sleep(0.01)
    df.exit_child(0)


def test_ctrl_c_interrupts_a_stalled_output_callback() -> None:
    def stalled(name: str, stream: str, chunk: bytes) -> None:
        time.sleep(30)  # a terminal nobody reads

    previous = signal.signal(signal.SIGUSR1, signal.default_int_handler)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), df.Scope(capture=True, on_output=stalled, grace=0.5) as scope:
            scope.fork(None, chatter_then_interrupt_parent)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 10
    assert [r.outcome for r in scope.reports] == [df.Outcome.CANCELLED]


# --- 7, 8. handles -------------------------------------------------------------------------


def test_scope_fork_returns_the_child_and_a_queued_one_works_like_any_other() -> None:
    with df.Scope(max_parallel=1) as scope:
        running = scope.fork(None, sleep_forever, name="running")
        queued = scope.fork(0.0, nap, name="queued")
        never = scope.fork(0.0, nap, name="never")
        assert isinstance(running, df.Child) and running.pid is not None
        assert queued.pid is None and queued.poll() is None
        cancelled = never.terminate()
        assert (cancelled.outcome, cancelled.pid) == (df.Outcome.CANCELLED, 0)
        running.terminate(grace=1)
        report = queued.wait()  # starts it (a slot is free now) and waits for it
        assert report.ok and report.pid > 0
    assert {r.name for r in scope.reports} == {"running", "queued", "never"}


def test_a_child_as_context_manager_is_terminated_when_the_block_is_interrupted() -> None:
    with pytest.raises(KeyboardInterrupt):
        with df.fork(None, sleep_forever, grace=1) as child:
            assert child.pid is not None
            raise KeyboardInterrupt
    assert child.report is not None
    assert child.report.outcome is df.Outcome.CANCELLED
    assert not child_pids()


def test_a_child_as_context_manager_waits_when_the_block_ends() -> None:
    with df.fork(0.05, nap) as child:
        pass
    assert child.report is not None and child.report.ok


# --- 9. native threads ----------------------------------------------------------------------


def test_a_thread_the_threading_module_does_not_know_is_refused() -> None:
    stop = threading.Event()
    _thread.start_new_thread(stop.wait, ())  # invisible to threading.enumerate()
    try:
        time.sleep(0.05)
        assert threading.active_count() == 1
        with pytest.raises(df.ForkUnsafeError, match="1 native thread"):
            df.fork(0.0, nap)
    finally:
        stop.set()
    time.sleep(0.2)
    assert df.fork(0.0, nap).wait().ok


# --- 10. the terminal ----------------------------------------------------------------------

TTY_READ_SCRIPT = """
import sys, divergefork as df
def entry(_):
    sys.stdin.readline()  # from a background group: SIGTTIN would stop us for ever
    df.exit_child(0)
report = df.fork(None, entry).wait()
print("OUTCOME", report.outcome.value, (report.error or "").strip().splitlines()[-1:])
"""


def test_a_child_reading_the_terminal_fails_with_eio_instead_of_stopping() -> None:
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the pty's session leader, replaced at once
        os.execv(sys.executable, python_command(TTY_READ_SCRIPT))
    output = b""
    deadline = time.monotonic() + 30
    try:
        while b"OUTCOME" not in output or not output.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            try:
                output += os.read(fd, 4096)
            except OSError:
                break
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    assert b"OUTCOME raised" in output, output
    assert b"Input/output error" in output, output


# --- 11. results and messages of any size, in either codec ----------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: tuple[int, int]


def send_things(size: int) -> NoReturn:
    df.send((1, 2))
    df.send(Point(3, (4, 5)))
    df.send(b"x" * size)
    df.exit_child(0, result={"big": "y" * size, "tuple": (6, 7)})


@pytest.mark.parametrize("size", [10, 5000, 20 * 1024 * 1024])
def test_pickle_results_and_messages_of_any_size_arrive_whole(size: int) -> None:
    report = df.fork(size, send_things, codec="pickle").wait()
    assert report.ok, report.error
    assert report.messages == ((1, 2), Point(3, (4, 5)), b"x" * size)
    assert report.result == {"big": "y" * size, "tuple": (6, 7)}
    assert not [name for name in os.listdir("/tmp") if name.startswith(f"divergefork-{report.pid}-")]


def send_many_json(count: int) -> NoReturn:
    for i in range(count):
        df.send({"i": i, "pad": "p" * 100})
    df.exit_child(0, result=["a", "b"])


def test_json_messages_beyond_a_pipes_worth_are_kept_in_order() -> None:
    report = df.fork(3000, send_many_json).wait()
    assert report.ok, report.error
    assert [m["i"] for m in report.messages] == list(range(3000))  # type: ignore[index]
    assert report.result == ["a", "b"]


def send_then_abort(_: object) -> NoReturn:
    df.send("setup passed")
    df.send({"big": "z" * 100_000})
    os.abort()


def test_messages_survive_a_crash_and_the_crash_has_a_stack() -> None:
    report = df.fork(None, send_then_abort).wait()
    assert report.outcome is df.Outcome.SIGNALED and report.signal is signal.SIGABRT
    assert report.messages == ("setup passed", {"big": "z" * 100_000})
    assert report.stack is not None and "send_then_abort" in report.stack


def unpicklable(_: object) -> NoReturn:
    df.exit_child(0, result=lambda: None)


def test_an_unserialisable_result_is_raised_with_the_codecs_message() -> None:
    for codec in ("json", "pickle"):
        report = df.fork(None, unpicklable, codec=codec).wait()
        assert report.outcome is df.Outcome.RAISED, report
        assert "codec=" in (report.error or "")


# --- 12. forensics --------------------------------------------------------------------------


def segfault_in_c(_: object) -> NoReturn:
    ctypes.string_at(0)
    df.exit_child(0)


def test_a_segfault_in_c_code_reports_where_the_python_code_was() -> None:
    report = df.fork(None, segfault_in_c).wait()
    assert report.signal is signal.SIGSEGV
    assert report.stack is not None and "segfault_in_c" in report.stack
    assert "_child.py" not in report.stack  # no divergefork frames
    assert "test_a_segfault_in_c_code" not in report.stack  # nor the parent's, below fork()
    assert "at string_at (" in report.describe()  # the innermost frame


def busy_in_a_named_function(_: object) -> NoReturn:
    while True:
        time.sleep(0.01)


def test_a_timed_out_child_reports_its_stack_at_the_deadline() -> None:
    report = df.fork(None, busy_in_a_named_function, timeout=0.3).wait()
    assert report.outcome is df.Outcome.TIMED_OUT
    assert report.signal is signal.SIGTERM
    assert report.stack is not None and "busy_in_a_named_function" in report.stack


def test_cancelled_children_report_their_stacks() -> None:
    with pytest.raises(LookupError), df.Scope(grace=1) as scope:
        scope.fork(None, busy_in_a_named_function)
        time.sleep(0.2)
        raise LookupError
    (report,) = scope.reports
    assert report.outcome is df.Outcome.CANCELLED
    assert report.stack is not None and "busy_in_a_named_function" in report.stack


def exec_sleep(_: object) -> NoReturn:
    df.exec_child(["sleep", "30"])


def test_an_execd_child_has_no_stack_and_is_not_killed_by_the_stack_signal() -> None:
    report = df.fork(None, exec_sleep, timeout=0.3).wait()
    assert report.execed and report.stack is None
    assert report.signal is signal.SIGTERM  # not the real-time stack signal


def test_clean_ends_have_no_stack() -> None:
    assert df.fork(0.0, nap).wait().stack is None


# --- 13. tracebacks are the user's ---------------------------------------------------------


def raise_deep(_: object) -> NoReturn:
    def inner() -> NoReturn:
        raise ValueError("distinctive")

    inner()


def test_a_childs_traceback_has_no_divergefork_frames() -> None:
    report = df.fork(None, raise_deep).wait()
    assert report.outcome is df.Outcome.RAISED
    assert report.error is not None
    assert "raise_deep" in report.error and "inner" in report.error and "ValueError: distinctive" in report.error
    assert str(inspect.getsourcefile(_child)) not in report.error
