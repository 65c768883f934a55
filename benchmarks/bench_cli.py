"""What the live view costs: ``divergefork run`` of 500 children on a terminal, live vs ``-q``.

Both run as whole processes on a real pseudo-terminal (our side reads it as fast as it can,
as a terminal emulator would), interleaved round after round; we print the median wall time
of each and the median of per-round ratios. The target: live within 1.05x of ``-q``.

The children come from a plugin written to a temporary directory: each sleeps ``--sleep``
seconds (spread, so that they end one by one) and, with ``--talk``, prints a line, which the
live view shows prefixed with the child's name.

Also: the import time of the command line (``python -X importtime``): what every
``divergefork`` invocation pays before it does anything.

    .venv/bin/python benchmarks/bench_cli.py [--children 500] [--rounds 5] [--talk]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

PLUGIN = '''\
import os, time
import divergefork as df

def entry(value):
    index, sleep, talk = value
    time.sleep(sleep)
    if talk:
        print(f"child {index} says hello")
    df.exit_child(0)

@df.hookimpl
def divergefork_children(config):
    n = int(os.environ["BENCH_CHILDREN"])
    sleep = float(os.environ["BENCH_SLEEP"])
    talk = os.environ.get("BENCH_TALK") == "1"
    return [df.ChildSpec(f"c{i:04d}", (i, sleep * (1 + i / n), talk), entry) for i in range(n)]
'''


def on_pty(argv: list[str], env: dict[str, str], columns: int = 120, rows: int = 40) -> tuple[float, int, int]:
    """Run ``argv`` with stdout and stderr on a new pty; wall seconds, exit status, bytes shown."""
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        os.execve(argv[0], argv, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    shown = 0
    while True:
        ready, _, _ = select.select([fd], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(fd, 1 << 16)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        shown += len(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return time.perf_counter() - started, os.waitstatus_to_exitcode(status), shown


def import_time(python: str) -> float:
    """Seconds ``import divergefork._cli`` takes in a fresh interpreter (cumulative, -X importtime)."""
    done = subprocess.run(
        [python, "-X", "importtime", "-c", "import divergefork._cli"], capture_output=True, text=True, check=True
    )
    total = 0
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if match and match.group(3) == "divergefork._cli":
            total = int(match.group(1))
    return total / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds each child sleeps (spread up to 2x)")
    parser.add_argument("--talk", action="store_true", help="every child prints one line")
    options = parser.parse_args()
    divergefork = str(Path(sys.executable).with_name("divergefork"))
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "bench_cli_children.py").write_text(PLUGIN)
        env = dict(os.environ)
        env.update(
            PYTHONPATH=directory,
            DIVERGEFORK_DISABLE_PLUGIN_AUTOLOAD="1",
            BENCH_CHILDREN=str(options.children),
            BENCH_SLEEP=str(options.sleep),
            BENCH_TALK="1" if options.talk else "0",
            TERM="xterm-256color",
        )
        env.pop("NO_COLOR", None)
        base = [divergefork, "run", "-p", "bench_cli_children"]
        live: list[float] = []
        quiet: list[float] = []
        ratios: list[float] = []
        shown = {"live": 0, "quiet": 0}
        on_pty(base + ["-q"], env)  # warm the page cache and the bytecode cache
        for _ in range(options.rounds):
            q, q_status, q_shown = on_pty(base + ["-q"], env)
            v, v_status, v_shown = on_pty(base, env)
            if q_status or v_status:
                print(f"a run failed: -q exit {q_status}, live exit {v_status}", file=sys.stderr)
                return 1
            quiet.append(q)
            live.append(v)
            ratios.append(v / q)
            shown = {"live": v_shown, "quiet": q_shown}
    ratio = statistics.median(ratios)
    print(f"{options.children} children, {options.rounds} rounds{', each printing a line' if options.talk else ''}")
    print(f"  -q:   median wall {statistics.median(quiet):.3f} s ({shown['quiet']} bytes to the terminal)")
    print(f"  live: median wall {statistics.median(live):.3f} s ({shown['live']} bytes to the terminal)")
    print(f"  live / -q: median of per-round ratios {ratio:.3f} (target <= 1.05): {'ok' if ratio <= 1.05 else 'MISSED'}")
    print(f"  import divergefork._cli: {import_time(sys.executable) * 1000:.1f} ms (cumulative, -X importtime)")
    return 0 if ratio <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
