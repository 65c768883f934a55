"""SharedCounter: real forks adding to one MAP_SHARED word, in each synchronisation mode."""

from __future__ import annotations

import ctypes.util
import gc
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import pytest

from conftest import ATOMIC

import divergefork as df
from divergefork import _atomic, _shared
from divergefork._demo import race
from divergefork._shared import Sync

EXACT_MODES: list[object] = ["lock", ATOMIC, "sharded"]
ALL_MODES: list[object] = ["none", *EXACT_MODES]


@dataclass(frozen=True)
class Work:
    counter: df.SharedCounter
    times: int
    start_r: int


def add_both_ways(work: Work) -> NoReturn:
    # Wait for the parent's go, so that every process really adds at the same moment.
    os.read(work.start_r, 1)
    work.counter.add_repeatedly(work.times)
    add = work.counter.add
    for _ in range(work.times):
        add()
    work.counter.add(3)
    df.exit_child(42)


def fork_adders(counter: df.SharedCounter, children: int, times: int) -> list[df.Report]:
    start_r, start_w = os.pipe()
    try:
        kids = [df.fork(Work(counter, times, start_r), add_both_ways, timeout=60) for _ in range(children)]
    finally:
        os.close(start_r)
    os.write(start_w, b"g" * children)
    os.close(start_w)
    counter.add_repeatedly(times)
    for _ in range(times):
        counter.add()
    return [kid.wait() for kid in kids]


@pytest.mark.parametrize("sync", EXACT_MODES)
def test_exact_modes_count_every_update_of_several_children_and_the_parent(sync: Sync) -> None:
    times = 5_000 if sync == "lock" else 20_000
    with df.SharedCounter(sync) as counter:
        reports = fork_adders(counter, children=3, times=times)
        assert [(r.outcome, r.exit_code) for r in reports] == [(df.Outcome.EXITED, 42)] * 3
        assert counter.value == 2 * times + 3 * (2 * times + 3)


def test_none_loses_exactly_half_in_lockstep() -> None:
    result = race(500, "none", lockstep=True)
    assert result.child.ok
    assert (result.value, result.expected, result.lost_fraction) == (500, 1000, 0.5)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a free-running race needs two CPUs")
def test_none_loses_updates_when_running_free() -> None:
    # Each process makes 2,000,000 unsynchronised updates at the same moment: over that many
    # overlapping read-modify-writes some are always lost. Only "some" is asserted.
    result = race(2_000_000, "none")
    assert result.child.ok
    assert 0 < result.lost < result.expected


@pytest.mark.parametrize("sync", ALL_MODES)
def test_add_takes_any_int_including_negative(sync: Sync) -> None:
    with df.SharedCounter(sync) as counter:
        counter.add()
        counter.add(41)
        counter.add(n=-2)
        counter.add_repeatedly(3, n=-5)
        counter.add_repeatedly(0)
        assert counter.value == 25


def test_sharded_child_claims_its_own_slot_even_through_an_add_bound_before_fork() -> None:
    with df.SharedCounter("sharded", slots=1) as counter:
        add = counter.add
        add()  # the parent holds the only slot

        def use_parents_add(bound: Callable[[], None]) -> NoReturn:
            bound()
            df.exit_child(0)

        report = df.fork(add, use_parents_add, timeout=30).wait()
        assert report.outcome is df.Outcome.RAISED
        assert report.error is not None and "all 1 slots are held by live processes" in report.error
        assert counter.value == 1


def test_one_more_adding_process_than_slots_is_a_clear_error() -> None:
    with df.SharedCounter("sharded", slots=2) as counter:
        counter.add()
        claimed_r, claimed_w = os.pipe()
        release_r, release_w = os.pipe()

        def hold_a_slot(c: df.SharedCounter) -> NoReturn:
            c.add(10)
            os.write(claimed_w, b"x")
            os.read(release_r, 1)
            df.exit_child(0)

        holder = df.fork(counter, hold_a_slot, timeout=30)
        try:
            assert os.read(claimed_r, 1) == b"x"

            def add_one(c: df.SharedCounter) -> NoReturn:
                c.add()
                df.exit_child(0)

            third = df.fork(counter, add_one, timeout=30).wait()
            assert third.outcome is df.Outcome.RAISED
            assert third.error is not None
            assert f"slots=2): all 2 slots are held by live processes (pids {os.getpid()}, {holder.pid})" in third.error
            assert "create the counter with slots= at least" in third.error
        finally:
            os.write(release_w, b"x")
            for fd in (claimed_r, claimed_w, release_r, release_w):
                os.close(fd)
            assert holder.wait().ok
        assert counter.value == 11


def test_a_slot_whose_process_ended_is_reused_and_keeps_its_count() -> None:
    with df.SharedCounter("sharded", slots=1) as counter:

        def add_five(c: df.SharedCounter) -> NoReturn:
            c.add(5)
            df.exit_child(0)

        for _ in range(3):
            assert df.fork(counter, add_five, timeout=30).wait().ok
        counter.add(7)  # the parent takes over the dead children's slot
        assert counter.value == 22


def test_forgotten_sharded_counters_do_not_stay_registered_for_fork() -> None:
    gc.collect()
    before = len(_shared._fork_resets)
    counter = df.SharedCounter("sharded")
    assert len(_shared._fork_resets) == before + 2
    del counter
    gc.collect()
    assert len(_shared._fork_resets) == before


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sync": "fast"}, ValueError, "sync=...) must be one of 'none', 'lock', 'atomic', 'sharded', not 'fast'"),
        ({"slots": 0}, ValueError, "slots=...) must be between 1 and 4096, not 0"),
        ({"slots": True}, TypeError, "slots=...) must be an int, not bool"),
        ({"slots": 2.0}, TypeError, "slots=...) must be an int, not float"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        df.SharedCounter(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("sync", ALL_MODES)
def test_bad_updates_are_rejected_and_change_nothing(sync: Sync) -> None:
    with df.SharedCounter(sync) as counter:
        counter.add(2)
        with pytest.raises(TypeError):
            counter.add("1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"times=...\) must be >= 0, not -1"):
            counter.add_repeatedly(-1)
        with pytest.raises(TypeError, match=r"times=...\) must be an int, not float"):
            counter.add_repeatedly(1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="signed 64-bit"):
            counter.add_repeatedly(1, n=2**64)
        assert counter.value == 2


@pytest.mark.parametrize("sync", ALL_MODES)
def test_every_mode_validates_an_addend_the_same_way(sync: Sync) -> None:
    with df.SharedCounter(sync) as counter:
        counter.add(5)
        for bad in (True, False, 1.0, "1", None):
            with pytest.raises(TypeError, match=rf"add\(n=...\) must be an int, not {type(bad).__name__}"):
                counter.add(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"must be an int"):
                counter.add_repeatedly(2, bad)  # type: ignore[arg-type]
        for huge in (2**63, -(2**63) - 1):
            with pytest.raises(ValueError, match=r"add\(n=...\) must fit in a signed 64-bit word"):
                counter.add(huge)
        assert counter.value == 5


@pytest.mark.parametrize("sync", ALL_MODES)
def test_overflow_is_an_overflow_error_in_every_mode_and_the_update_is_not_made(sync: Sync) -> None:
    top = 2**63 - 1
    with df.SharedCounter(sync) as counter:
        counter.add(top)
        updates: list[tuple[int, int]] = [(1, 1), (1, 7), (3, 1)]  # (times, n)
        for times, n in updates:
            with pytest.raises(OverflowError, match=rf"adding {n} to {top} leaves the signed 64-bit range"):
                if times == 1:
                    counter.add(n)
                else:
                    counter.add_repeatedly(times, n)
            assert counter.value == top  # not wrapped round to a negative count
        counter.add(-top)
        counter.add(-top)
        with pytest.raises(OverflowError, match="leaves the signed 64-bit range"):
            counter.add(-2)
        assert counter.value == -top


def test_racy_halves_exist_only_for_sync_none() -> None:
    with df.SharedCounter("none") as counter:
        load, store = _shared.racy_halves(counter)
        store(load() + 41)
        assert counter.value == 41
        with pytest.raises(TypeError, match=r"store\(value=...\) must be an int, not bool"):
            store(True)
    with df.SharedCounter("lock") as counter, pytest.raises(ValueError, match="only a SharedCounter.sync='none'"):
        _shared.racy_halves(counter)


@pytest.mark.parametrize("sync", ALL_MODES)
def test_close_is_idempotent_and_later_use_raises(sync: Sync) -> None:
    counter = df.SharedCounter(sync)
    add, add_repeatedly = counter.add, counter.add_repeatedly
    add(4)
    assert repr(counter).startswith(f"SharedCounter(sync={sync!r}")
    assert repr(counter).endswith("value=4)")
    counter.close()
    counter.close()
    assert counter.closed
    assert repr(counter).endswith("closed>")
    # An add bound before close must raise too: for "atomic" a call would crash the process.
    for use in (add, lambda: add_repeatedly(1), lambda: counter.value):
        with pytest.raises(ValueError, match="closed SharedCounter"):
            use()


def test_a_counter_cannot_be_pickled() -> None:
    with df.SharedCounter() as counter, pytest.raises(TypeError, match="shared by fork only"):
        pickle.dumps(counter)


def test_repr_and_properties() -> None:
    with df.SharedCounter("sharded", slots=8) as counter:
        counter.add(3)
        assert (counter.sync, counter.slots, counter.closed) == ("sharded", 8, False)
        assert repr(counter) == "SharedCounter(sync='sharded', slots=8, value=3)"


def test_atomic_without_libatomic_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_atomic, "_cached", None)
    monkeypatch.setattr(_atomic, "_SONAME", "libatomic-missing.so.99")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(df.DivergeforkError, match=r"needs libatomic-missing.so.99 .*install .*libatomic1"):
        df.SharedCounter("atomic")
    df.SharedCounter("sharded").close()  # the other modes do not need it


def test_atomic_can_be_disabled_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_atomic, "_cached", None)
    monkeypatch.setenv("DIVERGEFORK_NO_LIBATOMIC", "1")
    with pytest.raises(df.DivergeforkError, match="DIVERGEFORK_NO_LIBATOMIC is set"):
        df.SharedCounter("atomic")
