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

``divergefork check`` runs the whole gate: these checks, plus every other place an unproven
callable can flow into a declared divergent type (``divergefork._gate``).

Both are error codes of their own (not sub-codes of ``misc``), so ``# type: ignore[divergefork-entry]``
and ``--disable-error-code divergefork-hookimpl`` work as for any mypy error.

The runtime never imports this module; only mypy does.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

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
    TypeInfo,
)
from mypy.options import Options
from mypy.plugin import CheckerPluginInterface, FunctionContext, MethodContext, Plugin, ReportConfigContext
from mypy.subtypes import is_subtype
from mypy.types import (
    AnyType,
    CallableType,
    Instance,
    NoneType,
    Type,
    TypeOfAny,
    UninhabitedType,
    get_proper_type,
)

from ._gate.codes import (
    CHILD_SPEC,
    ENTRY,
    ENTRY_TAKERS,
    FORK,
    HOOK_PREFIX,
    HOOKIMPL,
    HOOKSPECS_MODULE,
    MARKER_CALLS,
    PACKAGE,
    SCOPE_FORK,
)
from ._gate.divergence import diverges, returned
from ._gate.markers import MarkerOptions, Unknown, _UnknownType, is_marker, marker_options

__all__ = ["ENTRY", "HOOKIMPL", "DivergeforkPlugin", "plugin"]

# Bump whenever the plugin reports something new or stops reporting something: mypy's cache
# stores per-module errors, and report_config_data() below makes a new version invalidate it.
__version__: Final = "2.0.0"

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
            # Bare `@marker`: mypy checks it as marker.__call__(function).
            decorator = _decorator_at(context, ctx.args)
            if decorator is not None and is_marker(decorator, self._build_modules):
                self._check_hookimpl(context.func, MarkerOptions(), _passed(ctx), ctx.api)
            return ctx.default_return_type
        if isinstance(context, CallExpr) and is_marker(context.callee, self._build_modules):
            options, function = marker_options(context)
            if function is None:
                # `@marker(...)`: tag the decorator it returns, see APPLY_HOOKIMPL.
                made = get_proper_type(ctx.default_return_type)
                if isinstance(made, CallableType):
                    return made.copy_modified(name=APPLY_HOOKIMPL)
            elif isinstance(function, RefExpr):
                # `x = marker(function)`: pluggy sees the function just the same.
                node = function.node
                func = node.func if isinstance(node, Decorator) else node
                if isinstance(func, FuncDef):
                    self._check_hookimpl(func, options, _passed(ctx), ctx.api, at=function)
        return ctx.default_return_type

    def _check_applied_marker(self, ctx: FunctionContext) -> Type:
        context = ctx.context
        if isinstance(context, Decorator):
            decorator = _decorator_at(context, ctx.args)
            if isinstance(decorator, CallExpr):
                options, _ = marker_options(decorator)
                self._check_hookimpl(context.func, options, _passed(ctx), ctx.api)
        return ctx.default_return_type

    def _check_hookimpl(
        self,
        func: FuncDef,
        marker: MarkerOptions,
        seen: Type | None,
        api: CheckerPluginInterface,
        at: Context | None = None,
    ) -> None:
        """Check ``func`` as pluggy will call it: ``seen`` is what the marker was given.

        Under other decorators that is their result, not ``func``'s own signature.
        """
        if marker.specname is Unknown:
            return  # `specname=some_variable`: nothing can be said
        hook_name = marker.specname if isinstance(marker.specname, str) else func.name
        specs = self._hook_specs()
        if specs is None:
            return  # the hookspec module is not part of this build
        spec = specs.get(hook_name)
        context = at or func
        if spec is None:
            if marker.optionalhook is not False:
                return  # pluggy accepts an optional hook that has no specification
            close = difflib.get_close_matches(hook_name, specs, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            api.fail(
                f'"{hook_name}" is not a divergefork hook{hint}; the hooks are '
                f"{', '.join(sorted(specs))} (use optionalhook=True for a hook of another project)",
                context,
                code=HOOKIMPL,
            )
            return
        proper = get_proper_type(seen) if seen is not None else None
        if isinstance(proper, AnyType) and func.type is not None and proper.type_of_any == TypeOfAny.from_error:
            return  # mypy reported the decorator already
        if isinstance(proper, AnyType) and func.type is not None:
            api.fail(
                f'Hook implementation "{hook_name}" is typed "Any" where pluggy sees it (an untyped '
                "decorator?): its parameters and result cannot be checked",
                context,
                code=HOOKIMPL,
            )
            return
        signature = proper if isinstance(proper, CallableType) else None
        if signature is None and isinstance(func.type, CallableType):
            signature = func.type
        _check_parameters(func, hook_name, spec, api, signature, context)
        _check_return(func, hook_name, spec, marker, api, self._pluggy_result, signature, context)

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
    """mypy's entry point; the plugin supports the mypy versions in pyproject.toml's ``check`` extra."""
    return DivergeforkPlugin


# --- entries -----------------------------------------------------------------------------------


def _entry_checker(taker: str) -> Callable[[FunctionContext | MethodContext], Type]:
    def check(ctx: FunctionContext | MethodContext) -> Type:
        if getattr(ctx.api, "current_node_deferred", False):
            # mypy will check this node again once the forward reference is resolved; the
            # Any it has now is a placeholder, not the entry's type.
            return ctx.default_return_type
        try:
            index = ctx.callee_arg_names.index("entry")
        except ValueError:
            return ctx.default_return_type
        for arg_type, arg in zip(ctx.arg_types[index], ctx.args[index]):
            _check_entry(arg_type, arg, taker, ctx.api)
        return ctx.default_return_type

    return check


def _check_entry(arg_type: Type, arg: Expression, taker: str, api: CheckerPluginInterface) -> None:
    if diverges(arg_type):
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
    name = f' "{arg.name}"' if isinstance(arg, NameExpr | MemberExpr) else ""
    api.fail(
        f"Entry{name} given to {taker} is not provably NoReturn ({describe_leak(arg_type, api.options)}); "
        'annotate the entry "-> NoReturn" so mypy can prove that the child exits, execs, raises or '
        "loops forever",
        arg,
        code=ENTRY,
    )


def describe_leak(typ: Type, options: Options) -> str:
    """``it returns "Any"`` or ``its type is "Any"``: why ``typ`` does not prove divergence."""
    if not isinstance(get_proper_type(typ), AnyType):
        result = returned(typ)
        if result is not None:
            return f"it returns {format_type(result, options)}"
    return f"its type is {format_type(typ, options)}"


# --- hook implementations ----------------------------------------------------------------------


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
    return any(
        n == "firstresult" and isinstance(v, NameExpr) and v.fullname == "builtins.True"
        for n, v in zip(expr.arg_names, expr.args)
    )


def _check_parameters(
    func: FuncDef,
    hook_name: str,
    spec: HookSpec,
    api: CheckerPluginInterface,
    signature: CallableType | None,
    context: Context,
) -> None:
    passed = spec.parameters()
    if signature is None:
        return  # unannotated: strict mode reports that already
    arguments = {argument.variable.name: argument for argument in func.arguments}
    parameters = list(zip(signature.arg_names, signature.arg_kinds, signature.arg_types))
    if func.info and not func.is_static:
        # pluggy registers plugin instances and classes: the bound self/cls is never a hook argument.
        parameters = parameters[1:]
    for name, kind, declared in parameters:
        where: Context = arguments.get(name, context) if name else context
        if kind == ARG_NAMED:
            api.fail(
                f'Hook implementation "{hook_name}" has a keyword-only parameter "{name}" without a '
                "default; pluggy passes hook arguments positionally, so it would never be given",
                where,
                code=HOOKIMPL,
            )
        if kind != ARG_POS or name is None:
            continue  # pluggy passes only parameters without defaults; *args/**kwargs stay empty
        if name not in passed:
            api.fail(
                f'Hook implementation "{hook_name}" asks for "{name}", which the hookspec does not '
                f"pass: {hook_name}{spec.describe(api.options)}",
                where,
                code=HOOKIMPL,
            )
            continue
        if not is_subtype(passed[name], declared):
            api.fail(
                f'Parameter "{name}" of hook implementation "{hook_name}" has type '
                f"{format_type(declared, api.options)}, but the hookspec passes "
                f"{format_type(passed[name], api.options)}",
                where,
                code=HOOKIMPL,
            )


def _check_return(
    func: FuncDef,
    hook_name: str,
    spec: HookSpec,
    marker: MarkerOptions,
    api: CheckerPluginInterface,
    pluggy_result: Callable[[Type], Instance | None],
    signature: CallableType | None,
    context: Context,
) -> None:
    if signature is None:
        return  # unannotated: strict mode reports that already
    returned = signature.ret_type
    if func.is_coroutine:
        api.fail(
            f'Hook implementation "{hook_name}" is a coroutine function; pluggy calls hooks '
            "synchronously and never awaits them",
            context,
            code=HOOKIMPL,
        )
        return
    expected = spec.signature.ret_type
    # What a wrapper sees around the other implementations: the list of their results, or the
    # single first result of a firstresult hook.
    result = expected if spec.firstresult else api.named_generic_type("builtins.list", [expected])
    if marker.wrapper is True or marker.hookwrapper is True:
        _check_wrapper_return(func, hook_name, returned, result, marker, api, pluggy_result, context)
        return
    if isinstance(marker.wrapper, _UnknownType) or isinstance(marker.hookwrapper, _UnknownType):
        return
    if isinstance(get_proper_type(returned), AnyType) and not isinstance(get_proper_type(expected), AnyType):
        api.fail(
            f'Hook implementation "{hook_name}" returns "Any", which hides whether it fits the '
            f"hookspec's {format_type(expected, api.options)}; declare the real type",
            context,
            code=HOOKIMPL,
        )
        return
    if not is_subtype(returned, expected):
        api.fail(
            f'Hook implementation "{hook_name}" returns {format_type(returned, api.options)}, '
            f"but the hookspec expects {format_type(expected, api.options)}",
            context,
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
    context: Context,
) -> None:
    kind = "wrapper=True" if marker.wrapper is True else "hookwrapper=True"
    generator = _generator_args(returned)
    if generator is None:
        api.fail(
            f'Hook implementation "{hook_name}" ({kind}) must be a generator that yields once, '
            f"but it returns {format_type(returned, api.options)}",
            context,
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
                context,
                code=HOOKIMPL,
            )
        return
    # Old style: `outcome = yield` receives a pluggy.Result; a wrapper that ignores it may say None.
    outcome = pluggy_result(result)
    if outcome is not None and not isinstance(get_proper_type(sent), NoneType) and not is_subtype(outcome, sent):
        api.fail(
            f'Hook wrapper "{hook_name}" (hookwrapper=True) receives {format_type(outcome, api.options)} '
            f"at its yield, not {format_type(sent, api.options)}",
            context,
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


def _passed(ctx: FunctionContext | MethodContext) -> Type | None:
    """The type of the function given to a marker (or to the decorator a marker made)."""
    return ctx.arg_types[0][0] if ctx.arg_types and ctx.arg_types[0] else None


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

