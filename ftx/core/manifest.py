"""What is being transferred: file entries, wire paths and their safety rules.

A wire path is a relative, '/'-separated byte string (protocol.md, "Paths"):
no empty, '.' or '..' component, no NUL, no leading '/', at most 4096 bytes
with components of at most 255 bytes.  Both peers enforce the rules; the
receiver additionally refuses to write through symlinks (see ftx.storage).
"""

from __future__ import annotations

import enum
import struct

from ..errors import RemoteProtocolError, UnsafePath
from .record import record

MAX_PATH = 4096
MAX_COMPONENT = 255
DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_FILE_SIZE = 2**63 - 1  # sizes and offsets must fit a signed 64-bit off_t


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


_KINDS = {int(k): k for k in Kind}  # decode_entry's lookup (cheaper than a call of Kind)


def check_wire_path(path: bytes) -> bytes:
    """Return ``path`` if it is a safe relative wire path, else raise UnsafePath."""
    # the common case without a split: no component can be too long in a path this short, and
    # an empty, '.' or '..' component needs a leading '/' or '.', a trailing '/', '//' or '/.'.
    # (find, and 0 in: CPython's ``bytes in bytes`` first tries the operand as an int, and
    # raises and clears a TypeError for every such test, ~2000 instructions each)
    if 0 < len(path) <= MAX_COMPONENT and path[0] != 47 and path[0] != 46 and path[-1] != 47 \
            and path.find(b"//") < 0 and path.find(b"/.") < 0 and 0 not in path:
        return path
    if not path:
        raise UnsafePath("empty path")
    if len(path) > MAX_PATH:
        raise UnsafePath("path longer than 4096 bytes")
    if b"\x00" in path:
        raise UnsafePath("path contains a NUL byte")
    if path.startswith(b"/"):
        raise UnsafePath(f"absolute path {path!r}")
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise UnsafePath(f"path {path!r} has an empty, '.' or '..' component")
        if len(part) > MAX_COMPONENT:
            raise UnsafePath("path component longer than 255 bytes")
    return path


def check_link_target(path: bytes, target: bytes) -> bytes:
    """A symlink target must stay inside the tree it is received into.

    Relative only; '..' only as a leading run (it climbs the link's own parent
    directories, which are real directories) and never above the tree root.
    A '..' after a name could climb out of whatever that name resolves to --
    possibly another symlink -- so ``a/l1 -> ..`` plus ``a/l2 -> l1/..`` is refused.
    """
    if not target or b"\x00" in target or target.startswith(b"/") or len(target) > MAX_PATH:
        raise UnsafePath(f"symlink target {target!r} is absolute or invalid")
    depth = path.count(b"/")  # directories above the link inside the tree
    descended = False
    for part in target.split(b"/"):
        if part == b"..":
            if descended:
                raise UnsafePath(f"symlink target {target!r} has '..' after a name")
            depth -= 1
            if depth < 0:
                raise UnsafePath(f"symlink target {target!r} escapes the destination")
        elif part not in (b"", b"."):
            descended = True
    return target


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def chunk_length(size: int, chunk_size: int, index: int) -> int:
    return min(chunk_size, size - index * chunk_size)


@record
class FileEntry:
    """One item of a transfer, as the sender offers it."""

    path: bytes  # wire path
    kind: Kind = Kind.FILE
    size: int = 0
    mode: int = 0o644  # permission bits (07777)
    mtime_ns: int = 0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    target: bytes = b""  # symlink target

    def __init__(self, path: bytes, kind: Kind = Kind.FILE, size: int = 0, mode: int = 0o644, mtime_ns: int = 0,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, target: bytes = b"") -> None:
        # one per file on both peers: each field stored straight into __dict__ (record's docstring)
        d = self.__dict__
        d["path"] = path
        d["kind"] = kind
        d["size"] = size
        d["mode"] = mode
        d["mtime_ns"] = mtime_ns
        d["chunk_size"] = chunk_size
        d["target"] = target

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk_size) if self.kind == Kind.FILE else 0

    def chunk_length(self, index: int) -> int:
        return chunk_length(self.size, self.chunk_size, index)


_new = object.__new__


def built(cls, **fields):
    """``cls(**fields)`` for a frozen record (``record.record``) on a per-file hot path: this
    fills the instance's ``__dict__`` at once, without a call of ``__init__``.  Only for
    classes whose ``__init__`` does no more than store its arguments, and with no default
    left out: every field must be given."""
    obj = _new(cls)
    obj.__dict__.update(fields)
    return obj


# file_id, kind, flags, reserved, mode, mtime_ns, size, chunk_size, path_len, target_len
ENTRY = struct.Struct(">IBBHIqQIHH")


def encode_entry(file_id: int, e: FileEntry) -> bytes:
    return ENTRY.pack(
        file_id, e.kind, 0, 0, e.mode & 0o7777, e.mtime_ns, e.size, e.chunk_size, len(e.path), len(e.target)
    ) + e.path + e.target


def decode_entry(payload, offset: int = 0) -> tuple[int, FileEntry, int]:
    """Parse an entry; return (file_id, entry, offset after it).

    Every integer is bounded here (size fits a signed off_t, mode within
    0o7777, chunk size in range), so nothing past the decoder meets a value it
    cannot handle.  Path safety is *not* checked here: a bad path is a per-file
    refusal, not a broken connection, so the receiver checks it when handling
    the offer.
    """
    if len(payload) - offset < ENTRY.size:
        raise RemoteProtocolError("file entry truncated")
    file_id, kind, _flags, _res, mode, mtime_ns, size, chunk_size, plen, tlen = ENTRY.unpack_from(payload, offset)
    offset += ENTRY.size
    if len(payload) - offset < plen + tlen:
        raise RemoteProtocolError("file entry path truncated")
    path = bytes(payload[offset : offset + plen])
    target = bytes(payload[offset + plen : offset + plen + tlen])
    offset += plen + tlen
    kind_ = _KINDS.get(kind)
    if kind_ is None:
        raise RemoteProtocolError(f"unknown entry kind {kind}")
    kind = kind_
    if kind == Kind.FILE and not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise RemoteProtocolError(f"chunk size {chunk_size} out of range")
    if kind != Kind.FILE and size:
        raise RemoteProtocolError("only regular files have a size")
    if size > MAX_FILE_SIZE:
        raise RemoteProtocolError(f"file size {size} out of range (at most 2**63 - 1)")
    if mode & ~0o7777:
        raise RemoteProtocolError(f"mode 0o{mode:o} has bits outside 0o7777")
    if target and kind != Kind.SYMLINK:
        raise RemoteProtocolError("only symlinks have a target")
    return file_id, built(FileEntry, path=path, kind=kind, size=size, mode=mode, mtime_ns=mtime_ns,
                          chunk_size=chunk_size, target=target), offset
