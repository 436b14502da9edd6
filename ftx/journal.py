"""The journal of a partial file: its format, where its data is, and removing both.

Big-endian.  Header: ``"FTXJ" u16 version=2 u16 where (0: --dir/.ftx, 1: the
destination's directory) u32 chunk_size u64 size i64 mtime_ns u64 data_dev u64
data_ino 16s data_token u16 path_len``, the wire path, ``u64 xxh3_64`` of all
that.  Then 24-byte records ``u64 index, u64 chunk checksum, u64 xxh3_64(previous
16 bytes)``.  See protocol.md section 16.

The header is written before the data file is made, naming its token with
(data_dev, data_ino) = (0, 0) (``UNRECORDED``), and again once the data file
exists: whatever moment a receiver dies at, a data file it made is named by a
journal, so that expiry (expiry.py) finds it.
"""

from __future__ import annotations

import os
import stat
import struct

import xxhash

from .errors import FtxError
from .fileops import unlink_quietly
from .helddirs import pinned

JOURNAL_MAGIC = b"FTXJ"
JOURNAL_VERSION = 2
JOURNAL_FIXED = struct.Struct(">4sHHIQqQQ16sH")
RECORD = struct.Struct(">QQ")
RECORD_SIZE = RECORD.size + 8
IN_STATE, IN_DIR = 0, 1
UNRECORDED = (0, 0)  # (data_dev, data_ino) of a header written before its data file was made


def journal_name(wire_path: bytes) -> bytes:
    return b"j-" + xxhash.xxh3_128_hexdigest(wire_path).encode()


def data_name(where: int, token: bytes) -> bytes:
    return b"p-" + token.hex().encode() if where == IN_STATE else b".ftx-" + token.hex().encode() + b".part"


def journal_header_size(wire_path: bytes) -> int:
    return JOURNAL_FIXED.size + len(wire_path) + 8


def partial_paths(root, wire_path: bytes) -> tuple[str, str | None]:
    """(journal, data) paths of the partial of ``wire_path`` below ``root``, for tools and tests (data
    None while there is no journal header naming it).  ftx itself never uses these strings."""
    state = os.path.join(os.fsdecode(root), ".ftx")
    journal = os.path.join(state, os.fsdecode(journal_name(wire_path)))
    try:
        with open(journal, "rb") as f:
            info = JournalHeader.parse(f.read(1 << 13))
    except OSError:
        info = None
    if info is None:
        return journal, None
    where = state if info.where == IN_STATE else os.path.dirname(os.path.join(os.fsdecode(root), os.fsdecode(wire_path)))
    return journal, os.path.join(where, os.fsdecode(info.data_name))


class JournalHeader:
    """What a journal's header says: the source version, the wire path and where the data is."""

    __slots__ = ("where", "chunk_size", "size", "mtime_ns", "ident", "token", "path")

    def __init__(self, where, chunk_size, size, mtime_ns, ident, token, path) -> None:
        self.where, self.chunk_size, self.size, self.mtime_ns = where, chunk_size, size, mtime_ns
        self.ident, self.token, self.path = ident, token, path

    def pack(self) -> bytes:
        head = JOURNAL_FIXED.pack(JOURNAL_MAGIC, JOURNAL_VERSION, self.where, self.chunk_size, self.size,
                                  self.mtime_ns, self.ident[0], self.ident[1], self.token, len(self.path))
        head += self.path
        return head + xxhash.xxh3_64_digest(head)

    @classmethod
    def parse(cls, raw: bytes) -> "JournalHeader | None":
        if len(raw) < JOURNAL_FIXED.size:
            return None
        magic, version, where, csize, size, mtime, dev, ino, token, plen = JOURNAL_FIXED.unpack_from(raw)
        end = JOURNAL_FIXED.size + plen
        if magic != JOURNAL_MAGIC or version != JOURNAL_VERSION or where not in (IN_STATE, IN_DIR) \
                or len(raw) < end + 8 or xxhash.xxh3_64_digest(raw[:end]) != raw[end : end + 8]:
            return None
        return cls(where, csize, size, mtime, (dev, ino), token, raw[JOURNAL_FIXED.size : end])

    @property
    def data_name(self) -> bytes:
        return data_name(self.where, self.token)

    def made_by_us(self, st: os.stat_result) -> bool:
        """Whether ``st`` (of the file named ``data_name``) is the data file this journal's
        receiver made: the recorded inode, or -- while none is recorded (a receiver died
        between making it and recording it) -- a regular file of ours under the random
        name that was journaled before it was made."""
        if self.ident != UNRECORDED:
            return (st.st_dev, st.st_ino) == self.ident
        return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_size <= self.size


def drop_files(dest, state: int, jname: bytes, info: JournalHeader | None) -> int:
    """Remove a journal and the data it names; return the data's bytes on disk (a sparse partial's
    holes are not counted, as an area's quota does not).  Data in a user's directory is removed
    only if it is still the file ftx made (``JournalHeader.made_by_us``)."""
    size = 0
    if info is not None:
        if info.where == IN_STATE:
            try:
                st = os.stat(info.data_name, dir_fd=state, follow_symlinks=False)
                size = min(st.st_size, st.st_blocks * 512)
                os.unlink(info.data_name, dir_fd=state)
            except OSError:
                pass
        else:
            try:
                with pinned(dest.dirs, info.path.rpartition(b"/")[0]) as d:
                    if d is not None:
                        st = os.stat(info.data_name, dir_fd=d.fd, follow_symlinks=False)
                        if info.made_by_us(st):
                            os.unlink(info.data_name, dir_fd=d.fd)
                            size = min(st.st_size, st.st_blocks * 512)
            except (OSError, FtxError):
                pass
    unlink_quietly(jname, state)
    return size


def record(index: int, checksum: int) -> bytes:
    rec = RECORD.pack(index, checksum)
    return rec + xxhash.xxh3_64_digest(rec)


__all__ = ["IN_DIR", "IN_STATE", "JOURNAL_MAGIC", "UNRECORDED", "JournalHeader", "RECORD", "RECORD_SIZE", "data_name",
           "drop_files", "journal_header_size", "journal_name", "partial_paths", "record"]
