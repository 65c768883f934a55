"""An interrupt at any line of the waiting loop loses no child, no report and no descriptor.

Each case delivers a real signal (``os.kill`` to ourselves; its handler is Python's
``default_int_handler``, so it raises ``KeyboardInterrupt``) when execution first reaches one
line of one function of the loop. ``sys.settrace`` only picks the moment; nothing is mocked.
Where divergefork blocks signals the handler runs only once they are unblocked, at a point
where nothing is half-done, which is what these tests check, line by line.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any, NoReturn

import pytest
from conftest import child_pids

import divergefork as df
from divergefork import _forensics, _fork, _waiter
from divergefork._waiter import Waiter

_SIGNAL = signal.SIGUSR1  # not SIGINT: a harness may have started us with SIGINT ignored


def _body_lines(code: CodeType) -> list[int]:
    return sorted({line for _, _, line in code.co_lines() if line is not None and line > code.co_firstlineno})


def _interrupt_at(code: CodeType, line: int) -> list[bool]:
    """Send the signal once, when ``line`` of ``code`` is first reached; the list says if it was."""
    sent: list[bool] = []

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == line and not sent:
            sent.append(True)
            sys.settrace(None)
            os.kill(os.getpid(), _SIGNAL)
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code is code else None

    sys.settrace(calls)
    return sent


@pytest.fixture(autouse=True)
def interrupting_signal() -> Iterator[None]:
    previous = signal.signal(_SIGNAL, signal.default_int_handler)
    try:
        yield
    finally:
        sys.settrace(None)
        signal.signal(_SIGNAL, previous)


def exit_with(code: int) -> NoReturn:
    df.exit_child(code, result={"code": code})


def nap_then_exit(seconds: float) -> NoReturn:
    time.sleep(seconds)
    df.exit_child(0)


def sleep_forever(_: object) -> NoReturn:
    while True:
        time.sleep(60)


def _scenario(leave_by_error: bool) -> list[str]:
    """Four children, one of them queued (max_parallel) and one past its deadline; the block
    either waits for them all or is left by an exception after the first report."""
    scope = df.Scope(max_parallel=3, grace=0.05)
    try:
        with scope:
            scope.fork(3, exit_with, name="a")
            scope.fork(0.02, nap_then_exit, name="b")
            scope.fork(None, sleep_forever, name="c", timeout=0.05)
            scope.fork(0, exit_with, name="d")
            for _ in scope.as_completed():
                if leave_by_error:
                    raise LookupError("leaving the block")
    except (KeyboardInterrupt, LookupError):
        pass
    return sorted(report.name for report in scope.reports)


LOOP: list[Callable[..., object]] = [
    _fork.start,
    Waiter.add,
    Waiter.step,
    Waiter._step,
    Waiter._reap,
    Waiter._read,
    Waiter.end,
    Waiter._advance,
    Waiter._terminate,
    Waiter._enforce_deadlines,
    _waiter.finish,
    _waiter._read,
    _waiter.build_report,
    df.Scope.fork,
    df.Scope.as_completed,
    df.Scope._fill,
    df.Scope._collect,
    df.Scope._cancel,
    df.Scope.__exit__,
]


CASES = [
    pytest.param(function, leave_by_error, id=f"{function.__qualname__}-{'left-by-error' if leave_by_error else 'waited'}")
    for function in LOOP
    for leave_by_error in (False, True)
    if leave_by_error or function is not df.Scope._cancel  # only an error leads there
]


def _lone_children() -> list[str]:
    """Lone children: one waited for with nothing else to watch, one with a deadline."""
    names = []
    for name, options in (("plain", {}), ("deadline", {"timeout": 30.0})):
        try:
            child = df.fork(5, exit_with, name=name, **options)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            continue  # interrupted inside start(): nothing may be left behind (checked below)
        while True:
            try:
                names.append(child.wait().name)
                break
            except KeyboardInterrupt:
                continue  # the child is still ours: waiting again must give its report
    return names


# An interrupt on the way into a fork may keep that child, and the ones after it, from being
# forked at all; what must hold is that no child is left behind and no descriptor leaks.
FORK_PATH = {_fork.start, Waiter.add, df.Scope.fork}

LONE: list[Callable[..., object]] = [_fork.start, df.Child.wait, _waiter.wait_blocking, _waiter.finish, _waiter.build_report]


@pytest.mark.parametrize("function", LONE, ids=[f.__qualname__ for f in LONE])
def test_an_interrupt_at_any_line_of_a_lone_childs_life_loses_nothing(function: Callable[..., object]) -> None:
    code = getattr(function, "__code__")
    _forensics.stack_fd()  # opened once per process, at its first fork: not a leak
    before = sorted(os.listdir("/proc/self/fd"))
    hit = 0
    lines = _body_lines(code)
    # Python may run a pending handler as soon as start() has returned, before its caller has
    # stored the handle: no code of ours runs there. The dropped handle then hands the child
    # to the next fork(), which reaps it (with a ResourceWarning); only its report is lost.
    unguarded = {lines[-1]} if function is _fork.start else set()
    for line in lines:
        sent = _interrupt_at(code, line)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            names = _lone_children()
            if line in unguarded:
                gc.collect()
                df.fork(0, exit_with).wait()  # reaps what the dropped handle left
        sys.settrace(None)
        hit += bool(sent)
        if function is not _fork.start:
            assert names == ["plain", "deadline"], f"interrupted at line {line}: reports for {names}"
        assert not child_pids(), f"interrupted at line {line}: children left behind"
        assert sorted(os.listdir("/proc/self/fd")) == before, f"interrupted at line {line}: descriptors leaked"
    assert hit > 0, "no line of the function was reached: the test would prove nothing"


@pytest.mark.parametrize(("function", "leave_by_error"), CASES)
def test_an_interrupt_at_any_line_loses_nothing(function: Callable[..., object], leave_by_error: bool) -> None:
    code = getattr(function, "__code__")
    lines = _body_lines(code)
    _forensics.stack_fd()  # opened once per process, at its first fork: not a leak
    # Python runs a pending handler as a function starts, before its first line: nothing can
    # guard that instant of __exit__ (its first line is its `try:`). Scope.__del__ then ends
    # and reaps the children, but the reports of those it had to kill are lost.
    unguarded = {lines[0]} if function is df.Scope.__exit__ else set()
    before = sorted(os.listdir("/proc/self/fd"))
    hit = 0
    for line in lines:
        sent = _interrupt_at(code, line)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # the backstop's, for `unguarded`
            names = _scenario(leave_by_error)
        sys.settrace(None)
        hit += bool(sent)
        if function in FORK_PATH:
            assert set(names) <= {"a", "b", "c", "d"}, f"interrupted at line {line}: reports for {names}"
        elif line not in unguarded:
            assert names == ["a", "b", "c", "d"], f"interrupted at line {line}: reports for {names}"
        assert not child_pids(), f"interrupted at line {line}: children left behind"
        assert sorted(os.listdir("/proc/self/fd")) == before, f"interrupted at line {line}: descriptors leaked"
    assert hit > 0, "no line of the function was reached: the test would prove nothing"
