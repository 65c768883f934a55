"""Containment: nothing a child starts outlives the child.

The child makes itself a *subreaper* (``PR_SET_CHILD_SUBREAPER``) before its entry runs, so
while it lives every orphaned descendant (``setsid()``, a double fork, a daemon) is
reparented to it instead of to init: its whole tree stays under it. Three places then kill
that tree, each by freezing it first:

* the child itself, as it ends through our code (:func:`kill_leftovers`, from
  ``_child._exit``);
* the parent, when it ends the child (deadline, cancel, ``terminate()``, ``kill()``):
  :func:`kill_descendants` stops the child, then freezes and kills everything under it;
* for an exec'd child, a small supervisor: the child forks, the grandchild execs the
  program, and the child stays behind forwarding signals until the program ends, then
  kills what it left (:func:`start_program`, :func:`supervise`), as tini does.

**Finding the tree.** ``/proc/<pid>/task/*/children`` needs ``CONFIG_PROC_CHILDREN``, which
many kernels (this project's CI among them) lack, so the tree is read from every
``/proc/<pid>/stat`` (parent pid, start time, state): about 2 ms for a hundred processes,
paid only when there is something to kill.

**Freezing.** A fork loop can create processes faster than they can be listed and killed
one by one. So each process found is sent SIGSTOP, and the walk is repeated until a pass
finds nothing new *and* every process found is really stopped (state ``T`` in its stat: a
SIGSTOP is delivered asynchronously, and a process is only harmless once it has stopped,
its last fork complete). Only then is everything sent SIGKILL, which also works on stopped
processes.

**Never a stranger.** A pid read from ``/proc`` may be reused by an unrelated process before
it is signalled. Every process is signalled through a pidfd opened after it was listed and
checked again afterwards (same parent, same start time): a pid reused in between would have
another start time. Without pidfds (old kernels, ``DIVERGEFORK_NO_PIDFD``) the same check
is made right before ``kill(pid)``; the window left is microseconds, and a pid would have to
be reused inside it. The walk starts from a process we own and is still alive (the child, or
this process), so nothing outside its tree is ever touched.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from typing import Final

from . import _linux

__all__ = [
    "become_subreaper",
    "has_children",
    "is_subreaper",
    "kill_descendants",
    "kill_leftovers",
    "start_program",
    "supervise",
]

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37
_prctl: Final = _linux.prctl_function()
_SIGSTOP: Final = int(signal.SIGSTOP)
_SIGKILL: Final = int(signal.SIGKILL)
_SIGCHLD: Final = int(signal.SIGCHLD)
_WAITID_FLAGS: Final = os.WEXITED | os.WNOHANG | os.WNOWAIT
_waitid: Final = os.waitid
_P_ALL: Final = os.P_ALL
#: How long a freeze waits for its processes to stop (one stuck in the kernel, in state
#: ``D`` on a hung NFS mount, never does); then everything found is killed anyway.
FREEZE_TIMEOUT: Final = 2.0
#: How long the child waits, after killing its leftovers, to reap them.
REAP_TIMEOUT: Final = 2.0
# States of a process that can no longer fork: stopped, traced, zombie, dead.
_INERT: Final = frozenset("TtZXx")
# Signals a supervisor never forwards: SIGCHLD is its own business; the synchronous ones
# (a fault in the supervisor itself) must keep killing it; SIGKILL and SIGSTOP cannot be
# caught at all.
_NOT_FORWARDED: Final = frozenset(
    int(s)
    for s in (
        signal.SIGCHLD,
        signal.SIGKILL,
        signal.SIGSTOP,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGTRAP,
        signal.SIGSYS,
    )
)


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (Linux 3.4+; else a no-op).

    Called in the child right after fork, so it costs one system call and no allocation.
    """
    if _prctl is not None:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def is_subreaper() -> bool:
    """Whether this process is a child subreaper (for tests)."""
    if _prctl is None:
        return False
    import ctypes

    flag = ctypes.c_int(0)
    _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    return bool(flag.value)


def has_children() -> bool:
    """Whether this process has any child, running or a zombie, without reaping one.

    One system call: ``waitid`` fails with ECHILD when there is none at all.
    """
    try:
        _waitid(_P_ALL, 0, _WAITID_FLAGS)
    except ChildProcessError:
        return False
    return True


def kill_leftovers() -> int:
    """In a contained child that is ending: kill every descendant still alive, reap them.

    Returns how many were alive and killed (zombies are reaped, not counted). When the child
    left nothing, this is the one ``waitid`` of :func:`has_children`.
    """
    if not has_children():
        return 0
    me = os.getpid()
    killed = _freeze_and_kill(me)
    _reap_all(time.monotonic() + REAP_TIMEOUT)
    return killed


def kill_descendants(pid: int, pidfd: int | None) -> int:
    """In the parent: stop child ``pid``, then freeze and kill every descendant it has.

    ``pid`` must be our own child, not yet reaped (so its pid cannot have been reused), and
    ``pidfd`` its pidfd or None. The child itself is left *stopped*: the caller signals it
    next (SIGTERM then SIGCONT, or SIGKILL). Nothing is reaped: the dead descendants are the
    child's to reap, or init's once the child is gone. Returns how many were killed.
    """
    if not _linux.signal_process(pid, pidfd, _SIGSTOP):
        return 0
    return _freeze_and_kill(pid, root_stopped=True)


# -- the exec'd child's supervisor -------------------------------------------------------------


def start_program(own_group: bool) -> tuple[int, set[int | signal.Signals]]:
    """Fork the process that will exec the program; the caller (the child) supervises it.

    Returns ``(0, mask)`` in the new process, which must restore ``mask`` (the signal mask
    it had before) and exec; ``(pid, mask)`` in the supervisor, which must call
    :func:`supervise`. Every signal is blocked before the fork so that none sent to the
    supervisor is lost before it waits for them. The program's process gets a parent-death
    SIGKILL: if the supervisor is killed (SIGKILL from outside, our parent's death), the
    program dies with it instead of running on unsupervised.
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _all_signals())
    # An entry that set SIGCHLD to SIG_IGN before exec would make the kernel discard the
    # program's exit status.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    supervisor = os.getpid()
    pid = os.fork()  # the child's only fork of its own: see the module docstring
    if pid == 0:
        if _prctl is not None:
            _prctl(1, _SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != supervisor:
            os.kill(os.getpid(), _SIGKILL)  # the supervisor died before prctl ran
        if own_group:
            # Signals the parent sends to the child's group reach only the supervisor, which
            # forwards each one once to this group: the program never gets two.
            os.setpgid(0, 0)
        return 0, mask
    if own_group:
        try:
            os.setpgid(pid, pid)  # both sides, as shells do: whichever runs first wins
        except OSError:
            pass
    return pid, mask


def supervise(program: int, own_group: bool) -> tuple[int, int]:
    """Forward signals to ``program`` until it ends; then kill and reap what it left.

    Returns ``(wait status of the program, descendants killed)``. Orphans of the program
    are reparented to us (a subreaper) and reaped as they end, like tini does.
    """
    target = -program if own_group else program
    waited = _all_signals()
    status = _reap_children(program)
    while status is None:
        info = signal.sigwaitinfo(waited)
        signo = info.si_signo
        if signo == _SIGCHLD:
            status = _reap_children(program)
        elif signo not in _NOT_FORWARDED:
            try:
                os.kill(target, signo)
            except ProcessLookupError:
                pass  # it has ended; the SIGCHLD is on its way
    killed = _freeze_and_kill(os.getpid()) if has_children() else 0
    _reap_all(time.monotonic() + REAP_TIMEOUT)
    return status, killed


def _all_signals() -> set[signal.Signals]:
    return set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def _reap_children(program: int) -> int | None:
    """Reap every ended child; the program's wait status if it was among them."""
    status = None
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == program:
            status = st


def _reap_all(until: float) -> None:
    """Reap every child of this process, waiting at most until ``until`` for the killed ones."""
    pause = 0.0002
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue
        if time.monotonic() >= until:
            return  # one that survived SIGKILL (another user's process, or stuck in the kernel)
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


# -- freezing and killing a tree -----------------------------------------------------------------

_Stat = tuple[int, int, str, int]  # parent pid, start time (clock ticks since boot), state, group


def _read_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses: split after the last.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0].decode(), int(fields[2])


def _scan(table: dict[int, _Stat], reread: set[int] | None) -> None:
    """Bring ``table`` up to date with ``/proc``.

    With ``reread`` None every process is read again. Otherwise only processes not in the
    table yet, and those in ``reread``: a process outside the tree can never enter it
    (reparenting only moves a process up, to a subreaper or init), so between full passes
    only new processes need reading. That keeps a pass short enough to catch a process that
    forks and exits at once, again and again (its pid changes every few hundred
    microseconds); a pid reused by a new descendant meanwhile is caught by the full pass
    that must confirm every freeze.
    """
    listed = {int(name) for name in os.listdir("/proc") if name.isdigit()}
    for pid in list(table):
        if pid not in listed:
            del table[pid]
    for pid in listed:
        if reread is None or pid not in table or pid in reread:
            stat = _read_stat(pid)
            if stat is None:
                table.pop(pid, None)
            else:
                table[pid] = stat


def _under(root: int, table: dict[int, _Stat]) -> list[int]:
    """Every pid in ``table`` whose chain of parents reaches ``root`` (parents first)."""
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat[0], []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


class _Handle:
    """One descendant we froze: how to signal it without ever hitting a reused pid."""

    __slots__ = ("pid", "start", "pidfd")

    def __init__(self, pid: int, start: int, pidfd: int | None) -> None:
        self.pid = pid
        self.start = start
        self.pidfd = pidfd

    def signal(self, sig: int) -> bool:
        """Send ``sig``; False if the process is gone (or is not ours to signal)."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                stat = _read_stat(self.pid)
                if stat is None or stat[1] != self.start:
                    return False
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            # EPERM: a set-user-ID program (or another user's process) we may not signal.
            return False
        return True

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _grab(pid: int, stat: _Stat, parents: Iterable[int]) -> _Handle | None:
    """A handle on ``pid`` if it is still the process listed with ``stat`` under ``parents``."""
    pidfd: int | None = None
    if _linux.have_pidfd():
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError:
            pidfd = None  # out of descriptors (a fork bomb): by pid, with the start-time check
    # Checked after the pidfd is open: a process with this pid and this start time that is
    # alive now is the one the pidfd refers to.
    now = _read_stat(pid)
    if now is None or now[1] != stat[1] or now[0] not in parents:
        if pidfd is not None:
            os.close(pidfd)
        return None
    return _Handle(pid, stat[1], pidfd)


def _freeze_and_kill(root: int, *, root_stopped: bool = False) -> int:
    """Freeze every descendant of ``root`` (repeating until none is new or running), then
    SIGKILL them all. Returns how many were alive when killed.

    ``root_stopped``: the caller sent ``root`` SIGSTOP (the parent's side); it too must have
    stopped before the tree can be known complete, and if it leads its own process group the
    group is stopped as well: a group signal reaches every member at once, even one being
    forked at that moment, so a loop of forks inside the group cannot outrun it.
    """
    frozen: dict[int, _Handle] = {}
    table: dict[int, _Stat] = {}
    until = time.monotonic() + FREEZE_TIMEOUT
    pause = 0.0
    full = True
    try:
        while True:
            _scan(table, None if full else set(frozen) | {root})
            if root not in table:
                break  # the root itself is gone: nothing is under it any more
            busy = root_stopped and table[root][2] not in _INERT
            if root_stopped and table[root][3] == root:
                _linux.signal_group(root, _SIGSTOP)
            parents = {root, *frozen}
            for pid in _under(root, table):
                stat = table[pid]
                handle = frozen.get(pid)
                if handle is not None and handle.start == stat[1]:
                    busy = busy or stat[2] not in _INERT
                    continue
                if stat[2] in "ZXx":
                    continue  # a zombie cannot fork; its parent reaps it
                handle = _grab(pid, stat, parents)
                if handle is None:
                    # It changed under us (reparented, or a new process on a reused pid):
                    # look again on the next pass.
                    busy = busy or _read_stat(pid) is not None
                elif handle.signal(_SIGSTOP):
                    frozen[pid] = handle
                    parents.add(pid)
                    busy = True
                else:
                    handle.close()
            if not busy and full:
                break  # a full pass found nothing new and nothing still running
            if time.monotonic() >= until:
                break
            # The last word is a full pass: it sees pids reused by new descendants.
            full = not busy
            if busy:
                # SIGSTOP takes effect when the process next runs; give it the CPU.
                time.sleep(pause)
                pause = min(pause * 2 or 0.0001, 0.005)
        killed = 0
        for handle in frozen.values():
            if handle.signal(_SIGKILL):
                killed += 1
        return killed
    finally:
        for handle in frozen.values():
            handle.close()
