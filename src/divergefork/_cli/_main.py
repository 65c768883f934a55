"""``main``: read the command line, load plugins, dispatch to a command, map it to an exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import suppress

import argparse

from .. import _check, _demo
from .._errors import PluginError
from .._exitcodes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .._hookspecs import Config, spec_origin
from .._plugins import Plugins, describe_entry, load_plugins
from ._parse import PLUGIN_COMMANDS, build_parser, prescan
from ._run import print_plugin_error, run_command
from ._streams import Pipe, isatty, to_devnull
from ._summary import columns

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (never calls ``sys.exit`` itself)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(arguments)
    except KeyboardInterrupt:
        # Interrupted outside a run (while plugins load, say): nothing was forked.
        with suppress(OSError):
            erase = "\r\x1b[K" if isatty(sys.stderr) else ""  # the terminal's "^C" echo
            print(f"{erase}divergefork: interrupted; nothing was forked", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # A reader went away where no finer handling applies (`divergefork --help | head -1`).
        to_devnull(sys.stdout)
        to_devnull(sys.stderr)
        return EXIT_BROKEN_PIPE


def _main(argv: list[str]) -> int:
    scan = prescan(argv)
    plugins: Plugins | None = None
    try:
        if scan.command in PLUGIN_COMMANDS:
            # For --help a broken plugin is left out (and named in the help), not fatal.
            plugins = load_plugins(scan.specs, keep_going=scan.want_help)
        parser = build_parser(plugins, failed=plugins.failed if plugins is not None else ())
    except PluginError as exc:
        print_plugin_error(exc, scan.want_traceback)
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        return _check.main(args)
    if args.command == "demo":
        return _demo.main(args)
    assert args.command in PLUGIN_COMMANDS and plugins is not None
    pipe = Pipe()
    try:
        if args.command == "list":
            return _list(args, plugins, pipe)
        return run_command(args, plugins, argv, pipe, scan.want_traceback)
    except PluginError as exc:
        print_plugin_error(exc, scan.want_traceback)
        return EXIT_USAGE


def _list(args: argparse.Namespace, plugins: Plugins, pipe: Pipe) -> int:
    collected = plugins.collect(Config(args, plugins.pm))
    lines: list[str] = []
    if not plugins.plugins:
        lines.append("no plugins found: install a distribution with a 'divergefork' entry point, or pass -p MODULE")
    else:
        rows = [
            [plugin.name, plugin.distribution or f"-p {plugin.module}", f"module {plugin.module}"]
            for plugin in plugins.plugins
        ]
        lines.append(f"plugins ({len(rows)}):")
        lines += ["  " + line for line in columns(rows)]
    if plugins.blocked:
        lines.append(f"blocked: {', '.join(plugins.blocked)}")
    lines.append(f"children ({len(collected)}):")
    child_rows = []
    for item in collected:
        spec = item.spec
        details = [f"from {item.plugin.name}", f"entry {describe_entry(spec.entry)}"]
        details.append("no timeout" if spec.timeout is None else f"timeout {spec.timeout:g}s")
        if spec.capture:
            details.append("capture")
        if spec.limits is not None:
            details.append("limits")
        origin = spec_origin(spec)
        if origin is not None:
            details.append(f"at {origin}")
        child_rows.append([spec.name, *details])
    lines += ["  " + line for line in columns(child_rows)]
    pipe.emit(sys.stdout, "".join(line + "\n" for line in lines))
    return EXIT_BROKEN_PIPE if pipe.broken else EXIT_OK
