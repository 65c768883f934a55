"""Report files: the JSON document of a run (``--json``) and JUnit XML (``--junit-xml``).

Both are written all at once (:func:`write_atomic`): a reader sees the old file or the new one.
``xml.etree`` is imported only when JUnit XML is asked for.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, final

from .._report import Report
from ._summary import clean_traceback

__all__ = ["RunFacts", "junit_xml", "output_path_problem", "run_document", "write_atomic"]


@final
@dataclass(frozen=True, slots=True)
class RunFacts:
    """What a report file says about the run as a whole."""

    started: datetime
    duration: float
    exit_status: int
    #: ``None``, ``"interrupted"`` (Ctrl-C), ``"terminated"`` (SIGTERM), ``"fail-fast"`` or
    #: ``"fork refused"``: why children were cancelled, if they were.
    stopped: str | None
    argv: Sequence[str]
    #: ``{"name", "module", "distribution"}`` per plugin, in load order.
    plugins: Sequence[Mapping[str, str | None]]
    #: Child name -> the name of the plugin that contributed it.
    owners: Mapping[str, str]
    verdict: str


def run_document(reports: Sequence[Report], facts: RunFacts) -> dict[str, Any]:
    """The whole run as one JSON-serialisable object: run-level fields, then every report."""
    from .. import __version__

    children = []
    for report in reports:
        entry = report.to_dict()
        entry["plugin"] = facts.owners.get(report.name)
        children.append(entry)
    return {
        "divergefork": __version__,
        "argv": list(facts.argv),
        "started": facts.started.isoformat(timespec="milliseconds"),
        "duration": round(facts.duration, 6),
        "exit_status": facts.exit_status,
        "stopped": facts.stopped,
        "verdict": facts.verdict,
        "plugins": [dict(plugin) for plugin in facts.plugins],
        "reports": children,
    }


# Characters XML 1.0 cannot carry at all, even escaped (C0 controls other than \t \n \r).
_XML_ILLEGAL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return _XML_ILLEGAL.sub("\ufffd", text)


def junit_xml(
    reports: Sequence[Report], owners: Mapping[str, str] | None = None, *, wall_time: float | None = None
) -> str:
    """A JUnit XML document: one ``testcase`` per child, a ``failure`` for each not ``ok``.

    The suite's ``time`` is ``wall_time``, the run's own duration (children run at once, so the
    sum of their durations says nothing a CI page should show); without it, the longest child.
    """
    import xml.etree.ElementTree as ET

    owners = owners or {}
    failures = sum(not report.ok for report in reports)
    total = wall_time if wall_time is not None else max((r.duration for r in reports), default=0.0)
    suites = ET.Element("testsuites", name="divergefork", tests=str(len(reports)))
    suites.set("failures", str(failures))
    suites.set("errors", "0")
    suites.set("time", f"{total:.3f}")
    suite = ET.SubElement(suites, "testsuite", name="divergefork", tests=str(len(reports)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    suite.set("time", f"{total:.3f}")
    for report in reports:
        case = ET.SubElement(suite, "testcase", name=_xml_text(report.name))
        case.set("classname", "divergefork." + _xml_text(owners.get(report.name, "run")))
        case.set("time", f"{report.duration:.3f}")
        if not report.ok:
            failure = ET.SubElement(case, "failure", type=report.outcome.value)
            failure.set("message", _xml_text(f"{report.name} (pid {report.pid}) {report.describe()}"))
            text = clean_traceback(report.error) if report.error else report.describe()
            if report.stack:
                text += "\n\nPython stack when it ended:\n" + report.stack
            failure.text = _xml_text(text)
        properties = [
            (key, value)
            for key, value in (("limit", report.limit), ("leftovers", str(report.leftovers) if report.leftovers else None))
            if value is not None
        ]
        if properties:
            props = ET.SubElement(case, "properties")
            for key, value in properties:
                ET.SubElement(props, "property", name=key, value=_xml_text(value))
        if report.stdout:
            ET.SubElement(case, "system-out").text = _xml_text(report.stdout)
        if report.stderr:
            ET.SubElement(case, "system-err").text = _xml_text(report.stderr)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def output_path_problem(path: str | None) -> str | None:
    """Why ``path`` cannot be written, checked before anything is forked."""
    if path is None or path == "-":
        return None
    if os.path.isdir(path):
        return "is a directory; give a file name"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable"
    return None


def write_atomic(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: readers see the old file or the new one.

    The temporary file lives in the target's directory so ``os.replace`` is a rename within
    one file system (atomic), and it is fsynced first so a crash never leaves an empty file.
    """
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)  # the only way to read it; restored at once (no threads here)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
