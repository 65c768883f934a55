"""Real third-party test suites, plain and with ``pytest --fork``: the outcomes must match.

For each suite the sdist is downloaded with pip (``--no-binary :all: --no-deps``; a package that
is already installed, as pluggy and iniconfig are with pytest, is downloaded at the installed
version so its tests test the code that is imported), unpacked, and its tests are run twice with
the suite's own configuration, ``-p no:cacheprovider`` and ``--junitxml``: once plain, once
with ``--fork``. Outcomes are compared per test id (passed, failed, error, skipped, xfailed,
xpassed); every difference is printed and the exit status is 1 if there is any.

    python benchmarks/real_suites.py [--budget SECONDS] [--dir DIR] [SUITE ...]

``--budget`` skips the suites that would not finish within that many seconds by their estimate
(they are named; the exit status is still 0 if those that ran matched). Exit status 2: a download or
an unpacking failed, or a run produced no JUnit file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final


@dataclass(frozen=True)
class Suite:
    name: str
    #: The test paths inside the unpacked sdist.
    paths: tuple[str, ...]
    #: Seconds it takes here, download and both runs (2 cores): what --budget plans with.
    estimate: float
    #: Extra pytest arguments (kept to what the suite's own CI passes).
    args: tuple[str, ...] = ()


SUITES: Final = {
    suite.name: suite
    for suite in (
        # Quickest first, so that a --budget still runs several.
        Suite("iniconfig", ("testing",), 6),
        Suite("pluggy", ("testing",), 10),
        Suite("six", ("test_six.py",), 12),
        Suite("more-itertools", ("tests",), 75),
    )
}


def requirement(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def fetch(suite: Suite, into: Path) -> Path:
    """Download and unpack the suite's sdist; the unpacked directory."""
    downloads = into / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
         "-d", str(downloads), requirement(suite.name)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if pip.returncode:
        raise RuntimeError(f"pip download {requirement(suite.name)} failed:\n{pip.stdout[-3000:]}")
    normal = suite.name.replace("-", "_").lower()
    archives = sorted(
        path for path in downloads.iterdir()
        if path.name.lower().replace("-", "_").startswith(normal + "_") and path.name.endswith(".tar.gz")
    )
    if not archives:
        raise RuntimeError(f"no sdist of {suite.name} in {downloads}")
    archive = archives[-1]
    target = into / archive.name.removesuffix(".tar.gz")
    if not target.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    return target


def outcomes(junit: Path) -> Counter[tuple[str, str]]:
    """(test id, outcome) pairs, counted: a test with a call failure and a teardown error has two."""
    found: Counter[tuple[str, str]] = Counter()
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        if outcome == "passed" and any(p.get("name") == "xpass" for p in case.iter("property")):
            outcome = "xpassed"
        found[(test, outcome)] += 1
    return found


@dataclass(frozen=True)
class Run:
    seconds: float
    outcomes: Counter[tuple[str, str]]
    exit_status: int


def run(directory: Path, suite: Suite, *extra: str) -> Run:
    junit = directory / f"junit{''.join(extra).replace('-', '_')}.xml"
    junit.unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
         "-o", "junit_family=legacy", *suite.args, *extra, *suite.paths],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seconds = time.monotonic() - started
    if not junit.exists():
        raise RuntimeError(f"{suite.name}: pytest {' '.join(extra)} wrote no JUnit file:\n{proc.stdout[-3000:]}")
    return Run(seconds, outcomes(junit), proc.returncode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", choices=[[], *SUITES], default=[], metavar="SUITE",
                        help=f"suites to run (default: all of {', '.join(SUITES)})")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="skip the suites that would not finish within this many seconds (by their estimate)")
    parser.add_argument("--dir", type=Path, default=None, help="where to download and unpack (default: a temporary directory)")
    args = parser.parse_args(argv)
    chosen = [SUITES[name] for name in (args.suites or SUITES)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="df-real-suites-") as temporary:
        into = args.dir or Path(temporary)
        mismatched = 0
        skipped: list[str] = []
        for suite in chosen:
            if args.budget is not None and time.monotonic() - started + suite.estimate > args.budget:
                skipped.append(suite.name)
                continue
            try:
                directory = fetch(suite, into)
                plain = run(directory, suite)
                forked = run(directory, suite, "--fork")
            except (RuntimeError, OSError, tarfile.TarError) as exc:
                print(f"{suite.name}: cannot run: {exc}", file=sys.stderr)
                return 2
            tests = sum(plain.outcomes.values())
            only_plain = plain.outcomes - forked.outcomes
            only_forked = forked.outcomes - plain.outcomes
            differ = sum(only_plain.values()) + sum(only_forked.values())
            by_outcome = Counter(outcome for (_, outcome), n in plain.outcomes.items() for _ in range(n))
            print(
                f"{suite.name} ({directory.name}): {tests} outcomes "
                f"({', '.join(f'{n} {o}' for o, n in sorted(by_outcome.items()))}); "
                f"plain {plain.seconds:.1f} s, --fork {forked.seconds:.1f} s; "
                f"{'identical' if not differ else f'{differ} DIFFER'}"
                + ("" if plain.exit_status == forked.exit_status else
                   f"; exit status plain {plain.exit_status}, --fork {forked.exit_status}")
            )
            for (test, outcome), n in sorted(only_plain.items()):
                print(f"  plain only:  {outcome:8} {test}" + (f" (x{n})" if n > 1 else ""))
            for (test, outcome), n in sorted(only_forked.items()):
                print(f"  --fork only: {outcome:8} {test}" + (f" (x{n})" if n > 1 else ""))
            mismatched += differ + (plain.exit_status != forked.exit_status)
        if skipped:
            print(f"not run (over the {args.budget:g} s budget): {', '.join(skipped)}")
        print(f"real suites: {'all identical' if not mismatched else f'{mismatched} differences'} "
              f"in {time.monotonic() - started:.1f} s")
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
