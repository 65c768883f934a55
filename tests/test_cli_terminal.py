"""``divergefork run`` on a real terminal: the live view, a resize, Ctrl-C, ``NO_COLOR``, colour.

Two kinds of terminal: tmux (a terminal emulator we can read as a screen, resize and type
Ctrl-C into), and a bare pseudo-terminal from the ``pty`` module, read as raw bytes, for what
exactly goes over the wire. Off a terminal (pipes) there must be no control code at all.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import pty
import re
import select
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_cli import FIXTURES, dfx, divergefork, environment

pytestmark = pytest.mark.timeout(90)

HERE = Path(__file__).parent
SCREEN_FIXTURE = HERE / "fixtures" / "final_screen.txt"
#: Any escape sequence (CSI or a lone ESC): what must never reach a pipe.
ESCAPE = re.compile(r"\x1b")
SGR = re.compile(r"\x1b\[[0-9;]*m")

_sockets = itertools.count()


class Tmux:
    """One tmux server of our own (a private socket) running one command in a pane."""

    def __init__(self, command: list[str], env: dict[str, str], columns: int = 100, rows: int = 30) -> None:
        self.socket = f"dftest-{os.getpid()}-{next(_sockets)}"
        variables = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items() if key in _PASSED)
        unset = " ".join(f"-u {key}" for key in ("NO_COLOR", "FORCE_COLOR") if key not in env)
        line = f"env {unset} {variables} {shlex.join(command)}; echo \"[exit $?]\"; sleep 600"
        self._tmux("new-session", "-d", "-x", str(columns), "-y", str(rows), "-s", "t", line)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True, timeout=20
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        """The visible screen, lines the terminal wrapped joined again, trailing blank lines dropped."""
        return "\n".join(line.rstrip() for line in self._tmux("capture-pane", "-p", "-J", "-t", "t").splitlines()).rstrip("\n")

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed what was waited for:\n{screen}")
            time.sleep(0.05)

    def finished(self) -> tuple[int, str]:
        screen = self.wait_for(lambda text: "[exit " in text)
        status = int(re.findall(r"\[exit (\d+)\]", screen)[-1])
        return status, screen[: screen.rindex("[exit ")].rstrip("\n")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def resize(self, columns: int, rows: int) -> None:
        self._tmux("resize-window", "-t", "t", "-x", str(columns), "-y", str(rows))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20)


_PASSED = ("PATH", "PYTHONPATH", "DIVERGEFORK_DISABLE_PLUGIN_AUTOLOAD", "NO_COLOR", "HOME", "LANG")


@pytest.fixture
def tmux() -> Iterator[Callable[..., Tmux]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    started: list[Tmux] = []

    def start(*args: str, columns: int = 100, rows: int = 30, **extra: str) -> Tmux:
        session = Tmux(
            [sys.executable, "-m", "divergefork", "run", *args], environment(autoload=False, **extra), columns=columns, rows=rows
        )
        started.append(session)
        return session

    yield start
    for session in started:
        session.close()


def on_pty(args: list[str], columns: int = 100, rows: int = 30, **extra: str) -> tuple[int, str]:
    """Run ``divergefork run ARGS`` with stdout and stderr on a bare pty; its status and bytes."""
    env = environment(autoload=False, **extra)
    if "NO_COLOR" not in extra:
        env.pop("NO_COLOR", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execve(sys.executable, [sys.executable, "-m", "divergefork", "run", *args], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    data = b""
    try:
        while select.select([fd], [], [], 30)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the command ended and closed its side
                break
            if not chunk:
                break
            data += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), data.decode("utf-8", "replace")


# -- each state, on a screen ---------------------------------------------------------------------


def test_running_children_show_with_elapsed_time_updated_in_place(tmux: Callable[..., Tmux]) -> None:
    session = tmux(*dfx("a=ok", "s1=slow", "s2=slow", "s3=slow"), "--jobs", "2")
    first = session.wait_for(lambda text: "RUNNING" in text and "queued" in text)
    assert re.search(r"RUNNING \[\s+[\d.]+s\] \d/4 done, 2 running, [12] queued", first), first
    # A later look at the same child: its elapsed time has grown, on the same line (in place).
    def elapsed(text: str) -> float:
        found = re.findall(r"\[\s+([\d.]+)s\] s1$", text, re.MULTILINE)
        return float(found[0]) if found else -1.0

    before = session.wait_for(lambda text: elapsed(text) >= 0.2)
    after = session.wait_for(lambda text: elapsed(text) >= elapsed(before) + 0.3)
    assert after.count("RUNNING") == 1, after  # redrawn, not appended
    status, screen = session.finished()
    assert status == 0
    assert "RUNNING" not in screen  # the region is gone at the end
    assert re.search(r"^\s+ok \[\s+[\d.]+s\] s1$", screen, re.MULTILINE)  # a line per finished child
    assert screen.splitlines()[-1].startswith("4 ok in ")  # the verdict stays last


def test_finished_lines_output_lines_and_the_final_table_stay_on_screen(tmux: Callable[..., Tmux]) -> None:
    session = tmux(*dfx("a=ok", "b=fail", "c=raise", "t=talk"))
    status, screen = session.finished()
    assert status == 1
    lines = screen.splitlines()
    # Output lines whole, each with its child's name, never torn by the status region.
    assert [line for line in lines if line.startswith("t | ")] == [f"t | t says {n}" for n in range(5)]
    assert re.search(r"^\s+FAILED \[\s+[\d.]+s\] b  exited 42$", screen, re.MULTILINE)
    assert re.search(r"^\s+RAISED \[\s+[\d.]+s\] c  raised 1$", screen, re.MULTILINE)
    # The traceback once, in the failure details, without divergefork's own frames.
    assert screen.count("ValueError: fixture boom") == 1
    assert "_child.py" not in screen
    table = lines.index(next(line for line in lines if line.startswith("NAME ")))
    assert [line.split()[0] for line in lines[table + 1 : table + 5]] == ["a", "b", "c", "t"]
    assert lines[-1].startswith("2 ok, 1 failed, 1 raised in ")


def test_a_resize_mid_run_leaves_no_stale_status_lines(tmux: Callable[..., Tmux]) -> None:
    session = tmux(*dfx("s1=slow", "s2=slow", "t=talk"), columns=100, rows=30)
    session.wait_for(lambda text: "RUNNING" in text and "s2" in text)
    session.resize(50, 20)
    narrow = session.wait_for(lambda text: "t says 2" in text and "RUNNING" in text)
    assert narrow.count("RUNNING") == 1, narrow
    assert all(len(line) <= 50 for line in narrow.splitlines())
    session.resize(120, 30)
    status, screen = session.finished()
    assert status == 0
    assert "RUNNING" not in screen
    assert screen.splitlines()[-1].startswith("3 ok in ")


def test_ctrl_c_mid_run_says_what_happened_to_each_child(tmux: Callable[..., Tmux], tmp_path: Path) -> None:
    session = tmux(*dfx("a=ok", "l1=loop", "l2=loop", "q=loop"), "--jobs", "2", "--dfx-dir", str(tmp_path))
    session.wait_for(lambda text: "1/4 done" in text and (tmp_path / "l2.pid").exists())
    time.sleep(0.1)  # the pid files are written: let their writes end
    pids = [int((tmp_path / f"{name}.pid").read_text()) for name in ("l1", "l2")]
    session.keys("C-c")
    status, screen = session.finished()
    assert status == 130, screen
    screen = screen.replace("\n", " ")
    # (by SIGTERM; a child started from the queue may need the SIGKILL after its grace)
    assert "2 running children were stopped (l1, l2)" in screen, screen
    assert "1 queued child was never started (q)" in screen
    assert "1 other child had already ended" in screen
    assert "RUNNING" not in screen
    assert "^C" not in screen  # the terminal's echo never runs into our text
    assert " NAME PID OUTCOME " in re.sub(" +", " ", screen)
    assert re.search(r"1 ok, 3 cancelled in [\d.]+ s \(interrupted by Ctrl-C\)$", screen)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_the_final_screen_matches_the_fixture(tmux: Callable[..., Tmux]) -> None:
    session = tmux(*dfx("hello=ok", "greeter=print", "broken=fail", "crash=raise"), "--capture", columns=90, rows=40)
    status, screen = session.finished()
    assert status == 1
    final = screen[screen.index("NAME ") :]
    assert normalise(final) == normalise(SCREEN_FIXTURE.read_text()), final


def normalise(text: str) -> str:
    """A screen with what changes from run to run (pids, times, sizes, spacing) made equal."""
    text = re.sub(r"\b\d+\.\d+ ?(s|MiB|KiB|GiB)\b", r"<n> \1", text)
    text = re.sub(r"\b\d+\.\d+s\b", "<n>s", text)
    text = re.sub(r"(pid )\d+", r"\1<pid>", text)
    text = re.sub(r"^(\S+ +)\d+( +)", r"\1<pid>\2", text, flags=re.MULTILINE)
    text = re.sub(r"line \d+", "line <n>", text)
    text = re.sub(r'File "[^"]*dfx_children.py"', 'File "dfx_children.py"', text)
    return "\n".join(re.sub(r" +", " ", line).strip() for line in text.strip().splitlines())


# -- raw bytes on a pty, and pipes ---------------------------------------------------------------


def test_no_color_keeps_the_live_view_but_drops_every_colour() -> None:
    status, raw = on_pty(dfx("a=ok", "b=fail", "s=slow"), NO_COLOR="1")
    assert status == 1
    assert not SGR.search(raw), raw
    assert "\x1b[J" in raw  # still redrawn in place
    assert "RUNNING" in raw


def test_colour_on_a_terminal_by_default_and_never_with_color_never() -> None:
    status, raw = on_pty(dfx("a=ok", "b=fail"))
    assert status == 1
    assert "\x1b[32m" in raw and "\x1b[31m" in raw  # green ok, red failure
    status, raw = on_pty([*dfx("a=ok", "b=fail"), "--color", "never"])
    assert status == 1 and not SGR.search(raw)


def test_off_a_terminal_plain_lines_and_no_control_codes() -> None:
    done = divergefork("run", *dfx("a=ok", "b=fail", "t=talk"), "--capture")
    assert done.returncode == 1
    assert not ESCAPE.search(done.stdout + done.stderr)
    assert re.search(r"^\s+FAILED \[\s+[\d.]+s\] b  exited 42$", done.stderr, re.MULTILINE)
    assert "t | t says 4\n" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("2 ok, 1 failed in ")


def test_color_always_colours_even_a_pipe_and_beats_no_color() -> None:
    done = divergefork("run", *dfx("a=ok"), "--color", "always", NO_COLOR="1")
    assert done.returncode == 0
    assert "\x1b[32m1 ok\x1b[0m in " in done.stdout


def test_quiet_on_a_terminal_prints_the_verdict_only() -> None:
    status, raw = on_pty([*dfx("a=ok", "b=ok"), "-q"])
    assert status == 0
    assert raw.strip().startswith("\x1b[32m2 ok\x1b[0m in ")
    assert "NAME" not in raw and "RUNNING" not in raw


def test_the_region_never_splits_a_childs_line(tmux: Callable[..., Tmux]) -> None:
    session = tmux(*dfx("t1=talk", "t2=talk", "t3=talk"))
    status, screen = session.finished()
    assert status == 0
    said = [line for line in screen.splitlines() if " | " in line]
    assert len(said) == 15
    assert all(re.fullmatch(r"(t\d) \| \1 says \d", line) for line in said), said


def test_fixture_is_in_the_readme() -> None:
    readme = (HERE.parent / "README.md").read_text()
    assert normalise(SCREEN_FIXTURE.read_text()) in normalise(readme)


_ = FIXTURES  # the plugin fixtures' directory is put on PYTHONPATH by environment()
