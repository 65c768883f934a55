"""The text of a finished run: the table, the failure details, whole reports (``-v``), the verdict.

Pure functions from reports to lines: the terminal views (``_view``) decide where they go.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Final

from .._report import Outcome, Report, innermost_frame
from ._style import Style

__all__ = [
    "clean_traceback",
    "columns",
    "details",
    "duration",
    "finished_line",
    "note",
    "outcome_label",
    "size",
    "table",
    "verdict",
    "whole_report",
]

#: The order outcomes are counted in the verdict; ``exited`` with a status other than 0 is
#: ``failed`` there.
_VERDICT_ORDER: Final = (
    "ok",
    "failed",
    "raised",
    "signaled",
    "returned",
    "exec failed",
    "limit exceeded",
    "timed out",
    "cancelled",
)

_PACKAGE_DIR: Final = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")


def outcome_label(report: Report) -> str:
    """``ok``, ``failed`` (exited with a status other than 0), or the outcome in words."""
    if report.ok:
        return "ok"
    if report.outcome is Outcome.EXITED:
        return "failed"
    return report.outcome.value.replace("_", " ")


def duration(seconds: float) -> str:
    """``0.31 s``, ``3.2 s``, ``1 m 05 s``: short, and precise where it matters."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} m {rest:02d} s"


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def exit_text(report: Report) -> str:
    if report.signal is not None:
        return report.signal.name + (" (core)" if report.core_dumped else "")
    return "-" if report.exit_code is None else str(report.exit_code)


def _ending(report: Report) -> str | None:
    """How a timed-out or cancelled child was stopped: ``sent SIGTERM, then SIGKILL 2 s later``."""
    match = re.search(r": (sent SIG\w+(?:, then SIGKILL [^ ]+ s later)?) to pid", report.error or "")
    return None if match is None else match.group(1)


def note(report: Report) -> str:
    """The last column of the table: what the other columns cannot say."""
    parts: list[str] = []
    if report.outcome is Outcome.CANCELLED:
        if report.pid == 0:
            parts.append("never started")
        else:
            ending = _ending(report)
            parts.append("stopped" + (f": {ending}" if ending else ""))
    elif report.outcome is Outcome.TIMED_OUT:
        ending = _ending(report)
        if ending:
            parts.append(ending)
    if report.limit is not None:
        parts.append(f"limit {report.limit}")
    if report.leftovers:
        parts.append(f"{report.leftovers} leftover process{'es' if report.leftovers != 1 else ''} killed")
    where = innermost_frame(report.stack)
    if where is not None:
        parts.append(f"at {where}")
    if report.execed:
        parts.append("exec'd")
    return "; ".join(parts)


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return []
    count = max(map(len, rows))
    widths = [max((len(row[i]) for row in rows if i < len(row)), default=0) for i in range(count)]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def table(reports: Sequence[Report], style: Style) -> list[str]:
    """One row per child: name, pid, outcome, exit code or signal, duration, max RSS, note."""
    notes = [note(report) for report in reports]
    header = ["NAME", "PID", "OUTCOME", "EXIT", "DURATION", "MAX RSS"]
    if any(notes):
        header.append("NOTE")
    rows: list[list[str]] = [header]
    for report, text in zip(reports, notes):
        row = [
            report.name,
            str(report.pid),
            report.outcome.value,
            exit_text(report),
            f"{report.duration:.3f}s",
            size(report.max_rss),
        ]
        if text:
            row.append(text)
        rows.append(row)
    lines = columns(rows)
    if not style.on:
        return lines
    # Colour after the layout, so escape codes never count as width.
    painted = [style(lines[0], "bold")]
    for line, report in zip(lines[1:], reports):
        name_end = len(report.name)
        outcome_at = line.index(report.outcome.value, name_end)
        end = outcome_at + len(report.outcome.value)
        painted.append(line[:outcome_at] + style.outcome(report, line[outcome_at:end]) + line[end:])
    return painted


def verdict(reports: Sequence[Report], elapsed: float, style: Style, *, why: str | None = None) -> str:
    """``12 ok, 1 timed out, 1 raised in 3.2 s``, the one line a person reads last."""
    counts: dict[str, int] = {}
    sample: dict[str, Report] = {}
    for report in reports:
        label = outcome_label(report)
        counts[label] = counts.get(label, 0) + 1
        sample.setdefault(label, report)
    parts: list[str] = []
    for label in _VERDICT_ORDER:
        if label in counts:
            parts.append(style.outcome(sample[label], f"{counts[label]} {label}"))
    if not parts:
        parts.append("nothing ran")
    line = f"{', '.join(parts)} in {duration(elapsed)}"
    if why:
        line += f" ({why})"
    return line


def finished_line(report: Report, width: int, style: Style) -> str:
    """The line a finished child gets as it ends: outcome, duration, name, how."""
    label = outcome_label(report).upper() if not report.ok else "ok"
    text = style.outcome(report, f"{label:>14}")
    line = f"{text} [{report.duration:8.3f}s] {report.name}"
    if not report.ok:
        how = report.describe()
        if report.outcome is Outcome.TIMED_OUT or report.outcome is Outcome.CANCELLED:
            how = _ending(report) or how
        line = f"{line.ljust(width)}  {how}" if width else f"{line}  {how}"
    return line


_FRAME_START: Final = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')


def clean_traceback(text: str) -> str:
    """A child's traceback without divergefork's own frames (``_child.py`` calling the entry)."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        match = _FRAME_START.match(line)
        if match is not None:
            skipping = match["file"].startswith(_PACKAGE_DIR)
            if skipping:
                continue
        elif skipping and line.startswith("    "):
            continue
        else:
            skipping = False
        out.append(line)
    return "\n".join(out)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def details(report: Report, *, traceback_shown: bool) -> list[str]:
    """What the table cannot hold for a child that is not ok: its error and stack, once.

    ``traceback_shown``: the child's own stderr already showed its traceback to the reader
    (its output was not captured), so only its last line is repeated here.
    """
    lines = [f"--- {report.name} (pid {report.pid}): {report.describe()} ---"]
    error = report.error
    if error:
        if report.outcome is Outcome.RAISED and traceback_shown:
            lines.append(f"{last_line(error)} (traceback above, on the child's stderr)")
        else:
            lines.append(clean_traceback(error).rstrip("\n"))
    if report.stack:
        lines.append("Python stack when it ended:")
        lines += ["  " + line for line in report.stack.rstrip("\n").splitlines()]
    return lines


def _block(title: str, text: str) -> list[str]:
    body = text.rstrip("\n")
    if not body:
        return [f"  {title}: (empty)"]
    return [f"  {title}:"] + ["    " + line for line in body.splitlines()]


def whole_report(report: Report) -> list[str]:
    """Every field of one report, for ``-v``."""
    lines = [f"=== {report.name} (pid {report.pid}): {report.describe()} ==="]
    fields: Iterable[tuple[str, str]] = (
        ("outcome", report.outcome.value + (" (ok)" if report.ok else "")),
        ("exit code", "-" if report.exit_code is None else str(report.exit_code)),
        ("signal", "-" if report.signal is None else report.signal.name + (" (core dumped)" if report.core_dumped else "")),
        ("execed", "yes" if report.execed else "no"),
        ("duration", f"{report.duration:.3f} s (user {report.user_time:.3f} s, system {report.system_time:.3f} s)"),
        ("max rss", size(report.max_rss)),
        ("limit", report.limit or "-"),
        ("leftovers", str(report.leftovers)),
        ("result", json.dumps(report.to_dict()["result"])),
        ("messages", json.dumps(report.to_dict()["messages"])),
    )
    lines += [f"  {key:<10} {value}" for key, value in fields]
    if report.error:
        lines += _block("error", clean_traceback(report.error))
    if report.stack:
        lines += _block("stack", report.stack)
    if report.stdout:
        lines += _block("stdout", report.stdout.decode("utf-8", "replace"))
    if report.stderr:
        stderr = report.stderr.decode("utf-8", "replace")
        if report.error and report.error.strip() and report.error.strip() in stderr:
            # The child printed the traceback it sent: shown once, under "error".
            stderr = stderr.replace(report.error.strip(), "[its traceback: see error above]")
        lines += _block("stderr", stderr)
    return lines
