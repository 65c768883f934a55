"""When a type proves divergence, and where one that does not meets one that declares it.

``Any`` is compatible with ``Never`` both ways, so mypy lets an ``Any``-returning callable into
any ``Callable[..., NoReturn]``; from there on its type says NoReturn and nothing downstream can
tell. :func:`leak` finds that first meeting, also inside containers (``list[Callable[[int],
NoReturn]]``), tuples and unions.
"""

from __future__ import annotations

from mypy.maptype import map_instance_to_supertype
from mypy.subtypes import find_member, is_subtype
from mypy.types import (
    AnyType,
    CallableType,
    Instance,
    Overloaded,
    ProperType,
    TupleType,
    Type,
    TypeVarType,
    UninhabitedType,
    UnionType,
    get_proper_type,
)

__all__ = ["declares_divergence", "diverges", "is_divergent_callable", "leak", "returned"]


def diverges(typ: Type) -> bool:
    """Is every way of calling ``typ`` provably NoReturn (``Never``)?"""
    proper = get_proper_type(typ)
    if isinstance(proper, UninhabitedType):
        return True  # an unreachable value: nothing is ever called
    if isinstance(proper, CallableType):
        return not proper.is_type_obj() and isinstance(get_proper_type(proper.ret_type), UninhabitedType)
    if isinstance(proper, Overloaded):
        return all(diverges(item) for item in proper.items)
    if isinstance(proper, UnionType):
        return all(diverges(item) for item in proper.items)
    if isinstance(proper, TypeVarType):
        return diverges(proper.upper_bound)
    if isinstance(proper, Instance):
        # Callable objects, functools.partial (whose __call__ returns the partial's type) too.
        call = find_member("__call__", proper, proper, is_operator=True)
        return call is not None and diverges(call)
    return False  # Any, TypeType (a class returns an instance), and everything else


def is_divergent_callable(typ: Type) -> bool:
    """Does ``typ`` itself promise a callable that never returns (not merely contain one)?"""
    proper = get_proper_type(typ)
    if isinstance(proper, CallableType | Overloaded):
        return diverges(proper)
    if isinstance(proper, Instance) and proper.type.is_protocol:
        return diverges(proper)  # class Entry(Protocol): def __call__(self, v: T) -> NoReturn
    if isinstance(proper, TypeVarType):
        return is_divergent_callable(proper.upper_bound)
    return False


def declares_divergence(typ: Type, depth: int = 0) -> bool:
    """Does ``typ`` promise a never-returning callable anywhere (element, item, arm)?"""
    if depth > 8:
        return False
    proper = get_proper_type(typ)
    if is_divergent_callable(proper):
        return True
    if isinstance(proper, UnionType):
        return any(declares_divergence(item, depth + 1) for item in proper.items)
    if isinstance(proper, TupleType):
        return any(declares_divergence(item, depth + 1) for item in proper.items)
    if isinstance(proper, Instance):
        return any(declares_divergence(arg, depth + 1) for arg in proper.args)
    return False


def leak(actual: Type | None, declared: Type, *, explicit: bool = False, depth: int = 0) -> Type | None:
    """The part of ``actual`` that does not prove the divergence ``declared`` promises, if any.

    Only what mypy accepts is a leak: where ``actual`` does not fit ``declared`` at all, mypy
    reports that itself. ``explicit`` (a ``cast``) drops that condition: a cast accepts anything.
    """
    if actual is None or depth > 8:
        return None
    a, d = get_proper_type(actual), get_proper_type(declared)
    if isinstance(a, UninhabitedType):
        return None
    if isinstance(a, UnionType):
        for item in a.items:
            found = leak(item, declared, explicit=explicit, depth=depth + 1)
            if found is not None:
                return found
        return None
    if is_divergent_callable(d):
        if diverges(a):
            return None
        return actual if explicit or isinstance(a, AnyType) or is_subtype(a, d) else None
    if not declares_divergence(d):
        return None
    if isinstance(a, AnyType):
        return actual  # an Any list where a list of entries is declared
    if isinstance(d, UnionType):
        fitting = [item for item in d.items if explicit or is_subtype(a, item)]
        if any(not declares_divergence(item) for item in fitting):
            return None  # the declaration allows a value that does not diverge
        for item in fitting:
            found = leak(actual, item, explicit=explicit, depth=depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(d, TupleType):
        if isinstance(a, TupleType) and len(a.items) == len(d.items):
            for item, want in zip(a.items, d.items):
                found = leak(item, want, explicit=explicit, depth=depth + 1)
                if found is not None:
                    return found
        elif isinstance(a, Instance) and a.type.fullname == "builtins.tuple" and a.args:
            for want in d.items:
                found = leak(a.args[0], want, explicit=explicit, depth=depth + 1)
                if found is not None:
                    return found
        return None
    if isinstance(d, Instance):
        mapped = _as_instance_of(a, d)
        if mapped is None:
            return None
        for arg, want in zip(mapped.args, d.args):
            found = leak(arg, want, explicit=explicit, depth=depth + 1)
            if found is not None:
                return found
    return None


def _as_instance_of(actual: ProperType, declared: Instance) -> Instance | None:
    if isinstance(actual, TupleType):
        actual = actual.partial_fallback
    if not isinstance(actual, Instance) or not actual.type.has_base(declared.type.fullname):
        return None
    return map_instance_to_supertype(actual, declared.type)


def returned(typ: Type) -> Type | None:
    """The return type of ``typ`` to show in a message, if it has a single one."""
    proper = get_proper_type(typ)
    if isinstance(proper, CallableType):
        return proper.ret_type
    if isinstance(proper, TypeVarType):
        return returned(proper.upper_bound)
    if isinstance(proper, Instance):
        call = find_member("__call__", proper, proper, is_operator=True)
        return None if call is None else returned(call)
    return None
