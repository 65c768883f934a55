"""Everything that runs in the child. Every path out of here ends in ``os._exit``.

After ``fork`` the child is a copy of the parent up to the call of ``fork()``: if the child
ever returned from it, or let an exception escape, it would run the caller's ``finally``
blocks, the test runner, and at the end the parent's atexit handlers a second time.
:func:`run` is the only function the child executes after ``fork`` and it cannot unwind.

The child starts with every signal blocked (the parent blocked them around ``fork``), in the
parent's process group. In this order it: puts its status pipe on ``STACK_FD`` (where
faulthandler writes), leads a group of its own and drops terminal signals that reached it
while it was still in the parent's group, sets its parent-death signal (then checks the
parent did not die before that), ignores SIGTTIN/SIGTTOU if there is a controlling terminal
(reading it from a background group then fails with EIO instead of stopping the child
forever), resets a Python SIGTERM handler to the default, restores the dispositions and mask
its caller had, and only then runs the entry. The status pipe protocol is in ``_status``.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Final, NoReturn, TypeVar

from . import _contain, _limits, _linux, _status
from ._errors import DivergeforkError
from ._options import Options
from ._report import RETURNED_EXIT_CODE

__all__ = ["exec_child", "exit_child", "run", "send"]

T = TypeVar("T")

#: The most of a traceback sent to the parent (its end is kept).
MAX_ERROR_BYTES: Final = 256 * 1024

# Signals a terminal sends to its foreground group (Ctrl-C, Ctrl-\, Ctrl-Z): one that reached
# the child between fork and setpgid was meant for the parent's group, not for it.
_TERMINAL_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP})
_RESTORE_AT_EXEC: Final = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))
_PACKAGE_DIR: Final = os.path.dirname(os.path.abspath(__file__))

# This process's sender to its parent, set in the child right after fork; None in any other
# process. Every fork resets it (see the at-fork hook below), so a process forked from a
# child with plain os.fork is not "in" a divergefork child and cannot write to the pipe.
_sender: _status.Sender | None = None
# Whether this process is a contained child: its _exit then kills what it leaves running.
_contained = False


def _forget_sender() -> None:
    global _sender, _contained
    _sender = None
    _contained = False


os.register_at_fork(after_in_child=_forget_sender)


def run(
    value: T,
    entry: Callable[[T], NoReturn],
    options: Options,
    status: tuple[int, int],
    parent_pid: int,
    sigmask: ctypes.Array[ctypes.c_ubyte],
    dispositions: dict[int, object] | None,
    capture: tuple[int, int, int, int] | None,
) -> NoReturn:
    """The child's whole life after ``fork``: set up, call the entry, end in ``os._exit``.

    ``status`` is (the status pipe's write end, the stack descriptor or -1); ``sigmask`` and ``dispositions``
    are what the caller had when it asked for this child (for a child a Scope queued, when
    it called ``scope.fork``: never the mask the runtime blocked for its bookkeeping).
    """
    global _sender, _contained
    code = 1
    try:
        try:
            status_w, stack_fd = status
            fd = status_w
            if stack_fd >= 0:
                os.dup2(status_w, stack_fd, inheritable=False)
                fd = stack_fd
            pipe = os.fstat(fd)
            _sender = _status.Sender(fd, (pipe.st_dev, pipe.st_ino), options.codec)
            if options.new_group:
                # First, before anything that could fork: grandchildren must be in the group.
                try:
                    os.setpgid(0, 0)
                except OSError:
                    pass
                for sig in signal.sigpending() & _TERMINAL_SIGNALS:
                    signal.sigtimedwait([sig], 0)  # taken off the pending set, never delivered
            if options.on_parent_exit == "kill":
                _linux.set_parent_death_signal(signal.SIGKILL)
                # The parent may have died before prctl ran; then we were reparented and the
                # death signal will never come.
                if os.getppid() != parent_pid:
                    code = 128 + signal.SIGKILL
                    _exit(code)
            if options.new_group and _linux.has_controlling_terminal():
                signal.signal(signal.SIGTTIN, signal.SIG_IGN)
                signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            if options.contain:
                # Before the entry can fork: every orphan of its tree is reparented to us.
                _contain.become_subreaper()
                _contained = True
            if options.limits is not None:
                _limits.apply(options.limits)
            if callable(signal.getsignal(signal.SIGTERM)):
                # A Python SIGTERM handler inherited from the parent would turn a deadline
                # into an exception in the entry; the kernel's default is what we promise.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if dispositions is not None:
                _linux.restore_dispositions(dispositions)
            _linux.restore_signals(sigmask)
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
            _report_exception(exc)
    finally:
        # Whatever happened above, including an exception while reporting one, the child
        # ends here and never returns into the caller of fork().
        _exit(code)


def exit_child(code: int = 0, *, result: object = None) -> NoReturn:
    """End this child with exit status ``code``, handing ``result`` to the parent.

    ``sys.stdout`` and ``sys.stderr`` are flushed first. A ``result`` the child's codec
    cannot carry (``json`` by default, or ``pickle``) raises ``TypeError`` here, in the child,
    so the report says ``raised`` and why. Results of any size arrive whole.
    """
    sender = _sender
    if sender is None:
        raise DivergeforkError(
            "exit_child() was called outside a child started by divergefork.fork(); "
            "in an ordinary process use sys.exit()"
        )
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"exit_child(code=...) must be an int, not {type(code).__name__}")
    if not 0 <= code <= 255:
        raise ValueError(_out_of_range(f"exit_child(code={code})"))
    if result is not None:
        payload = _status.encode(sender.codec, result, "exit_child(result=...)")
        _flush()
        _send(b"V", payload)
    _exit(code)


def send(value: object) -> None:
    """Send ``value`` to the parent now; it is kept, in order, in ``Report.messages``.

    Kept even if the child later crashes or is killed. Uses the child's codec (``json`` by
    default, or ``pickle``): a value it cannot carry raises ``TypeError`` here, in the child.
    Any size arrives whole.
    """
    sender = _sender
    if sender is None:
        raise DivergeforkError(
            "send() was called outside a child started by divergefork.fork(); "
            "only a forked child has a parent to send to"
        )
    _send(b"M", _status.encode(sender.codec, value, "send(value)"))


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
    inside = _sender is not None
    if inside:
        # Announced only once nothing but the exec itself can fail.
        _send(b"X", json.dumps(args).encode())
    # Python ignores SIGPIPE and SIGXFSZ for itself; an ignored signal survives exec, and
    # programs expect the defaults (subprocess restores them too).
    for sig in _RESTORE_AT_EXEC:
        signal.signal(sig, signal.SIG_DFL)
    if inside and _contained:
        _supervise_exec()  # returns only in the process that is to exec
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


def _supervise_exec() -> None:
    """Contained: the program runs in a process of its own, and this one stays to supervise.

    The program cannot run our code when it ends, so this child (a subreaper) waits for it,
    forwarding signals, then kills what it left and ends as the program ended. Returns only
    in the new process, which goes on to exec.
    """
    global _contained
    sender = _sender
    own_group = os.getpgrp() == os.getpid()
    pid, mask = _contain.start_program(own_group)
    if pid == 0:
        _restore_sender(sender)  # the at-fork hook forgot it: an exec failure is still reported
        _contained = False
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return
    status, killed = _contain.supervise(pid, own_group)
    if killed:
        _send(b"C", str(killed).encode())
    _contained = False  # done already
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)  # end as the program ended, for the parent's report
        _exit(128 + sig)
    _exit(os.waitstatus_to_exitcode(status))


def _restore_sender(sender: _status.Sender | None) -> None:
    global _sender
    _sender = sender


def _exit(code: int) -> NoReturn:
    """The one place the child ends. Flushes Python's stdio, never runs atexit handlers.

    A contained child first kills what it leaves running (one ``waitid`` when nothing).
    """
    try:
        _flush()
        if _contained:
            killed = _contain.kill_leftovers()
            if killed:
                _send(b"C", str(killed).encode())
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
    sender = _sender
    if sender is None:
        return
    if not sender.send(kind, payload):
        # The entry closed our descriptor (closerange, daemonising) and maybe reused the
        # number for a file of its own: never write a status record into the user's data.
        # Straight to descriptor 2: sys.stderr may wrap a descriptor the entry closed too.
        try:
            os.write(
                2,
                f"divergefork: the child closed its status pipe (fd {sender.fd}); the parent will "
                "not receive its result, messages, exception or exec record\n".encode(),
            )
        except OSError:
            pass


def _report_exception(exc: BaseException) -> None:
    text = "".join(_user_traceback(exc).format())
    try:
        sys.stderr.write(text)
    except BaseException:  # noqa: BLE001
        pass
    data = text.encode("utf-8", "replace")
    if len(data) > MAX_ERROR_BYTES:
        # Keep the end: the exception's type and message are on the last lines.
        data = b"[traceback truncated]\n" + data[-MAX_ERROR_BYTES:]
    _send(b"E", data)


def _user_traceback(exc: BaseException) -> traceback.TracebackException:
    """The exception's traceback without divergefork's own frames (the user's code only)."""
    tb = traceback.TracebackException.from_exception(exc)
    pending = [tb]
    while pending:
        current = pending.pop()
        frames = [frame for frame in current.stack if os.path.dirname(os.path.abspath(frame.filename)) != _PACKAGE_DIR]
        current.stack = traceback.StackSummary.from_list(frames)
        pending += [link for link in (current.__cause__, current.__context__) if link is not None]
    return tb


def _system_exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        if 0 <= code <= 255:
            return code
        # Treated as exit_child treats it: the kernel keeps 8 bits and 256 would read as 0.
        _report_exception(ValueError(_out_of_range(f"sys.exit({code})")))
        return 1
    # Like the interpreter: sys.exit("message") prints the message and exits 1.
    try:
        sys.stderr.write(f"{code}\n")
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _out_of_range(call: str) -> str:
    return (
        f"{call}: an exit status must be between 0 and 255 (the kernel keeps only the low 8 "
        "bits, so 256 would read as success)"
    )


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
    # A parent whose standard descriptors were closed may have got pipes numbered 1 or 2:
    # dup2 below must not overwrite the stderr pipe's write end before it is used.
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
