"""``SharedCounter``: a 64-bit count in one ``MAP_SHARED | MAP_ANONYMOUS`` mapping.

Ordinary memory is copied on write after ``fork``, so a child's updates never reach the
parent. A shared anonymous mapping is different: parent and children alias the same physical
page, and an unsynchronised read-modify-write from two processes loses updates. The four
``sync`` modes show the problem and three fixes:

``none``
    ``words[0] += n`` on a ``memoryview`` of the mapping: a load, an add and a store, with
    nothing stopping the other process from storing in between. Updates are lost.
``lock``
    The same, inside a ``multiprocessing`` lock from the ``fork`` context. It is a POSIX
    semaphore in shared memory whose fast path (``sem_trywait``/``sem_post``, no system call
    unless contended) runs in C; we bind its ``acquire``/``release`` directly, skipping the
    Python ``__enter__`` wrapper (3x faster). A robust ``pthread_mutex_t`` placed in the mapping
    would survive a holder killed mid-update, but through ctypes it measured 2-3x slower; so a
    process SIGKILLed while adding can leave the lock held, and the others then wait forever.
``atomic``
    A hardware fetch-add (``__atomic_fetch_add_8`` from GCC's libatomic, see ``_atomic``).
    Exact and lock-free, but each update pays a ctypes call.
``sharded``
    Each process adds to its own slot (a 128-byte line of its own, so the processes do not
    fight over a cache line) with a plain ``+=``; ``value`` sums the slots. Exact at the racy
    speed. A process claims a slot on its first ``add``; the claim is reset in a forked child
    by an ``os.register_at_fork`` hook, so the hot path never calls ``os.getpid()``.

Every mode validates updates the same way: ``n`` (and ``times``) must be an ``int`` (not a
``bool``) or ``TypeError``; an ``n`` outside the signed 64-bit range is a ``ValueError``; an
update that would take the count (or, for ``sharded``, this process's slot) past the signed
64-bit range is an ``OverflowError`` and leaves the count as it was (``atomic`` adds and then
takes the update back, so another process may glimpse the wrapped value in between).

The layout, in 8-byte words: word 0 is the count of ``none``/``lock``/``atomic``; from word 16
the claim table (the pid owning each slot, 0 when free); then one slot every 16 words.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import operator
import os
import weakref
from collections.abc import Callable
from typing import Final, Literal, NoReturn, Protocol, final

from ._atomic import SEQ_CST, load_fetch_add
from ._errors import DivergeforkError

__all__ = ["SYNC_MODES", "SharedCounter", "Sync", "racy_halves"]

Sync = Literal["none", "lock", "atomic", "sharded"]
SYNC_MODES: Final[tuple[Sync, ...]] = ("none", "lock", "atomic", "sharded")

MAX_SLOTS: Final = 4096
_LINE: Final = 16  # words per slot: 128 bytes, a cache line and the neighbour it is prefetched with
_CLAIMS: Final = _LINE
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class _Add(Protocol):
    def __call__(self, n: int = 1) -> None: ...


class _AddRepeatedly(Protocol):
    def __call__(self, times: int, n: int = 1) -> None: ...


@final
class _Mapping:
    """What every closure of one counter shares; keeps the mapping alive while one exists."""

    __slots__ = ("mmap", "words", "closed")

    def __init__(self, size: int) -> None:
        self.mmap = mmap.mmap(
            -1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        base = memoryview(self.mmap)
        self.words = base.cast("q")
        base.release()  # the cast view holds the buffer itself
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise _closed_error()


# Reset functions of sharded counters, keyed by their add closures: a child must claim a slot
# of its own, even through an `add` bound before the fork. Weak keys, because
# os.register_at_fork cannot unregister a hook, so it must not keep counters alive.
_fork_resets: weakref.WeakKeyDictionary[Callable[..., None], Callable[[], None]] = weakref.WeakKeyDictionary()


def _reset_slots_in_child() -> None:
    for reset in list(_fork_resets.values()):
        reset()


os.register_at_fork(after_in_child=_reset_slots_in_child)


@final
class SharedCounter:
    """A signed 64-bit counter shared by a process and every child it forks afterwards.

    Create it before forking; pass it to the children (``df.fork(counter, entry)``) or let them
    inherit it. ``add(n)`` and ``add_repeatedly(times, n)`` update it, ``value`` reads it::

        with df.SharedCounter("sharded") as counter:
            child = df.fork(counter, lambda c: (c.add_repeatedly(1000), df.exit_child())[1])
            counter.add_repeatedly(1000)
            child.wait()
            assert counter.value == 2000

    ``sync`` picks how concurrent updates are made safe (see the module docstring): ``"none"``
    loses updates on purpose, ``"lock"``, ``"atomic"`` and ``"sharded"`` are exact. ``slots``
    bounds how many processes may add to a ``"sharded"`` counter at the same time (a slot whose
    process has ended is reused). Within one process, use ``"lock"`` or ``"atomic"`` if several
    threads add. ``close()`` (or leaving a ``with`` block) unmaps the counter in this process
    only; do not close it while another thread of the process is adding.
    """

    __slots__ = ("_sync", "_slots", "_mapping", "_value", "add", "add_repeatedly")

    #: Add ``n`` (default 1) to the counter: one update.
    add: Final[_Add]
    #: Make ``times`` separate updates of ``n`` each, without a Python call per update. Each is
    #: its own read-modify-write (``none`` can lose any of them), as ``times`` calls of ``add``.
    add_repeatedly: Final[_AddRepeatedly]

    def __init__(self, sync: Sync = "none", slots: int = 64) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(
                f"SharedCounter(sync=...) must be one of {', '.join(map(repr, SYNC_MODES))}, not {sync!r}"
            )
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise TypeError(f"SharedCounter(slots=...) must be an int, not {type(slots).__name__}")
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"SharedCounter(slots=...) must be between 1 and {MAX_SLOTS}, not {slots}")
        self._sync: Final[Sync] = sync
        self._slots: Final = slots
        fetch_add = load_fetch_add() if sync == "atomic" else None  # fail before mapping anything
        size = (_CLAIMS + _round_up(slots, _LINE) + slots * _LINE) * 8 if sync == "sharded" else mmap.PAGESIZE
        mapping = self._mapping = _Mapping(size)
        add: _Add
        add_repeatedly: _AddRepeatedly
        value: Callable[[], int]
        if sync == "none":
            add, add_repeatedly, value = _plain(mapping)
        elif sync == "lock":
            add, add_repeatedly, value = _locked(mapping)
        elif sync == "atomic":
            assert fetch_add is not None
            add, add_repeatedly, value = _atomic(mapping, fetch_add)
        else:
            add, add_repeatedly, value = _sharded(mapping, slots)
        self.add = add
        self.add_repeatedly = add_repeatedly
        self._value: Final = value

    @property
    def sync(self) -> Sync:
        """How updates are synchronised: ``"none"``, ``"lock"``, ``"atomic"`` or ``"sharded"``."""
        return self._sync

    @property
    def slots(self) -> int:
        """How many processes may add at once to a ``"sharded"`` counter."""
        return self._slots

    @property
    def value(self) -> int:
        """The count now (a sum of the slots for ``"sharded"``). Exact once the adders are done."""
        self._mapping.check_open()
        return self._value()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._mapping.closed

    def close(self) -> None:
        """Unmap the counter in this process (other processes keep their mapping). Idempotent."""
        mapping = self._mapping
        if mapping.closed:
            return
        mapping.closed = True
        mapping.words.release()
        mapping.mmap.close()

    def __enter__(self) -> SharedCounter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        slots = f", slots={self._slots}" if self._sync == "sharded" else ""
        if self._mapping.closed:
            return f"<SharedCounter sync={self._sync!r}{slots} closed>"
        return f"SharedCounter(sync={self._sync!r}{slots}, value={self._value()})"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a SharedCounter cannot be pickled: it is shared by fork only; pass it as the value of "
            "df.fork (or let the child inherit it) instead of sending it through a pipe or queue"
        )



def racy_halves(counter: SharedCounter) -> tuple[Callable[[], int], Callable[[int], None]]:
    """The load and the store of one update of a ``"none"`` counter, as two calls.

    For the lockstep demo, which interleaves two processes' halves to lose exactly one update
    in two. Only ``"none"`` has such halves: the other modes make an update indivisible, and
    splitting it would defeat them, so they are a ``ValueError``.
    """
    if counter.sync != "none":
        raise ValueError(
            f"only a SharedCounter(sync='none') update has a separate load and store, not "
            f"sync={counter.sync!r}"
        )
    mapping = counter._mapping
    words = mapping.words

    def load() -> int:
        mapping.check_open()
        word: int = words[0]
        return word

    def store(value: int) -> None:
        mapping.check_open()
        if value.__class__ is not int:
            _check_addend(value, "store(value=...)")
        try:
            words[0] = value
        except ValueError:
            raise _overflow_error(0, value) from None

    return load, store


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _check_update(times: int, n: int) -> int:
    """Validate ``add_repeatedly``'s arguments once per call; return ``times`` as an int."""
    if isinstance(times, bool):
        raise TypeError("add_repeatedly(times=...) must be an int, not bool")
    try:
        count = operator.index(times)
    except TypeError:
        raise TypeError(f"add_repeatedly(times=...) must be an int, not {type(times).__name__}") from None
    if count < 0:
        raise ValueError(f"add_repeatedly(times=...) must be >= 0, not {count}")
    _check_addend(n)
    return count


def _check_addend(n: object, what: str = "add(n=...)") -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"SharedCounter.{what} must be an int, not {type(n).__name__}")
    if not _INT64_MIN <= n <= _INT64_MAX:
        raise ValueError(f"SharedCounter.{what} must fit in a signed 64-bit word, not {n}")


def _closed_error() -> ValueError:
    return ValueError("operation on a closed SharedCounter")


def _overflow_error(count: int, n: int) -> OverflowError:
    return OverflowError(
        f"SharedCounter: adding {n} to {count} leaves the signed 64-bit range "
        f"[{_INT64_MIN}, {_INT64_MAX}], so that update was not made; start lower or add less"
    )


def _failed_update(mapping: _Mapping, word: int, n: object) -> Exception:
    """Why ``words[word] += n`` raised ``ValueError``/``TypeError``: closed, bad ``n`` or overflow.

    Called only after the update failed, so the checks cost nothing on the hot path; a
    failed memoryview store leaves the word as it was.
    """
    if mapping.closed:
        return _closed_error()
    try:
        _check_addend(n)
    except (TypeError, ValueError) as exc:
        return exc
    assert isinstance(n, int)
    count: int = mapping.words[word]
    return _overflow_error(count, n)


# Each mode is a set of closures over locals (no attribute lookup per update): `add` is the
# whole update, so its speed is the speed of the demo. A released memoryview raises ValueError,
# which the handlers turn into a message about the counter; try/except costs nothing on 3.11+
# until something is raised.


def _first_word(words: memoryview) -> Callable[[], int]:
    """The reader of the one shared word: an aligned 8-byte load is never torn, so no mode
    needs its lock (or an atomic) to read it."""

    def value() -> int:
        count: int = words[0]
        return count

    return value


def _plain(mapping: _Mapping) -> tuple[_Add, _AddRepeatedly, Callable[[], int]]:
    words = mapping.words
    low, high = _INT64_MIN, _INT64_MAX  # closure cells: faster than globals per update

    def add(n: int = 1) -> None:
        # A bool would add silently, and an n beyond 64 bits whose sum still fits would pass
        # memoryview's own check: the same rule as every mode, at the cost of two compares.
        if n.__class__ is not int or not low <= n <= high:
            _check_addend(n)
        try:
            words[0] += n
        except (TypeError, ValueError):
            raise _failed_update(mapping, 0, n) from None

    def add_repeatedly(times: int, n: int = 1) -> None:
        mapping.check_open()
        count = _check_update(times, n)
        try:
            for _ in range(count):
                words[0] += n
        except ValueError:
            raise _failed_update(mapping, 0, n) from None

    return add, add_repeatedly, _first_word(words)


def _locked(mapping: _Mapping) -> tuple[_Add, _AddRepeatedly, Callable[[], int]]:
    words = mapping.words
    low, high = _INT64_MIN, _INT64_MAX  # closure cells: faster than globals per update
    # The fork context, whatever the default start method: its semaphore is unlinked at once
    # (no resource tracker process) and reaches children by inheritance only.
    lock = multiprocessing.get_context("fork").Lock()
    acquire, release = lock.acquire, lock.release

    def add(n: int = 1) -> None:
        if n.__class__ is not int or not low <= n <= high:
            _check_addend(n)
        acquire()
        try:
            words[0] += n
        except (TypeError, ValueError):
            raise _failed_update(mapping, 0, n) from None
        finally:
            release()

    def add_repeatedly(times: int, n: int = 1) -> None:
        mapping.check_open()
        count = _check_update(times, n)
        try:
            for _ in range(count):
                acquire()
                try:
                    words[0] += n
                finally:
                    release()
        except ValueError:
            raise _failed_update(mapping, 0, n) from None

    return add, add_repeatedly, _first_word(words)


def _atomic(
    mapping: _Mapping, fetch_add: ctypes._NamedFuncPointer
) -> tuple[_Add, _AddRepeatedly, Callable[[], int]]:
    words = mapping.words
    # The address stays valid until close(); every call checks `closed` first, because a
    # call after munmap would crash the process instead of raising.
    pointer = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(mapping.mmap)))
    one = ctypes.c_int64(1)
    int64 = ctypes.c_int64
    # The hardware wraps silently; fetch_add returns the old count, so a wrap is seen at once,
    # taken back, and reported like the other modes' OverflowError.

    def undo(old: int, n: int) -> OverflowError:
        fetch_add(pointer, int64(-n), SEQ_CST)
        return _overflow_error(old, n)

    def add(n: int = 1) -> None:
        if mapping.closed:
            raise _closed_error()
        if n == 1 and n.__class__ is int:
            if fetch_add(pointer, one, SEQ_CST) == _INT64_MAX:
                raise undo(_INT64_MAX, 1)
        else:
            _check_addend(n)
            old = fetch_add(pointer, int64(n), SEQ_CST)
            if not _INT64_MIN <= old + n <= _INT64_MAX:
                raise undo(old, n)

    def add_repeatedly(times: int, n: int = 1) -> None:
        mapping.check_open()
        count = _check_update(times, n)
        addend = one if n == 1 else int64(n)
        low, high = _INT64_MIN - n, _INT64_MAX - n  # the old counts that n can be added to
        for _ in range(count):
            old = fetch_add(pointer, addend, SEQ_CST)
            if not low <= old <= high:
                raise undo(old, n)

    return add, add_repeatedly, _first_word(words)


def _sharded(mapping: _Mapping, slots: int) -> tuple[_Add, _AddRepeatedly, Callable[[], int]]:
    words = mapping.words
    low, high = _INT64_MIN, _INT64_MAX  # closure cells: faster than globals per update
    lock = multiprocessing.get_context("fork").Lock()  # guards the claim table only
    first = _CLAIMS + _round_up(slots, _LINE)
    unclaimed = len(words)  # an index that raises IndexError: "claim a slot first"
    index = unclaimed

    def claim() -> int:
        nonlocal index
        mapping.check_open()
        pid = os.getpid()
        with lock:
            slot = _choose_slot(words, slots, pid)
            words[_CLAIMS + slot] = pid
        index = first + slot * _LINE
        return index

    def reset() -> None:
        nonlocal index
        index = unclaimed

    def add(n: int = 1) -> None:
        if n.__class__ is not int or not low <= n <= high:
            _check_addend(n)
        try:
            words[index] += n
            return
        except IndexError:
            pass
        except (TypeError, ValueError):
            raise _failed_update(mapping, index, n) from None
        mine = claim()
        try:
            words[mine] += n
        except (TypeError, ValueError):
            raise _failed_update(mapping, mine, n) from None

    def add_repeatedly(times: int, n: int = 1) -> None:
        mapping.check_open()
        count = _check_update(times, n)
        mine = claim() if index == unclaimed else index
        try:
            for _ in range(count):
                words[mine] += n
        except ValueError:
            raise _failed_update(mapping, mine, n) from None

    def value() -> int:
        return sum(words[first : first + slots * _LINE : _LINE])

    _fork_resets[add] = reset
    _fork_resets[add_repeatedly] = reset
    return add, add_repeatedly, value


def _choose_slot(words: memoryview, slots: int, pid: int) -> int:
    """The slot ``pid`` may add to: its own, a free one, or one whose process has ended.

    Called with the claim lock held. A dead process's slot keeps its count (the sum needs it)
    and the new owner simply adds to it. A zombie or a reused pid counts as alive: we may refuse
    a slot we could have had, never share one.
    """
    free = None
    for slot in range(slots):
        owner = words[_CLAIMS + slot]
        if owner == pid:
            return slot
        if owner == 0 and free is None:
            free = slot
    if free is not None:
        return free
    owners = [words[_CLAIMS + slot] for slot in range(slots)]
    for slot, owner in enumerate(owners):
        if not _alive(owner):
            return slot
    shown = ", ".join(map(str, owners[:8])) + (", ..." if slots > 8 else "")
    raise DivergeforkError(
        f"SharedCounter(sync='sharded', slots={slots}): all {slots} slots are held by live "
        f"processes (pids {shown}), so process {pid} cannot add; create the counter with "
        f"slots= at least the number of processes that add at the same time"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
