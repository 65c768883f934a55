"""Containment (``_contain``): real process trees, frozen and killed; nothing else touched.

Every process a test starts carries the test's token in its command line (``sleep
1000.<token>``, or a comment in ``python -c``), so what it started can be found by scanning
``/proc`` afterwards even when it was reparented to init. Throughout each test an unrelated
``subprocess.Popen`` child of the test process runs, and must still run at the end.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import pid_alive, wait_until

from divergefork import _contain, _linux

# Both ways of signalling a descendant: through a pidfd, and by pid with the start-time check.
pytestmark = pytest.mark.usefixtures("reaping")


# --- what a test started, and what it must not touch ----------------------------------------


def with_token(token: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line holds ``token``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmdline and pid_alive(int(name)):
            found.append(int(name))
    return found


@pytest.fixture
def token() -> Iterator[str]:
    """A mark for this test's processes; fails the test if any of them is left running."""
    mark = str(random.randrange(10**8, 10**9))
    unrelated = subprocess.Popen(["sleep", "1000"])
    try:
        yield mark
        # Killed processes may take a moment to disappear; an escaped one never does.
        wait_until(lambda: not with_token(mark), timeout=3)
        left = with_token(mark)
        assert unrelated.poll() is None, "containment killed an unrelated child of the test process"
    finally:
        unrelated.kill()
        unrelated.wait()
    if left:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        pytest.fail(f"processes started by the test are still running: {left}")


def sleeper(token: str, n: int = 0) -> str:
    """A shell word: a ``sleep`` marked with the test's token."""
    return f"sleep {1000 + n}.{token}"


def tree_script(token: str, pids: Path) -> str:
    """Shell that leaves four processes behind and exits: the escapes containment must catch."""
    record = f"echo $$ >> {pids}; exec"
    return "\n".join(
        [
            # A new session and process group: out of reach of any group kill.
            f"setsid sh -c '{record} {sleeper(token, 1)}' &",
            # A double fork: the subshell exits, its child is orphaned at once.
            f"( sh -c '{record} {sleeper(token, 2)}' & ) &",
            # A daemon-style grandchild of a grandchild, in its own session.
            f"( setsid sh -c '( sh -c \"{record} {sleeper(token, 3)}\" & ); {record} {sleeper(token, 4)}' & ) &",
            "exit 0",
        ]
    )


# Both loops are bounded: pid_max may be as low as 32768, and other work shares the machine.
HOPPER = """
# {token}
import os, time
# Each generation forks and exits at once: a process that keeps changing its pid.
for _ in range(2000):
    if os.fork():
        os._exit(0)
time.sleep(1000)
"""

MULTIPLIER = """
# {token}
import os, time
# Keeps adding sleeping children while it is being killed.
for _ in range(300):
    if os.fork() == 0:
        time.sleep(1000)
        os._exit(0)
    time.sleep(0.002)
time.sleep(1000)
"""


def read_pids(path: Path, count: int) -> list[int]:
    assert wait_until(lambda: path.exists() and len(path.read_text().split()) >= count, timeout=10)
    return [int(p) for p in path.read_text().split()]


def in_raw_child(body: Callable[[], int]) -> int:
    """Run ``body`` in a plain forked child that is a subreaper; return its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            _contain.become_subreaper()
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def leave_tree(token: str, pids: Path) -> None:
    subprocess.run(["sh", "-c", tree_script(token, pids)], check=True)
    read_pids(pids, 4)


# --- the subreaper and the cheap check -----------------------------------------------------


def test_the_child_becomes_a_subreaper() -> None:
    assert in_raw_child(lambda: 42 if _contain.is_subreaper() else 1) == 42
    assert not _contain.is_subreaper()  # nothing changes in the parent


def test_nothing_left_costs_one_waitid_and_kills_nothing(token: str) -> None:
    def body() -> int:
        assert not _contain.has_children()
        return 40 + _contain.kill_leftovers()

    assert in_raw_child(body) == 40


def test_a_reaped_subprocess_is_not_a_leftover(token: str) -> None:
    def body() -> int:
        subprocess.run(["true"], check=True)
        return 40 + _contain.kill_leftovers()

    assert in_raw_child(body) == 40


def test_orphans_are_reparented_to_the_child(token: str, tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    def body() -> int:
        leave_tree(token, pids)
        mine = os.getpid()
        parents = {int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) for p in read_pids(pids, 4)}
        _contain.kill_leftovers()
        return 42 if parents <= {mine} | set(read_pids(pids, 4)) else 1

    assert in_raw_child(body) == 42


# --- the child kills what it leaves ---------------------------------------------------------


def test_child_kills_setsid_and_double_forked_leftovers(token: str, tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    def body() -> int:
        leave_tree(token, pids)
        return 40 + _contain.kill_leftovers()

    assert in_raw_child(body) == 44
    assert not any(pid_alive(p) for p in read_pids(pids, 4))


def test_child_kills_its_own_running_subprocess(token: str) -> None:
    def body() -> int:
        subprocess.Popen(["sh", "-c", f"exec {sleeper(token)}"])
        return 40 + _contain.kill_leftovers()

    assert in_raw_child(body) == 41


@pytest.mark.parametrize("script", [HOPPER, MULTIPLIER], ids=["hopper", "multiplier"])
def test_child_outruns_a_fork_loop(token: str, script: str) -> None:
    def body() -> int:
        subprocess.Popen([sys.executable, "-c", script.format(token=token)])
        time.sleep(0.3)  # let it run away
        return 42 if _contain.kill_leftovers() >= 1 else 1

    assert in_raw_child(body) == 42


# --- the parent kills a running child's tree ------------------------------------------------


def contained_child(token: str, tmp_path: Path, setup: Callable[[], None]) -> int:
    """Fork a subreaper child that runs ``setup`` and then sleeps; return its pid once ready."""
    ready = tmp_path / "ready"
    pid = os.fork()
    if pid == 0:
        try:
            _contain.become_subreaper()
            setup()
            ready.touch()
            time.sleep(1000)
        finally:
            os._exit(99)
    assert wait_until(ready.exists, timeout=20)
    return pid


def end_stopped(pid: int) -> None:
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "T", "kill_descendants leaves the child stopped for its caller"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_parent_kills_the_tree_of_a_running_child(token: str, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    child = contained_child(token, tmp_path, lambda: leave_tree(token, pids))
    pidfd = _linux.pidfd_open(child)
    try:
        assert _contain.kill_descendants(child, pidfd) == 4
        end_stopped(child)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    assert wait_until(lambda: not any(pid_alive(p) for p in read_pids(pids, 4)), timeout=3)


@pytest.mark.parametrize("script", [HOPPER, MULTIPLIER], ids=["hopper", "multiplier"])
def test_parent_outruns_a_fork_loop(token: str, tmp_path: Path, script: str) -> None:
    def setup() -> None:
        subprocess.Popen([sys.executable, "-c", script.format(token=token)])
        time.sleep(0.3)

    child = contained_child(token, tmp_path, setup)
    assert _contain.kill_descendants(child, None) >= 1
    end_stopped(child)


def test_parent_leaves_a_child_without_descendants_alone(token: str, tmp_path: Path) -> None:
    child = contained_child(token, tmp_path, lambda: None)
    assert _contain.kill_descendants(child, None) == 0
    end_stopped(child)


def test_parent_never_touches_its_own_other_children(token: str, tmp_path: Path) -> None:
    # A sibling of the contained child (the test's own subprocess) and the sibling's children:
    # none of them is under the contained child, so none may be stopped or killed.
    sibling = subprocess.Popen(["sh", "-c", f"{sleeper(token, 5)} & wait"])
    try:
        child = contained_child(token, tmp_path, lambda: None)
        assert _contain.kill_descendants(child, None) == 0
        end_stopped(child)
        time.sleep(0.05)
        assert sibling.poll() is None
        state = Path(f"/proc/{sibling.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "T"
    finally:
        for pid in with_token(token):
            os.kill(pid, signal.SIGKILL)
        sibling.kill()
        sibling.wait()


# --- the supervisor of an exec'd child -------------------------------------------------------


def supervised(argv: list[str], out: Path, *, own_group: bool = True) -> Callable[[], int]:
    """A child body: exec ``argv`` under a supervisor; writes the count killed to ``out``."""

    def body() -> int:
        program, mask = _contain.start_program(own_group)
        if program == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.execvp(argv[0], argv)
        status, killed = _contain.supervise(program, own_group)
        out.write_text(str(killed))
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code

    return body


def test_supervisor_kills_what_an_execd_shell_left(token: str, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    pids = tmp_path / "pids"
    script = f"sh -c 'echo $$ >> {pids}; exec {sleeper(token)}' & exit 7"
    assert in_raw_child(supervised(["sh", "-c", script], out)) == 7
    assert out.read_text() == "1"
    assert not pid_alive(read_pids(pids, 1)[0])


def test_supervisor_passes_on_the_programs_signal(token: str, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    # The program dies by SIGTERM, which the supervisor itself forwarded to it.
    ready = tmp_path / "ready"
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            _contain.become_subreaper()
            script = f"setsid sh -c 'touch {ready}; exec {sleeper(token)}' & wait"
            code = supervised(["sh", "-c", script], out)()
        finally:
            os._exit(code)
    assert wait_until(ready.exists, timeout=10)
    time.sleep(0.1)
    os.kill(pid, signal.SIGTERM)  # to the supervisor only, not to the group
    _, status = os.waitpid(pid, 0)
    # sh's default SIGTERM ends it; the supervisor kills the sleep that sh left (in a session
    # of its own, so the forwarded SIGTERM missed it) and reports the signal (here as 128+15:
    # re-raising it is _child's job).
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
    assert out.read_text() == "1"


def test_supervisor_without_own_group(token: str, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    assert in_raw_child(supervised(["sh", "-c", f"({sleeper(token)} &); exit 5"], out, own_group=False)) == 5
    assert out.read_text() == "1"


def test_supervised_program_dies_with_its_supervisor(token: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    program_pid = tmp_path / "program"
    pid = os.fork()
    if pid == 0:
        try:
            _contain.become_subreaper()
            supervised(["sh", "-c", f"echo $$ > {program_pid}; touch {ready}; exec {sleeper(token)}"], tmp_path / "k")()
        finally:
            os._exit(99)
    assert wait_until(ready.exists, timeout=10)
    os.kill(pid, signal.SIGKILL)  # nothing in divergefork can run now: PDEATHSIG must do it
    os.waitpid(pid, 0)
    program = int(program_pid.read_text())
    assert wait_until(lambda: not pid_alive(program), timeout=3)
