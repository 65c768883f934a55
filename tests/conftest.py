"""Shared test fixtures. The autouse one fails any test that leaves a child process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def child_pids(parent: int | None = None) -> set[int]:
    """Pids of the live or zombie children of ``parent`` (default: this process), from /proc."""
    parent = os.getpid() if parent is None else parent
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            found.add(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes; return its last value."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def act_when_ready(
    command: list[str],
    *,
    ready: Callable[[subprocess.Popen[str]], object],
    act: Callable[[subprocess.Popen[str]], None],
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Start ``command``; once ``ready(proc)`` holds, ``act(proc)`` (send it a signal, kill one
    of its children...), then collect its output. It is killed if it outlives ``timeout``."""
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn
    )
    try:
        assert wait_until(lambda: ready(proc), timeout=20), f"{command} never got ready"
        act(proc)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def python_command(code: str) -> list[str]:
    """The one place tests build ``[sys.executable, "-c", code]``."""
    return [sys.executable, "-c", code]


@pytest.fixture(params=["pidfd", "polling"])
def reaping(request: pytest.FixtureRequest) -> Iterator[str]:
    """Reap with pidfds, then with the fallback that polls ``waitid`` (as without pidfds)."""
    from divergefork import _linux

    if request.param == "pidfd" and not _linux.have_pidfd():
        pytest.skip("this kernel has no pidfd")
    saved = _linux._have_pidfd
    _linux._have_pidfd = request.param == "pidfd"
    yield str(request.param)
    _linux._have_pidfd = saved


@pytest.fixture(autouse=True)
def no_child_left_behind() -> Iterator[None]:
    before = child_pids()
    yield
    left = child_pids() - before
    if left:
        # Clean up so one leak does not fail every following test, then fail this one.
        for pid in left:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
        pytest.fail(f"test left child processes behind: {sorted(left)}")


@pytest.fixture(autouse=True)
def no_signals_left_blocked() -> Iterator[None]:
    """divergefork blocks signals around fork and reap; it must always restore the mask."""
    import signal

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    after = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if after != before:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        pytest.fail(f"test left signals blocked: {sorted(after - before)}")


def _have_libatomic() -> bool:
    from divergefork import _atomic
    from divergefork._errors import DivergeforkError

    try:
        _atomic.load_fetch_add()
    except DivergeforkError:
        return False
    return True


#: ``sync="atomic"`` as a test parameter, skipped (with the reason) where libatomic is missing.
ATOMIC = pytest.param(
    "atomic",
    marks=pytest.mark.skipif(not _have_libatomic(), reason="libatomic.so.1 is not installed (package libatomic1)"),
)
