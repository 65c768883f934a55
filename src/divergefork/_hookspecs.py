"""The plugin contract: markers, ``ChildSpec``, ``Config`` and the four hook specifications.

Every hook is called in the parent, before or after forking. No entry ever runs inside a hook
call: if it did, a child that returned or raised would unwind into pluggy and go on calling
the other plugins' hooks in the child.

How hooks are called: one plugin at a time, not through one ``pm.hook.X(...)`` call, so that
every error names the plugin that raised it. What that means for pluggy's options:

- Plugins are called in load order (installed entry points sorted by name, then ``-p``
  modules in command-line order); ``@df.hookimpl(tryfirst=True)`` / ``(trylast=True)`` move
  a plugin to the front / back of that order, as in pluggy.
- ``hookwrapper=True`` / ``wrapper=True`` implementations run, but wrap only their own
  plugin's call of that hook (which is nothing, as a plugin has one implementation per hook),
  never the other plugins': do not use them to time or guard other plugins' hooks.
- No hook is ``firstresult``; every plugin's ``divergefork_children`` result is used.
- A plugin whose ``divergefork_report`` raises is not called again for that run (neither
  ``divergefork_report`` nor ``divergefork_finished``); the other plugins still are.

Hooks run in the parent while children may be running: a hook that starts a thread (and
leaves it running) makes every later fork of the run unsafe, and the run refuses it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar, final

import pluggy

from ._fork import Codec, Options, Threads
from ._limits import Limits
from ._report import Report

__all__ = [
    "ChildSpec",
    "Config",
    "divergefork_addoption",
    "divergefork_children",
    "divergefork_finished",
    "divergefork_report",
    "hookimpl",
    "hookspec",
]

T = TypeVar("T")

#: Marks the hook specifications below (plugins do not need it).
hookspec = pluggy.HookspecMarker("divergefork")
#: Marks a plugin's hook implementation: ``@df.hookimpl def divergefork_children(config): ...``
hookimpl = pluggy.HookimplMarker("divergefork")


@final
# No slots=True: on Python 3.11 a frozen slotted dataclass that is also Generic breaks
# ``ChildSpec[int](...)`` (typing sets ``__orig_class__``, and the frozen ``__setattr__`` of the
# slotted copy of the class fails with "super(type, obj)" instead of the AttributeError typing
# expects and ignores).
@dataclass(frozen=True)
class ChildSpec(Generic[T]):
    """One child a plugin contributes to ``divergefork run``.

    Constructing one is where the type checker proves that ``entry`` accepts ``value`` and
    never returns. ``ChildSpec[int](name, 1, entry)`` works too (the subscription is for the
    type checker; nothing is checked at run time).
    """

    name: str
    value: T
    entry: Callable[[T], NoReturn]
    timeout: float | None = None
    capture: bool = False
    grace: float = 2.0
    new_group: bool = True
    threads: Threads = "refuse"
    contain: bool = True
    limits: Limits | None = None
    codec: Codec = "json"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise TypeError(f"ChildSpec(name=...) must be a non-empty str, not {self.name!r}")
        if not callable(self.entry):
            raise TypeError(
                f"ChildSpec {self.name!r}: entry must be a callable that never returns, "
                f"not {type(self.entry).__name__}"
            )
        timeout = self.timeout
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(f"ChildSpec {self.name!r}: timeout must be > 0 seconds or None, not {timeout!r}")
        if not isinstance(self.capture, bool):
            raise TypeError(f"ChildSpec {self.name!r}: capture must be True or False, not {self.capture!r}")
        try:
            self.options()
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"ChildSpec {self.name!r}: {str(exc).replace('fork(', '(')}") from None

    def options(self, *, timeout: float | None = None, capture: bool | None = None) -> Options:
        """The ``df.fork`` options of this child (``timeout``/``capture`` may be overridden)."""
        return Options(
            name=self.name,
            timeout=self.timeout if timeout is None else timeout,
            grace=self.grace,
            new_group=self.new_group,
            threads=self.threads,
            capture=self.capture if capture is None else capture,
            contain=self.contain,
            limits=self.limits,
            codec=self.codec,
        )


@final
@dataclass(frozen=True, slots=True)
class Config:
    """What ``divergefork_children`` gets: the parsed command line and the plugin manager."""

    options: argparse.Namespace
    pluginmanager: pluggy.PluginManager


@hookspec
def divergefork_addoption(parser: argparse.ArgumentParser) -> None:
    """Add command-line options to ``divergefork run`` (and ``list``).

    Called once per plugin, in the parent, before the command line is parsed. Use
    ``parser.add_argument_group("my plugin")`` and prefix option names with the plugin's
    name to avoid clashes. The return value is ignored.
    """


@hookspec
def divergefork_children(config: Config) -> Iterable[ChildSpec[Any]]:
    """Return the children this plugin contributes.

    Called once per plugin, in the parent, after the command line is parsed; nothing has been
    forked yet. ``config.options`` holds the parsed options. Return an iterable of
    :class:`ChildSpec` (a list, a tuple or a generator); anything else is a ``PluginError``
    naming the plugin, and then nothing at all is forked. Child names must be unique across
    all plugins.
    """
    raise NotImplementedError  # pragma: no cover - a specification, never called


@hookspec
def divergefork_report(report: Report) -> None:
    """Observe one child's report, in the parent, as soon as that child is reaped.

    Called in the order children end, possibly while others still run. Must not block for
    long: other children's deadlines are enforced by the same loop, and must not leave a thread
    running: later forks would be refused. An exception is reported naming the plugin once all
    children are reaped (exit 1); the children are not cancelled, the other plugins are still
    called, and this plugin's hooks are not called again in the run. The return value is ignored.
    """


@hookspec
def divergefork_finished(reports: Sequence[Report]) -> None:
    """Observe all reports, in the parent, after the last child was reaped.

    ``reports`` is in the order children ended. Called also when some children failed; not
    called when the run was interrupted or a fork was refused part way through (the other
    children were then cancelled), nor for a plugin whose ``divergefork_report`` raised. An
    exception here is reported naming the plugin (exit 1) and does not keep the other plugins'
    ``divergefork_finished`` from being called. The return value is ignored.
    """


