"""The gate's adversarial corpus (``tests/gate_corpus/*.test``): one gate run, one test per case.

See ``tests/gate_corpus/README.md`` for the format. Each case is a module of its own; all of
them are checked in a single ``divergefork check`` run (mypy is slow to start, quick per file).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from divergefork._gate import driver

CORPUS = Path(__file__).parent / "gate_corpus"
HEADER = (CORPUS / "header.py").read_text()
CONFIG = """\
[mypy]
python_version = 3.11
strict = True
warn_unreachable = True
plugins = divergefork.mypy
"""
MARKER = re.compile(r"# ([EN]): (divergefork-[\w-]+)(?:: (.*?))?\s*(?=# [EN]: |$)")
MESSAGE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<severity>error|note): (?P<message>.*?)(?:  \[(?P<code>[\w-]+)\])?$")


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    origin: str

    def lines(self) -> list[str]:
        """The module's lines, markers included: inline configuration first, then the header."""
        lines = self.source.splitlines()
        inline = [line for line in lines if line.startswith("# mypy:")]
        body = [line for line in lines if not line.startswith("# mypy:")]
        return inline + HEADER.splitlines() + body

    @property
    def text(self) -> str:
        # A marker would be read as part of an inline configuration comment: drop it there.
        lines = [line.split("  # N:")[0].split("  # E:")[0] if line.startswith("# mypy:") else line for line in self.lines()]
        return "\n".join(lines) + "\n"

    def expected(self) -> list[tuple[int, str, str, str]]:
        """(line, severity, code, fragment) for every marker."""
        found = []
        for number, line in enumerate(self.lines(), start=1):
            for kind, code, fragment in MARKER.findall(line):
                found.append((number, "error" if kind == "E" else "note", code, fragment or ""))
        return found


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.glob("*.test")):
        chunks = re.split(r"^\[case (\w+)\]\n", path.read_text(), flags=re.MULTILINE)
        for name, source in zip(chunks[1::2], chunks[2::2]):
            cases.append(Case(name, source.strip("\n"), path.name))
    return cases


CASES = load_cases()


def test_corpus_is_large_and_names_are_unique() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert len(CASES) >= 100
    leaks = [case for case in CASES if case.expected()]
    assert len(leaks) >= 60 and len(CASES) - len(leaks) >= 30


@pytest.fixture(scope="session")
def corpus_messages(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[tuple[int, str, str, str]]], str]:
    root = tmp_path_factory.mktemp("corpus")
    (root / "mypy.ini").write_text(CONFIG)
    cases = root / "cases"
    cases.mkdir()
    for case in CASES:
        (cases / f"{case.name}.py").write_text(case.text)
    out, err = io.StringIO(), io.StringIO()
    driver.main(
        ["--config-file", str(root / "mypy.ini"), "--cache-dir", str(root / "cache"), str(cases)], out, err
    )
    found: dict[str, list[tuple[int, str, str, str]]] = {}
    for line in out.getvalue().splitlines():
        match = MESSAGE.match(line)
        if match and (match["code"] or "").startswith("divergefork-"):
            found.setdefault(Path(match["file"]).stem, []).append(
                (int(match["line"]), match["severity"], match["code"], match["message"])
            )
    return found, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case(case: Case, corpus_messages: tuple[dict[str, list[tuple[int, str, str, str]]], str]) -> None:
    found, output = corpus_messages
    assert "Traceback" not in output and "INTERNAL ERROR" not in output, output
    got = list(found.get(case.name, []))
    missing = []
    for line, severity, code, fragment in case.expected():
        for message in got:
            if message[0] == line and message[1] == severity and message[2] == code and fragment in message[3]:
                got.remove(message)
                break
        else:
            missing.append((line, severity, code, fragment))
    mine = "\n".join(line for line in output.splitlines() if f"{case.name}.py:" in line)
    assert not missing and not got, f"{case.origin} [case {case.name}]\nmissing: {missing}\nunexpected: {got}\n\n{mine}"
