"""What every benchmark here shares: medians of per-pair ratios, and the table of targets.

Each benchmark ends with a table of the issue's targets: the measured median, the target and
whether it was met. With ``--json PATH`` it also writes those rows, so that ``run_all.py`` can
print one table for the whole run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of a[i] / b[i]: each pair ran side by side, so machine drift cancels in the pair."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need pairs of samples, got {len(a)} and {len(b)}")
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def spread(values: Sequence[float]) -> tuple[float, float]:
    """The first and last deciles (min and max under ten values): how noisy the pairs were."""
    if len(values) < 10:
        return min(values), max(values)
    deciles = statistics.quantiles(values, n=10)
    return deciles[0], deciles[-1]


@dataclass(frozen=True)
class Target:
    """One row of the issue's targets."""

    measure: str
    measured: float | None  # None: not measured in this run (say why in ``note``)
    target: str  # as the issue writes it, e.g. "<= 1.25x"
    met: bool | None
    unit: str = "x"
    note: str = ""

    def cells(self) -> tuple[str, str, str, str]:
        # Three decimals for ratios: 1.0996x must not print as a missed "1.10x" against >= 1.1x.
        digits = 3 if self.unit == "x" else 1
        value = "-" if self.measured is None else f"{self.measured:.{digits}f}{self.unit}"
        verdict = {True: "met", False: "MISSED", None: "skipped"}[self.met]
        return self.measure, value, self.target, verdict + (f" ({self.note})" if self.note else "")


def at_most(measure: str, measured: float, limit: float, unit: str = "x", note: str = "") -> Target:
    return Target(measure, measured, f"<= {limit:g}{unit}", measured <= limit, unit, note)


def at_least(measure: str, measured: float, limit: float, unit: str = "x", note: str = "") -> Target:
    return Target(measure, measured, f">= {limit:g}{unit}", measured >= limit, unit, note)


def skipped(measure: str, target: str, note: str) -> Target:
    return Target(measure, None, target, None, "", note)


def print_targets(title: str, targets: Sequence[Target]) -> None:
    rows = [("measure", "median", "target", "result"), *(t.cells() for t in targets)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"\n{title}")
    for i, row in enumerate(rows):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3])
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths) + "  " + "-" * 6)


def write_targets(path: Path | None, targets: Sequence[Target]) -> None:
    if path is not None:
        path.write_text(json.dumps([asdict(t) for t in targets]))


def read_targets(path: Path) -> list[Target]:
    rows = json.loads(path.read_text())
    return [Target(**row) for row in rows]
