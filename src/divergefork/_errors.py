"""The exceptions divergefork raises.

    Exception
     └── DivergeforkError
          ├── ForkUnsafeError (also a RuntimeError)
          └── PluginError

Wrong arguments are plain ``TypeError``/``ValueError``: they are the caller's bug and are
raised in the parent before anything is forked.
"""

from __future__ import annotations

from typing import Final, final

__all__ = ["DivergeforkError", "ForkUnsafeError", "PluginError"]


class DivergeforkError(Exception):
    """Base class of every error divergefork raises on purpose."""


@final
class ForkUnsafeError(DivergeforkError, RuntimeError):
    """Forking now would be unsafe (live threads, ``SIGCHLD`` ignored, no ``fork`` at all)."""


@final
class PluginError(DivergeforkError):
    """A plugin is broken; ``plugin`` names it (entry point and distribution, or module)."""

    plugin: Final[str]

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"plugin {plugin}: {message}")
        self.plugin = plugin
