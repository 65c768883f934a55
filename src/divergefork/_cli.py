"""The ``divergefork`` command line: a thin layer that parses, calls the API, prints and maps
outcomes to exit codes (0 all ok, 1 some child not ok, 2 usage or configuration, 130 interrupted).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="divergefork",
        description="Fork child processes safely: every child diverges, is reaped and reported.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="fork every child the plugins contribute and report how each ended")
    sub.add_parser("list", help="list plugins and their children without forking")
    sub.add_parser("check", help="type-check plugin code with mypy and the divergefork plugin")
    demo = sub.add_parser("demo", help="demonstrations (demo race: the shared-counter race)")
    try:
        from . import _demo
    except ImportError:  # until the demo lands
        pass
    else:
        _demo.configure(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "demo" and hasattr(args, "demo_main"):
        code: int = args.demo_main(args)
        return code
    print(f"divergefork {args.command}: not implemented yet in this version", file=sys.stderr)
    return EXIT_USAGE
