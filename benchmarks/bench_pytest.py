"""Per-test overhead of ``pytest --fork`` against plain pytest and against pytest-forked.

The same file of trivial tests is run as whole pytest processes, interleaved round after round
so that machine noise hits every variant alike: plain pytest, ``--fork`` and pytest-forked's
``--forked``. pytest-forked fails every test on pytest 9, so it runs in a venv of its own with
the newest pytest where it works (``pytest<9``), and ``--fork`` and plain run there too: the
ratio compares the two plugins on the same pytest. ``--fork`` is also timed on this venv's
pytest. The overhead per test is (variant's median wall time - plain's median) / tests.

    .venv/bin/python benchmarks/bench_pytest.py [--tests 300] [--rounds 7] [--venv DIR]

Target (SPEC section 7, issue 14): our overhead per test at most 0.8x pytest-forked's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.8


def forked_venv(path: Path) -> Path:
    """A venv with pytest-forked on the newest pytest it works with, and divergefork."""
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "pytest-forked", "pytest<9", "typing-extensions"],
            check=True,
        )
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(REPO)], check=True)
    return python


def timed(python: Path, directory: Path, *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_many.py"],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{python} -m pytest {' '.join(args)} failed:\n{proc.stdout[-2000:]}")
    return elapsed


def version(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import pytest; print(pytest.__version__)"], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "divergefork-bench-forked")
    args = parser.parse_args()
    here = Path(sys.executable)
    other = forked_venv(args.venv)
    variants = {
        f"plain (pytest {version(other)})": (other, ()),
        f"--forked (pytest-forked, pytest {version(other)})": (other, ("--forked",)),
        f"--fork (pytest {version(other)})": (other, ("--fork",)),
        f"plain (pytest {version(here)})": (here, ()),
        f"--fork (pytest {version(here)})": (here, ("--fork",)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="df-bench-pytest-") as temporary:
        directory = Path(temporary)
        body = "".join(f"def test_{i}():\n    pass\n" for i in range(args.tests))
        (directory / "test_many.py").write_text(body)
        for name, (python, extra) in variants.items():
            timed(python, directory, *extra)  # warm the caches (bytecode, page cache)
        for _ in range(args.rounds):
            for name, (python, extra) in variants.items():
                times[name].append(timed(python, directory, *extra))
    median = {name: statistics.median(values) for name, values in times.items()}
    names = list(variants)
    print(f"{args.tests} trivial tests, median of {args.rounds} interleaved rounds (whole pytest processes):")
    for name in names:
        print(f"  {name:45} {median[name]:6.2f} s")

    def overhead(variant: str, plain: str) -> float:
        return (median[variant] - median[plain]) / args.tests * 1e3

    forked = overhead(names[1], names[0])
    ours_same = overhead(names[2], names[0])
    ours_here = overhead(names[4], names[3])
    ratio = ours_same / forked
    print(f"per-test overhead: pytest-forked {forked:.2f} ms, --fork {ours_same:.2f} ms on the same pytest "
          f"({ratio:.2f}x pytest-forked's; target <= {TARGET}x), --fork {ours_here:.2f} ms on pytest {version(here)}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
