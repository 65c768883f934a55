"""Finding, loading, validating and calling divergefork plugins (pluggy).

A plugin is a module (or any object) with ``@df.hookimpl`` functions. It is found through an
installed distribution's entry point in the group ``divergefork``, or named on the command
line with ``-p MODULE``; ``-p no:NAME`` blocks one by entry-point name or module name.

Every way a plugin can be broken becomes a :class:`PluginError` that names the plugin (entry
point and distribution, or the ``-p`` module) and says what to fix. Loading and collecting
happen before anything is forked, so these errors mean nothing was forked: an import error, a
hookimpl pluggy rejects or that names no divergefork hook, an exception inside
``divergefork_addoption`` or ``divergefork_children``, a ``divergefork_children`` result that
is not an iterable of ``ChildSpec``, or two children with one name. ``divergefork_report`` and
``divergefork_finished`` run after children were forked; :meth:`Plugins.report` and
:meth:`Plugins.finished` return their errors instead of raising, so that one broken observer
does not keep the others from being called. The original exception stays on ``__cause__`` so
a command line can show the full traceback on request.

Hooks are called one plugin at a time (a subset hook caller per plugin) rather than through
``pm.hook.X(...)``: pluggy's combined call would lose which plugin returned what or raised.
The order is load order, except that ``tryfirst``/``trylast`` implementations move to the
front/back; a ``hookwrapper``/``wrapper`` implementation wraps only its own plugin's call (see
``_hookspecs``). Nothing here prints, exits or forks.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import re
import sysconfig
import threading
import traceback
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final, final

import pluggy

from . import _hookspecs
from ._errors import PluginError
from ._hookspecs import ChildSpec, Config, spec_origin
from ._report import Report

__all__ = [
    "AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "Collected",
    "Plugin",
    "Plugins",
    "describe_entry",
    "load_plugins",
]

#: The entry-point group installed plugins declare (``[project.entry-points.divergefork]``).
ENTRY_POINT_GROUP: Final = "divergefork"
#: Set to a non-empty value to skip entry-point discovery (only ``-p`` modules load), like
#: pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``: for tests and for isolating a broken install.
AUTOLOAD_ENV: Final = "DIVERGEFORK_DISABLE_PLUGIN_AUTOLOAD"

_HOOK_PREFIX: Final = "divergefork_"
_BLOCK_PREFIX: Final = "no:"


@final
@dataclass(frozen=True, slots=True)
class Plugin:
    """One registered plugin and where it came from."""

    #: The name it is registered (and blocked) under: the entry point's name, or the module
    #: name given to ``-p``.
    name: str
    #: The module that holds its hook implementations.
    module: str
    #: ``"divergefork-hello 0.1.0"`` for an entry point, ``None`` for a ``-p`` module.
    distribution: str | None
    #: The plugin object pluggy holds (usually the module).
    obj: object = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """How errors and listings name it: ``'hello' (distribution divergefork-hello 0.1.0)``."""
        return _label(self.name, self.distribution, self.module)


@final
@dataclass(frozen=True, slots=True)
class Collected:
    """A child some plugin contributed, with that plugin (for errors and reports)."""

    plugin: Plugin
    spec: ChildSpec[Any]


def _label(name: str, distribution: str | None, module: str) -> str:
    if distribution is not None:
        return f"{name!r} (distribution {distribution})"
    return f"{name!r} (-p {module})"


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    if dist is None:  # entry points built by hand have no distribution
        return "unknown distribution"
    return f"{dist.name} {dist.version}"


def _stdlib_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The standard library's directories, and the site directories that may sit inside them."""
    paths = sysconfig.get_paths()
    stdlib = tuple(os.path.join(paths[key], "") for key in ("stdlib", "platstdlib"))
    site = tuple(os.path.join(paths[key], "") for key in ("purelib", "platlib"))
    return stdlib, site


_STDLIB, _SITE = _stdlib_dirs()
# Our own frames and pluggy's (the hook call) are never where a plugin went wrong either.
_HOSTS: Final = tuple(os.path.join(os.path.dirname(module.__file__ or ""), "") for module in (_hookspecs, pluggy))


def _is_users_frame(filename: str) -> bool:
    # Frames of the import machinery (frozen or importlib/) and of other stdlib modules say
    # nothing about where the plugin went wrong; the plugin's own last line does. Nor does
    # generated code ("<string>": the __init__ a dataclass such as ChildSpec compiles).
    if filename.startswith("<") or filename.startswith(_HOSTS):
        return False
    return not filename.startswith(_STDLIB) or filename.startswith(_SITE)


def _exception_text(exc: BaseException) -> str:
    """The last line of the traceback plus where it was raised: what a user reads first.

    The location is the last frame outside the standard library, and is left out when there
    is none (``-p nosuchmod``: the whole traceback is importlib's).
    """
    last = "".join(traceback.format_exception_only(exc)).strip().splitlines()
    text = last[-1] if last else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        # The traceback of a SyntaxError ends in the import machinery, not at the bad line.
        return f"{text} (at {exc.filename}:{exc.lineno})"
    where = _users_frame(exc)
    if where is not None:
        text += f" (at {where.filename}:{where.lineno}, in {where.name})"
    return text


def _users_frame(exc: BaseException) -> traceback.FrameSummary | None:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_users_frame(f.filename)]
    return frames[-1] if frames else None


def _spec_error(exc: BaseException) -> bool:
    """Whether ``exc`` is ``ChildSpec`` refusing an option (raised by its ``__post_init__``)."""
    return isinstance(exc, TypeError | ValueError) and any(
        frame.name == "__post_init__" and frame.filename == _hookspecs.__file__
        for frame in traceback.extract_tb(exc.__traceback__)
    )


def _hook_signature(pm: pluggy.PluginManager, hookname: str) -> str:
    caller = getattr(pm.hook, hookname, None)
    spec = None if caller is None else caller.spec
    if spec is None:
        return hookname + "(...)"
    try:
        # The hookspecs module uses postponed annotations; show Config, not 'Config'.
        signature = inspect.signature(spec.function, eval_str=True)
    except (NameError, TypeError, ValueError):
        signature = inspect.signature(spec.function)
    text = str(signature)
    for module, short in (("divergefork._hookspecs.", "df."), ("divergefork._report.", "df."),
                          ("collections.abc.", ""), ("typing.", "")):
        text = text.replace(module, short)
    return hookname + text


@final
class Plugins:
    """The plugin manager for one command: the registered plugins, in load order.

    Build it with :func:`load_plugins`. Load order is entry points sorted by name, then ``-p``
    modules in command-line order; hooks are called and children collected in that order.
    """

    __slots__ = ("pm", "plugins", "blocked", "failed", "last_call", "thread_starter")

    pm: Final[pluggy.PluginManager]
    plugins: Final[list[Plugin]]
    blocked: Final[list[str]]
    #: Plugins that failed to load, kept only by ``load_plugins(..., keep_going=True)``.
    failed: Final[list[PluginError]]
    #: The last hook called and whose it was (``"divergefork_report of plugin 'x' (...)"``),
    #: for errors that show up later because of what a hook did (a thread it started, say).
    last_call: str | None
    #: The last hook call that left more threads running than before it (same wording): the
    #: likely reason a later fork is refused with ``threads="refuse"``.
    thread_starter: str | None

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(_hookspecs)
        self.plugins = []
        self.blocked = []
        self.failed = []
        self.last_call = None
        self.thread_starter = None

    # -- loading ---------------------------------------------------------------------------

    def block(self, name: str) -> None:
        """Refuse a plugin by entry-point name or module name (``-p no:NAME``)."""
        if name not in self.blocked:
            self.blocked.append(name)
            self.pm.set_blocked(name)

    def is_blocked(self, *names: str) -> bool:
        return any(name in self.blocked for name in names)

    def load_entry_point(self, ep: metadata.EntryPoint) -> Plugin | None:
        """Import and register one entry point; ``None`` if it is blocked."""
        module = ep.value.partition(":")[0].strip()
        distribution = _distribution(ep)
        label = _label(ep.name, distribution, module)
        if self.is_blocked(ep.name, module):
            return None
        for known in self.plugins:
            if known.name == ep.name:
                raise PluginError(
                    label,
                    f"the entry-point name {ep.name!r} is also used by plugin {known.label}; "
                    f"uninstall one of the two distributions, or block one with -p no:{ep.name} "
                    "(blocking by name blocks both, so block by module name instead)",
                )
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(
                label,
                f"cannot import {ep.value}: {_exception_text(exc)}; fix or reinstall the "
                f"distribution, or skip this plugin with -p no:{ep.name}",
            ) from exc
        return self._register(Plugin(ep.name, module, distribution, obj))

    def load_module(self, module: str) -> Plugin | None:
        """Import ``module`` and register it (``-p MODULE``); ``None`` if blocked or loaded."""
        label = _label(module, None, module)
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise PluginError(label, "-p needs a module name such as my_plugin or package.plugin")
        if self.is_blocked(module):
            return None
        try:
            obj = importlib.import_module(module)
        except Exception as exc:
            hint = (
                "is it installed, or on PYTHONPATH?"
                if isinstance(exc, ModuleNotFoundError) and exc.name == module.split(".")[0]
                else "fix the module"
            )
            raise PluginError(label, f"cannot import {module}: {_exception_text(exc)}; {hint}") from exc
        for known in self.plugins:
            if known.obj is obj:
                return None  # already loaded through its entry point: -p is then a no-op
        return self._register(Plugin(module, module, None, obj))

    def _register(self, plugin: Plugin) -> Plugin:
        _check_unmarked(self.pm, plugin)
        try:
            self.pm.register(plugin.obj, name=plugin.name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(plugin.label, self._validation_text(exc)) from exc
        except ValueError as exc:  # pluggy: the same object or name registered twice
            raise PluginError(plugin.label, f"cannot register it: {exc}") from exc
        self.plugins.append(plugin)
        return plugin

    def _validation_text(self, exc: pluggy.PluginValidationError) -> str:
        # pluggy's message: "Plugin 'x' for hook 'y'\nhookimpl definition: y(a, b)\n<why>".
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        match = re.search(r"for hook '(\w+)'", str(exc))
        definition = next((line for line in lines if line.startswith("hookimpl definition:")), None)
        why = [line for line in lines[1:] if not line.startswith("hookimpl definition:")]
        if match is None or definition is None:
            return f"{' '.join(lines)}; fix the hook implementation"
        hookname = match.group(1)
        return (
            f"its hook implementation {definition.partition(':')[2].strip()} does not match the "
            f"specification {_hook_signature(self.pm, hookname)}: {' '.join(why)}; "
            "a hookimpl takes some or all of the specification's parameters, by name"
        )

    def check_hooks(self) -> None:
        """Every ``@df.hookimpl`` must name a divergefork hook (catches misspellings)."""
        known = sorted(name for name in vars(_hookspecs) if name.startswith(_HOOK_PREFIX))
        for name, caller in vars(self.pm.hook).items():
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise PluginError(
                    self._plugin_for(impl.plugin).label,
                    f"@df.hookimpl function {name!r} is not a divergefork hook ({hint}the hooks "
                    f"are {', '.join(known)}); rename it, or mark it "
                    "@df.hookimpl(optionalhook=True) if it is meant for another host",
                )
        try:
            self.pm.check_pending()  # the same check, pluggy's way: a safety net for the above
        except pluggy.PluginValidationError as exc:
            raise PluginError(self._plugin_for(exc.plugin).label, f"{exc}; fix the hook name") from exc

    def _plugin_for(self, obj: object) -> Plugin:
        for plugin in self.plugins:
            if plugin.obj is obj:
                return plugin
        name = self.pm.get_name(obj) or repr(obj)
        return Plugin(name, getattr(obj, "__name__", name), None, obj)

    # -- calling hooks -----------------------------------------------------------------------

    def _call(self, plugin: Plugin, hookname: str, kwargs: Mapping[str, object]) -> list[object]:
        others = [p.obj for p in self.plugins if p.obj is not plugin.obj]
        caller = self.pm.subset_hook_caller(hookname, remove_plugins=others)
        self.last_call = f"{hookname} of plugin {plugin.label}"
        threads = threading.active_count()
        try:
            results: list[object] = caller(**kwargs)
        except (Exception, SystemExit) as exc:  # SystemExit: a plugin must not end the run
            raise PluginError(plugin.label, _hook_failure(plugin, hookname, exc)) from exc
        finally:
            if threading.active_count() > threads:
                self.thread_starter = self.last_call
        return results

    def _implementing(self, hookname: str) -> list[Plugin]:
        """The plugins implementing ``hookname``, in the order they are called.

        Load order, made stable-sorted so ``tryfirst`` implementations come first and
        ``trylast`` ones last, as they would in one ``pm.hook`` call.
        """
        caller = getattr(self.pm.hook, hookname)
        rank: dict[int, int] = {}
        for impl in caller.get_hookimpls():
            rank[id(impl.plugin)] = 0 if impl.tryfirst else 2 if impl.trylast else 1
        implementing = [plugin for plugin in self.plugins if id(plugin.obj) in rank]
        return sorted(implementing, key=lambda plugin: rank[id(plugin.obj)])

    def add_options(
        self, parser: argparse.ArgumentParser, reserved: Iterable[str] = (), *, errors: list[PluginError] | None = None
    ) -> None:
        """Call every plugin's ``divergefork_addoption(parser)``.

        ``reserved`` are option strings the command adds elsewhere (to a subcommand that
        inherits ``parser``): a plugin taking one is told to rename it, naming the plugin,
        rather than argparse failing later with no plugin named. With ``errors`` (a list, for
        ``--help``), a failing plugin's error is appended there instead of raised.
        """
        taken = set(reserved)
        for plugin in self._implementing("divergefork_addoption"):
            before = len(parser._actions)  # argparse keeps no public list of its actions
            try:
                self._call(plugin, "divergefork_addoption", {"parser": parser})
                for action in parser._actions[before:]:
                    clash = taken.intersection(action.option_strings)
                    if clash:
                        raise PluginError(
                            plugin.label,
                            f"option {sorted(clash)[0]} clashes with divergefork's own option of "
                            "that name; prefix the plugin's options with its name (e.g. --hello-count)",
                        )
            except PluginError as exc:
                if errors is None:
                    raise
                errors.append(exc)

    def collect(self, config: Config) -> list[Collected]:
        """Every plugin's children, in load order; raises ``PluginError`` on any problem."""
        collected: list[Collected] = []
        owner: dict[str, Plugin] = {}
        for plugin in self._implementing("divergefork_children"):
            results = self._call(plugin, "divergefork_children", {"config": config})
            if not results:  # pluggy drops None results: the hookimpl returned None
                raise PluginError(
                    plugin.label,
                    "divergefork_children returned None; return an iterable of df.ChildSpec "
                    "(an empty list when there is nothing to run)",
                )
            for result in results:
                for spec in _specs(plugin, result):
                    first = owner.get(spec.name)
                    if first is not None:
                        raise PluginError(plugin.label, _duplicate(spec, first, plugin, collected))
                    owner[spec.name] = plugin
                    collected.append(Collected(plugin, spec))
        return collected

    def report(self, report: Report, *, skip: Collection[str] = ()) -> list[PluginError]:
        """``divergefork_report(report)`` for every plugin whose name is not in ``skip``.

        Returns the errors, one ``PluginError`` per plugin whose hook raised, instead of
        raising the first: children are running, and one broken observer must neither cancel
        them nor keep the other plugins from seeing the report. A caller usually passes the
        names of plugins that failed before as ``skip``.
        """
        return self._observe("divergefork_report", {"report": report}, skip)

    def finished(self, reports: Sequence[Report], *, skip: Collection[str] = ()) -> list[PluginError]:
        """``divergefork_finished(reports)`` for every plugin not in ``skip``; the errors.

        Like :meth:`report`: a plugin that fails does not keep the others from being called.
        """
        return self._observe("divergefork_finished", {"reports": reports}, skip)

    def _observe(self, hookname: str, kwargs: Mapping[str, object], skip: Collection[str]) -> list[PluginError]:
        errors: list[PluginError] = []
        for plugin in self._implementing(hookname):
            if plugin.name in skip:
                continue
            try:
                self._call(plugin, hookname, kwargs)
            except PluginError as exc:
                errors.append(exc)
        return errors

    def owner_of(self, error: PluginError) -> Plugin | None:
        """The plugin a ``PluginError`` from this manager names, if it is a loaded one."""
        return next((plugin for plugin in self.plugins if plugin.label == error.plugin), None)


def _hook_failure(plugin: Plugin, hookname: str, exc: BaseException) -> str:
    if _spec_error(exc):
        # The user's line is the one that built the ChildSpec: say that first, and plainly.
        where = _users_frame(exc)
        at = "" if where is None else f"{where.filename}:{where.lineno}: "
        return (
            f"{at}{exc} (in {hookname}); fix that ChildSpec(...), or skip the plugin with "
            f"-p no:{plugin.name}"
        )
    return (
        f"{hookname} raised {_exception_text(exc)}; fix the plugin or skip it with "
        f"-p no:{plugin.name}"
    )


def _duplicate(spec: ChildSpec[Any], first: Plugin, plugin: Plugin, collected: Sequence[Collected]) -> str:
    earlier = next(item.spec for item in collected if item.spec.name == spec.name)
    places = [where for where in (spec_origin(earlier), spec_origin(spec)) if where is not None]
    at = f" (built at {' and at '.join(places)})" if places else ""
    if first is plugin:
        return (
            f"it contributes two children named {spec.name!r}{at}; child names must be "
            "unique: give one of them another ChildSpec(name=...)"
        )
    return (
        f"its child {spec.name!r} has the name of a child of plugin {first.label}{at}; child "
        f"names must be unique: rename one, or run without one plugin (-p no:{plugin.name} "
        f"or -p no:{first.name})"
    )


def _specs(plugin: Plugin, result: object) -> list[ChildSpec[Any]]:
    """Check one ``divergefork_children`` result: an iterable of ``ChildSpec``, nothing else."""
    if isinstance(result, ChildSpec):
        raise PluginError(
            plugin.label,
            f"divergefork_children returned one ChildSpec ({result.name!r}), not an iterable of "
            "them; return a list: [ChildSpec(...)]",
        )
    if isinstance(result, str | bytes | Mapping) or not isinstance(result, Iterable):
        raise PluginError(
            plugin.label,
            f"divergefork_children returned {type(result).__name__} {_short(result)}; return an "
            "iterable (list, tuple, generator) of df.ChildSpec",
        )
    specs: list[ChildSpec[Any]] = []
    try:
        # A generator runs the plugin's code here, so its exceptions are the plugin's too.
        for index, item in enumerate(result):
            if not isinstance(item, ChildSpec):
                raise PluginError(
                    plugin.label,
                    f"divergefork_children returned {type(item).__name__} {_short(item)} at "
                    f"position {index}; every item must be a df.ChildSpec(name, value, entry)",
                )
            specs.append(item)
    except PluginError:
        raise
    except (Exception, SystemExit) as exc:
        raise PluginError(
            plugin.label, _hook_failure(plugin, "divergefork_children (iterating its result)", exc)
        ) from exc
    return specs


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_unmarked(pm: pluggy.PluginManager, plugin: Plugin) -> None:
    # pluggy ignores an unmarked function silently, so a forgotten @df.hookimpl would
    # make a plugin contribute nothing with no word said.
    for attr in dir(plugin.obj):
        if not attr.startswith(_HOOK_PREFIX):
            continue
        value = getattr(plugin.obj, attr, None)
        if inspect.isroutine(value) and pm.parse_hookimpl_opts(plugin.obj, attr) is None:
            raise PluginError(
                plugin.label,
                f"function {attr} is not marked as a hook implementation, so it would never be "
                "called; decorate it with @df.hookimpl",
            )


def load_plugins(
    specs: Sequence[str] = (),
    *,
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    autoload: bool | None = None,
    keep_going: bool = False,
) -> Plugins:
    """Load the plugins for one command and validate them; raise ``PluginError`` if any is broken.

    ``specs`` are the ``-p`` values in command-line order: ``MODULE`` loads a module,
    ``no:NAME`` blocks a plugin by entry-point name or module name (wherever it appears).
    ``entry_points`` defaults to the installed ones in group ``divergefork``; ``autoload``
    defaults to true unless the ``DIVERGEFORK_DISABLE_PLUGIN_AUTOLOAD`` environment variable
    is set. ``keep_going`` (for ``--help``): a plugin that fails to load is left out and its
    error kept in ``Plugins.failed`` instead of raised.
    """
    plugins = Plugins()
    modules: list[str] = []
    # With keep_going, a plugin that fails to load is kept in plugins.failed and left out.
    failed = plugins.failed if keep_going else None
    for spec in specs:
        if spec.startswith(_BLOCK_PREFIX):
            name = spec[len(_BLOCK_PREFIX) :].strip()
            if not name:
                raise PluginError(repr(spec), "-p no: needs a plugin name, e.g. -p no:hello")
            plugins.block(name)
        else:
            modules.append(spec.strip())
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload:
        found = metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
        for ep in sorted(found, key=lambda ep: (ep.name, ep.value)):
            _attempt(failed, plugins.load_entry_point, ep)
    for module in modules:
        _attempt(failed, plugins.load_module, module)
    _attempt(failed, lambda _: plugins.check_hooks(), None)
    return plugins


def _attempt(failed: list[PluginError] | None, load: Callable[[Any], object], what: Any) -> None:
    """``load(what)``; with ``failed`` (``keep_going``), a ``PluginError`` is kept there, not raised."""
    try:
        load(what)
    except PluginError as exc:
        if failed is None:
            raise
        failed.append(exc)


def describe_entry(entry: Callable[..., object]) -> str:
    """``module:qualname`` of an entry, for listings."""
    func = getattr(entry, "func", entry)  # functools.partial
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or type(entry).__name__
    return f"{module}:{name}"
