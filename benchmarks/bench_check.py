"""Cost of the mypy gate: ``divergefork check`` against plain ``mypy --strict`` on the same files.

Both run cold (no incremental cache), from a scratch directory with no mypy config of its own,
over the example plugins' packages (``plugins/*/<package>``; ``src/divergefork`` while there are
none). The two commands alternate, round after round, so machine noise hits them alike; we print
the median of each and their ratio. The target is a ratio of at most 2.

    .venv/bin/python benchmarks/bench_check.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from divergefork import _check

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 2.0


def targets() -> list[Path]:
    packages = sorted(
        package
        for dist in (ROOT / "plugins").glob("*")
        for package in dist.iterdir()
        if (package / "__init__.py").is_file()
    )
    return packages or [ROOT / "src" / "divergefork"]


def check_command(paths: list[Path]) -> list[str]:
    return [sys.executable, "-m", "divergefork", "check", *map(str, paths)]


def plain_command(paths: list[Path], config: Path) -> list[str]:
    # The gate's own mypy command line, so both sides differ only by the plugin in the config.
    return _check.mypy_command(config, [str(p) for p in paths])


def timed(command: list[str], cwd: Path) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"{command[:4]}... failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return elapsed, result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    paths = targets()
    with tempfile.TemporaryDirectory(prefix="bench-check-") as temp:
        scratch = Path(temp)
        (scratch / ".git").mkdir()  # stop the config search here: both run with defaults
        empty = scratch / "empty.ini"
        empty.write_text("[mypy]\n")
        gate, plain = [], []
        for _ in range(args.rounds):
            elapsed, gate_status = timed(check_command(paths), scratch)
            gate.append(elapsed)
            elapsed, plain_status = timed(plain_command(paths, empty), scratch)
            plain.append(elapsed)
    ratio = statistics.median(gate) / statistics.median(plain)
    print(f"files: {', '.join(str(p.relative_to(ROOT)) for p in paths)}")
    print(f"plain mypy --strict     median {statistics.median(plain):6.2f} s  (exit {plain_status})")
    print(f"divergefork check       median {statistics.median(gate):6.2f} s  (exit {gate_status})")
    print(f"ratio {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x) over {args.rounds} cold runs each")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
