"""One walk over a type-checked module: everything the plugin's hooks cannot see.

mypy's plugin API has hooks for calls only. A value whose type does not prove divergence can
meet a declared divergent type in many other places (mypy's checker passes each through
``check_subtype``: ``check_assignment``, ``check_return_stmt``, ``check_method_override``...),
and after that first meeting its type says NoReturn. This walk visits those places over the
module's finished type map. Every sink comes down to one call, :meth:`PostPass.flow`, so a new
kind of sink is one small visit method.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from mypy.argmap import map_actuals_to_formals
from mypy.maptype import map_instance_to_supertype
from mypy.messages import format_type
from mypy.nodes import (
    ARG_STAR,
    ARG_STAR2,
    AssertStmt,
    AssignmentStmt,
    Block,
    BreakStmt,
    CallExpr,
    CastExpr,
    ConditionalExpr,
    Context,
    Decorator,
    DictExpr,
    ExpressionStmt,
    Expression,
    FuncDef,
    FuncItem,
    IfStmt,
    IndexExpr,
    IntExpr,
    ListExpr,
    MemberExpr,
    MypyFile,
    NameExpr,
    Node,
    OverloadedFuncDef,
    RaiseStmt,
    RefExpr,
    ReturnStmt,
    SetExpr,
    Statement,
    TempNode,
    TupleExpr,
    TypeInfo,
    Var,
    WhileStmt,
    WithStmt,
    YieldExpr,
)
from mypy.options import Options
from mypy.subtypes import find_member, is_subtype
from mypy.types import (
    AnyType,
    CallableType,
    Instance,
    Overloaded,
    TypeType,
    TupleType,
    Type,
    TypeOfAny,
    UninhabitedType,
    get_proper_type,
)

from .codes import (
    CHILD_SPEC,
    ENTRY,
    ENTRY_TAKERS,
    FORK,
    HOOK_PREFIX,
    HOOKIMPL,
    INDIRECT,
    PRIVATE_START,
    REPLACERS,
    SCOPE,
    UNSOUND,
    in_package,
)
from .divergence import declares_divergence, diverges, leak, returned
from .markers import is_marker
from .walk import children

__all__ = ["Finding", "PostPass", "check_module"]

FORK_FUNCTIONS: Final = {FORK, CHILD_SPEC, PRIVATE_START, f"{SCOPE}.fork"}
TYPE_CHECKING: Final = frozenset({"typing.TYPE_CHECKING", "typing_extensions.TYPE_CHECKING"})
NO_TYPE_CHECK: Final = frozenset({"typing.no_type_check", "typing_extensions.no_type_check"})
# Calls that look at a function without running it: the fork functions may be passed to them.
INTROSPECTION: Final = frozenset(
    {"builtins.callable", "builtins.repr", "builtins.id", "builtins.help", "builtins.hasattr", "typing.get_type_hints"}
)
DIRECTLY: Final = "call it directly so that the gate sees the entry and the value together"


@dataclass(frozen=True, order=True)
class Finding:
    line: int
    column: int
    code: str
    message: str


def check_module(
    tree: MypyFile,
    types: Mapping[Expression, Type],
    options: Options,
    modules: Mapping[str, MypyFile],
    hook_names: frozenset[str],
) -> list[Finding]:
    """Everything the post-pass reports in ``tree`` (empty for divergefork's own modules)."""
    if in_package(tree.fullname):
        return []
    walk = PostPass(tree, types, options, modules, hook_names)
    walk.walk(tree)
    walk.report_unmarked()
    return sorted(set(walk.findings))


class PostPass:
    def __init__(
        self,
        tree: MypyFile,
        types: Mapping[Expression, Type],
        options: Options,
        modules: Mapping[str, MypyFile],
        hook_names: frozenset[str],
    ) -> None:
        self.tree = tree
        self.types = types
        self.options = options
        self.modules = modules
        self.hook_names = hook_names
        self.findings: list[Finding] = []
        self.functions: list[FuncItem] = []
        self.direct: set[int] = set()  # ids of references that are called directly
        self.seen: set[int] = set()
        self.unmarked: list[FuncDef] = []
        self.marked_by_call: set[str] = set()
        self.forks = any(
            imp_id == "divergefork" or imp_id.startswith("divergefork.") for imp_id in _imported(tree)
        )

    def walk(self, node: Node) -> None:
        # Pre-order: a call marks its callee as called directly before the callee is seen.
        if id(node) in self.seen:
            return
        self.seen.add(id(node))
        visit = getattr(self, "visit_" + _snake(type(node).__name__), None)
        if visit is not None:
            visit(node)
        if isinstance(node, FuncItem):
            self.functions.append(node)
            for child in children(node):
                self.walk(child)
            self.functions.pop()
        else:
            for child in children(node):
                self.walk(child)

    # --- reporting --------------------------------------------------------------------------

    def fail(self, message: str, context: Context, code: str) -> None:
        self.findings.append(Finding(context.line, max(context.column, 0), code, message))

    def type_of(self, expr: Expression) -> Type | None:
        return self.types.get(expr)

    def show(self, typ: Type) -> str:
        return format_type(typ, self.options)

    def flow(
        self,
        expr: Expression,
        declared: Type | None,
        into: str,
        *,
        actual: Type | None = None,
        explicit: bool = False,
        name: str | None = None,
    ) -> bool:
        """The one sink: ``expr`` (of type ``actual``, default its own) flows into ``declared``.

        Return whether a leak was reported.
        """
        if declared is None or isinstance(expr, TempNode) or not declares_divergence(declared):
            return False
        if actual is None:
            items = [self.flow(item, want, into, explicit=explicit) for item, want in _literal_items(expr, declared)]
            if isinstance(expr, ConditionalExpr):
                items += [self.flow(part, declared, into, explicit=explicit) for part in (expr.if_expr, expr.else_expr)]
            if any(items):
                return True  # shown where it is; the whole would only repeat it
            actual = self.type_of(expr)
        if actual is None:
            return False
        found = leak(actual, declared, explicit=explicit)
        if found is None:
            return False
        if name is None and isinstance(expr, NameExpr | MemberExpr):
            name = expr.name
        shown = f' "{name}"' if name else ""
        self.fail(
            f"Entry{shown} flows into {into} ({self.show(declared)}) but is not provably NoReturn "
            f'({self.why(found)}); annotate it "-> NoReturn" so mypy can prove that it never returns',
            expr,
            ENTRY.code,
        )
        return True

    def why(self, typ: Type) -> str:
        if not isinstance(get_proper_type(typ), AnyType):
            result = returned(typ)
            if result is not None:
                return f"it returns {self.show(result)}"
        return f"its type is {self.show(typ)}"

    # --- sinks ------------------------------------------------------------------------------

    def visit_call_expr(self, o: CallExpr) -> None:
        callee = o.callee.base if isinstance(o.callee, IndexExpr) else o.callee  # ChildSpec[int](...)
        self.direct.add(id(callee))
        target = self.fork_function(callee)
        if target is not None:
            if self.unpacks_entry(o):
                self.fail(
                    f"{_users_name(target)} is given unpacked arguments (*args/**kwargs), so the gate "
                    f"cannot see the entry; {DIRECTLY}",
                    o,
                    INDIRECT.code,
                )
        elif isinstance(callee, RefExpr) and (callee.fullname in INTROSPECTION or callee.fullname.startswith("inspect.")):
            self.direct.update(id(arg) for arg in o.args)  # inspect.signature(df.fork) runs nothing
        elif isinstance(callee, RefExpr) and callee.fullname in ("builtins.isinstance", "builtins.issubclass"):
            self.direct.update(id(arg) for arg in o.args[1:])  # isinstance(x, ChildSpec) is a test
            self.direct.update(id(item) for arg in o.args[1:] if isinstance(arg, TupleExpr) for item in arg.items)
        elif is_marker(callee, self.modules) and not isinstance(callee, CallExpr):
            self.marked_by_call.update(arg.fullname for arg in o.args if isinstance(arg, RefExpr))
        elif isinstance(callee, RefExpr) and callee.fullname in REPLACERS and o.args:
            replaced = get_proper_type(self.type_of(o.args[0]))
            if isinstance(replaced, Instance) and replaced.type.has_base(CHILD_SPEC):
                self.fail(
                    f"{callee.fullname}() makes a ChildSpec whose entry no ChildSpec() call checked; "
                    f"build the new ChildSpec by calling ChildSpec() directly",
                    o,
                    INDIRECT.code,
                )
        else:
            self.check_arguments(o)

    def unpacks_entry(self, o: CallExpr) -> bool:
        """Could ``*args``/``**kwargs`` of this fork call supply the value or the entry?"""
        if not any(kind in (ARG_STAR, ARG_STAR2) for kind in o.arg_kinds):
            return False
        callee = self.callee_type(o)
        if callee is None:
            return True
        mapping = map_actuals_to_formals(
            o.arg_kinds, o.arg_names, callee.arg_kinds, callee.arg_names, lambda i: AnyType(TypeOfAny.special_form)
        )
        for formal, actuals in enumerate(mapping):
            if callee.arg_names[formal] in ("value", "entry"):
                if not actuals or any(o.arg_kinds[i] in (ARG_STAR, ARG_STAR2) for i in actuals):
                    return True
        return False

    def check_arguments(self, o: CallExpr) -> None:
        callee = self.callee_type(o)
        if callee is None:
            return
        if callee.is_type_obj() and callee.type_object().has_base(CHILD_SPEC):
            return  # ChildSpec under another name: the plugin's own check covers it
        what = f'"{callee.name}"' if callee.name else "the callee"
        mapping = map_actuals_to_formals(
            o.arg_kinds,
            o.arg_names,
            callee.arg_kinds,
            callee.arg_names,
            lambda i: self.type_of(o.args[i]) or AnyType(TypeOfAny.special_form),
        )
        reported: set[int] = set()
        for formal, actuals in enumerate(mapping):
            declared = callee.arg_types[formal]
            if not declares_divergence(declared):
                continue
            name = callee.arg_names[formal]
            into = f'parameter "{name}" of {what}' if name else f"an argument of {what}"
            for index in actuals:
                arg = o.args[index]
                if index in reported:
                    continue  # *args spread over several parameters: once is enough
                if o.arg_kinds[index] == ARG_STAR:
                    leaked = self.flow(arg, declared, into, actual=self.unpacked(arg, star2=False))
                elif o.arg_kinds[index] == ARG_STAR2:
                    leaked = self.flow(arg, declared, into, actual=self.unpacked(arg, star2=True))
                else:
                    leaked = self.flow(arg, declared, into)
                if leaked:
                    reported.add(index)

    def callee_type(self, o: CallExpr) -> CallableType | None:
        """The signature the call uses; of an overload, the first item its arguments fit."""
        callee = get_proper_type(self.type_of(o.callee))
        if isinstance(callee, CallableType):
            return callee
        if not isinstance(callee, Overloaded):
            return None  # Any: nothing declared
        for item in callee.items:
            mapping = map_actuals_to_formals(
                o.arg_kinds, o.arg_names, item.arg_kinds, item.arg_names, lambda i: AnyType(TypeOfAny.special_form)
            )
            if sorted(i for actuals in mapping for i in actuals) != list(range(len(o.args))):
                continue
            fits = all(
                o.arg_kinds[i] in (ARG_STAR, ARG_STAR2)
                or self.type_of(o.args[i]) is None
                or is_subtype(self.type_of(o.args[i]), item.arg_types[formal])  # type: ignore[arg-type]
                for formal, actuals in enumerate(mapping)
                for i in actuals
            )
            if fits:
                return item
        return None

    def unpacked(self, arg: Expression, star2: bool) -> Type | None:
        typ = get_proper_type(self.type_of(arg))
        if isinstance(typ, AnyType):
            return typ
        if isinstance(typ, TupleType):
            return typ.items[0] if typ.items else None
        if not isinstance(typ, Instance):
            return None
        base = "typing.Mapping" if star2 else "typing.Iterable"
        if not typ.type.has_base(base):
            return None
        mapped = map_instance_to_supertype(typ, next(info for info in typ.type.mro if info.fullname == base))
        return mapped.args[-1] if mapped.args else None

    def visit_assignment_stmt(self, o: AssignmentStmt) -> None:
        for lvalue in o.lvalues:
            if isinstance(lvalue, TupleExpr) and isinstance(o.rvalue, TupleExpr):
                for target, value in zip(lvalue.items, o.rvalue.items):
                    self.assign(target, value, None)
            else:
                self.assign(lvalue, o.rvalue, o.type if len(o.lvalues) == 1 else None)

    def assign(self, lvalue: Expression, rvalue: Expression, annotation: Type | None) -> None:
        if isinstance(lvalue, IndexExpr):
            target = get_proper_type(self.type_of(lvalue.base))
            if isinstance(target, Instance):
                setitem = get_proper_type(find_member("__setitem__", target, target))
                items = setitem.items if isinstance(setitem, Overloaded) else [setitem]
                for item in items:
                    if isinstance(item, CallableType) and item.arg_types:
                        if self.flow(rvalue, item.arg_types[-1], "an item of a container of entries"):
                            break
            return
        declared = annotation
        if declared is None and isinstance(lvalue, RefExpr) and isinstance(lvalue.node, Var):
            if not lvalue.node.is_inferred or lvalue.node.is_final:
                declared = lvalue.node.type
        if declared is None and isinstance(lvalue, MemberExpr):
            declared = self.type_of(lvalue)  # mypy records the attribute's declared type
        if declared is None and isinstance(lvalue, MemberExpr):
            owner = get_proper_type(self.type_of(lvalue.expr))
            if isinstance(owner, Instance):
                declared = find_member(lvalue.name, owner, owner)
        name = lvalue.name if isinstance(lvalue, NameExpr | MemberExpr) else None
        self.flow(rvalue, declared, f'"{name}"' if name else "a variable")

    def visit_return_stmt(self, o: ReturnStmt) -> None:
        if o.expr is not None and self.functions:
            function = self.functions[-1]
            declared = self.declared_result(function)
            name = function.name if isinstance(function, FuncDef) else "lambda"
            self.flow(o.expr, declared, f'the result of "{name}"')

    def visit_yield_expr(self, o: YieldExpr) -> None:
        if o.expr is not None and self.functions:
            function = self.functions[-1]
            typ = function.type
            if isinstance(typ, CallableType):
                result = get_proper_type(typ.ret_type)
                if isinstance(result, Instance) and result.args:
                    self.flow(o.expr, result.args[0], f'what "{function.name}" yields')

    def visit_cast_expr(self, o: CastExpr) -> None:
        self.flow(o.expr, o.type, "a cast", explicit=True)

    def visit_func_def(self, o: FuncDef) -> None:
        typ = o.type if isinstance(o.type, CallableType) else None
        if typ is not None:
            for argument, declared in zip(o.arguments, typ.arg_types):
                if argument.initializer is not None:
                    self.flow(argument.initializer, declared, f'the default of "{argument.variable.name}"')
            narrowed = typ.type_guard if typ.type_guard is not None else getattr(typ, "type_is", None)
            if narrowed is not None and declares_divergence(narrowed):
                self.fail(
                    f'"{o.name}" narrows a value to {self.show(narrowed)}, but a run-time test cannot '
                    "prove that a callable never returns; pass the entry with its declared type instead",
                    o,
                    ENTRY.code,
                )
            if o.info and not o.info.is_protocol:
                self.check_override(o, typ)
        if not o.is_overload:
            self.check_proof(o)
        self.check_unmarked(o)

    def visit_decorator(self, o: Decorator) -> None:
        for decorator in o.original_decorators:
            if isinstance(decorator, RefExpr) and decorator.fullname in NO_TYPE_CHECK and self.forks:
                self.fail(
                    f'"{o.func.name}" is @no_type_check: nothing it forks or declares is checked, in a '
                    "module that forks; remove the decorator",
                    decorator,
                    UNSOUND.code,
                )
        if o.decorators:
            innermost = get_proper_type(self.type_of(o.decorators[-1]))
            if isinstance(innermost, CallableType) and innermost.arg_types:
                actual = o.func.type if o.func.type is not None else AnyType(TypeOfAny.unannotated)
                into = f'decorator "{innermost.name}"' if innermost.name else "a decorator"
                self.flow(o.decorators[-1], innermost.arg_types[0], into, actual=actual, name=o.func.name)

    def visit_overloaded_func_def(self, o: OverloadedFuncDef) -> None:
        impl = o.impl.func if isinstance(o.impl, Decorator) else o.impl
        items = [item.func if isinstance(item, Decorator) else item for item in o.items]
        if impl is not None and items and all(_declared_never(item) for item in items):
            result = impl.type.ret_type if isinstance(impl.type, CallableType) else AnyType(TypeOfAny.unannotated)
            if not isinstance(get_proper_type(result), UninhabitedType):
                self.fail(
                    f'Every overload of "{o.name}" is NoReturn but its implementation returns '
                    f'{self.show(result)}: the implementation is what runs; annotate it "-> NoReturn"',
                    impl,
                    ENTRY.code,
                )

    # --- overrides --------------------------------------------------------------------------

    def check_override(self, o: FuncDef, typ: CallableType) -> None:
        info = o.info
        for base in info.mro[1:]:
            symbol = base.names.get(o.name)
            if symbol is None:
                continue
            node = symbol.node
            base_type = node.var.type if isinstance(node, Decorator) else node.type if isinstance(node, FuncDef) else None
            if base_type is not None and isinstance(get_proper_type(base_type), CallableType) and diverges(base_type):
                if not isinstance(get_proper_type(typ.ret_type), UninhabitedType):
                    self.fail(
                        f'"{o.name}" overrides a NoReturn method of "{base.name}" but returns '
                        f"{self.show(typ.ret_type)}: callers that trust the base class fork it as an "
                        'entry; annotate the override "-> NoReturn"',
                        o,
                        ENTRY.code,
                    )
            return

    # --- is a NoReturn really proven? -----------------------------------------------------------

    def check_proof(self, o: FuncDef) -> None:
        typ = o.type if isinstance(o.type, CallableType) else None
        if typ is None:
            return
        result = get_proper_type(typ.ret_type)
        coroutine_never = (
            o.is_coroutine
            and isinstance(result, Instance)
            and bool(result.args)
            and isinstance(get_proper_type(result.args[-1]), UninhabitedType)
        )
        if coroutine_never or (o.is_generator and isinstance(result, UninhabitedType)):
            kind = "an async function" if o.is_coroutine else "a generator"
            self.fail(
                f'"{o.name}" is declared NoReturn but is {kind}: calling it returns at once '
                f"(a {'coroutine' if o.is_coroutine else 'generator'} object); make it a plain function",
                o,
                UNSOUND.code,
            )
            return
        if not isinstance(result, UninhabitedType) or not o.body.body:
            return
        last = o.body.body[-1]
        where: Context = last if last.line != o.line else o
        ignored = self.tree.ignored_lines.get(o.line) if hasattr(self.tree, "ignored_lines") else None
        if ignored is not None and (not ignored or "misc" in ignored):
            self.fail(
                f'"{o.name}" is declared NoReturn, but the "type: ignore" on its definition also '
                "hides mypy's proof that it never returns (misc); drop the ignore or give it only the "
                "codes it needs",
                where,
                UNSOUND.code,
            )
        elif not _misc_enabled(self.options) and not self.ends_in_exit(o.body):
            self.fail(
                f'"{o.name}" is declared NoReturn, but error code "misc" is disabled for this module, '
                "which switches off mypy's proof that it never returns; enable misc here",
                where,
                UNSOUND.code,
            )
        for tail in _tails(o.body):
            self.check_tail(o, tail)

    def ends_in_exit(self, block: Block) -> bool:
        """Does ``block`` visibly end on every path (raise, a NoReturn call, ``while True``)?"""
        if not block.body:
            return False
        last = block.body[-1]
        if isinstance(last, RaiseStmt):
            return True
        if isinstance(last, ExpressionStmt):
            return isinstance(get_proper_type(self.type_of(last.expr)), UninhabitedType)
        if isinstance(last, WhileStmt):
            return _is_true(last.expr) and not any(isinstance(s, BreakStmt) for s in last.body.body)
        if isinstance(last, IfStmt):
            return last.else_body is not None and all(self.ends_in_exit(b) for b in [*last.body, last.else_body])
        return False

    def check_tail(self, o: FuncDef, tail: Statement) -> None:
        if isinstance(tail, AssertStmt) and _is_false(tail.expr):
            self.fail(
                f'"{o.name}" ends in "assert False", which python -O removes: it would return; '
                'raise an exception (or call typing.assert_never) instead',
                tail,
                UNSOUND.code,
            )
        if isinstance(tail, WithStmt):
            for manager in tail.expr:
                typ = get_proper_type(self.type_of(manager))
                if not isinstance(typ, Instance):
                    continue
                exit_ = get_proper_type(find_member("__exit__", typ, typ))
                result = get_proper_type(exit_.ret_type) if isinstance(exit_, CallableType) else None
                if isinstance(result, AnyType):
                    self.fail(
                        f'"{o.name}" ends in a with block whose __exit__ returns "Any", so it may '
                        "swallow the exit and return; mypy cannot tell. Type __exit__ as returning "
                        "None (or bool if it may swallow exceptions), or move the exit out of the block",
                        tail,
                        UNSOUND.code,
                    )

    def visit_if_stmt(self, o: IfStmt) -> None:
        for condition, body in zip(o.expr, o.body):
            if isinstance(condition, RefExpr) and condition.fullname in TYPE_CHECKING and o.else_body:
                for statement in body.body:
                    for name, context in _never_definitions(statement):
                        self.fail(
                            f'"{name}" is NoReturn only under TYPE_CHECKING: what runs is the else '
                            "branch, which mypy never checks; define it once, for both",
                            context,
                            UNSOUND.code,
                        )

    # --- the fork functions, used only by calling them ------------------------------------

    def visit_name_expr(self, o: NameExpr) -> None:
        self.check_reference(o)

    def visit_member_expr(self, o: MemberExpr) -> None:
        self.check_reference(o)

    def check_reference(self, o: RefExpr) -> None:
        target = self.fork_function(o)
        if target is None:
            return
        if target == PRIVATE_START:
            self.fail(
                "divergefork._fork.start is private and checks nothing; call divergefork.fork() instead",
                o,
                INDIRECT.code,
            )
        elif id(o) not in self.direct:
            self.fail(f"{_users_name(target)} is used other than by calling it; {DIRECTLY}", o, INDIRECT.code)

    def fork_function(self, expr: Expression) -> str | None:
        if not isinstance(expr, RefExpr):
            return None
        node = expr.node
        fullname = node.fullname if isinstance(node, FuncDef | Decorator | TypeInfo | OverloadedFuncDef) else ""
        if fullname in FORK_FUNCTIONS:
            return fullname
        if isinstance(expr, MemberExpr) and expr.name == "fork":
            seen = get_proper_type(self.type_of(expr.expr))
            if isinstance(seen, CallableType) and seen.is_type_obj():
                seen = get_proper_type(seen.ret_type)  # the class itself: df.Scope.fork
            elif isinstance(seen, TypeType):
                seen = seen.item
            owner = seen
            if isinstance(owner, Instance) and owner.type.has_base(SCOPE):
                return f"{SCOPE}.fork"
        return None

    # --- hook implementations that pluggy would never call ---------------------------------

    def check_unmarked(self, o: FuncDef) -> None:
        if o.name not in self.hook_names or (o.info and o.info.is_protocol):
            return
        if self.functions:
            return  # a local function is never registered
        decorated = self.decorators_of(o)
        if not any(is_marker(decorator, self.modules) for decorator in decorated):
            self.unmarked.append(o)

    def report_unmarked(self) -> None:
        for o in self.unmarked:
            if o.fullname in self.marked_by_call:
                continue  # `x = hookimpl(function)`
            self.fail(
            f'"{o.name}" has the name of a divergefork hook but no @divergefork.hookimpl, so pluggy '
            "never calls it; mark it (or rename it)",
            o,
            HOOKIMPL.code,
        )

    def decorators_of(self, o: FuncDef) -> list[Expression]:
        symbol = (o.info.names if o.info else self.tree.names).get(o.name)
        node = symbol.node if symbol is not None else None
        if isinstance(node, OverloadedFuncDef):
            return []  # overloads: leave them alone
        return list(node.original_decorators) if isinstance(node, Decorator) else []

    def declared_result(self, function: FuncItem) -> Type | None:
        typ = function.type
        if not isinstance(typ, CallableType):
            return None
        result = get_proper_type(typ.ret_type)
        if function.is_coroutine and isinstance(result, Instance) and result.args:
            return result.args[-1]
        if function.is_generator:
            return None
        return typ.ret_type


def _imported(tree: MypyFile) -> Iterator[str]:
    from mypy.nodes import Import, ImportAll, ImportFrom

    for imp in tree.imports:
        if isinstance(imp, Import):
            yield from (name for name, _ in imp.ids)
        elif isinstance(imp, ImportFrom | ImportAll) and not imp.relative:
            yield imp.id


def _users_name(target: str) -> str:
    return ENTRY_TAKERS.get(target, f"{target}()").replace("()", "")


def _literal_items(expr: Expression, declared: Type) -> Iterator[tuple[Expression, Type]]:
    """For ``[a, b]`` into ``list[E]``: each item with ``E``, so the leak is shown where it is."""
    typ = get_proper_type(declared)
    if isinstance(expr, ListExpr | SetExpr) and isinstance(typ, Instance) and typ.args:
        element = typ.args[0]
        if typ.type.fullname not in ("builtins.dict",):
            yield from ((item, element) for item in expr.items)
    elif isinstance(expr, TupleExpr) and isinstance(typ, TupleType) and len(typ.items) == len(expr.items):
        yield from zip(expr.items, typ.items)
    elif isinstance(expr, DictExpr) and isinstance(typ, Instance) and len(typ.args) == 2:
        yield from ((value, typ.args[1]) for key, value in expr.items if key is not None)


def _declared_never(func: FuncDef) -> bool:
    return isinstance(func.type, CallableType) and isinstance(get_proper_type(func.type.ret_type), UninhabitedType)


def _misc_enabled(options: Options) -> bool:
    disabled = {getattr(code, "code", code) for code in options.disabled_error_codes}
    return "misc" not in disabled


def _tails(block: Block) -> Iterator[Statement]:
    """The statements that end ``block`` on every path that reaches its end."""
    if not block.body:
        return
    last = block.body[-1]
    yield last
    if isinstance(last, IfStmt):
        for body in last.body:
            yield from _tails(body)
        if last.else_body is not None:
            yield from _tails(last.else_body)
    elif isinstance(last, WithStmt):
        yield from _tails(last.body)


def _is_true(expr: Expression) -> bool:
    if isinstance(expr, NameExpr) and expr.fullname == "builtins.True":
        return True
    return isinstance(expr, IntExpr) and expr.value != 0


def _is_false(expr: Expression) -> bool:
    if isinstance(expr, NameExpr) and expr.fullname == "builtins.False":
        return True
    return isinstance(expr, IntExpr) and expr.value == 0


def _never_definitions(statement: Statement) -> Iterator[tuple[str, Context]]:
    func = statement.func if isinstance(statement, Decorator) else statement
    if isinstance(func, FuncDef) and _declared_never(func):
        yield func.name, func
    if isinstance(statement, AssignmentStmt) and statement.type is not None and declares_divergence(statement.type):
        for lvalue in statement.lvalues:
            if isinstance(lvalue, NameExpr):
                yield lvalue.name, lvalue



def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
