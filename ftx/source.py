"""Sender-side file system work: walk the paths to send, read chunks, hash.

``walk`` yields ``SourceItem``s in a stable order (a directory before its
contents).  Symlinks: with ``links=True`` they are sent as links; otherwise a
link inside a sent tree is followed only when it points to a regular file that
is itself inside that tree; every other link and special file is skipped with a
warning, never followed out of the tree.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Iterable, Iterator

from .core.checksum import FileHasher, HeldDigest, chunk_checksum
from .core.manifest import FileEntry, Kind, check_link_target, check_wire_path
from .core.ranges import RangeSet
from .errors import ErrorCode, FtxError, StorageError, UnsafePath

log = logging.getLogger("ftx.send")


@dataclass(frozen=True)
class SourceItem:
    local: bytes  # path to open
    wire: bytes  # path on the wire
    kind: Kind
    target: bytes = b""  # symlink target when sent as a link


def walk(paths: Iterable[str | bytes], links: bool = False) -> Iterator[SourceItem]:
    seen: set[bytes] = set()
    for raw in paths:
        path = os.fsencode(raw)
        try:
            st = os.stat(path)  # a named argument is followed (the user asked for it)
        except OSError as exc:
            raise StorageError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from exc
        name = os.path.basename(os.path.normpath(path))
        if name in (b"", b".", b"..", b"/"):
            name = os.path.basename(os.path.realpath(path))
        if not name:
            raise UnsafePath(f"cannot send {os.fsdecode(path)} as a whole: name a directory inside it")
        if name in seen:
            raise FtxError(f"two arguments would both arrive as {os.fsdecode(name)!r}")
        seen.add(name)
        if stat.S_ISDIR(st.st_mode):
            yield SourceItem(path, name, Kind.DIR)
            yield from _walk_dir(path, name, os.path.realpath(path), links)
        elif stat.S_ISREG(st.st_mode):
            yield SourceItem(path, name, Kind.FILE)
        else:
            raise StorageError(f"{os.fsdecode(path)} is not a regular file or directory")


def _walk_dir(local: bytes, wire: bytes, root_real: bytes, links: bool) -> Iterator[SourceItem]:
    """Depth first, each directory before its entries, entries sorted by name.

    Iterative (a stack of listings), so that a tree as deep as a 4096-byte wire
    path allows (2048 levels) cannot exceed Python's recursion limit."""
    stack = [(local, wire, iter(_listing(local)))]
    while stack:
        local, wire, entries = stack[-1]
        de = next(entries, None)
        if de is None:
            stack.pop()
            continue
        child_local = os.path.join(local, de.name)
        child_wire = wire + b"/" + de.name
        try:
            check_wire_path(child_wire)
        except UnsafePath as exc:
            log.warning("skipping %s: %s", os.fsdecode(child_local), exc)
            continue
        if de.name.startswith(b".") and de.name.endswith((b".ftx-part", b".ftx-journal")):
            log.warning("skipping %s: an unfinished ftx transfer's partial data", os.fsdecode(child_local))
            continue
        if de.is_symlink():
            item = _link_item(child_local, child_wire, root_real, links)
            if item is not None:
                yield item
        elif de.is_dir(follow_symlinks=False):
            yield SourceItem(child_local, child_wire, Kind.DIR)
            stack.append((child_local, child_wire, iter(_listing(child_local))))
        elif de.is_file(follow_symlinks=False):
            yield SourceItem(child_local, child_wire, Kind.FILE)
        else:
            log.warning("skipping %s: not a regular file, directory or symlink", os.fsdecode(child_local))


def _listing(local: bytes) -> list:
    try:
        with os.scandir(local) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        log.warning("skipping %s: %s", os.fsdecode(local), exc.strerror)
        return []


def _link_item(local: bytes, wire: bytes, root_real: bytes, links: bool) -> SourceItem | None:
    target = os.readlink(local)
    if links:
        try:
            check_link_target(wire, target)
        except UnsafePath:
            log.warning("skipping symlink %s -> %s: points outside the tree", os.fsdecode(local), os.fsdecode(target))
            return None
        return SourceItem(local, wire, Kind.SYMLINK, target)
    real = os.path.realpath(local)
    inside = real == root_real or real.startswith(root_real + b"/")
    if inside and os.path.isfile(real):
        return SourceItem(real, wire, Kind.FILE)
    log.warning("skipping symlink %s (use --links to send links as links)", os.fsdecode(local))
    return None


class SourceFile:
    """An open source file: its entry (from fstat), chunk reads and change detection."""

    def __init__(self, item: SourceItem, chunk_size: int) -> None:
        self.item = item
        try:
            self.fd = os.open(item.local, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            self.fd = os.open(item.local, os.O_RDONLY)
        except OSError as exc:
            raise StorageError(f"cannot open {os.fsdecode(item.local)}: {exc.strerror}") from exc
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            raise StorageError(f"{os.fsdecode(item.local)} is no longer a regular file")
        self.stat = st
        self.entry = FileEntry(item.wire, Kind.FILE, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, chunk_size)

    def read_chunk(self, index: int, view: memoryview) -> memoryview:
        """Read chunk ``index`` into ``view``; a short read means the file shrank."""
        length = self.entry.chunk_length(index)
        offset = index * self.entry.chunk_size
        got = 0
        while got < length:
            n = os.preadv(self.fd, [view[got:length]], offset + got)
            if n == 0:
                raise SourceChanged(f"{os.fsdecode(self.item.local)} shrank while being sent")
            got += n
        return view[:length]

    def read_all(self) -> bytes:
        data = os.pread(self.fd, self.entry.size + 1, 0)
        if len(data) != self.entry.size:
            raise SourceChanged(f"{os.fsdecode(self.item.local)} changed size while being read")
        return data

    def unchanged(self) -> bool:
        st = os.fstat(self.fd)
        return st.st_size == self.stat.st_size and st.st_mtime_ns == self.stat.st_mtime_ns

    def digest(self, view: memoryview, hasher=None) -> bytes:
        """The whole file's XXH3-128, through ``hasher`` if given (which may hash more: ContentHasher)."""
        h = hasher if hasher is not None else FileHasher()
        for index in range(self.entry.chunks):
            h.update(self.read_chunk(index, view))
        return h.digest()

    def check_held(self, held: RangeSet, expected: int, view: memoryview, hasher) -> tuple[bool, int]:
        """Compare the receiver's held digest with ours.

        Also feeds ``hasher`` the held prefix, so those chunks need not be read
        again; returns (matches, number of prefix chunks hashed).
        """
        acc = HeldDigest()
        prefix = 0
        for index in held.values():
            data = self.read_chunk(index, view)
            acc.add(chunk_checksum(data))
            if index == prefix:
                hasher.update(data)
                prefix += 1
        return acc.value() == expected, prefix

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SourceChanged(FtxError):
    code = ErrorCode.SOURCE_CHANGED
