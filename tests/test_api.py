"""The public surface: what SPEC.md names exists, and ``__all__`` is sorted and complete."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import subprocess

from conftest import python_command

import divergefork as df

SPEC_NAMES = {
    "fork", "Child", "Scope", "Report", "Outcome", "exit_child", "exec_child", "RETURNED_EXIT_CODE",
    "DivergeforkError", "ForkUnsafeError", "PluginError", "hookimpl", "hookspec", "ChildSpec", "Config",
    "SharedCounter", "Limits", "send",
}  # fmt: skip


def test_all_is_sorted_and_complete() -> None:
    assert df.__all__ == sorted(df.__all__)
    public = {name for name in vars(df) if not name.startswith("_")}
    modules = {name for name in public if inspect.ismodule(getattr(df, name))}
    assert set(df.__all__) == public - modules - {"annotations"}
    assert SPEC_NAMES <= set(df.__all__)


def test_spec_signatures() -> None:
    fork = inspect.signature(df.fork)
    assert list(fork.parameters) == [
        "value", "entry", "name", "timeout", "grace", "on_parent_exit", "new_group", "threads", "capture",
        "contain", "limits", "codec",
    ]  # fmt: skip
    defaults = {name: p.default for name, p in fork.parameters.items() if p.default is not p.empty}
    assert defaults == {
        "name": None, "timeout": None, "grace": 2.0, "on_parent_exit": "kill", "new_group": True,
        "threads": "refuse", "capture": False, "contain": True, "limits": None, "codec": "json",
    }  # fmt: skip
    assert [f.name for f in dataclasses.fields(df.Report)] == [
        "name", "pid", "outcome", "exit_code", "signal", "core_dumped", "execed", "duration",
        "user_time", "system_time", "max_rss", "error", "result", "stdout", "stderr",
        "stack", "limit", "leftovers", "messages",
    ]  # fmt: skip
    assert issubclass(df.Outcome, enum.StrEnum)
    assert {o.value for o in df.Outcome} == {
        "exited", "signaled", "raised", "returned", "timed_out", "cancelled", "exec_failed",
        "limit_exceeded",
    }  # fmt: skip
    assert df.RETURNED_EXIT_CODE == 70
    assert issubclass(df.ForkUnsafeError, df.DivergeforkError) and issubclass(df.ForkUnsafeError, RuntimeError)
    assert issubclass(df.PluginError, df.DivergeforkError)
    assert df.PluginError("x", "broken").plugin == "x"


def test_child_spec_takes_every_fork_option() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(df.ChildSpec)}
    fork = inspect.signature(df.fork).parameters
    for option in ("timeout", "capture", "grace", "new_group", "threads", "contain", "limits", "codec"):
        assert fields[option] == fork[option].default, option


def test_runtime_never_imports_mypy() -> None:
    code = "import sys, divergefork; sys.exit(1 if 'mypy' in sys.modules else 0)"
    assert subprocess.run(python_command(code), check=False).returncode == 0


def test_py_typed_ships() -> None:
    import importlib.resources

    assert importlib.resources.files("divergefork").joinpath("py.typed").is_file()
