"""Sender-side file system work: walk the paths to send, read chunks, hash.

``walk_groups`` yields the items one directory at a time (``DirGroup``: a
directory's direct entries, sorted by name), depth first, so that a sender can
check a whole directory against the receiver's (CHECK_DIR) before it sends its
items and never holds the whole tree; ``walk`` flattens it (a directory before
its contents).  Symlinks: with ``links=True`` they are sent as links; otherwise a
link inside a sent tree is followed only when it points to a regular file that
is itself inside that tree; every other link and special file is skipped with a
warning, never followed out of the tree.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import sys
from typing import Iterable, Iterator, NamedTuple

from .core.checksum import FileHasher, HeldDigest, chunk_checksum
from .core.manifest import MAX_COMPONENT, MAX_PATH, FileEntry, Kind, built, check_link_target
from .core.ranges import RangeSet
from .core.tree import MAX_CHECK_ENTRIES, ListingHasher, entry_record, is_ftx_own
from .errors import ErrorCode, FtxError, StorageError, UnsafePath

log = logging.getLogger("ftx.send")

try:  # optional C helper (setup.py); FTX_PURE_PYTHON=1 runs py_listed instead
    from ._smallread import listing as _c_listing
except ImportError:  # pragma: no cover - no compiler where ftx was installed
    _c_listing = None
if os.environ.get("FTX_PURE_PYTHON"):
    _c_listing = None


CHECKS_AHEAD = 256  # directories whose CHECK_DIR may await its DIR_STATE (within the offer window):
# a re-send's time is the receiver's listing of every directory, so all of a tree's checks go out at
# once and it lists them back to back (with 32, refilled at 16, it sat idle for a round trip and our
# refill after each batch: ~10 ms of a 100 ms re-send of 200 directories)
CHECK_BATCH = 8  # ... made and written this many at a time (the receiver lists a batch per wake-up)
AHEAD_ITEMS = 50_000  # ... as long as their groups hold no more items than this in all


class SourceChanged(FtxError):
    code = ErrorCode.SOURCE_CHANGED


class SourceItem(NamedTuple):
    """One item to send, as the walk listed it.  (A NamedTuple: one is made per file listed,
    at a third of a frozen dataclass's cost.)"""

    local: bytes  # path to open
    wire: bytes  # path on the wire
    kind: Kind
    target: bytes = b""  # symlink target when sent as a link
    mode: int = 0  # from the listing (lstat; the followed file's stat for an in-tree link)
    size: int = 0
    mtime_ns: int = 0

    @property
    def name(self) -> bytes:
        return self.wire.rsplit(b"/", 1)[-1]

    def record(self) -> bytes:
        """This item's bytes in its directory's listing digest (CHECK_DIR)."""
        return entry_record(self.kind, self.name, self.mode, self.size, self.mtime_ns, self.target)


def nonfile_entry(item: SourceItem, chunk_size: int) -> FileEntry:
    """The OFFER entry of a directory or symlink item: its mode and mtime as they are now."""
    st = os.lstat(item.local)
    return FileEntry(item.wire, item.kind, 0, st.st_mode & 0o7777, st.st_mtime_ns, chunk_size, item.target)


class DirGroup:
    """The direct entries of one source directory (``dir``), sorted by name, as they will be sent.

    The first group of a walk holds the named arguments (``dir`` None).  A
    directory's own item is in its parent's group; its entries come in a later
    group of their own, after the parent's (depth first).  ``state`` is the
    receiver's DIR_STATE once the sender knows it (None: not checked).

    A directory listed ahead (``prewalk.Prewalk``: ``ahead`` is its entry) has its digest, entry
    count and file totals but no items until ``items`` is read: then it is listed again
    (``_entries``, as any other), and ``changed`` says whether that listing differs from
    the one its digest was made of.  Its subdirectories are those listed ahead (they are
    what the walk went into): one made since is left out, as after any listing.
    """

    __slots__ = ("dir", "_items", "parent", "state", "_digest", "ident", "_ahead", "changed")

    def __init__(self, dir: SourceItem | None, items: list[SourceItem] | None, digest: bytes | None = None,
                 parent: "DirGroup | None" = None, ident: tuple[int, int] | None = None,
                 ahead: tuple | None = None) -> None:
        self.dir = dir
        self._items = items
        self.parent = parent
        self.ident = ident  # (st_dev, st_ino) of the directory listed: what its SmallReader must open
        self.state: int | None = None
        self._digest = digest
        self._ahead = ahead  # (root_real, links, follow, the Prewalk entry) while not listed again
        self.changed = False

    @property
    def items(self) -> list[SourceItem]:
        if self._items is None:
            self._items = self._list_again()
        return self._items

    @items.setter
    def items(self, items: list[SourceItem]) -> None:
        self._items = items
        self._ahead = None

    @property
    def count(self) -> int:
        """How many items (without listing a directory listed ahead again)."""
        return len(self._items) if self._items is not None else self._ahead[3][3]

    @property
    def unlisted(self) -> bool:
        """Listed ahead and not again: ``totals`` comes without a listing."""
        return self._items is None

    def totals(self) -> tuple[int, int]:
        """(regular files, their bytes) among the items of a directory listed ahead."""
        entry = self._ahead[3]
        return entry[5], entry[6]

    @property
    def checkable(self) -> bool:
        return self.dir is not None and self.count <= MAX_CHECK_ENTRIES

    def digest(self) -> bytes:
        """The listing digest of ``items`` (already in name order, as ``_entries`` lists them)."""
        if self._digest is not None:
            return self._digest
        h = ListingHasher()
        for i in self.items:
            h.update(i.record())
        return h.digest()

    def _list_again(self) -> list[SourceItem]:
        root_real, links, follow, entry = self._ahead
        d = self.dir
        items, digest, ident = _entries(d.local, d.wire, root_real, links, follow)
        self.ident = ident
        self.changed = digest != self._digest
        if self.changed:  # only the subdirectories the walk went into (those listed ahead)
            subdirs = {name for name, _mode in entry[7]}
            skip = len(d.wire) + 1
            items = [i for i in items if i.kind != Kind.DIR or i.wire[skip:] in subdirs]
        return items


def walk(paths: Iterable[str | bytes], links: bool = False) -> Iterator[SourceItem]:
    """Every item, each directory before its entries (group by group, see ``walk_groups``)."""
    for group in walk_groups(paths, links):
        yield from group.items


def file_sizes(paths: Iterable[str | bytes], links: bool = False, max_pending: int = 1 << 16) -> Iterator[int]:
    """The size of each file a send of ``paths`` would offer, roughly (for the progress bar's
    total): a walk that only counts -- nothing logged, no listing kept or hashed.  Raises
    OverflowError rather than hold more than ``max_pending`` directories still to list."""
    stack = [os.fsencode(p) for p in paths]
    while stack:
        if len(stack) > max_pending:
            raise OverflowError(f"more than {max_pending} directories to count")
        path = stack.pop()
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            yield st.st_size
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            with os.scandir(path) as it:
                for de in it:
                    if is_ftx_own(de.name):
                        continue
                    try:
                        if de.is_dir(follow_symlinks=False):
                            stack.append(de.path)
                        elif de.is_file(follow_symlinks=False):
                            yield de.stat(follow_symlinks=False).st_size
                        elif de.is_symlink() and not links and de.is_file():  # an in-tree link is sent as its file
                            yield de.stat().st_size
                    except OSError:
                        continue
        except OSError:
            continue


def arguments(paths: Iterable[str | bytes]) -> list[SourceItem]:
    """The named paths as items; a bad argument raises before anything is sent."""
    seen: set[bytes] = set()
    top = []
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
            top.append(SourceItem(path, name, Kind.DIR, mode=st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            top.append(SourceItem(path, name, Kind.FILE, mode=st.st_mode, size=st.st_size, mtime_ns=st.st_mtime_ns))
        else:
            raise StorageError(f"{os.fsdecode(path)} is not a regular file or directory")
    return top


def walk_groups(paths: Iterable[str | bytes], links: bool = False,
                top: list[SourceItem] | None = None, prewalk=None) -> Iterator[DirGroup]:
    """The arguments' group, then one group per directory, depth first, entries sorted by name.

    A generator: it holds one listing per level of the directory being walked
    (the pending subdirectories), never the whole tree.  Iterative, so that a
    tree as deep as a 4096-byte wire path allows (2048 levels) cannot exceed
    Python's recursion limit.  ``prewalk`` (``prewalk.Prewalk``): directories listed
    ahead are not listed here (see ``DirGroup``)."""
    first = DirGroup(None, top if top is not None else arguments(paths))
    tops = [i for i in first.items if i.kind == Kind.DIR]  # the consumer may drop a group's items when done
    yield first
    DIR, new_item = Kind.DIR, tuple.__new__
    for item in tops:
        root_real = os.path.realpath(item.local)
        known = prewalk.known(item.local) if prewalk is not None else None
        skip = len(item.wire) + 1
        stack = [(first, iter((item,)))]
        while stack:
            parent, dirs = stack[-1]
            d = next(dirs, None)
            if d is None:
                stack.pop()
                continue
            entry = known.pop(b"" if d is item else d.wire[skip:], None) if known else None
            if entry is not None:
                h = ListingHasher(entry[4])
                group = DirGroup(d, None, h.digest(), parent=parent, ident=(entry[1], entry[2]),
                                 ahead=(root_real, links, d is item, entry))
                local, wire = d.local + b"/", d.wire + b"/"
                subdirs = [new_item(SourceItem, (local + name, wire + name, DIR, b"", mode, 0, 0))
                           for name, mode in entry[7]]
            else:
                items, digest, ident = _entries(d.local, d.wire, root_real, links, d is item)
                group = DirGroup(d, items, digest, parent=parent, ident=ident)
                subdirs = [i for i in items if i.kind == DIR]  # before the consumer is done with it
            if subdirs:
                stack.append((group, iter(subdirs)))
            yield group


_FILE_HEAD = struct.Struct(">BHH")  # tree.entry_record of a regular file: kind, name length, mode bits
_FILE_TAIL = struct.Struct(">Qq")  # ... name, then size, mtime_ns
_FS = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _entries(local: bytes, wire: bytes, root_real: bytes, links: bool,
             follow: bool = True) -> tuple[list[SourceItem], bytes, tuple[int, int] | None]:
    """The items of one directory's direct entries, sorted by name (the rest skipped with a
    warning), their listing digest, and the directory's (st_dev, st_ino).  Listed and lstat'ed
    under the directory's descriptor; ``follow``: ``local`` may be a symlink (a named
    argument), else a directory listed as one is not followed if it became a link since --
    nor if one of its parents did (O_NOFOLLOW guards the last component only): a directory
    that is not under ``root_real`` once open is skipped."""
    try:
        fd = os.open(local, _DIR_FLAGS if follow else _DIR_FLAGS | os.O_NOFOLLOW)
    except OSError as exc:
        log.warning("skipping %s: %s", os.fsdecode(local), exc.strerror)
        return [], ListingHasher().digest(), None
    try:
        if not follow and not _within(fd, root_real):
            log.warning("skipping %s: no longer inside %s (a parent directory was replaced)",
                        os.fsdecode(local), os.fsdecode(root_real))
            return [], ListingHasher().digest(), None
        st = os.fstat(fd)
        return (*_listed(fd, local, wire, root_real, links), (st.st_dev, st.st_ino))
    finally:
        os.close(fd)


def _within(fd: int, root_real: bytes) -> bool:
    """Whether the open directory ``fd`` is ``root_real`` or under it (True where /proc cannot tell)."""
    try:
        where = os.readlink(b"/proc/self/fd/%d" % fd)
    except OSError:
        return True
    return root_real == b"/" or where == root_real or where.startswith(root_real + b"/")


def _listed(fd: int, local: bytes, wire: bytes, root_real: bytes, links: bool) -> tuple[list[SourceItem], bytes]:
    if _c_listing is not None:  # the common directory (files and directories only) in one C call
        h = ListingHasher()
        items = _c_listing(fd, local + b"/", wire + b"/", MAX_PATH, MAX_COMPONENT, SourceItem, Kind.FILE, Kind.DIR,
                           h.update)
        if items is not None:
            return items, h.digest()
    return py_listed(fd, local, wire, root_real, links)


def py_listed(fd: int, local: bytes, wire: bytes, root_real: bytes, links: bool) -> tuple[list[SourceItem], bytes]:
    """``_listed`` in Python: every directory where the C helper is not built (or FTX_PURE_PYTHON=1),
    and those it leaves to this judgement (a symlink, a special file, a name of ftx's own, a long name)."""
    enc, errors = _FS
    try:
        with os.scandir(fd) as it:  # (names come as str from a descriptor: the bytes back, os.fsencode)
            listing = [(de.name.encode(enc, errors), de) for de in it]
    except OSError as exc:
        log.warning("skipping %s: %s", os.fsdecode(local), exc.strerror)
        listing = []
    listing.sort()  # by name bytes (names are unique: no DirEntry is ever compared)
    out = []
    h = ListingHasher()
    update = h.update
    local += b"/"
    wire += b"/"
    FILE, head, tail, new_item = Kind.FILE, _FILE_HEAD.pack, _FILE_TAIL.pack, tuple.__new__
    for name, de in listing:
        # a listed name is never empty, '.', '..' or holds '/' or NUL; the wire path rules
        # (manifest.check_wire_path) leave only the lengths to check
        child_local = local + name
        child_wire = wire + name
        if len(child_wire) > MAX_PATH or len(name) > MAX_COMPONENT:
            log.warning("skipping %s: path longer than %d bytes", os.fsdecode(child_local), MAX_PATH)
            continue
        if name[0] == 0x2E and is_ftx_own(name):  # (a call only for a name starting with '.')
            log.warning("skipping %s: a receiver's own state or temporary file", os.fsdecode(child_local))
            continue
        try:
            if de.is_file(follow_symlinks=False):  # the common case first: items built at once
                st = de.stat(follow_symlinks=False)
                mode, size, mtime = st.st_mode, st.st_size, st.st_mtime_ns
                out.append(new_item(SourceItem, (child_local, child_wire, FILE, b"", mode, size, mtime)))
                update(head(FILE, len(name), mode & 0o777) + name + tail(size, mtime))  # entry_record
                continue
            if de.is_symlink():
                item = _link_item(child_local, child_wire, root_real, links)
                if item is None:
                    continue
            elif de.is_dir(follow_symlinks=False):
                st = de.stat(follow_symlinks=False)
                item = SourceItem(child_local, child_wire, Kind.DIR, mode=st.st_mode)
            else:
                log.warning("skipping %s: not a regular file, directory or symlink", os.fsdecode(child_local))
                continue
        except OSError as exc:
            log.warning("skipping %s: %s", os.fsdecode(child_local), exc.strerror or exc)
            continue
        out.append(item)
        update(entry_record(item.kind, name, item.mode, item.size, item.mtime_ns, item.target))
    return out, h.digest()


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
    if inside:
        try:
            st = os.stat(real)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            return SourceItem(real, wire, Kind.FILE, mode=st.st_mode, size=st.st_size, mtime_ns=st.st_mtime_ns)
    log.warning("skipping symlink %s (use --links to send links as links)", os.fsdecode(local))
    return None


_SMALL_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class SmallReader:
    """Reads the small files of one listed directory whole, by name under its descriptor.

    One ``openat`` (``O_NOFOLLOW``: a name swapped for a symlink since the listing is
    refused, never followed; ``O_NONBLOCK``: a FIFO swapped in cannot block us), one
    read of ``size + 1`` bytes, one close: no ``fstat`` while the file is as listed.
    Its entry is then the listing's (an lstat before the read, as the fstat before it
    was: a file changed later gets an older mtime, so the next quick check sends it
    again).  A read of another length than listed takes an ``fstat``: a regular file
    is read again and sent as it is now (or offered as a large file if it grew past
    the limit); anything else is a ``SourceChanged`` (a directory, a FIFO, a device),
    as is a name that became a symlink (ELOOP).  An empty file swapped for an empty
    FIFO sends an empty file: what was there to read.
    """

    __slots__ = ("fd", "prefix", "flags")

    def open_name(self, name: bytes) -> int:
        """``name`` opened under the directory (O_NOFOLLOW, O_NONBLOCK); O_NOATIME is dropped
        for good once refused (only the file's owner may use it).  (os.open retries EINTR
        itself, PEP 475.)"""
        try:
            return os.open(name, self.flags, dir_fd=self.fd)
        except PermissionError:
            if not self.flags & getattr(os, "O_NOATIME", 0):
                raise
            self.flags &= ~os.O_NOATIME
            return os.open(name, self.flags, dir_fd=self.fd)

    def __init__(self, dir_item: SourceItem, follow: bool = False, ident: tuple[int, int] | None = None) -> None:
        """``follow``: ``dir_item`` is a named argument (followed, as the walk did); a listed
        directory is not followed if it became a link since.  ``ident``: the (st_dev, st_ino)
        the walk listed; another directory at that path now (a parent swapped for a symlink)
        is not read."""
        self.prefix = dir_item.local + b"/"
        self.flags = _SMALL_FLAGS | getattr(os, "O_NOATIME", 0)
        try:
            self.fd = os.open(dir_item.local, _DIR_FLAGS if follow else _DIR_FLAGS | os.O_NOFOLLOW)
        except OSError:
            self.fd = -1  # its files fail one by one, each with the reason
            return
        if ident is not None:
            st = os.fstat(self.fd)
            if (st.st_dev, st.st_ino) != ident:
                os.close(self.fd)
                self.fd = -1

    def read(self, item: SourceItem, name: bytes, limit: int) -> tuple[bytes | None, os.stat_result | None]:
        """(the file's bytes, None) as listed; (bytes, its stat) when it changed size since the
        listing; (None, its stat) when it grew beyond ``limit``.  StorageError or SourceChanged
        (naming its local path) if it cannot be had."""
        try:
            if self.fd < 0:
                raise NotADirectoryError(errno.ENOTDIR, "its directory cannot be opened")
            fd = self.open_name(name)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SourceChanged(f"{os.fsdecode(item.local)} is no longer a regular file") from None
            raise StorageError(f"cannot open {os.fsdecode(item.local)}: {exc.strerror}") from None
        try:
            data = os.read(fd, item.size + 1)
            if len(data) == item.size:
                return data, None
            st = os.fstat(fd)  # changed since the listing: what is it now?
            if not stat.S_ISREG(st.st_mode):
                raise SourceChanged(f"{os.fsdecode(item.local)} is no longer a regular file")
            if st.st_size > limit:
                return None, st
            data = os.pread(fd, st.st_size + 1, 0)
            if len(data) != st.st_size:
                raise SourceChanged(f"{os.fsdecode(item.local)} changed size while being read")
            return data, st
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.EAGAIN):
                raise SourceChanged(f"{os.fsdecode(item.local)} is no longer a regular file") from None
            raise StorageError(f"cannot read {os.fsdecode(item.local)}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SourceFile:
    """An open source file: its entry (from fstat), chunk reads and change detection."""

    def __init__(self, item: SourceItem, chunk_size: int, reader: SmallReader | None = None,
                 name: bytes = b"") -> None:
        """``reader``: the item is its directory's listed entry ``name``, opened under that
        directory's descriptor and not followed if it became a symlink (as small files are)."""
        self.item = item
        if reader is not None and reader.fd < 0:
            # its listed directory could not be opened (no longer a directory, e.g. a symlink put
            # there since): never by path instead, which would follow that link out of the tree
            raise StorageError(f"cannot open {os.fsdecode(item.local)}: its directory cannot be opened")
        at = reader is not None
        path, flags, kw = (name, _SMALL_FLAGS, {"dir_fd": reader.fd}) if at else (item.local, os.O_RDONLY, {})
        try:
            try:
                self.fd = os.open(path, flags | getattr(os, "O_NOATIME", 0), **kw)
            except PermissionError:  # O_NOATIME: only for the file's owner
                self.fd = os.open(path, flags, **kw)
        except OSError as exc:
            if at and exc.errno == errno.ELOOP:
                raise SourceChanged(f"{os.fsdecode(item.local)} is no longer a regular file") from None
            raise StorageError(f"cannot open {os.fsdecode(item.local)}: {exc.strerror}") from exc
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            raise StorageError(f"{os.fsdecode(item.local)} is no longer a regular file")
        self.stat = st
        self.entry = built(FileEntry, path=item.wire, kind=Kind.FILE, size=st.st_size, mode=stat.S_IMODE(st.st_mode),
                           mtime_ns=st.st_mtime_ns, chunk_size=chunk_size, target=b"")  # FileEntry(...), faster

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


