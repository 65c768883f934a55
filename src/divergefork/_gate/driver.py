"""``python -m divergefork._gate [--strict-config] MYPY-ARGS...``: mypy, then the post-pass.

The build is mypy's own (``mypy.build.build``, the options parsed by mypy's own command line),
with the typed trees kept (``export_types``, ``preserve_asts``) so the post-pass can walk the
modules mypy checked. Its findings go through mypy's ``Errors`` for that file, so ``# type:
ignore[...]``, ``disable_error_code``, ``ignore_errors``, unused-ignore warnings and the output
formats (plain, ``--output json``) all behave as for any mypy error.

Incremental: a module mypy did not re-check has no types to walk, but then nothing it depends on
changed either, so its final messages (mypy's and the gate's) are replayed from the gate's own
cache, kept beside mypy's in ``<cache_dir>/divergefork-gate``. A separate mypy cache directory
(``<cache_dir>/divergefork``) keeps a plain mypy run from making a module look fresh to the
gate without the gate having seen it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from mypy import build, util
from mypy import errorcodes
from mypy.errors import CompileError, Errors
from mypy.fscache import FileSystemCache
from mypy.main import process_options
from mypy.nodes import Decorator, FuncDef, MypyFile
from mypy.options import Options
from mypy.version import __version__ as mypy_version

from .. import mypy as plugin
from .codes import ALL_CODES, CONFIG, HOOK_PREFIX, HOOKSPECS_MODULE, UNSOUND, in_package
from .postpass import check_module

__all__ = ["main"]

CODES: Final = {code.code: code for code in ALL_CODES}
GATE_CODES: Final = frozenset(code.code for code in ALL_CODES) | {"misc"}


@dataclass(frozen=True)
class Setting:
    """A place where configuration switches the gate off for code that forks."""

    path: str
    module: str
    message: str
    code: str = CONFIG.code


def main(argv: Sequence[str], stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    strict_config = "--strict-config" in argv
    mypy_args = [arg for arg in argv if arg != "--strict-config"]
    t0 = time.time()
    fscache = FileSystemCache()
    sources, options = process_options(mypy_args, stdout=stdout, stderr=stderr, fscache=fscache)
    options.export_types = True
    options.preserve_asts = True
    options.fast_exit = False
    if options.cache_dir != os.devnull:
        options.cache_dir = os.path.join(options.cache_dir, "divergefork")
    formatter = util.FancyFormatter(stdout, stderr, options.hide_error_codes, hide_success=bool(options.output))
    flushed: list[tuple[str | None, list[str]]] = []

    def flush_errors(filename: str | None, messages: list[str], serious: bool) -> None:
        flushed.append((filename, messages))

    try:
        result = build.build(sources, options, None, flush_errors, fscache, stdout, stderr)
    except CompileError as error:
        for filename, messages in flushed:
            _show(messages, stdout)
        _show(error.messages, stdout if error.use_stdout else stderr)
        n_errors = len([m for m in error.messages if _severity(m) == "error"])
        if options.error_summary:
            stdout.write(formatter.format_error(max(n_errors, 1), 1, len(sources), blockers=True, use_color=options.color_output) + "\n")
        return 2
    gate = Gate(result, options, {source.module for source in sources})
    missing = gate.run()
    if missing and options.incremental:
        # The gate's cache lost modules that mypy's still has (deleted by hand, or written by an
        # older gate): check everything once more from source.
        options.incremental = False
        flushed.clear()
        return main_again(mypy_args, strict_config, stdout, stderr)
    lines = gate.output(flushed)
    settings = gate.settings()
    severity = "error" if strict_config else "note"
    lines += [_format(setting, severity, options) for setting in settings]
    _show(lines, stdout)
    n_errors = sum(1 for line in lines if _severity(line) == "error")
    n_notes = sum(1 for line in lines if _severity(line) == "note")
    n_files = len({_file(line) for line in lines if _severity(line) == "error"})
    if options.error_summary:
        if n_errors:
            stdout.write(formatter.format_error(n_errors, n_files, len(sources), use_color=options.color_output) + "\n")
        elif not lines or n_notes == len(lines):
            stdout.write(formatter.format_success(len(sources), options.color_output) + "\n")
    if settings and not options.output:
        hint = "fails" if strict_config else "would fail with --strict-config"
        stderr.write(f"divergefork check: configuration switches the gate off in {len(settings)} place(s); this {hint}\n")
    stdout.flush()
    del t0
    return 1 if n_errors else 0


def main_again(mypy_args: list[str], strict_config: bool, stdout: TextIO, stderr: TextIO) -> int:
    return main([*mypy_args, "--no-incremental", *(["--strict-config"] if strict_config else [])], stdout, stderr)


class Gate:
    def __init__(self, result: build.BuildResult, options: Options, sources: set[str]) -> None:
        self.result = result
        self.manager = result.manager
        self.errors: Errors = result.manager.errors
        self.options = options
        self.sources = sources
        self.lines: dict[str, list[str]] = {}  # simplified path -> final messages
        cache_root = options.cache_dir
        self.cache = None if cache_root == os.devnull else Path(cache_root).parent / "divergefork-gate"
        self.hook_names = _hook_names(self.manager.modules.get(HOOKSPECS_MODULE))

    def run(self) -> list[str]:
        """Post-pass the re-checked sources, replay the rest; return the sources it could not."""
        missing = []
        rechecked = self.manager.rechecked_modules
        for module in sorted(self.sources):
            state = self.result.graph.get(module)
            if state is None:
                continue
            path = self.errors.simplify_path(state.xpath)
            key = self.key(module)
            if module in rechecked and state.tree is not None:
                self.lines[path] = self.check(state)
                self.store(module, key, self.lines[path])
            else:
                cached = self.load(module, key)
                if cached is None:
                    missing.append(module)
                else:
                    self.lines[path] = cached
        return missing

    def check(self, state: Any) -> list[str]:
        tree: MypyFile = state.tree
        options: Options = state.options
        findings = check_module(tree, self.result.types, options, self.manager.modules, self.hook_names)
        errors, path = self.errors, state.xpath
        # mypy marks a file flushed once its messages are out; these are the messages of record.
        getattr(errors, "flushed_files", set()).discard(path)
        errors.set_file(path, tree.fullname, options)
        infos = errors.error_info_map.get(path)
        if infos is not None:
            # mypy decided which ignores were unused before the gate's errors used some of them.
            infos[:] = [info for info in infos if info.code != errorcodes.UNUSED_IGNORE]
        for finding in findings:
            errors.report(finding.line, finding.column, finding.message, code=CODES[finding.code])
        if options.warn_unused_ignores:
            errors.generate_unused_ignore_errors(path)
        return self.render(path)

    def render(self, path: str) -> list[str]:
        formatter = self.manager.error_formatter
        # The two APIs of the supported mypy versions, so typed as Any.
        file_messages: Any = self.errors.file_messages
        format_messages: Any = self.errors.format_messages
        try:
            return [str(line) for line in file_messages(path, formatter=formatter)]  # mypy 1
        except TypeError:  # mypy 2: tuples first, then formatting
            return [str(line) for line in format_messages(path, file_messages(path), formatter=formatter)]

    def key(self, module: str) -> str:
        graph = self.result.graph
        state = graph[module]
        deps = sorted((dep, _text(graph[dep].interface_hash)) for dep in state.dependencies if dep in graph)
        text = json.dumps([plugin.__version__, mypy_version, _text(state.source_hash), deps, self.options.output])
        return hashlib.sha256(text.encode()).hexdigest()

    def store(self, module: str, key: str, lines: list[str]) -> None:
        if self.cache is None:
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        target = self.cache / f"{module}.json"
        temp = target.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps({"key": key, "lines": lines}))
        temp.replace(target)

    def load(self, module: str, key: str) -> list[str] | None:
        if self.cache is None:
            return None
        try:
            data = json.loads((self.cache / f"{module}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        lines = data.get("lines")
        return [str(line) for line in lines] if isinstance(lines, list) else None

    def output(self, flushed: Iterable[tuple[str | None, list[str]]]) -> list[str]:
        """mypy's messages in mypy's order, each source's replaced by its final ones."""
        lines: list[str] = []
        done: set[str] = set()
        for filename, messages in flushed:
            if filename is not None and filename in self.lines:
                if filename not in done:
                    lines += self.lines[filename]
                    done.add(filename)
            else:
                lines += messages
        for filename, final in self.lines.items():
            if filename not in done:
                lines += final
        return lines

    def settings(self) -> list[Setting]:
        """Configuration that switches the gate off for sources that fork."""
        found: list[Setting] = []
        graph = self.result.graph
        for module in sorted(self.sources):
            state = graph.get(module)
            if state is None or in_package(module) or not any(in_package(dep) for dep in state.dependencies):
                continue
            path = self.errors.simplify_path(state.xpath)
            options: Options = state.options
            off = []
            if options.ignore_errors:
                off.append("ignore_errors = True")
            disabled = sorted({getattr(code, "code", str(code)) for code in options.disabled_error_codes} & GATE_CODES)
            off += [f"disable_error_code = {code}" for code in disabled]
            if not options.check_untyped_defs:
                off.append("check_untyped_defs = False")
            for setting in off:
                found.append(Setting(path, module, f'The gate is off for "{module}", which forks: {setting} in its mypy config'))
            for dep in sorted(state.suppressed):
                if self.manager.options.clone_for_module(dep).follow_imports == "skip":
                    found.append(
                        Setting(path, module, f'"{module}" forks and imports "{dep}", which follow_imports = skip leaves unchecked')
                    )
        for module, state in sorted(graph.items()):
            xpath = state.xpath
            if not xpath.endswith(".pyi") or not os.path.isfile(xpath[:-1]) or _installed(xpath):
                continue
            if module in self.sources or any(module in graph[m].dependencies for m in self.sources if m in graph):
                found.append(
                    Setting(
                        self.errors.simplify_path(xpath),
                        module,
                        f'"{module}" is checked from its stub {os.path.basename(xpath)}: the code that runs, '
                        f"{os.path.basename(xpath[:-1])}, is never checked; remove the stub or move its types inline",
                        UNSOUND.code,
                    )
                )
        return found


def _text(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)  # mypy 2 keeps hashes as bytes


def _installed(path: str) -> bool:
    parts = Path(path).parts
    return "site-packages" in parts or "typeshed" in parts or "dist-packages" in parts


def _hook_names(module: MypyFile | None) -> frozenset[str]:
    if module is None:
        return frozenset()
    return frozenset(
        name
        for name, symbol in module.names.items()
        if name.startswith(HOOK_PREFIX) and isinstance(symbol.node, Decorator | FuncDef)
    )


def _format(setting: Setting, severity: str, options: Options) -> str:
    # The stub finding is laundering, not a setting: an error whatever --strict-config says.
    if setting.code == UNSOUND.code:
        severity = "error"
    if options.output == "json":
        return json.dumps(
            {
                "file": setting.path,
                "line": 1,
                "column": 0,
                "message": setting.message,
                "hint": None,
                "code": setting.code,
                "severity": severity,
            }
        )
    tail = "" if options.hide_error_codes else f"  [{setting.code}]"
    return f"{setting.path}:1: {severity}: {setting.message}{tail}"


def _severity(line: str) -> str | None:
    if line.startswith("{"):
        try:
            value = json.loads(line).get("severity")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None
    for severity in ("error", "note"):
        if f": {severity}: " in line:
            return severity
    return None


def _file(line: str) -> str:
    if line.startswith("{"):
        try:
            return str(json.loads(line).get("file"))
        except (ValueError, AttributeError):
            return ""
    return line.split(":", 1)[0]


def _show(lines: Iterable[str], stream: TextIO) -> None:
    for line in lines:
        stream.write(line + "\n")
