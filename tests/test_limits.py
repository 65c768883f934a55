"""Limits (``_limits``): validation, the parent's check, each limit applied and hit for real."""

from __future__ import annotations

import errno
import os
import resource
import signal
from collections.abc import Callable

import pytest

import divergefork as df
from divergefork import _limits


def in_limited_child(limits: df.Limits, body: Callable[[], int]) -> tuple[int, resource.struct_rusage]:
    """Run ``body`` in a plain forked child after ``apply(limits)``; its wait status and rusage."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            _limits.apply(limits)
            code = body()
        except MemoryError:
            code = 77
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    return status, usage


def hit(limits: df.Limits, status: int, usage: resource.struct_rusage, memory_error: bool = False) -> str | None:
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return _limits.limit_hit(
        limits, signal=sig, user_time=usage.ru_utime, system_time=usage.ru_stime, raised_memory_error=memory_error
    )


# --- validation and the parent's check -----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"cpu_seconds": 0}, ValueError),
        ({"cpu_seconds": float("inf")}, ValueError),
        ({"cpu_seconds": "1"}, TypeError),
        ({"memory_bytes": 0}, ValueError),
        ({"memory_bytes": 1.5}, TypeError),
        ({"open_files": True}, TypeError),
        ({"file_size_bytes": -1}, ValueError),
        ({"core_dumps": 1}, TypeError),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        df.Limits(**kwargs)  # type: ignore[arg-type]


def test_a_value_above_the_parents_hard_limit_is_refused_before_forking() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard != resource.RLIM_INFINITY
    with pytest.raises(ValueError, match=rf"open_files={hard + 1}.*RLIMIT_NOFILE = {hard}"):
        _limits.check(df.Limits(open_files=hard + 1))
    _limits.check(df.Limits(open_files=hard, cpu_seconds=5, memory_bytes=1 << 40, file_size_bytes=0))


def test_the_hard_limits_are_set_so_the_entry_cannot_raise_them() -> None:
    limits = df.Limits(cpu_seconds=2.5, memory_bytes=1 << 30, open_files=50, file_size_bytes=4096)

    def body() -> int:
        assert resource.getrlimit(resource.RLIMIT_CPU) == (3, 4)  # ceil, and one second to SIGKILL
        assert resource.getrlimit(resource.RLIMIT_AS) == (1 << 30, 1 << 30)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (50, 50)
        assert resource.getrlimit(resource.RLIMIT_FSIZE) == (4096, 4096)
        assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)
        assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_DFL
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (51, 51))
        except ValueError:
            return 42
        return 1

    status, _ = in_limited_child(limits, body)
    assert os.waitstatus_to_exitcode(status) == 42


def test_core_dumps_true_allows_the_largest_core() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    status, _ = in_limited_child(
        df.Limits(core_dumps=True), lambda: 42 if resource.getrlimit(resource.RLIMIT_CORE) == (hard, hard) else 1
    )
    assert os.waitstatus_to_exitcode(status) == 42


def test_no_limit_set_changes_nothing_but_core_files() -> None:
    before = {r: resource.getrlimit(r) for r in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NOFILE)}
    status, _ = in_limited_child(
        df.Limits(), lambda: 42 if all(resource.getrlimit(r) == v for r, v in before.items()) else 1
    )
    assert os.waitstatus_to_exitcode(status) == 42


# --- each limit hit for real ---------------------------------------------------------------


def test_cpu_seconds_ends_a_busy_child_with_sigxcpu() -> None:
    limits = df.Limits(cpu_seconds=0.5)

    def spin() -> int:
        while True:
            pass

    status, usage = in_limited_child(limits, spin)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU
    assert hit(limits, status, usage) == "cpu_seconds"


def test_cpu_seconds_ends_a_child_ignoring_sigxcpu_with_sigkill() -> None:
    limits = df.Limits(cpu_seconds=1)

    def spin() -> int:
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            pass

    status, usage = in_limited_child(limits, spin)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert hit(limits, status, usage) == "cpu_seconds"


def test_a_sigkill_before_the_cpu_limit_is_not_the_limit() -> None:
    limits = df.Limits(cpu_seconds=30)
    def die() -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return 1

    status, usage = in_limited_child(limits, die)
    assert hit(limits, status, usage) is None


def test_file_size_bytes_ends_a_writer_with_sigxfsz(tmp_path: object) -> None:
    limits = df.Limits(file_size_bytes=1000)
    path = f"{tmp_path}/big"

    def write() -> int:
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
            f.flush()
            f.write(b"y")
            f.flush()
        return 1

    status, usage = in_limited_child(limits, write)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ
    assert os.path.getsize(path) == 1000
    assert hit(limits, status, usage) == "file_size_bytes"


def test_file_size_bytes_with_sigxfsz_ignored_again_is_efbig(tmp_path: object) -> None:
    # What Python alone would do: the write fails, nothing kills the child.
    limits = df.Limits(file_size_bytes=10)

    def write() -> int:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        fd = os.open(f"{tmp_path}/f", os.O_WRONLY | os.O_CREAT)
        try:
            os.write(fd, b"x" * 11)  # a partial write first: 10 bytes
            os.write(fd, b"x")
        except OSError as exc:
            return 42 if exc.errno == errno.EFBIG else 1
        return 2

    status, _ = in_limited_child(limits, write)
    assert os.waitstatus_to_exitcode(status) == 42


def test_memory_bytes_makes_a_big_allocation_raise_memoryerror() -> None:
    limits = df.Limits(memory_bytes=512 * 1024 * 1024)

    def allocate() -> int:
        blob = bytearray(1024 * 1024 * 1024)
        return len(blob) and 1

    status, usage = in_limited_child(limits, allocate)
    assert os.waitstatus_to_exitcode(status) == 77  # MemoryError, caught in in_limited_child
    assert hit(limits, status, usage, memory_error=True) == "memory_bytes"
    assert hit(df.Limits(), status, usage, memory_error=True) is None  # no memory limit: not a limit hit


def test_open_files_makes_open_fail_with_emfile() -> None:
    def open_many() -> int:
        fds = []
        try:
            for _ in range(100):
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            return 42 if exc.errno == errno.EMFILE and len(fds) < 40 else 1
        return 2

    status, usage = in_limited_child(df.Limits(open_files=40), open_many)
    assert os.waitstatus_to_exitcode(status) == 42
    assert hit(df.Limits(open_files=40), status, usage) is None  # an error the entry sees, not an end


def test_no_limits_means_no_limit_hit() -> None:
    assert _limits.limit_hit(None, signal=signal.SIGXCPU, user_time=9, system_time=0, raised_memory_error=True) is None
