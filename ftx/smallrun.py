"""A run of small files read and framed as one object: the sender's unit for many small files.

``frames(reader, items, start, stop, skip, limit, fid, chunk_size, out, max_out)`` reads the
listed items ``items[start:stop]`` of one directory whole, by name under its ``SmallReader``'s
descriptor, and appends one SMALL_FILE frame per file to ``out`` (ids ``fid``, ``fid + 1``, ...),
for as many items in a row as are *plain*: a regular file listed in this directory (not an
in-tree link followed elsewhere), of at most ``limit`` bytes, that opens (``O_NOFOLLOW``,
``O_NONBLOCK``) and reads at its listed size.  It stops before the first item that is not,
leaving it to the caller's per-file path (which reads it again, and reports why it failed or
sends it as it is now), or once ``out`` holds ``max_out`` bytes.  Returns a ``Run``.

The C helper ``ftx._smallread`` does it in one call per run (the bytes read straight into their
place in ``out``); ``py_frames`` is the reference, used where the helper is not built or
``FTX_PURE_PYTHON=1``.  Tests check both give the same bytes.
"""

from __future__ import annotations

import os
import sys
from operator import itemgetter
from typing import NamedTuple

import xxhash

from .core.frames import HEADER, FrameType
from .core.manifest import ENTRY, Kind
from .send_report import FileSendReport

try:  # optional C helper (setup.py)
    from ._smallread import frames as _c_frames
except ImportError:  # pragma: no cover - no compiler where ftx was installed
    _c_frames = None
if os.environ.get("FTX_PURE_PYTHON"):
    _c_frames = None

_SMALL_FILE = int(FrameType.SMALL_FILE)
_FILE = Kind.FILE
_digest128 = xxhash.xxh3_128_digest
_hash64 = xxhash.xxh3_64_intdigest


class Run(NamedTuple):
    next: int  # the first item not framed
    count: int  # files framed, items[start:start + count]
    total: int  # their bytes
    digests: list  # their XXH3-128 digests, in order


def frames(reader, items: list, start: int, stop: int, skip: int, limit: int, fid: int, chunk_size: int,
           out: bytearray, max_out: int) -> Run:
    if reader.fd < 0:
        return Run(start, 0, 0, [])
    if _c_frames is None:
        return py_frames(reader, items, start, stop, skip, limit, fid, chunk_size, out, max_out)
    nxt, reader.flags, count, total, digests = _c_frames(
        reader.fd, reader.flags, items, start, stop, skip, reader.prefix, _FILE, limit, fid, chunk_size,
        out, max_out, _digest128, _hash64)
    return Run(nxt, count, total, digests)


def py_frames(reader, items: list, start: int, stop: int, skip: int, limit: int, fid: int, chunk_size: int,
              out: bytearray, max_out: int) -> Run:
    """The reference of ``_smallread.frames`` (same bytes, same stopping rule)."""
    prefix, digests, total = reader.prefix, [], 0
    stop = min(stop, len(items))
    i = start
    while i < stop and len(out) < max_out:
        local, wire, kind, _target, mode, size, mtime_ns = items[i]
        name = wire[skip:]
        if (kind is not _FILE or not name or len(wire) > 0xFFFF or local != prefix + name
                or not 0 <= size <= limit or fid + len(digests) > 0xFFFFFFFF):  # (ids are 32 bits)
            break
        data = _read(reader, name, size)
        if data is None:
            break
        digest = _digest128(data)
        payload = b"".join((ENTRY.pack(fid + len(digests), _FILE, 0, 0, mode & 0o7777, mtime_ns, size, chunk_size,
                                       len(wire), 0), wire, digest, data))
        n = len(payload)
        out += HEADER.pack(_SMALL_FILE, 0, 0, n, _hash64(payload, (_SMALL_FILE << 56) | n))
        out += payload
        digests.append(digest)
        total += size
        i += 1
    return Run(i, len(digests), total, digests)


def _read(reader, name: bytes, size: int) -> bytes | None:
    """The file's bytes if it opens and reads at ``size`` bytes; else None (the caller's
    per-file path finds out why)."""
    try:
        fd = reader.open_name(name)
    except OSError:
        return None
    try:
        data = os.read(fd, size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None


_FS = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
_size = itemgetter(5)  # SourceItem.size


class SmallRun:
    """The sender's record of a run of small files sent (ids ``first`` on, one per item of
    ``items``): what their reports are made of, if one is ever read.  One object per run: each
    of its files' ids maps to it until that file's result."""

    __slots__ = ("first", "items", "digests")

    def __init__(self, first: int, items: list, digests: list) -> None:
        self.first = first
        self.items = items
        self.digests = digests

    @property
    def end(self) -> int:
        """The id after its last file."""
        return self.first + len(self.items)

    def size(self, start: int, stop: int) -> int:
        """The bytes of its files ``start`` .. ``stop - 1`` (ids)."""
        return sum(map(_size, self.items[start - self.first:stop - self.first]))

    def report(self, fid: int) -> FileSendReport:
        """File ``fid``'s report, as sent (its status still pending)."""
        i = fid - self.first
        item = self.items[i]
        return FileSendReport(item.wire.decode(*_FS), "file", item.size, digest=self.digests[i].hex(),
                              bytes_sent=item.size)
