"""The status pipe: what a child tells its parent, in records, and how the parent reads them.

Every child has a pipe of its own (both ends non-blocking and close-on-exec, so an exec'd
program never sees it). A child that just exits writes nothing: the fast path costs no system
call. Otherwise it writes records, ``MAGIC + kind (1 byte) + length (4 bytes) + payload``:

=====  =================================================================================
kind   payload
=====  =================================================================================
``V``  the ``result`` given to ``exit_child``, in the child's codec
``M``  one ``df.send`` message, in the child's codec
``E``  traceback of the exception the entry raised (text)
``R``  what the entry returned: a contract violation (text)
``X``  JSON argv of an exec attempt; if the exec succeeds nothing follows
``F``  the exec failure (text)
``C``  how many descendants containment killed when the child ended (decimal text)
``L``  the path of a spill file holding every later record
=====  =================================================================================

Two rules keep a child from ever blocking on its parent, whatever the parent is doing:

* only records of at most ``PIPE_BUF`` bytes go through the pipe, and only while they fit
  in what the pipe can hold without being read; everything else, and everything after it
  (so that order is kept), goes to a spill file whose path is sent as an ``L`` record
  (room for it is reserved);
* the pipe is non-blocking: a full pipe spills too.

So results and messages of any size arrive whole, and the parent may read the pipe only once
the child has ended. Records of at most ``PIPE_BUF`` are written atomically, which matters
because the write end is also the descriptor faulthandler writes tracebacks to (a crash, or
the deadline's stack signal): whatever bytes are not a record are that text.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import select
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Final

from ._options import Codec

__all__ = ["Parsed", "Sender", "decode", "encode", "parse"]

MAGIC: Final = b"\x00\xdf"  # a NUL never appears in faulthandler's text
HEADER: Final = struct.Struct("!2scI")
PIPE_BUF: Final = getattr(select, "PIPE_BUF", 512)
_L_RESERVE: Final = 4096  # room kept in the pipe for the L record (a path)
_F_GETPIPE_SZ: Final = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def encode(codec: Codec, value: object, what: str) -> bytes:
    """``value`` in ``codec``; a value it cannot carry raises ``TypeError`` naming ``what``."""
    try:
        if codec == "pickle":
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return json.dumps(value, allow_nan=False).encode()
    except (TypeError, ValueError, AttributeError, pickle.PicklingError, RecursionError) as exc:
        kind = "picklable" if codec == "pickle" else "JSON-serialisable"
        raise TypeError(f"{what} must be {kind} (codec={codec!r}): {exc}") from exc


def decode(codec: Codec, payload: bytes) -> object:
    if codec == "pickle":
        return pickle.loads(payload)  # noqa: S301 - written by our own forked child
    return json.loads(payload)


class Sender:
    """The child's end: writes records to the status descriptor, spilling when needed."""

    __slots__ = ("fd", "identity", "codec", "_room", "_spill")

    def __init__(self, fd: int, identity: tuple[int, int], codec: Codec) -> None:
        self.fd = fd
        #: (st_dev, st_ino) of the pipe, taken right after fork: a descriptor the entry closed
        #: and reused for a pipe or file of its own is never written to.
        self.identity = identity
        self.codec: Codec = codec
        self._room = -1  # bytes the pipe can still take unread; learnt at the first record
        self._spill: int | None = None

    def usable(self) -> bool:
        """Whether ``fd`` is still our pipe (the entry may have closed or replaced it)."""
        try:
            info = os.fstat(self.fd)
        except OSError:
            return False
        return stat.S_ISFIFO(info.st_mode) and (info.st_dev, info.st_ino) == self.identity

    def send(self, kind: bytes, payload: bytes) -> bool:
        """Write one record; False if the pipe is gone (the entry closed it)."""
        if not self.usable():
            return False
        record = HEADER.pack(MAGIC, kind, len(payload)) + payload
        if self._spill is None:
            if self._room < 0:
                try:
                    self._room = fcntl.fcntl(self.fd, _F_GETPIPE_SZ) - _L_RESERVE
                except OSError:
                    self._room = PIPE_BUF - 512
            if len(record) <= PIPE_BUF and len(record) <= self._room:
                try:
                    os.write(self.fd, record)  # atomic: at most PIPE_BUF bytes
                except BlockingIOError:
                    pass
                except OSError:
                    return False
                else:
                    self._room -= len(record)
                    return True
            self._spill = self._open_spill()
        _write_all(self._spill, record)
        return True

    def _open_spill(self) -> int:
        spill, path = tempfile.mkstemp(prefix=f"divergefork-{os.getpid()}-", suffix=".records")
        data = os.fsencode(path)
        # The reserve guarantees room; the write end is non-blocking, so wait for it if the
        # parent's copy of the capacity was smaller (never more than the reserve).
        _write_all(self.fd, HEADER.pack(MAGIC, b"L", len(data)) + data, wait=True)
        return spill


def _write_all(fd: int, data: bytes, *, wait: bool = False) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            if not wait:
                raise
            select.select([], [fd], [])


@dataclass
class Parsed:
    """What a child wrote, as read back by the parent."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: Bytes that were not records: faulthandler's tracebacks.
    text: str = ""
    #: Set when the data ended inside a record.
    truncated: bool = False


def parse(data: bytes | bytearray) -> Parsed:
    """Split a status pipe's bytes into records and text; read (and remove) spill files."""
    parsed = Parsed()
    text = bytearray()
    pos, size = 0, len(data)
    while pos < size:
        if data[pos : pos + 2] != MAGIC:
            nxt = data.find(MAGIC, pos + 1)
            nxt = size if nxt < 0 else nxt
            text += data[pos:nxt]
            pos = nxt
            continue
        if pos + HEADER.size > size:
            parsed.truncated = True
            break
        _, kind, length = HEADER.unpack_from(data, pos)
        start = pos + HEADER.size
        if start + length > size:
            parsed.truncated = True
            break
        payload = bytes(data[start : start + length])
        pos = start + length
        if kind == b"L":
            spilled = _read_spill(payload)
            if spilled is None:
                parsed.truncated = True
            else:
                inner = parse(spilled)
                parsed.records += inner.records
                parsed.truncated |= inner.truncated
        else:
            parsed.records.append((kind, payload))
    parsed.text = text.decode("utf-8", "replace")
    return parsed


def _read_spill(path: bytes) -> bytes | None:
    name = os.fsdecode(path)
    base = os.path.basename(name)
    # Only what a child of ours could have made: our own regular file, named as _open_spill
    # names it (never follow a link to somewhere else).
    if not (base.startswith("divergefork-") and base.endswith(".records")):
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return None
        with open(fd, "rb", closefd=False) as spill:
            data = spill.read()
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass
    return data
