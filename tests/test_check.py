"""``divergefork check`` end to end: a real mypy in a child process on a throwaway project."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from divergefork import _check

LEAKY = """\
from __future__ import annotations

import os
from typing import Any

import divergefork as df


def work(n: int) -> Any:
    os._exit(n)


def start() -> None:
    df.fork(1, work)
"""

CLEAN = LEAKY.replace("-> Any:", "-> NoReturn:").replace("from typing import Any", "from typing import NoReturn")

HOOK_TYPO = """\
from __future__ import annotations

import divergefork as df


@df.hookimpl
def divergefork_chidren(config: df.Config) -> None:
    pass
"""

# An untyped function: strict mypy rejects it unless the user's config relaxes this module.
LEGACY = """\
def old(x):
    return x
"""


def check_command(*args: str) -> list[str]:
    """``divergefork check ARGS`` through the real command line."""
    return [sys.executable, "-m", "divergefork", "check", *args]


def run_check(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # mypy also reads per-user configs (~/.mypy.ini, $XDG_CONFIG_HOME/mypy/config): a
    # developer's own must not change what these tests see.
    home = project / ".home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    return subprocess.run(check_command(*args), cwd=project, capture_output=True, text=True, timeout=120, env=env)


def make_project(root: Path, files: dict[str, str]) -> Path:
    # A repository root stops mypy's (and the gate's) search for a config in parent directories.
    (root / ".git").mkdir()
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_without_a_config_runs_strict_with_the_plugin(tmp_path: Path) -> None:
    project = make_project(
        tmp_path, {"src/spam/__init__.py": LEAKY, "src/spam/hooks.py": HOOK_TYPO, "setup.py": LEGACY}
    )
    result = run_check(project)  # default: the packages in src/ (so not setup.py)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "src/spam/__init__.py:14: error: Entry \"work\" given to divergefork.fork()" in result.stdout
    assert "[divergefork-entry]" in result.stdout
    assert "src/spam/hooks.py:7: error:" in result.stdout and "[divergefork-hookimpl]" in result.stdout
    assert "setup.py" not in result.stdout
    assert "no mypy config found" in result.stderr


def test_clean_code_exits_zero(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"spam/__init__.py": CLEAN})
    result = run_check(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_strict_even_without_a_config(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"legacy.py": LEGACY})
    result = run_check(project, "legacy.py")
    assert result.returncode == 1
    assert "[no-untyped-def]" in result.stdout


def test_mypy_usage_errors_keep_mypy_status(tmp_path: Path) -> None:
    project = make_project(tmp_path, {})
    result = run_check(project, "missing.py")
    assert result.returncode == 2, result.stdout + result.stderr


# A plugin of the user's own, given as a file relative to the config: it must still load from
# the gate's temporary config, next to divergefork's.
USER_PLUGIN = """\
from __future__ import annotations

from collections.abc import Callable

from mypy.plugin import FunctionContext, Plugin
from mypy.types import Type


def no_legacy(ctx: FunctionContext) -> Type:
    ctx.api.fail("the user's own plugin ran", ctx.context)
    return ctx.default_return_type


class UserPlugin(Plugin):
    def get_function_hook(self, fullname: str) -> Callable[[FunctionContext], Type] | None:
        return no_legacy if fullname == "spam.legacy.old" else None


def plugin(version: str) -> type[Plugin]:
    return UserPlugin
"""

USES_LEGACY = """\
from spam.legacy import old

old(1)
"""


@pytest.mark.parametrize(
    ("config_name", "config_text"),
    [
        (
            "mypy.ini",
            """\
            [mypy]
            plugins = tools/user_plugin.py
            files = spam
            warn_unreachable = True

            [mypy-spam.legacy]
            disallow_untyped_defs = False
            """,
        ),
        (
            "setup.cfg",
            """\
            [metadata]
            name = spam

            [mypy]
            plugins = tools/user_plugin.py
            files = spam

            [mypy-spam.legacy]
            disallow_untyped_defs = False
            """,
        ),
        (
            "pyproject.toml",
            """\
            [project]
            name = "spam"

            [tool.mypy]
            plugins = ["tools/user_plugin.py"]
            files = ["spam"]

            [[tool.mypy.overrides]]
            module = "spam.legacy"
            disallow_untyped_defs = false
            """,
        ),
    ],
)
def test_user_config_is_extended_not_replaced(tmp_path: Path, config_name: str, config_text: str) -> None:
    project = make_project(
        tmp_path,
        {
            config_name: config_text,
            "tools/user_plugin.py": USER_PLUGIN,
            "spam/__init__.py": LEAKY,
            "spam/legacy.py": LEGACY,
            "spam/uses.py": USES_LEGACY,
        },
    )
    result = run_check(project)  # no PATH: the config's `files`
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"extending {project / config_name}" in result.stderr
    assert "[divergefork-entry]" in result.stdout  # ours was added
    assert "spam/uses.py:3: error: the user's own plugin ran" in result.stdout  # theirs was kept
    assert "spam/legacy.py" not in result.stdout  # their per-module relaxation was kept


def test_config_found_in_a_parent_directory(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {
            "mypy.ini": "[mypy]\ndisable_error_code = divergefork-entry\n",
            "pkg/sub/__init__.py": LEAKY,
        },
    )
    result = run_check(project / "pkg", "sub")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"extending {project / 'mypy.ini'}" in result.stderr


def test_merged_config_rewrites_only_what_must_move(tmp_path: Path) -> None:
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nplugins = pydantic.mypy, ./local.py:make\nmypy_path = $MYPY_CONFIG_FILE_DIR/stubs\n"
        "exclude = (?x)(build/|%%tmp)\n[other]\nkey = 1\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    merged, has_files = _check.merged_config(config, out)
    text = merged.read_text()
    assert not has_files
    assert f"plugins = pydantic.mypy, {tmp_path.resolve()}/local.py:make, divergefork.mypy" in text
    assert f"mypy_path = {tmp_path.resolve()}/stubs" in text
    assert "exclude = (?x)(build/|%%tmp)" in text
    assert "[other]" not in text


def test_find_config_prefers_mypy_ini_and_skips_foreign_shared_files(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = x\n")
    found = _check.find_config(tmp_path)
    assert found is None or not found.is_relative_to(tmp_path)  # only a user-level config
    (tmp_path / "setup.cfg").write_text("[mypy]\n")
    assert _check.find_config(tmp_path) == tmp_path.resolve() / "setup.cfg"
    (tmp_path / ".mypy.ini").write_text("")
    assert _check.find_config(tmp_path) == tmp_path.resolve() / ".mypy.ini"


def test_a_pyproject_without_tool_mypy_says_so(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"pyproject.toml": "[project]\nname = 'spam'\n", "spam/__init__.py": CLEAN})
    result = run_check(project, "--config-file", "pyproject.toml")
    assert result.returncode == 2
    assert "pyproject.toml: it has no [tool.mypy] table; add one" in result.stderr
    assert "is not a table" not in result.stderr


def test_check_is_wired_into_the_command_line(tmp_path: Path) -> None:
    result = run_check(make_project(tmp_path, {}), "--help")
    assert result.returncode == 0 and "--config-file" in result.stdout


LAUNDERED = """\
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import divergefork as df


def work(n: int) -> Any:
    raise SystemExit(n)


def start(entry: Callable[[int], NoReturn]) -> None:
    df.fork(1, entry)


start(work)
"""


def test_a_leak_is_reported_where_it_happens(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"spam/__init__.py": LAUNDERED})
    result = run_check(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'spam/__init__.py:17: error: Entry "work" flows into parameter "entry" of "start"' in result.stdout
    assert "[divergefork-entry]" in result.stdout


def test_warm_runs_use_the_cache_and_still_report(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"spam/__init__.py": LAUNDERED, "spam/clean.py": CLEAN})
    cold = run_check(project)
    warm = run_check(project)
    assert cold.returncode == warm.returncode == 1
    assert warm.stdout == cold.stdout  # the post-pass's findings come back from its cache
    assert (project / ".mypy_cache" / "divergefork").is_dir()
    assert (project / ".mypy_cache" / "divergefork-gate").is_dir()
    (project / "spam" / "__init__.py").write_text(LAUNDERED.replace("-> Any:", "-> NoReturn:"))
    fixed = run_check(project)
    assert fixed.returncode == 0, fixed.stdout


def test_json_output_is_mypys(tmp_path: Path) -> None:
    import json

    project = make_project(tmp_path, {"spam/__init__.py": LAUNDERED})
    result = run_check(project, "--output", "json")
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert any(r["code"] == "divergefork-entry" and r["line"] == 17 and r["severity"] == "error" for r in records)


def test_configuration_that_switches_the_gate_off_is_named(tmp_path: Path) -> None:
    config = "[mypy]\n[mypy-spam.legacy]\nignore_errors = True\n"
    project = make_project(tmp_path, {"mypy.ini": config, "spam/__init__.py": CLEAN, "spam/legacy.py": LEAKY})
    result = run_check(project, "spam")
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'spam/legacy.py:1: note: The gate is off for "spam.legacy", which forks: ignore_errors = True' in result.stdout
    assert "would fail with --strict-config" in result.stderr
    strict = run_check(project, "--strict-config", "spam")
    assert strict.returncode == 1
    assert "spam/legacy.py:1: error: The gate is off" in strict.stdout


def test_a_stub_shadowing_its_module_is_reported(tmp_path: Path) -> None:
    stub = "from typing import NoReturn\n\ndef work(n: int) -> NoReturn: ...\n"
    runtime = "def work(n):\n    return n\n"
    uses = "import divergefork as df\n\nfrom spam.tools import work\n\ndf.fork(1, work)\n"
    project = make_project(
        tmp_path, {"spam/__init__.py": uses, "spam/tools.py": runtime, "spam/tools.pyi": stub}
    )
    result = run_check(project, "spam/__init__.py")
    assert result.returncode == 1, result.stdout
    assert "spam/tools.pyi:1: error:" in result.stdout and "tools.py, is never checked" in result.stdout


def test_without_mypy_says_how_to_install(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mypy" else real(name, *a))
    args = argparse.Namespace(paths=[], config_file=None, strict_config=False, output=None)
    assert _check.main(args) == 2
    assert "pip install 'divergefork[check]'" in capsys.readouterr().err
