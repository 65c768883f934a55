"""The divergefork mypy plugin: ``plugins = divergefork.mypy`` in a mypy config.

Plain mypy already rejects an entry typed ``-> None``, a ``-> NoReturn`` body that can fall
through and a value that does not fit the entry. Two holes remain, and this plugin closes them:

``divergefork-entry``
    An entry given to ``divergefork.fork``, ``Scope.fork`` or ``ChildSpec`` whose return type is
    ``Any`` (unannotated or partly annotated functions, ``-> Any``, untyped decorators,
    ``Callable[..., Any]``, ``functools.partial`` over those, objects whose ``__call__`` returns
    ``Any``). ``Any`` is compatible with ``NoReturn``, so mypy accepts these silently, and the
    child may return after all.
``divergefork-hookimpl``
    A ``@divergefork.hookimpl`` function whose name (or ``specname``) is not a divergefork hook,
    that asks for a parameter the hookspec does not pass, declares a parameter type the hookspec
    does not pass, or returns something that does not fit. pluggy itself only compares argument
    names, at registration time, and never types.

Both are error codes of their own (not sub-codes of ``misc``), so ``# type: ignore[divergefork-entry]``
and ``--disable-error-code divergefork-hookimpl`` work as for any mypy error.

The runtime never imports this module; only mypy does.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from mypy.errorcodes import ErrorCode
from mypy.messages import format_type
from mypy.nodes import (
    ARG_NAMED,
    ARG_POS,
    CallExpr,
    Context,
    Decorator,
    Expression,
    FuncDef,
    Import,
    ImportAll,
    ImportFrom,
    MemberExpr,
    MypyFile,
    NameExpr,
    RefExpr,
    StrExpr,
    TypeInfo,
)
from mypy.options import Options
from mypy.plugin import CheckerPluginInterface, FunctionContext, MethodContext, Plugin, ReportConfigContext
from mypy.subtypes import find_member, is_subtype
from mypy.types import (
    AnyType,
    CallableType,
    Instance,
    NoneType,
    Overloaded,
    Type,
    TypeOfAny,
    TypeVarType,
    UninhabitedType,
    UnionType,
    get_proper_type,
)

__all__ = ["ENTRY", "HOOKIMPL", "DivergeforkPlugin", "plugin"]

# Bump whenever the plugin reports something new or stops reporting something: mypy's cache
# stores per-module errors, and report_config_data() below makes a new version invalidate it.
__version__: Final = "1.0.0"

ENTRY: Final = ErrorCode(
    "divergefork-entry",
    "Check that an entry given to divergefork.fork, Scope.fork or ChildSpec provably never returns",
    "divergefork",
)
HOOKIMPL: Final = ErrorCode(
    "divergefork-hookimpl",
    "Check @divergefork.hookimpl functions against the divergefork hook specifications",
    "divergefork",
)

PACKAGE: Final = "divergefork"
HOOKSPECS_MODULE: Final = "divergefork._hookspecs"
HOOKIMPL_MARKER: Final = "divergefork._hookspecs.hookimpl"
HOOK_PREFIX: Final = "divergefork_"

# The callables that take an entry, with the name users know them by (for messages).
FORK: Final = "divergefork._fork.fork"
SCOPE_FORK: Final = "divergefork._scope.Scope.fork"
CHILD_SPEC: Final = "divergefork._hookspecs.ChildSpec"
ENTRY_TAKERS: Final = {FORK: "divergefork.fork()", SCOPE_FORK: "Scope.fork()", CHILD_SPEC: "ChildSpec()"}

# pluggy 1.7 moved the markers to pluggy._decorators; older releases keep them in pluggy._hooks.
MARKER_CALLS: Final = frozenset(
    {"pluggy._decorators.HookimplMarker.__call__", "pluggy._hooks.HookimplMarker.__call__"}
)
PLUGGY_RESULT: Final = ("pluggy._result.Result", "pluggy.Result")

# `@df.hookimpl(...)` is two calls: the marker call makes a decorator, and that decorator is
# applied to the function. Only the second sees the function, but it is a call of a plain
# callable type, which no hook would see. The first call's type is therefore renamed to this
# made-up name, so that applying it reaches get_function_hook below.
APPLY_HOOKIMPL: Final = "divergefork.mypy.<hookimpl decorator>"


class DivergeforkPlugin(Plugin):
    """Reports entries that are not provably NoReturn and mistyped hook implementations."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._build_modules: dict[str, MypyFile] = {}
        self._specs: dict[str, HookSpec] | None = None
        self._specs_from: MypyFile | None = None

    def set_modules(self, modules: dict[str, MypyFile]) -> None:
        super().set_modules(modules)
        self._build_modules = modules  # the same dict mypy fills as it loads modules

    def report_config_data(self, ctx: ReportConfigContext) -> object:
        # Part of every module's cache key: a new plugin version re-checks everything.
        return {"divergefork.mypy": __version__}

    def get_additional_deps(self, file: MypyFile) -> list[tuple[int, str, int]]:
        # The hookimpl checks read the hookspec signatures, so files that use divergefork must
        # see that module fully analysed. Only those files: adding it to every module (the
        # runtime's own modules, which _hookspecs imports) would create import cycles.
        if file.fullname == PACKAGE or file.fullname.startswith(PACKAGE + "."):
            return []
        if any(_imports_divergefork(imp) for imp in file.imports):
            return [(10, HOOKSPECS_MODULE, -1)]  # 10 is mypy's PRI_MED, a top-level import
        return []

    def get_function_hook(self, fullname: str) -> Callable[[FunctionContext], Type] | None:
        if fullname in (FORK, CHILD_SPEC):
            return _entry_checker(ENTRY_TAKERS[fullname])
        if fullname == APPLY_HOOKIMPL:
            return self._check_applied_marker
        return None

    def get_method_hook(self, fullname: str) -> Callable[[MethodContext], Type] | None:
        if fullname == SCOPE_FORK:
            return _entry_checker(ENTRY_TAKERS[fullname])
        if fullname in MARKER_CALLS:
            return self._check_marker_call
        return None

    # --- hook implementations -------------------------------------------------------------

    def _check_marker_call(self, ctx: MethodContext) -> Type:
        context = ctx.context
        if isinstance(context, Decorator):
            # Bare `@df.hookimpl`: mypy checks it as marker.__call__(function).
            decorator = _decorator_at(context, ctx.args)
            if decorator is not None and _is_marker(decorator):
                self._check_hookimpl(context, MarkerOptions(), ctx.api)
            return ctx.default_return_type
        if isinstance(context, CallExpr) and _is_marker(context.callee) and not _passes_function(ctx):
            # `@df.hookimpl(...)`: tag the decorator it returns, see APPLY_HOOKIMPL.
            made = get_proper_type(ctx.default_return_type)
            if isinstance(made, CallableType):
                return made.copy_modified(name=APPLY_HOOKIMPL)
        return ctx.default_return_type

    def _check_applied_marker(self, ctx: FunctionContext) -> Type:
        context = ctx.context
        if isinstance(context, Decorator):
            decorator = _decorator_at(context, ctx.args)
            if isinstance(decorator, CallExpr):
                self._check_hookimpl(context, MarkerOptions.parse(decorator), ctx.api)
        return ctx.default_return_type

    def _check_hookimpl(self, node: Decorator, marker: MarkerOptions, api: CheckerPluginInterface) -> None:
        func = node.func
        if marker.specname is Unknown:
            return  # `specname=some_variable`: nothing can be said
        hook_name = marker.specname if isinstance(marker.specname, str) else func.name
        specs = self._hook_specs()
        if specs is None:
            return  # the hookspec module is not part of this build
        spec = specs.get(hook_name)
        if spec is None:
            if marker.optionalhook is not False:
                return  # pluggy accepts an optional hook that has no specification
            close = difflib.get_close_matches(hook_name, specs, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            api.fail(
                f'"{hook_name}" is not a divergefork hook{hint}; the hooks are '
                f"{', '.join(sorted(specs))} (use optionalhook=True for a hook of another project)",
                func,
                code=HOOKIMPL,
            )
            return
        _check_parameters(func, hook_name, spec, api)
        _check_return(func, hook_name, spec, marker, api, self._pluggy_result)

    def _hook_specs(self) -> dict[str, HookSpec] | None:
        module = self._build_modules.get(HOOKSPECS_MODULE)
        if module is None:
            return None
        if self._specs is None or self._specs_from is not module:
            self._specs, self._specs_from = dict(_read_specs(module)), module
        return self._specs


    def _pluggy_result(self, result: Type) -> Instance | None:
        """``pluggy.Result[result]``, what an old-style hookwrapper receives at its yield."""
        for fullname in PLUGGY_RESULT:
            symbol = self.lookup_fully_qualified(fullname)
            if symbol is not None and isinstance(symbol.node, TypeInfo):
                return Instance(symbol.node, [result])
        return None


def plugin(version: str) -> type[Plugin]:
    """mypy's entry point; the plugin supports every mypy the project supports (>= 1.10)."""
    return DivergeforkPlugin


# --- entries -----------------------------------------------------------------------------------


def _entry_checker(taker: str) -> Callable[[FunctionContext | MethodContext], Type]:
    def check(ctx: FunctionContext | MethodContext) -> Type:
        try:
            index = ctx.callee_arg_names.index("entry")
        except ValueError:
            return ctx.default_return_type
        for arg_type, arg in zip(ctx.arg_types[index], ctx.args[index]):
            _check_entry(arg_type, arg, taker, ctx.api)
        return ctx.default_return_type

    return check


def _check_entry(arg_type: Type, arg: Expression, taker: str, api: CheckerPluginInterface) -> None:
    if _diverges(arg_type):
        return
    # An entry that mypy already rejects (a `-> None` function, wrong arity) has its own
    # arg-type error; a second one would only be noise. What is left is exactly what plain
    # mypy lets through: a callable whose return is Any, which is compatible with NoReturn.
    never_returning = CallableType(
        [AnyType(TypeOfAny.special_form)],
        [ARG_POS],
        [None],
        UninhabitedType(),
        api.named_generic_type("builtins.function", []),
    )
    if not is_subtype(arg_type, never_returning):
        return
    proper = get_proper_type(arg_type)
    what = f"its type is {format_type(arg_type, api.options)}"
    if not isinstance(proper, AnyType):
        returned = _returned(arg_type)
        if returned is not None:
            what = f"it returns {format_type(returned, api.options)}"
    name = f' "{arg.name}"' if isinstance(arg, NameExpr | MemberExpr) else ""
    api.fail(
        f"Entry{name} given to {taker} is not provably NoReturn ({what}); annotate the entry "
        '"-> NoReturn" so mypy can prove that the child exits, execs, raises or loops forever',
        arg,
        code=ENTRY,
    )


def _diverges(typ: Type) -> bool:
    """Is every way of calling ``typ`` provably NoReturn (``Never``)?"""
    proper = get_proper_type(typ)
    if isinstance(proper, UninhabitedType):
        return True  # an unreachable value: nothing is ever called
    if isinstance(proper, CallableType):
        return isinstance(get_proper_type(proper.ret_type), UninhabitedType)
    if isinstance(proper, Overloaded):
        return all(_diverges(item) for item in proper.items)
    if isinstance(proper, UnionType):
        return all(_diverges(item) for item in proper.items)
    if isinstance(proper, TypeVarType):
        return _diverges(proper.upper_bound)
    if isinstance(proper, Instance):
        # Callable objects, functools.partial (whose __call__ returns the partial's type) too.
        call = find_member("__call__", proper, proper, is_operator=True)
        return call is not None and _diverges(call)
    return False  # Any, TypeType (a class returns an instance), and everything else


def _returned(typ: Type) -> Type | None:
    """The return type of ``typ`` to show in a message, if it has a single one."""
    proper = get_proper_type(typ)
    if isinstance(proper, CallableType):
        return proper.ret_type
    if isinstance(proper, TypeVarType):
        return _returned(proper.upper_bound)
    if isinstance(proper, Instance):
        call = find_member("__call__", proper, proper, is_operator=True)
        return None if call is None else _returned(call)
    return None


# --- hook implementations ----------------------------------------------------------------------


class _UnknownType:
    """A marker option given as an expression the plugin cannot evaluate."""

    def __repr__(self) -> str:
        return "Unknown"


Unknown: Final = _UnknownType()


@dataclass(frozen=True)
class MarkerOptions:
    """The options of one ``@df.hookimpl(...)`` that change what is checked."""

    specname: str | None | _UnknownType = None
    optionalhook: bool | _UnknownType = False
    wrapper: bool | _UnknownType = False
    hookwrapper: bool | _UnknownType = False

    @classmethod
    def parse(cls, call: CallExpr) -> MarkerOptions:
        found: dict[str, str | None | bool | _UnknownType] = {}
        for name, value in zip(call.arg_names, call.args):
            if name == "specname":
                found[name] = _literal(value, str)
            elif name in ("optionalhook", "wrapper", "hookwrapper"):
                found[name] = _literal(value, bool)
        specname = found.get("specname", None)
        assert not isinstance(specname, bool)
        return cls(
            specname=specname,
            optionalhook=_as_flag(found.get("optionalhook", False)),
            wrapper=_as_flag(found.get("wrapper", False)),
            hookwrapper=_as_flag(found.get("hookwrapper", False)),
        )


def _literal(expr: Expression, kind: type[str] | type[bool]) -> str | None | bool | _UnknownType:
    if isinstance(expr, NameExpr) and expr.fullname == "builtins.None":
        return None
    if kind is str and isinstance(expr, StrExpr):
        return expr.value
    if kind is bool and isinstance(expr, NameExpr) and expr.fullname in ("builtins.True", "builtins.False"):
        return expr.fullname == "builtins.True"
    return Unknown


def _as_flag(value: str | None | bool | _UnknownType) -> bool | _UnknownType:
    if value is None:
        return False
    return value if isinstance(value, bool | _UnknownType) else Unknown


@dataclass(frozen=True)
class HookSpec:
    """One hook specification as read from ``divergefork._hookspecs``."""

    signature: CallableType
    firstresult: bool

    def parameters(self) -> dict[str, Type]:
        return {name: typ for name, typ in zip(self.signature.arg_names, self.signature.arg_types) if name}

    def describe(self, options: Options) -> str:
        params = ", ".join(f"{name}: {format_type(typ, options)}" for name, typ in self.parameters().items())
        return f"({params}) -> {format_type(self.signature.ret_type, options)}".replace('"', "")


def _read_specs(module: MypyFile) -> Iterator[tuple[str, HookSpec]]:
    for name, symbol in module.names.items():
        node = symbol.node
        if not name.startswith(HOOK_PREFIX) or not isinstance(node, Decorator):
            continue
        # From mypy's cache a Decorator has lost its decorator expressions; the divergefork_
        # prefix (pluggy's project-name convention) then identifies the specs on its own.
        if node.original_decorators and not any(_is_spec_marker(d) for d in node.original_decorators):
            continue
        signature = node.func.type
        if isinstance(signature, CallableType):
            yield name, HookSpec(signature, any(_firstresult(d) for d in node.original_decorators))


def _is_spec_marker(expr: Expression) -> bool:
    if isinstance(expr, CallExpr):
        expr = expr.callee
    return isinstance(expr, RefExpr) and expr.fullname == HOOKSPECS_MODULE + ".hookspec"


def _firstresult(expr: Expression) -> bool:
    if not isinstance(expr, CallExpr):
        return False
    return any(n == "firstresult" and _literal(v, bool) is True for n, v in zip(expr.arg_names, expr.args))


def _check_parameters(func: FuncDef, hook_name: str, spec: HookSpec, api: CheckerPluginInterface) -> None:
    passed = spec.parameters()
    arguments = func.arguments
    impl_type = func.type if isinstance(func.type, CallableType) else None
    impl_types: list[Type | None] = list(impl_type.arg_types) if impl_type else [None] * len(arguments)
    if func.info and not func.is_static:
        # pluggy registers plugin instances and classes: the bound self/cls is never a hook argument.
        arguments, impl_types = arguments[1:], impl_types[1:]
    for argument, declared in zip(arguments, impl_types):
        name = argument.variable.name
        if argument.kind == ARG_NAMED:
            api.fail(
                f'Hook implementation "{hook_name}" has a keyword-only parameter "{name}" without a '
                "default; pluggy passes hook arguments positionally, so it would never be given",
                argument,
                code=HOOKIMPL,
            )
        if argument.kind != ARG_POS:
            continue  # pluggy passes only parameters without defaults; *args/**kwargs stay empty
        if name not in passed:
            api.fail(
                f'Hook implementation "{hook_name}" asks for "{name}", which the hookspec does not '
                f"pass: {hook_name}{spec.describe(api.options)}",
                argument,
                code=HOOKIMPL,
            )
            continue
        if declared is not None and not is_subtype(passed[name], declared):
            api.fail(
                f'Parameter "{name}" of hook implementation "{hook_name}" has type '
                f"{format_type(declared, api.options)}, but the hookspec passes "
                f"{format_type(passed[name], api.options)}",
                argument,
                code=HOOKIMPL,
            )


def _check_return(
    func: FuncDef,
    hook_name: str,
    spec: HookSpec,
    marker: MarkerOptions,
    api: CheckerPluginInterface,
    pluggy_result: Callable[[Type], Instance | None],
) -> None:
    if not isinstance(func.type, CallableType):
        return  # unannotated: strict mode reports that already
    returned = func.type.ret_type
    if func.is_coroutine:
        api.fail(
            f'Hook implementation "{hook_name}" is a coroutine function; pluggy calls hooks '
            "synchronously and never awaits them",
            func,
            code=HOOKIMPL,
        )
        return
    expected = spec.signature.ret_type
    # What a wrapper sees around the other implementations: the list of their results, or the
    # single first result of a firstresult hook.
    result = expected if spec.firstresult else api.named_generic_type("builtins.list", [expected])
    if marker.wrapper is True or marker.hookwrapper is True:
        _check_wrapper_return(func, hook_name, returned, result, marker, api, pluggy_result)
        return
    if isinstance(marker.wrapper, _UnknownType) or isinstance(marker.hookwrapper, _UnknownType):
        return
    if not is_subtype(returned, expected):
        api.fail(
            f'Hook implementation "{hook_name}" returns {format_type(returned, api.options)}, '
            f"but the hookspec expects {format_type(expected, api.options)}",
            func,
            code=HOOKIMPL,
        )


def _check_wrapper_return(
    func: FuncDef,
    hook_name: str,
    returned: Type,
    result: Type,
    marker: MarkerOptions,
    api: CheckerPluginInterface,
    pluggy_result: Callable[[Type], Instance | None],
) -> None:
    kind = "wrapper=True" if marker.wrapper is True else "hookwrapper=True"
    generator = _generator_args(returned)
    if generator is None:
        api.fail(
            f'Hook implementation "{hook_name}" ({kind}) must be a generator that yields once, '
            f"but it returns {format_type(returned, api.options)}",
            func,
            code=HOOKIMPL,
        )
        return
    _, sent, final = generator
    if marker.wrapper is True:
        # New style: `result = yield` receives the inner result and the wrapper returns it.
        wanted = f"Generator[None, {_plain(result, api)}, {_plain(result, api)}]"
        if not is_subtype(result, sent) or not is_subtype(final, result):
            api.fail(
                f'Hook wrapper "{hook_name}" receives and must return {format_type(result, api.options)}: '
                f"annotate it -> {wanted}",
                func,
                code=HOOKIMPL,
            )
        return
    # Old style: `outcome = yield` receives a pluggy.Result; a wrapper that ignores it may say None.
    outcome = pluggy_result(result)
    if outcome is not None and not isinstance(get_proper_type(sent), NoneType) and not is_subtype(outcome, sent):
        api.fail(
            f'Hook wrapper "{hook_name}" (hookwrapper=True) receives {format_type(outcome, api.options)} '
            f"at its yield, not {format_type(sent, api.options)}",
            func,
            code=HOOKIMPL,
        )


def _generator_args(returned: Type) -> tuple[Type, Type, Type] | None:
    """(yield, send, return) types of a generator function's declared return type."""
    proper = get_proper_type(returned)
    if isinstance(proper, AnyType):
        any_type = AnyType(TypeOfAny.from_another_any, proper)
        return any_type, any_type, any_type
    if not isinstance(proper, Instance):
        return None
    if proper.type.fullname == "typing.Generator" and len(proper.args) == 3:
        # collections.abc.Generator is the same class; nobody returns a subclass of it.
        yielded, sent, final = proper.args
        return yielded, sent, final
    if proper.type.has_base("typing.Iterator") or proper.type.fullname in ("typing.Iterable", "typing.Iterator"):
        return AnyType(TypeOfAny.special_form), NoneType(), NoneType()
    return None


def _plain(typ: Type, api: CheckerPluginInterface) -> str:
    return format_type(typ, api.options).strip('"')


# --- small helpers -----------------------------------------------------------------------------


def _imports_divergefork(imp: Import | ImportFrom | ImportAll | object) -> bool:
    if isinstance(imp, Import):
        names = [name for name, _ in imp.ids]
    elif isinstance(imp, ImportFrom | ImportAll):
        if imp.relative:
            return False
        names = [imp.id]
    else:
        return False
    return any(name == PACKAGE or name.startswith(PACKAGE + ".") for name in names)


def _is_marker(expr: Expression) -> bool:
    return isinstance(expr, RefExpr) and expr.fullname == HOOKIMPL_MARKER


def _passes_function(ctx: MethodContext) -> bool:
    """Is this ``df.hookimpl(function, ...)`` rather than ``df.hookimpl(...)`` making a decorator?"""
    return bool(ctx.args and ctx.args[0])


def _decorator_at(node: Decorator, args: list[list[Expression]]) -> Expression | None:
    """The decorator expression of ``node`` that mypy is applying now.

    mypy checks each decorator as a call on a temporary node placed at that decorator, so its
    position tells which of several decorators (pluggy's, pytest's, ...) this call is.
    """
    if not args or not args[0]:
        return None
    here: Context = args[0][0]
    for decorator in node.original_decorators:
        if decorator.line == here.line and decorator.column == here.column:
            return decorator
    return None

