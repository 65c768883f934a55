"""Cost of the mypy gate: ``divergefork check`` against plain ``mypy --strict`` on the project itself.

Both check ``src``, ``plugins`` and ``tests`` with the project's own mypy config (which loads the
divergefork plugin), each with a cache directory of its own (``MYPY_CACHE_DIR``):

- cold: the cache emptied before every run;
- warm: the cache filled by a first run, nothing changed since.

The two commands alternate, round after round, so machine noise hits them alike; we print the
median of each and their ratios. Targets: warm at most 1.5x, cold at most 2x.

    .venv/bin/python benchmarks/bench_check.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"warm": 1.5, "cold": 2.0}
PATHS = ["src", "plugins", "tests"]


def check_command() -> list[str]:
    return [sys.executable, "-m", "divergefork", "check", "--config-file", "mypy.ini", *PATHS]


def plain_command() -> list[str]:
    return [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--strict", *PATHS]


def timed(command: list[str], cache: Path) -> tuple[float, int]:
    env = {**os.environ, "MYPY_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"{command[:4]}... failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return elapsed, result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[tuple[str, str], list[float]] = {}
    statuses: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-check-") as temp:
        caches = {"gate": Path(temp) / "gate", "plain": Path(temp) / "plain"}
        commands = {"gate": check_command(), "plain": plain_command()}
        for _ in range(args.rounds):
            for side, command in commands.items():
                shutil.rmtree(caches[side], ignore_errors=True)
                elapsed, statuses[side] = timed(command, caches[side])
                times.setdefault((side, "cold"), []).append(elapsed)
                elapsed, statuses[side] = timed(command, caches[side])
                times.setdefault((side, "warm"), []).append(elapsed)
    print(f"files: {', '.join(PATHS)} (mypy.ini), {args.rounds} rounds")
    ok = True
    for kind, target in TARGETS.items():
        plain = statistics.median(times[("plain", kind)])
        gate = statistics.median(times[("gate", kind)])
        ratio = gate / plain
        ok = ok and ratio <= target
        print(f"{kind}: plain mypy --strict {plain:6.2f} s (exit {statuses['plain']})   "
              f"divergefork check {gate:6.2f} s (exit {statuses['gate']})   ratio {ratio:.2f}x (target <= {target}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
