"""Listing digests of directories: the quick check of a whole directory (protocol.md 5.11).

Both peers compute the digest the same way over a directory's direct entries,
sorted by name bytes: the sender over what it will send, the receiver over what
its destination directory holds.  Equal digests mean every entry has the same
kind, name, permission bits and, for regular files, size and mtime_ns (for
symlinks, target): the sender reports the directory's items identical without
sending them.
"""

from __future__ import annotations

import struct

import xxhash

from .manifest import Kind

MAX_CHECK_ENTRIES = 65_536
"""A CHECK_DIR claims at most this many entries (a larger directory is not checked
whole: its files go by OFFER and the per-file quick check); a receiver reads at
most ``count + 1`` entries of the destination directory."""

_HEAD = struct.Struct(">BHH")  # kind, name length, permission bits
_FILE = struct.Struct(">Qq")  # size, mtime_ns
_LEN = struct.Struct(">H")  # symlink target length


def mode_bits(kind: Kind, mode: int) -> int:
    """The permission bits a receiver gives an item (protocol.md 11.3): what the digest covers."""
    if kind == Kind.FILE:
        return mode & 0o777
    if kind == Kind.DIR:
        return mode & 0o777 | 0o700
    return 0  # symlinks have no mode of their own


def entry_record(kind: Kind, name: bytes, mode: int, size: int = 0, mtime_ns: int = 0, target: bytes = b"") -> bytes:
    """One entry's bytes in the listing digest."""
    out = _HEAD.pack(kind, len(name), mode_bits(kind, mode)) + name
    if kind == Kind.FILE:
        out += _FILE.pack(size, mtime_ns)
    elif kind == Kind.SYMLINK:
        out += _LEN.pack(len(target)) + target
    return out


def is_ftx_own(name: bytes) -> bool:
    """A name a receiver keeps for itself in a destination directory: its state directory
    ``.ftx`` and its temporaries ``.ftx-<random>.tmp`` / ``.ftx-<random>.part`` (storage.py).
    A sender does not send them and a receiver leaves them out of its listings, so a tree
    that was itself a receive target still compares equal."""
    return name == b".ftx" or (name.startswith(b".ftx-") and name.endswith((b".tmp", b".part")))


ListingHasher = xxhash.xxh3_128  # fed the records in name order: ``digest()`` is the listing digest


def dir_digest(records) -> bytes:
    """XXH3-128 over ``(name, record bytes)`` pairs sorted by name: the CHECK_DIR digest."""
    h = xxhash.xxh3_128()
    for _name, rec in sorted(records, key=lambda r: r[0]):
        h.update(rec)
    return h.digest()
