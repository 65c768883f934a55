"""The divergefork mypy plugin (``plugins = divergefork.mypy``). Filled in by the mypy-gate issue."""

from __future__ import annotations

from mypy.plugin import Plugin

__version__ = "0.0.1"


class DivergeforkPlugin(Plugin):
    """Reports entries that are not provably NoReturn and mistyped hook implementations."""


def plugin(version: str) -> type[Plugin]:
    return DivergeforkPlugin
