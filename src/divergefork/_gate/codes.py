"""The gate's error codes and the names it knows. Own codes, never sub-codes of ``misc``."""

from __future__ import annotations

from typing import Final

from mypy.errorcodes import ErrorCode

ENTRY: Final = ErrorCode(
    "divergefork-entry",
    "Check that a value flowing into a declared divergent type (an entry) provably never returns",
    "divergefork",
)
INDIRECT: Final = ErrorCode(
    "divergefork-indirect",
    "Check that the fork functions are only ever called directly",
    "divergefork",
)
UNSOUND: Final = ErrorCode(
    "divergefork-unsound",
    "Check that a NoReturn declaration is really proven by mypy",
    "divergefork",
)
HOOKIMPL: Final = ErrorCode(
    "divergefork-hookimpl",
    "Check @divergefork.hookimpl functions against the divergefork hook specifications",
    "divergefork",
)
CONFIG: Final = ErrorCode(
    "divergefork-config",
    "Configuration that switches the gate off for code that forks",
    "divergefork",
)
ALL_CODES: Final = (ENTRY, INDIRECT, UNSOUND, HOOKIMPL, CONFIG)

PACKAGE: Final = "divergefork"
HOOKSPECS_MODULE: Final = "divergefork._hookspecs"
HOOKIMPL_MARKERS: Final = frozenset({"divergefork._hookspecs.hookimpl", "divergefork.hookimpl"})
HOOK_PREFIX: Final = "divergefork_"

FORK: Final = "divergefork._fork.fork"
SCOPE: Final = "divergefork._scope.Scope"
SCOPE_FORK: Final = "divergefork._scope.Scope.fork"
CHILD_SPEC: Final = "divergefork._hookspecs.ChildSpec"
PRIVATE_START: Final = "divergefork._fork.start"
# The callables that take an entry, with the name users know them by (for messages).
ENTRY_TAKERS: Final = {FORK: "divergefork.fork()", SCOPE_FORK: "Scope.fork()", CHILD_SPEC: "ChildSpec()"}
# Functions that build a new value from an old one with fields replaced: a ChildSpec through
# them gets an entry that no ChildSpec() call checked.
REPLACERS: Final = frozenset({"dataclasses.replace", "copy.replace"})

# pluggy 1.7 moved the markers to pluggy._decorators; older releases keep them in pluggy._hooks.
MARKER_CLASSES: Final = frozenset({"pluggy._decorators.HookimplMarker", "pluggy._hooks.HookimplMarker"})
MARKER_CALLS: Final = frozenset(name + ".__call__" for name in MARKER_CLASSES)
# HookimplMarker.__call__'s parameters in order, for options given positionally.
MARKER_PARAMETERS: Final = (
    "function",
    "hookwrapper",
    "optionalhook",
    "tryfirst",
    "trylast",
    "specname",
    "wrapper",
)


def in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")
