"""A divergefork hookimpl marker, recognised by what it is rather than how it is spelt.

A marker is divergefork's own ``df.hookimpl`` under any import name, or any variable holding a
``pluggy.HookimplMarker("divergefork")``. A variable's type only says ``HookimplMarker``; the
project name is an argument of the call that made it, which mypy's cache does not keep, so it is
read from the module's source where the variable is assigned.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from mypy.argmap import map_actuals_to_formals
from mypy.nodes import (
    ARG_OPT,
    ARG_STAR,
    ARG_STAR2,
    CallExpr,
    Expression,
    MypyFile,
    NameExpr,
    RefExpr,
    StrExpr,
    Var,
)
from mypy.types import AnyType, Instance, LiteralType, TypeOfAny, get_proper_type

from .codes import HOOKIMPL_MARKERS, MARKER_CLASSES, MARKER_PARAMETERS, PACKAGE

__all__ = ["MarkerOptions", "Unknown", "is_marker", "marker_options"]


class _UnknownType:
    """A marker option given as an expression the gate cannot evaluate."""

    def __repr__(self) -> str:
        return "Unknown"


Unknown: Final = _UnknownType()
Option = str | None | bool | _UnknownType


@dataclass(frozen=True)
class MarkerOptions:
    """The options of one ``@hookimpl(...)`` that change what is checked."""

    specname: str | None | _UnknownType = None
    optionalhook: bool | _UnknownType = False
    wrapper: bool | _UnknownType = False
    hookwrapper: bool | _UnknownType = False


def is_marker(expr: Expression, modules: Mapping[str, MypyFile]) -> bool:
    """Is ``expr`` (``@expr`` or ``@expr(...)``) a divergefork hookimpl marker?"""
    if isinstance(expr, CallExpr):
        expr = expr.callee
    if not isinstance(expr, RefExpr):
        return False
    if expr.fullname in HOOKIMPL_MARKERS:
        return True
    node = expr.node
    if not isinstance(node, Var) or node.type is None:
        return False
    typ = get_proper_type(node.type)
    if not isinstance(typ, Instance) or typ.type.fullname not in MARKER_CLASSES:
        return False
    module_name, _, name = node.fullname.rpartition(".")
    module = modules.get(module_name)
    if module is None or not module.path:
        return False
    return _marker_projects(module.path).get(name) == PACKAGE


@functools.lru_cache(maxsize=256)
def _marker_projects(path: str) -> dict[str, str]:
    """``{name: project}`` for every ``name = ...HookimplMarker("project")`` at a module's top level."""
    try:
        with open(path, encoding="utf-8") as stream:
            tree = ast.parse(stream.read(), path)
    except (OSError, SyntaxError, ValueError):
        return {}
    found = {}
    for statement in tree.body:
        targets: Sequence[ast.expr]
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        project = _project_of(value)
        if project is not None:
            found.update({target.id: project for target in targets if isinstance(target, ast.Name)})
    return found


def _project_of(value: ast.expr) -> str | None:
    if not isinstance(value, ast.Call):
        return None
    func = value.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name != "HookimplMarker":
        return None
    given = list(value.args[:1]) + [k.value for k in value.keywords if k.arg == "project_name"]
    if given and isinstance(given[0], ast.Constant) and isinstance(given[0].value, str):
        return given[0].value
    return None


def marker_options(call: CallExpr) -> tuple[MarkerOptions, Expression | None]:
    """The options of ``marker(...)`` and the function it was given directly, if any.

    Arguments are matched to ``HookimplMarker.__call__``'s parameters the way mypy matches any
    call, so positional options count as much as keywords.
    """
    formal_kinds = [ARG_OPT] * len(MARKER_PARAMETERS)
    mapping = map_actuals_to_formals(
        call.arg_kinds,
        call.arg_names,
        formal_kinds,
        list(MARKER_PARAMETERS),
        lambda _: AnyType(TypeOfAny.special_form),
    )
    if any(kind in (ARG_STAR, ARG_STAR2) for kind in call.arg_kinds):
        return MarkerOptions(Unknown, Unknown, Unknown, Unknown), None  # options we cannot see
    given = {name: call.args[actuals[0]] for name, actuals in zip(MARKER_PARAMETERS, mapping) if actuals}
    specname = _literal(given["specname"], str) if "specname" in given else None
    options = MarkerOptions(
        specname=specname if not isinstance(specname, bool) else Unknown,
        optionalhook=_flag(given.get("optionalhook")),
        wrapper=_flag(given.get("wrapper")),
        hookwrapper=_flag(given.get("hookwrapper")),
    )
    function = given.get("function")
    if function is not None and isinstance(function, NameExpr) and function.fullname == "builtins.None":
        function = None
    return options, function


def _flag(expr: Expression | None) -> bool | _UnknownType:
    if expr is None:
        return False
    value = _literal(expr, bool)
    if value is None:
        return False
    return value if isinstance(value, bool | _UnknownType) else Unknown


def _literal(expr: Expression, kind: type[str] | type[bool]) -> Option:
    if isinstance(expr, NameExpr) and expr.fullname == "builtins.None":
        return None
    if kind is str and isinstance(expr, StrExpr):
        return expr.value
    if kind is bool and isinstance(expr, NameExpr) and expr.fullname in ("builtins.True", "builtins.False"):
        return expr.fullname == "builtins.True"
    if isinstance(expr, RefExpr) and isinstance(expr.node, Var):
        # A Final constant: `SPEC: Final = "divergefork_report"`, imported or not.
        value = expr.node.final_value
        if isinstance(value, kind):
            return value
        typ = get_proper_type(expr.node.type) if expr.node.type is not None else None
        if isinstance(typ, Instance) and typ.last_known_value is not None:
            typ = typ.last_known_value
        if isinstance(typ, LiteralType) and isinstance(typ.value, kind):
            return typ.value
    return Unknown
