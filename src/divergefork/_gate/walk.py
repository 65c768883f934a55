"""A walk over mypy's syntax trees that works with mypyc-compiled mypy.

mypy's own ``TraverserVisitor`` cannot be subclassed from interpreted code on compiled mypy
("interpreted classes cannot inherit from compiled traits"), so the post-pass walks the tree
itself, by this table of each node kind's syntactic children (never ``node``/``info``
back-references into other definitions).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from mypy.nodes import Node

__all__ = ["children"]

CHILDREN: Final[dict[str, tuple[str, ...]]] = {
    "MypyFile": ("defs",),
    "Block": ("body",),
    "ExpressionStmt": ("expr",),
    "AssignmentStmt": ("lvalues", "rvalue"),
    "OperatorAssignmentStmt": ("lvalue", "rvalue"),
    "WhileStmt": ("expr", "body", "else_body"),
    "ForStmt": ("index", "expr", "body", "else_body"),
    "IfStmt": ("expr", "body", "else_body"),
    "WithStmt": ("expr", "target", "body"),
    "TryStmt": ("body", "types", "vars", "handlers", "else_body", "finally_body"),
    "ReturnStmt": ("expr",),
    "RaiseStmt": ("expr", "from_expr"),
    "AssertStmt": ("expr", "msg"),
    "DelStmt": ("expr",),
    "MatchStmt": ("subject", "guards", "bodies"),
    "FuncDef": ("arguments", "body"),
    "Argument": ("initializer",),
    "OverloadedFuncDef": ("items", "impl"),
    "Decorator": ("decorators", "func"),
    "ClassDef": ("decorators", "defs"),
    "NameExpr": (),
    "MemberExpr": ("expr",),
    "CallExpr": ("callee", "args", "analyzed"),
    "IndexExpr": ("base", "index", "analyzed"),
    "OpExpr": ("left", "right"),
    "ComparisonExpr": ("operands",),
    "UnaryExpr": ("expr",),
    "CastExpr": ("expr",),
    "AssertTypeExpr": ("expr",),
    "RevealExpr": ("expr",),
    "ListExpr": ("items",),
    "SetExpr": ("items",),
    "TupleExpr": ("items",),
    "DictExpr": ("items",),
    "ConditionalExpr": ("cond", "if_expr", "else_expr"),
    "LambdaExpr": ("arguments", "body"),
    "ListComprehension": ("generator",),
    "SetComprehension": ("generator",),
    "GeneratorExpr": ("left_expr", "sequences", "condlists"),
    "DictionaryComprehension": ("key", "value", "sequences", "condlists"),
    "StarExpr": ("expr",),
    "AwaitExpr": ("expr",),
    "YieldExpr": ("expr",),
    "YieldFromExpr": ("expr",),
    "AssignmentExpr": ("target", "value"),
    "SliceExpr": ("begin_index", "end_index", "stride"),
    "SuperExpr": ("call",),
    "TypeApplication": ("expr",),
}


def children(node: Node) -> Iterator[Node]:
    for attribute in CHILDREN.get(type(node).__name__, ()):
        yield from _nodes(getattr(node, attribute, None))


def _nodes(value: object) -> Iterator[Node]:
    if isinstance(value, Node):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _nodes(item)
