"""Run every benchmark in turn (``make bench``). Each prints its own ratios and targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ["bench_fork.py", "--ballast-mb", "0", "10", "256", "1024"],
    ["bench_fanout.py"],
    ["bench_race.py"],
    ["bench_check.py"],
]


def main() -> int:
    status = 0
    for script, *args in BENCHMARKS:
        print(f"== {script} {' '.join(args)}", flush=True)
        status |= subprocess.run([sys.executable, str(HERE / script), *args], check=False).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
