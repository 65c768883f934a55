"""Everything that runs in the child. Every path out of here ends in ``os._exit``.

After ``fork`` the child is a copy of the parent up to the call of ``fork()``: if the child
ever returned from it, or let an exception escape, it would run the caller's ``finally``
blocks, the test runner, and at the end the parent's atexit handlers a second time.
:func:`run` is the only function the child executes after ``fork`` and it cannot unwind.

The child talks to the parent through a private status pipe (close-on-exec, so an exec'd
program never sees it). Records are ``kind (1 byte) + length (4 bytes) + payload``:

=====  =================================================================================
kind   payload
=====  =================================================================================
``V``  JSON of the ``result`` given to :func:`exit_child`
``E``  traceback of the exception the entry raised
``R``  text saying what the entry returned (a contract violation)
``X``  JSON argv of an exec attempt; if the exec succeeds nothing follows
``F``  text of the exec failure
=====  =================================================================================

A child that just exits writes nothing at all: the fast path costs no system call.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import stat
import struct
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Final, NoReturn, TypeVar

from . import _linux
from ._errors import DivergeforkError
from ._report import RETURNED_EXIT_CODE

__all__ = ["MAX_RESULT_BYTES", "exec_child", "exit_child", "run", "send"]

T = TypeVar("T")

#: The largest JSON ``result`` (UTF-8 bytes) :func:`exit_child` sends back.
MAX_RESULT_BYTES: Final = 16 * 1024 * 1024
#: The most of a traceback sent to the parent (its end is kept).
MAX_ERROR_BYTES: Final = 256 * 1024

_HEADER: Final = struct.Struct("!cI")
_SIGKILL: Final = int(signal.SIGKILL)
_PR_SET_PDEATHSIG: Final = 1
_prctl: Final = _linux.prctl_function()
_pthread_sigmask: Final = _linux.pthread_sigmask
_getsignal: Final = _linux.raw_getsignal
_SIGTERM: Final = int(signal.SIGTERM)
_SIG_SETMASK: Final = _linux.SIG_SETMASK
_RESTORE_AT_EXEC: Final = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)

# The write end of this process's status pipe, set in the child right after fork; -1 in any
# other process. Every fork resets it (see the at-fork hook below), so a process forked from a
# child with plain os.fork is not "in" a divergefork child and cannot write to the pipe.
_status_fd = -1


def _forget_status() -> None:
    global _status_fd
    _status_fd = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_status)


def run(
    value: T,
    entry: Callable[[T], NoReturn],
    status_fd: int,
    parent_pid: int,
    *,
    kill_on_parent_exit: bool,
    new_group: bool,
    capture: tuple[int, int, int, int] | None,
    sigmask: ctypes.Array[ctypes.c_ubyte],
) -> NoReturn:
    """The child's whole life after ``fork``: set up, call the entry, end in ``os._exit``.

    The parent forked with every signal blocked (so that no KeyboardInterrupt can separate
    a child from its handle); ``sigmask`` is the mask to restore before the entry runs.
    """
    global _status_fd
    code = 1
    try:
        try:
            _status_fd = status_fd
            if new_group:
                # First, before anything that could fork: grandchildren must be in the group.
                try:
                    os.setpgid(0, 0)
                except OSError:
                    pass
            if kill_on_parent_exit:
                # Called directly with int constants: every object touched here is a page
                # copied in the child (see _linux).
                if _prctl is not None:
                    _prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
                # The parent may have died before prctl ran; then we were reparented and the
                # death signal will never come.
                if os.getppid() != parent_pid:
                    code = 128 + _SIGKILL
                    _exit(code)
            if callable(_getsignal(_SIGTERM)):
                # A Python SIGTERM handler inherited from the parent would turn a deadline
                # into an exception in the entry; the kernel's default is what we promise.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # Only now, in its own group and with its handlers set, may signals reach it: a
            # terminal's Ctrl-C meant for the parent's group, or an early deadline's SIGTERM.
            _pthread_sigmask(_SIG_SETMASK, sigmask, None)
            if capture is not None:
                _redirect_output(capture)
            # Typed as what it may do at run time, not what it promises: it may return.
            call: Callable[[T], object] = entry
            returned = call(value)
            code = RETURNED_EXIT_CODE
            _send(b"R", _returned_text(entry, returned).encode("utf-8", "replace"))
        except SystemExit as exc:
            code = _system_exit_code(exc)
        except BaseException as exc:  # noqa: BLE001 - the child must never unwind
            code = 1
            text = "".join(traceback.format_exception(exc))
            try:
                sys.stderr.write(text)
            except BaseException:  # noqa: BLE001
                pass
            data = text.encode("utf-8", "replace")
            if len(data) > MAX_ERROR_BYTES:
                # Keep the end: the exception's type and message are on the last lines.
                data = b"[traceback truncated]\n" + data[-MAX_ERROR_BYTES:]
            _send(b"E", data)
    finally:
        # Whatever happened above, including an exception while reporting one, the child
        # ends here and never returns into the caller of fork().
        _exit(code)


def exit_child(code: int = 0, *, result: object = None) -> NoReturn:
    """End this child with exit status ``code``, handing ``result`` (JSON) to the parent.

    ``sys.stdout`` and ``sys.stderr`` are flushed first. A ``result`` that is not
    JSON-serialisable raises ``TypeError``, and one larger than ``MAX_RESULT_BYTES`` raises
    ``ValueError``, here in the child (so the report says ``raised`` and why).
    """
    if result is None and _status_fd >= 0 and code.__class__ is int and 0 <= code <= 255:
        _exit(code)  # the fast path: nothing to send, the exit status says it all
    if _status_fd < 0:
        raise DivergeforkError(
            "exit_child() was called outside a child started by divergefork.fork(); "
            "in an ordinary process use sys.exit()"
        )
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"exit_child(code=...) must be an int, not {type(code).__name__}")
    if not 0 <= code <= 255:
        # The kernel keeps only the low 8 bits: 256 would silently read as success.
        raise ValueError(f"exit_child(code={code}) must be between 0 and 255")
    if result is not None:
        try:
            payload = json.dumps(result, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"exit_child(result=...) must be JSON-serialisable: {exc}") from exc
        if len(payload) > MAX_RESULT_BYTES:
            raise ValueError(
                f"exit_child(result=...) is {len(payload)} bytes of JSON; the limit is "
                f"MAX_RESULT_BYTES = {MAX_RESULT_BYTES}: write large data to a file instead"
            )
        _flush()
        _send(b"V", payload)
    _exit(code)


def send(value: object) -> None:
    """Send ``value`` to the parent now; it is kept, in order, in ``Report.messages``.

    Kept even if the child later crashes or is killed. Uses the child's codec (``json`` by
    default): a value it cannot encode raises ``TypeError`` here, in the child.
    """
    if _status_fd < 0:
        raise DivergeforkError(
            "send() was called outside a child started by divergefork.fork(); "
            "only a forked child has a parent to send to"
        )
    try:
        payload = json.dumps(value, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"send(value) must be JSON-serialisable: {exc}") from exc
    _send(b"M", payload)


def exec_child(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> NoReturn:
    """Replace this child with a program, looked up on ``PATH`` like ``execvp``.

    If the program cannot be started the child exits 127 and its report says
    ``exec_failed`` with the operating system's reason.
    """
    if isinstance(argv, str | bytes) or not argv:
        raise ValueError("exec_child(argv) needs a non-empty sequence of strings, like ['ls', '-l']")
    args = list(argv)
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"exec_child(argv) items must be str, not {type(arg).__name__}: {arg!r}")
        if "\0" in arg:
            raise ValueError(f"exec_child(argv) items cannot contain NUL bytes: {arg!r}")
    environ = None
    if env is not None:
        environ = dict(env)
        for key, val in environ.items():
            if not isinstance(key, str) or not isinstance(val, str):
                raise TypeError(f"exec_child(env=...) keys and values must be str: {key!r}={val!r}")
            if "\0" in key or "\0" in val or "=" in key or not key:
                raise ValueError(f"exec_child(env=...) has an invalid variable: {key!r}={val!r}")
    _flush()
    inside = _status_fd >= 0
    if inside:
        # Announced only once nothing but the exec itself can fail.
        _send(b"X", json.dumps(args).encode())
    # Python ignores SIGPIPE and SIGXFSZ for itself; an ignored signal survives exec, and
    # programs expect the defaults (subprocess restores them too).
    for sig in _RESTORE_AT_EXEC:
        signal.signal(sig, signal.SIG_DFL)
    try:
        if environ is None:
            os.execvp(args[0], args)
        else:
            os.execvpe(args[0], args, environ)
    except OSError as exc:
        if not inside:
            raise
        reason = exc.strerror or str(exc)
        text = f"cannot exec {args[0]!r}: [Errno {exc.errno}] {reason}"
        try:
            sys.stderr.write(f"divergefork: {text}\n")
        except BaseException:  # noqa: BLE001
            pass
        _send(b"F", text.encode("utf-8", "replace"))
        _exit(127)
    raise AssertionError("unreachable: exec returned")  # pragma: no cover


def _exit(code: int) -> NoReturn:
    """The one place the child ends. Flushes Python's stdio, never runs atexit handlers."""
    try:
        _flush()
    finally:
        os._exit(code & 0xFF)  # what the kernel keeps of an exit status


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - a closed or broken stream cannot stop the exit
                pass


def _send(kind: bytes, payload: bytes) -> None:
    fd = _status_fd
    if fd < 0:
        return
    try:
        is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        is_pipe = False
    if not is_pipe:
        # The entry closed our descriptor (closerange, daemonising) and maybe reused the
        # number for a file of its own: never write a status record into the user's data.
        try:
            sys.stderr.write(
                f"divergefork: the child closed its status pipe (fd {fd}); the parent will not "
                "receive its result, exception or exec record\n"
            )
        except BaseException:  # noqa: BLE001
            pass
        return
    data = memoryview(_HEADER.pack(kind, len(payload)) + payload)
    try:
        # The parent reads while it waits, so a result larger than the pipe's buffer
        # blocks here only until the parent drains it.
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # the parent is gone or stopped listening; the exit status still tells


def _system_exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    # Like the interpreter: sys.exit("message") prints the message and exits 1.
    try:
        sys.stderr.write(f"{code}\n")
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _returned_text(entry: object, returned: object) -> str:
    try:
        who = getattr(entry, "__qualname__", None) or repr(entry)
        what = repr(returned)
    except BaseException:  # noqa: BLE001 - a broken __repr__ must not hide the violation
        who, what = "the entry", "a value"
    if len(what) > 200:
        what = what[:200] + "..."
    return (
        f"contract violation: entry {who} returned {what} instead of diverging; an entry must exit "
        f"(exit_child, sys.exit), exec (exec_child), raise, or loop until killed. "
        f"The child exited with RETURNED_EXIT_CODE {RETURNED_EXIT_CODE}."
    )


def _redirect_output(capture: tuple[int, int, int, int]) -> None:
    global _status_fd
    # A parent whose standard descriptors were closed may have got pipes numbered 1 or 2:
    # dup2 below must overwrite neither the status pipe nor the stderr pipe's write end.
    if _status_fd in (1, 2):
        _status_fd = fcntl.fcntl(_status_fd, fcntl.F_DUPFD_CLOEXEC, 3)
    out_r, out_w, err_r, err_w = capture
    if err_w == 1:
        err_w = fcntl.fcntl(err_w, fcntl.F_DUPFD_CLOEXEC, 3)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    for fd in {*capture, err_w} - {1, 2}:
        os.close(fd)
    # The parent may have replaced sys.stdout/sys.stderr (a test runner's capture): the
    # child's Python output must go to descriptors 1 and 2 like everything else.
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
