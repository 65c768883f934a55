"""divergefork: fork child processes safely.

A child gets a copy-on-write copy of a value the parent keeps, runs an entry that never
returns, and is always reaped and reported. See the README for a tour.
"""

from __future__ import annotations

from ._child import MAX_RESULT_BYTES, exec_child, exit_child, send
from ._errors import DivergeforkError, ForkUnsafeError, PluginError
from ._fork import Child, fork
from ._limits import Limits
from ._hookspecs import ChildSpec, Config, hookimpl, hookspec
from ._reap import CAPTURE_LIMIT
from ._report import RETURNED_EXIT_CODE, Outcome, Report
from ._scope import Scope
from ._shared import SharedCounter

__all__ = [
    "CAPTURE_LIMIT",
    "Child",
    "ChildSpec",
    "Config",
    "DivergeforkError",
    "ForkUnsafeError",
    "Limits",
    "MAX_RESULT_BYTES",
    "Outcome",
    "PluginError",
    "RETURNED_EXIT_CODE",
    "Report",
    "Scope",
    "SharedCounter",
    "exec_child",
    "exit_child",
    "fork",
    "hookimpl",
    "hookspec",
    "send",
]

__version__ = "0.1.0"
