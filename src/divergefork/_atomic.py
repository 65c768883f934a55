"""A hardware atomic fetch-add on a shared 64-bit word, through the GCC runtime ``libatomic``.

Python has no atomic integer operations, and the ``atomics`` package on PyPI is GPL. GCC's
runtime library ``libatomic`` (shipped with every GCC, under the GCC runtime library exception)
exports ``__atomic_fetch_add_8``, which is a single ``lock xadd`` on x86-64 and an LSE ``ldadd``
or an LL/SC loop on arm64. We call it with ctypes: no compiler is needed at install time.

libatomic falls back to a lock for sizes the CPU cannot do atomically; that lock lives in the
process, not in the shared mapping, so it would not exclude another process. We therefore ask
``__atomic_is_lock_free(8)`` first and refuse to call the word "atomic" when it is not.

Set ``DIVERGEFORK_NO_LIBATOMIC=1`` to behave as if libatomic were missing (tests use it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

from ._errors import DivergeforkError

__all__ = ["API_ALTERNATIVES", "SEQ_CST", "load_fetch_add"]

#: ``__ATOMIC_SEQ_CST``: on x86-64 every locked instruction is sequentially consistent anyway,
#: and on weaker CPUs it also orders the counter against whatever flag the caller sets next.
SEQ_CST: Final = 5

_SONAME: Final = "libatomic.so.1"

_cached: ctypes._NamedFuncPointer | None = None


#: What the errors suggest instead, in the library's terms; the command line passes its own.
API_ALTERNATIVES: Final = "sync='sharded' (exact, no library needed) or sync='lock'"


def load_fetch_add(
    *, subject: str = "SharedCounter(sync='atomic')", alternatives: str = API_ALTERNATIVES
) -> ctypes._NamedFuncPointer:
    """``__atomic_fetch_add_8`` from libatomic, or a ``DivergeforkError`` saying what is missing.

    ``subject`` and ``alternatives`` word the error for the caller (the command line says
    ``--sync atomic`` and ``--sync sharded``, not the API's ``sync='atomic'``).

    The function has no ``argtypes``: callers pass ready-made ``c_void_p`` and ``c_int64``
    objects and a small ``int`` order, so a call converts nothing (a third faster than with
    ``argtypes``). It returns the old count as an ``int`` (``c_int64``, about 5% slower than
    discarding it), which is how a caller sees that an add wrapped past the 64-bit range.
    """
    global _cached
    if _cached is not None:
        return _cached
    if os.environ.get("DIVERGEFORK_NO_LIBATOMIC"):
        raise DivergeforkError(
            f"{subject} needs libatomic, and DIVERGEFORK_NO_LIBATOMIC is set; "
            f"unset it, or use {alternatives}"
        )
    lib = _open_libatomic(subject, alternatives)
    try:
        fetch_add = lib.__atomic_fetch_add_8
        is_lock_free = lib.__atomic_is_lock_free
    except AttributeError:
        raise DivergeforkError(
            f"{subject}: {lib._name} lacks __atomic_fetch_add_8 or __atomic_is_lock_free, so it is "
            f"not GCC's libatomic; install libatomic1, or use {alternatives} instead"
        ) from None
    is_lock_free.argtypes = [ctypes.c_size_t, ctypes.c_void_p]
    is_lock_free.restype = ctypes.c_bool
    if not is_lock_free(8, None):
        raise DivergeforkError(
            f"{subject}: this CPU has no lock-free 8-byte atomic add (libatomic would use a lock "
            f"private to each process, which does not exclude the others); use {alternatives}"
        )
    fetch_add.restype = ctypes.c_int64
    _cached = fetch_add
    return fetch_add


def _open_libatomic(subject: str, alternatives: str) -> ctypes.CDLL:
    try:
        # dlopen's own search first: find_library runs ldconfig or a compiler in a subprocess.
        return ctypes.CDLL(_SONAME)
    except OSError:
        pass
    found = ctypes.util.find_library("atomic")
    if found is not None:
        try:
            return ctypes.CDLL(found)
        except OSError:
            pass
    raise DivergeforkError(
        f"{subject} needs {_SONAME} (GCC's atomic runtime), which was not found; install the "
        "GCC runtime package (Debian/Ubuntu: libatomic1, Fedora: libatomic, Alpine: libatomic), "
        f"or use {alternatives}"
    )
