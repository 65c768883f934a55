"""``divergefork check [PATH]...``: the mypy gate for plugin authors.

Runs mypy in strict mode with the divergefork mypy plugin over the paths, then the gate's
post-pass over what mypy checked (``divergefork._gate``), and exits with mypy's status. mypy
loads plugins only from a config file, so the command writes a temporary one: the user's own
config (found the way mypy finds it) with ``divergefork.mypy`` added to its plugins and nothing
else changed, or a minimal strict one when there is none.

The gate runs in a child interpreter (``sys.executable -m divergefork._gate``): the runtime
never imports mypy, and mypy is an optional extra (``divergefork[check]``). It uses mypy's
incremental cache (in ``<cache_dir>/divergefork``, beside the user's own), so a warm run costs
about what a warm plain mypy run costs.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

from ._exitcodes import EXIT_USAGE

__all__ = ["configure", "find_config", "gate_command", "main", "merged_config", "mypy_args", "mypy_command"]

PLUGIN = "divergefork.mypy"
# mypy's own search order (mypy.defaults): these in the current directory and its parents up to
# the repository root, then the user's config files.
CONFIG_NAMES = ("mypy.ini", ".mypy.ini", "pyproject.toml", "setup.cfg")
CONFIG_DIR_VARIABLE = re.compile(r"\$(\{MYPY_CONFIG_FILE_DIR\}|MYPY_CONFIG_FILE_DIR\b)")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` subcommand's arguments to its parser."""
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files or directories to check (default: the config's 'files', else the packages "
        "in ./src or ., else .)",
    )
    parser.add_argument(
        "--config-file",
        metavar="FILE",
        help="the mypy config to extend (default: the one mypy itself would use)",
    )
    parser.add_argument(
        "--strict-config",
        action="store_true",
        help="fail when configuration switches the gate off for code that forks (ignore_errors, "
        "disable_error_code, follow_imports = skip, check_untyped_defs = False)",
    )
    parser.add_argument(
        "--output",
        choices=["json"],
        help="mypy's machine-readable output format (one JSON object a line)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the gate; return mypy's exit status (0 clean, 1 type errors, 2 usage or crash)."""
    if importlib.util.find_spec("mypy") is None:
        print(
            "divergefork check: mypy is not installed here; the gate needs it: "
            "pip install 'divergefork[check]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    cwd = Path.cwd()
    config: Path | None
    if args.config_file is not None:
        config = Path(args.config_file)
        if not config.is_file():
            print(f"divergefork check: no such mypy config: {args.config_file}", file=sys.stderr)
            return EXIT_USAGE
    else:
        config = find_config(cwd)
    with tempfile.TemporaryDirectory(prefix="divergefork-check-") as temp:
        try:
            merged, has_files = merged_config(config, Path(temp))
        except (OSError, ValueError, configparser.Error, tomllib.TOMLDecodeError) as error:
            print(f"divergefork check: cannot read the mypy config {config}: {error}", file=sys.stderr)
            return EXIT_USAGE
        paths = list(args.paths) or ([] if has_files else default_paths(cwd))
        where = f"extending {config}" if config is not None else "no mypy config found, strict defaults"
        print(f"divergefork check: mypy --strict with {PLUGIN} ({where})", file=sys.stderr, flush=True)
        extra = ["--output", args.output] if args.output else []
        command = gate_command(merged, [*extra, *paths], strict_config=args.strict_config)
        return subprocess.run(command, check=False).returncode


def mypy_args(config: Path, paths: Sequence[str]) -> list[str]:
    """mypy's own arguments for the gate: strict, over the merged config.

    The cache is mypy's incremental one, in the user's cache_dir: the plugin's version is part
    of every module's cache key (report_config_data), so a changed gate re-checks everything.
    """
    return ["--config-file", str(config), "--strict", *paths]


def gate_command(config: Path, paths: Sequence[str], *, strict_config: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "divergefork._gate",
        *(["--strict-config"] if strict_config else []),
        *mypy_args(config, paths),
    ]


def mypy_command(config: Path, paths: Sequence[str]) -> list[str]:
    """Plain mypy with the same arguments as the gate (for comparisons and benchmarks)."""
    return [sys.executable, "-m", "mypy", *mypy_args(config, paths)]


def find_config(start: Path) -> Path | None:
    """The config file mypy would use when started in ``start`` (see mypy.config_parser)."""
    directory = start.resolve()
    while True:
        for name in CONFIG_NAMES:
            candidate = directory / name
            if candidate.is_file() and _is_mypy_config(candidate):
                return candidate
        if any((directory / vcs).exists() for vcs in (".git", ".hg")) or directory.parent == directory:
            break
        directory = directory.parent
    xdg = os.environ.get("XDG_CONFIG_HOME")
    user_configs = [Path(xdg) / "mypy" / "config"] if xdg else []
    user_configs += [Path("~/.config/mypy/config").expanduser(), Path("~/.mypy.ini").expanduser()]
    return next((path for path in user_configs if path.is_file()), None)


def _is_mypy_config(path: Path) -> bool:
    # Shared files count only with a mypy section; mypy's own files count whatever they hold.
    if path.name == "pyproject.toml":
        try:
            return "mypy" in tomllib.loads(path.read_text()).get("tool", {})
        except (OSError, tomllib.TOMLDecodeError):
            return False
    if path.name == "setup.cfg":
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            return False
        return parser.has_section("mypy")
    return True


def merged_config(config: Path | None, directory: Path) -> tuple[Path, bool]:
    """Write the config the gate runs with into ``directory``; say whether it names ``files``."""
    if config is None:
        target = directory / "mypy.ini"
        target.write_text(f"[mypy]\nstrict = True\nplugins = {PLUGIN}\n")
        return target, False
    if config.suffix == ".toml":
        return _merge_toml(config, directory)
    return _merge_ini(config, directory)


def _merge_ini(config: Path, directory: Path) -> tuple[Path, bool]:
    source = _ini_parser()
    with config.open() as stream:
        source.read_file(stream, source=str(config))
    merged = _ini_parser()
    for section in source.sections():
        # setup.cfg holds other tools' sections too; mypy reads only its own.
        if section == "mypy" or section.startswith("mypy-"):
            merged.add_section(section)
            for key, value in source.items(section):
                merged.set(section, key, _expand_config_dir_str(value, config))
    if not merged.has_section("mypy"):
        merged.add_section("mypy")
    plugins = _split_plugins(merged.get("mypy", "plugins", fallback=""))
    merged.set("mypy", "plugins", ", ".join(_with_plugin(plugins, config)))
    target = directory / "mypy.ini"
    with target.open("w") as stream:
        merged.write(stream)
    return target, bool(merged.get("mypy", "files", fallback="").strip())


def _ini_parser() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()  # no interpolation: a '%' in a regex stays one
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keep keys as written
    return parser


def _merge_toml(config: Path, directory: Path) -> tuple[Path, bool]:
    data = tomllib.loads(config.read_text())
    tool = data.get("tool", {})
    if not isinstance(tool, dict) or "mypy" not in tool:
        raise ValueError(
            "it has no [tool.mypy] table; add one (an empty [tool.mypy] will do), or leave out "
            "--config-file to use the strict defaults"
        )
    settings = _expand_config_dir(tool["mypy"], config)
    if not isinstance(settings, dict):
        raise ValueError("tool.mypy is not a table; write it as a [tool.mypy] section")
    plugins = settings.get("plugins", [])
    if isinstance(plugins, str):
        plugins = _split_plugins(plugins)
    if not isinstance(plugins, list) or not all(isinstance(item, str) for item in plugins):
        raise ValueError("tool.mypy.plugins must be a string or a list of strings")
    settings["plugins"] = _with_plugin(plugins, config)
    target = directory / "pyproject.toml"
    target.write_text(_toml_tool_mypy(settings))
    return target, bool(settings.get("files"))


def _split_plugins(value: str) -> list[str]:
    return [item.strip() for item in re.split(r"[,\n]", value) if item.strip()]


def _with_plugin(plugins: Sequence[str], config: Path) -> list[str]:
    """The user's plugins, still loadable from the temporary config, plus ours."""
    result = []
    for plugin in plugins:
        path, colon, function = plugin.partition(":") if ":" in Path(plugin).name else (plugin, "", "")
        # mypy resolves a plugin given as a file relative to the config file's directory.
        if path.endswith(".py") and not os.path.isabs(path):
            plugin = str(config.parent.resolve() / path) + colon + function
        result.append(plugin)
    return result if PLUGIN in result else [*result, PLUGIN]


def _expand_config_dir_str(value: str, config: Path) -> str:
    # mypy sets $MYPY_CONFIG_FILE_DIR to the directory of the config it reads, which would be
    # the temporary directory now: put the user's directory in its place.
    return CONFIG_DIR_VARIABLE.sub(lambda _: str(config.parent.resolve()), value)


def _expand_config_dir(value: object, config: Path) -> object:
    if isinstance(value, str):
        return _expand_config_dir_str(value, config)
    if isinstance(value, list):
        return [_expand_config_dir(item, config) for item in value]
    if isinstance(value, dict):
        return {key: _expand_config_dir(item, config) for key, item in value.items()}
    return value


def _toml_tool_mypy(settings: dict[object, object]) -> str:
    lines = ["[tool.mypy]"]
    overrides = settings.get("overrides", [])
    for key, value in settings.items():
        if key != "overrides":
            lines.append(f"{_toml_key(str(key))} = {_toml_value(value)}")
    for override in overrides if isinstance(overrides, list) else []:
        if not isinstance(override, dict):
            raise ValueError("each [[tool.mypy.overrides]] must be a table")
        lines += ["", "[[tool.mypy.overrides]]"]
        lines += [f"{_toml_key(str(key))} = {_toml_value(value)}" for key, value in override.items()]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: object) -> str:
    # JSON's string escapes are all valid in TOML basic strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot carry the TOML value {value!r} over")


def default_paths(cwd: Path) -> list[str]:
    """The current directory's packages (in ``src/`` when there is one), else the directory."""
    if (cwd / "__init__.py").is_file():
        return ["."]
    base = cwd / "src" if (cwd / "src").is_dir() else cwd
    packages = sorted(
        str(path.relative_to(cwd))
        for path in base.iterdir()
        if path.is_dir() and not path.name.startswith(".") and (path / "__init__.py").is_file()
    )
    return packages or ["."]
