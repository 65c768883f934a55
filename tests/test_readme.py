"""Every example in the README runs and prints what the README shows.

Markers (HTML comments, invisible on the rendered page) say what a code block is:

- ``<!-- run: python -->`` before a ```` ```python ```` block: run it; the ```` ```text ````
  block right after it is its stdout.
- ``<!-- file: NAME -->`` before a block: written to ``NAME`` in the examples' directory.
- ``<!-- run: console -->`` before a ```` ```console ```` block: each ``$ command`` runs in a
  shell in that directory (``export`` lines set the environment of the ones after); the lines
  after it, up to the next ``$``, are its stdout.
- ``<!-- needs: WHAT -->``: the example needs a feature this checkout may not have yet; it is
  skipped, saying so, unless the feature is there.
- ``<!-- screen: PATH -->``: the block is the screenshot fixture PATH (checked by
  ``test_cli_terminal.py``).

Outputs are compared with what changes from run to run made equal: pids, durations, sizes,
the examples' directory (shown as ``$PWD``) and runs of spaces.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import NoReturn

import pytest

import divergefork as df

README = Path(__file__).resolve().parent.parent / "README.md"
_MARK = re.compile(r"<!-- (run|file|needs|screen): (.+?) -->")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass
class Example:
    kind: str  # "python" or "console"
    line: int
    code: str
    expected: str
    needs: list[str] = field(default_factory=list)


def _parse() -> tuple[list[Example], dict[str, str]]:
    text = README.read_text()
    examples: list[Example] = []
    files: dict[str, str] = {}
    blocks = list(_FENCE.finditer(text))
    for index, block in enumerate(blocks):
        previous_end = blocks[index - 1].end() if index else 0
        marks = _MARK.findall(text[previous_end : block.start()])
        kinds = dict(marks)
        needs = [value for key, value in marks if key == "needs"]
        line = text.count("\n", 0, block.start()) + 1
        if "file" in kinds:
            files[kinds["file"]] = block.group(2)
        if kinds.get("run") == "python":
            following = blocks[index + 1]
            assert following.group(1) == "text", f"README line {line}: a python example needs a text block after it"
            examples.append(Example("python", line, block.group(2), following.group(2), needs))
        elif kinds.get("run") == "console":
            examples.append(Example("console", line, block.group(2), "", needs))
    return examples, files


EXAMPLES, FILES = _parse()


def normalise(text: str, directory: Path) -> str:
    text = text.replace(str(directory), "$PWD")
    text = re.sub(r"\b\d+\.\d+ ?(s|MiB|KiB|GiB|ms)\b", r"<n> \1", text)
    text = re.sub(r"\b\d+\.\d+s\b", "<n>s", text)
    text = re.sub(r"(pid )\d+", r"\1<pid>", text)
    text = re.sub(r"^(\S+ +)\d{2,}( +\S)", r"\1<pid>\2", text, flags=re.MULTILINE)
    return "\n".join(re.sub(r" +", " ", line).strip() for line in text.strip().splitlines())


def _limits_applied() -> bool:
    import resource

    def entry(_: int) -> NoReturn:
        df.exit_child(0, result=resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    return df.fork(0, entry, limits=df.Limits(open_files=64)).wait().result == 64


def _have(need: str) -> bool:
    if need == "limits":
        return _limits_applied()
    if need == "pytest-plugin":
        return any(ep.name == "divergefork" for ep in metadata.entry_points(group="pytest11"))
    raise AssertionError(f"unknown need {need!r} in the README")


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for name in ("NO_COLOR", "DIVERGEFORK_TRACEBACK", "PYTHONPATH", "DIVERGEFORK_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line-{e.line}-{e.kind}" for e in EXAMPLES])
def test_readme_example(example: Example, directory: Path) -> None:
    # Every feature a README example names has landed: a missing one is a failure now.
    missing = [need for need in example.needs if not _have(need)]
    assert not missing, f"README line {example.line} needs {', '.join(missing)}"
    env = _env()
    if example.kind == "python":
        done = subprocess.run(
            [sys.executable, "-c", example.code], cwd=directory, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert normalise(done.stdout, directory) == normalise(example.expected, directory), done.stdout
        return
    for command, expected in _commands(example.code):
        if command.startswith("export "):
            for assignment in shlex.split(command)[1:]:
                key, _, value = assignment.partition("=")
                env[key] = value
            continue
        done = subprocess.run(
            ["sh", "-c", command], cwd=directory, env=env, capture_output=True, text=True, timeout=120
        )
        assert normalise(done.stdout, directory) == normalise(expected, directory), (
            f"README line {example.line}: $ {command}\n{done.stdout}{done.stderr}"
        )


def _commands(block: str) -> list[tuple[str, str]]:
    commands: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], ""))
        elif commands:
            command, expected = commands[-1]
            commands[-1] = (command, expected + line + "\n")
    return commands


def test_the_readme_is_for_a_newcomer() -> None:
    text = README.read_text()
    assert 200 <= len(text.splitlines()) <= 330  # about 250 of prose and table, plus runnable examples
    for name in ("ChildSpec", "Config", "hookimpl", "send", "Limits", "make run", "make test",
                 "divergefork check", "pytest --fork", "@pytest.mark.fork", "df_scope", "df_run"):
        assert name in text, name
    # One library table: every public name is in it.
    table = text[text.index("## The library") : text.index("## The command line")]
    for name in df.__all__:
        assert name in table, f"df.{name} is missing from the README's library table"
    for name in df.Report.__dataclass_fields__:
        assert f"`{name}`" in table, f"Report.{name} is missing from the README's library table"
