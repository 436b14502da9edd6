"""The receive root (``--dir``): where received files land, and nothing anywhere else.

Every wire path is resolved below ``--dir`` through directory descriptors held
open from ``--dir`` down (helddirs.py): each component opened with
``O_DIRECTORY | O_NOFOLLOW`` relative to its parent, files created, linked,
renamed and unlinked relative to the descriptor of their own directory, modes
and times set on descriptors.  A local user who swaps a directory for a symlink
while ftx writes makes that file fail; nothing lands outside --dir, and no file
that ftx did not create is opened for writing, truncated or removed.

A small file is written to an ``O_TMPFILE`` (or an exclusively created random
name) in its directory, its mode and mtime set, and linked under its name
(EEXIST: the file that is there stays); with --overwrite renamed over
(smallwrite.py: one file, or a run of them with one C call per directory).  Its
durability is batched: ``sync()`` flushes every file system written since the
last call (``syncfs``), and the session calls it before the RESULTs of a batch
leave, so a file reported OK is on disk.  Files received in chunks (partial.py)
keep their journal and data in ``--dir/.ftx/``, a directory ftx makes itself
(mode 0700) and refuses to use if it is anything else.

Bounds (``Limits``): nothing is created for an offer until its first chunk
arrives, and no space is reserved ahead of the data; an offer whose missing
bytes do not fit in the free space less ``min_free`` is refused; free space is
read with ``fstatvfs`` at most once a second or every eighth of the room left
(1 to 64 MiB of writes); at most ``max_open_files`` partials hold descriptors at
once, and at most ``DIR_CACHE`` (32) directories.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time

from .claims import Busy, claim, in_use
from .core.manifest import FileEntry, check_link_target, check_wire_path, chunk_count
from .descriptors import DescriptorBudget
from .errors import ErrorCode, FtxError, StorageError, UnsafePath
from . import fileops
from .fileops import (FILE_FLAGS, hash_fd, storage_error, syncfs,
                      unlink_quietly)
from .helddirs import DIR_FLAGS, HeldDir, HeldDirs, open_dir_at, pinned
from .journal import JournalHeader, drop_files, journal_name
from .limits import Limits
from .partial import KEEP_MIN, PENDING_LIMIT, PENDING_TOTAL, PartialFile
from .templog import SYMLINK, TempLog
from .smallwrite import SPACE_AGE, STATE_DIR, SmallWrites  # small files: write_small, write_small_run


class MadeDir:
    """A directory ``make_dir`` handled: which inode, and whether ftx created it (only those get modes)."""

    __slots__ = ("dest", "rel", "ident", "created")

    def __init__(self, dest, rel: bytes, ident: tuple[int, int], created: bool) -> None:
        self.dest, self.rel, self.ident, self.created = dest, rel, ident, created

    def __fspath__(self) -> bytes:
        return os.path.join(self.dest.root, self.rel)


class Destination(SmallWrites):
    """The receive root.  Every wire path is resolved below it, never through a symlink."""

    def __init__(self, root: str | bytes, overwrite: bool = False, limits: Limits | None = None,
                 root_fd: int | None = None) -> None:
        """``root_fd``: a directory descriptor of ``root`` opened by the caller (a sender's area,
        ftx/areas.py); the destination owns it from now on."""
        self.root = os.path.realpath(os.fsencode(root)) if root_fd is None else os.fsencode(root)
        self.overwrite = overwrite
        self.limits = limits or Limits()
        self.quota = None  # an area's quota and max-file-size (ftx/areas.py Quota), checked with --min-free
        self.descriptors = DescriptorBudget(self.limits.max_open_files)
        self.pending = ByteBudget(min(PENDING_TOTAL, self.limits.digest_buffer_bytes))
        if root_fd is None:
            os.makedirs(self.root, exist_ok=True)
            root_fd = os.open(self.root, DIR_FLAGS & ~os.O_NOFOLLOW)
        self.root_fd = root_fd
        self.dirs = HeldDirs(self.root_fd)
        self._lock = threading.RLock()
        self._state_fd = -1
        self._state_users = 0  # partials alive: .ftx is removed (if empty) when none is
        self.state_dev = self.dirs.root.dev  # where .ftx is (or will be made)
        self._space: dict[int, list] = {}  # dev -> [free, when read, bytes taken since, re-read after]
        self._dirty: dict[int, int] = {}  # dev -> a descriptor on it, written since the last sync
        self._dev_fds: dict[int, int] = {}
        self._sync_lock = threading.Lock()
        self._no_tmpfile: set[int] = set()
        # write_small calls the C helper itself (fileops.link_new's checks, made once here)
        self._c_link_new = fileops._c_link_new if fileops._TMPFILE and fileops._PROC_FD else None
        self.temps = TempLog(self)  # names of temporaries in users' directories, recorded before they are made
        try:
            self._open_state(create=False)
        except BaseException:
            self.close()
            raise

    # -- ftx's own state directory ----------------------------------------------------
    def _open_state(self, create: bool) -> int:
        with self._lock:
            if self._state_fd >= 0:
                return self._state_fd
            shown = os.path.join(self.root, STATE_DIR)
            why = f"{os.fsdecode(shown)} exists and is not a directory ftx can trust (ftx keeps partial files there)"
            try:
                fd = open_dir_at(self.root_fd, STATE_DIR, shown)
            except FileNotFoundError:
                if not create:
                    return -1
                try:
                    os.mkdir(STATE_DIR, 0o700, dir_fd=self.root_fd)
                except FileExistsError:
                    pass
                fd = open_dir_at(self.root_fd, STATE_DIR, shown)
            except FtxError:
                raise OSError(errno.EPERM, f"{why}; move it away") from None
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                os.close(fd)
                raise OSError(errno.EPERM, f"{why} (owner {st.st_uid}, mode {st.st_mode & 0o7777:o}; "
                                           f"it must be ours and 0700); move it away")
            self._state_fd, self.state_dev = fd, st.st_dev
            return fd

    def state_fd(self, create: bool = False) -> int:
        """The held descriptor of ``--dir/.ftx`` (made if ``create``), or -1 if there is none."""
        if self._state_fd >= 0:
            return self._state_fd
        try:
            return self._open_state(create)
        except OSError as exc:
            raise StorageError(exc.strerror or str(exc)) from None

    def state_enter(self) -> None:
        """A partial may put files into .ftx from now on (until ``state_leave``)."""
        with self._lock:
            self._state_users += 1

    def state_leave(self) -> None:
        """A partial is done; the last one removes .ftx if it is empty (nothing of ftx's is left behind)."""
        with self._lock:
            self._state_users -= 1
            self.tidy_state()

    def tidy_state(self) -> None:
        with self._lock:
            if self._state_users or self._state_fd < 0:
                return
            try:
                st = os.stat(STATE_DIR, dir_fd=self.root_fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == _ident(self._state_fd):
                    os.rmdir(STATE_DIR, dir_fd=self.root_fd)
            except OSError:
                return  # not empty (a partial kept for a resume), or gone
            os.close(self._state_fd)  # no partial is alive: nobody else uses the number
            self._state_fd = -1

    def state_lost(self, fd: int) -> None:
        """``fd`` is a .ftx that was removed: open (or make) it again next time."""
        with self._lock:
            if self._state_fd == fd:  # not closed: another thread may be using the number
                self._dev_fds[-1 - len(self._dev_fds)] = fd  # closed with the destination
                self._state_fd = -1

    def state_key(self, name: bytes) -> bytes:
        return self.root + b"/" + STATE_DIR + b"/" + name

    def close(self) -> None:
        """Close every descriptor this destination holds (it must not be used afterwards)."""
        temps = getattr(self, "temps", None)
        if temps is not None and self.root_fd >= 0:
            temps.close()
        self.dirs.close()
        for fd in [self._state_fd, self.root_fd, *self._dev_fds.values()]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._state_fd = self.root_fd = -1
        self._dev_fds.clear()

    def __del__(self) -> None:
        if getattr(self, "root_fd", -1) >= 0:
            self.close()

    # -- paths ----------------------------------------------------------------------
    def check(self, wire_path: bytes) -> bytes:
        """``wire_path`` if the receiver may write it (BAD_PATH otherwise)."""
        check_wire_path(wire_path)
        if wire_path == STATE_DIR or wire_path.startswith(STATE_DIR + b"/"):
            raise UnsafePath(f"{os.fsdecode(wire_path)}: .ftx is the receiver's own state directory")
        return wire_path

    def rel_of(self, path: bytes) -> bytes:
        """The wire path of an absolute path ``resolve`` returned."""
        if not path.startswith(self.root + b"/"):
            raise UnsafePath(f"{os.fsdecode(path)} is not below {os.fsdecode(self.root)}")
        return path[len(self.root) + 1 :]

    def resolve(self, wire_path: bytes, make_parents: bool = True) -> bytes:
        """The local path (for names and claims) of a wire path; its parents are made (if asked) and
        checked to be real directories.  Everything that then touches the file goes through held
        directory descriptors, never through this string."""
        self.check(wire_path)
        if make_parents:
            parent = wire_path.rpartition(b"/")[0]
            self.dirs.release(self.dirs.hold(parent, create=True))
        return self.root + b"/" + wire_path

    def open_dir(self, wire_dir: bytes) -> int | None:
        """A new descriptor of the existing destination directory ``wire_dir`` (for listing it:
        the caller closes it), opened through the held parent without following a symlink;
        None if it is missing.  Nothing is created.  Raises UnsafePath / OSError (ELOOP,
        ENOTDIR) for what is not a real directory below --dir."""
        self.check(wire_dir)
        parent, _, name = wire_dir.rpartition(b"/")
        with pinned(self.dirs, parent) as d:
            if d is None:
                return None
            try:
                return os.open(name, DIR_FLAGS, dir_fd=d.fd)
            except FileNotFoundError:
                return None

    def _parent(self, path: bytes, create: bool = False) -> tuple[pinned, bytes]:
        rel = self.rel_of(path)
        parent, _, name = rel.rpartition(b"/")
        return pinned(self.dirs, parent, create), name

    # -- free space ---------------------------------------------------------------------
    def _room(self, d: HeldDir | int, dev: int, fresh: bool = False) -> int:
        """Free bytes above --min-free on ``dev`` as far as known: read again after SPACE_AGE
        seconds or once an eighth of the room left has been written."""
        ent = self._space.get(dev)
        now = time.monotonic()
        if ent is None or fresh or now - ent[1] > SPACE_AGE or ent[2] > ent[3]:
            try:
                st = os.fstatvfs(d)
            except OSError as exc:
                raise storage_error(exc, "cannot tell the free space") from exc
            free = st.f_bavail * st.f_frsize
            ent = [free, now, 0, min(64 << 20, max(1 << 20, (free - self.limits.min_free) // 8))]
            self._space[dev] = ent
        return ent[0] - ent[2] - self.limits.min_free

    def _fits(self, fd: int, dev: int, needed: int, size: int | None = None, replaced: int = 0) -> None:
        if self.quota is not None:  # a sender's area: its quota and max-file-size refuse like --min-free
            self.quota.check(needed - replaced, size)
        if needed > self._room(fd, dev) and needed > self._room(fd, dev, fresh=True):
            free = self._space[dev][0]
            raise StorageError(
                f"not enough space on the receiver: {_bytes(needed)} needed, {_bytes(free)} free "
                f"and {_bytes(self.limits.min_free)} kept free (--min-free)"
            )

    def check_space(self, path: bytes, needed: int, size: int | None = None) -> None:
        """Refuse (STORAGE) to store ``needed`` more bytes at ``path`` if they would eat into --min-free
        (or pass an area's quota; a file of ``size`` bytes over the area's max-file-size too)."""
        if needed <= 0 and (self.quota is None or size is None):
            return
        where, name = self._parent(path)
        with where as d:
            d = d or self.dirs.root
            old = self.replaced_size(d.fd, name) if self.quota is not None and self.overwrite else 0
            self._fits(d.fd, d.dev, max(needed, 0), size, old)
            if old:  # the file it replaces is counted until then: its writes may use those bytes meanwhile
                self.quota.credit(path, old)

    def account(self, fd: int, nbytes: int, dev: int | None = None) -> None:
        """Before writing ``nbytes`` to ``fd``: fail (STORAGE) if free space has sunk below --min-free.

        Files are checked one by one when offered; this keeps them from eating the
        reserve together.  The counters are shared by threads without a lock: a
        lost update only moves a check a little.
        """
        dev = self.state_dev if dev is None else dev
        if nbytes > self._room(fd, dev) and nbytes > self._room(fd, dev, fresh=True):
            free = self._space[dev][0]
            raise StorageError(f"the receiver's free space sank to {_bytes(free)}; "
                               f"{_bytes(self.limits.min_free)} are kept free (--min-free)")
        if self.quota is not None:
            self.quota.take(nbytes)  # fails the file when its data would pass the area's quota
        self._space[dev][2] += nbytes

    def replaced_size(self, dir_fd: int, name: bytes) -> int:
        """Bytes of the regular file ``name`` (in ``dir_fd``) that a replacement frees; 0 if none.
        Only an area's quota asks; called just before the rename, the quota is given them back."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def replacing(self, dir_fd: int, name: bytes) -> None:
        """A received file is about to be renamed over ``name``: an area's quota gets its bytes back."""
        if self.quota is not None:
            self.quota.give(self.replaced_size(dir_fd, name))

    def dropped(self, path: bytes, nbytes: int) -> None:
        """A partial of ``path`` is over: ``nbytes`` of its data were removed (an area's quota gets them
        back) and what it replaces is no longer credited."""
        if self.quota is not None:
            self.quota.give(nbytes)
            self.quota.credit(path, 0)

    # -- durability -------------------------------------------------------------------------
    def _written(self, d: HeldDir) -> None:
        if d.dev not in self._dirty:
            with self._lock:
                fd = self._dev_fds.get(d.dev)
                if fd is None:
                    fd = self._dev_fds[d.dev] = os.dup(d.fd)
                self._dirty[d.dev] = fd

    @property
    def unsynced(self) -> bool:
        """Whether files were written that ``sync()`` has not made durable yet."""
        return bool(self._dirty)

    def sync(self) -> None:
        """Make every file written since the last call durable (one syncfs per file system written).

        Call before the files' RESULTs go out.  Concurrent callers wait for a flush in progress,
        even with nothing left to flush: that flush may have taken their files along.
        """
        if self._dirty or self._sync_lock.locked():
            with self._sync_lock:
                with self._lock:
                    todo, self._dirty = self._dirty, {}
                for fd in todo.values():
                    try:
                        syncfs(fd)
                    except OSError as exc:
                        raise storage_error(exc, "cannot flush received files to disk") from exc
        self.temps.settle()  # the batch's temporaries are renamed or linked away, and that is on disk

    def expire_partials(self, ttl: float, now: float | None = None) -> list:
        """Remove ftx's partials (journal and data) untouched for ``ttl`` seconds; return what went."""
        from .expiry import expire_partials

        self.state_enter()
        try:
            return expire_partials(self, ttl, now, in_use=in_use)
        finally:
            self.state_leave()

    # -- directories and symlinks -----------------------------------------
    def make_dir(self, entry: FileEntry) -> MadeDir:
        """Create a directory (mode and mtime are applied later by ``finish_dirs``, if ftx made it)."""
        rel = self.check(entry.path)
        parent, _, name = rel.rpartition(b"/")
        created = False
        with pinned(self.dirs, parent, create=True) as d:
            try:
                os.mkdir(name, 0o700, dir_fd=d.fd)
                created = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise storage_error(exc, f"cannot create {os.fsdecode(rel)}") from exc
        with pinned(self.dirs, rel) as sub:
            if sub is None:
                raise StorageError(f"{os.fsdecode(rel)} vanished while it was made")
            return MadeDir(self, rel, (sub.dev, sub.ino), created)

    @staticmethod
    def finish_dirs(dirs: list[tuple[MadeDir, FileEntry]]) -> None:
        """Apply directory modes and mtimes, deepest first, once their contents are written -- only
        to directories ftx created (and still the same inode), on an O_NOFOLLOW descriptor."""
        for made, entry in sorted(dirs, key=lambda d: -d[0].rel.count(b"/")):
            if made.created:
                made.dest._finish_dir(made, entry)

    def _finish_dir(self, made: MadeDir, entry: FileEntry) -> None:
        try:
            with pinned(self.dirs, made.rel) as d:
                if d is None or (d.dev, d.ino) != made.ident:
                    return
                os.fchmod(d.fd, entry.mode & 0o777 | 0o700)
                os.utime(d.fd, ns=(entry.mtime_ns, entry.mtime_ns))
        except (OSError, FtxError):
            pass

    def make_symlink(self, entry: FileEntry) -> ErrorCode:
        check_link_target(entry.path, entry.target)
        rel = self.check(entry.path)
        parent, _, name = rel.rpartition(b"/")
        with pinned(self.dirs, parent, create=True) as d:
            try:
                st = os.stat(name, dir_fd=d.fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                if stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=d.fd) == entry.target:
                    return ErrorCode.IDENTICAL
                if not self.overwrite or stat.S_ISDIR(st.st_mode):
                    raise StorageError(f"{os.fsdecode(rel)} exists and differs", ErrorCode.EXISTS)
            tmp = self.temps.take(d, SYMLINK)  # recorded before it is made: a kill leaves none behind
            try:
                os.symlink(entry.target, tmp, dir_fd=d.fd)
                renamed = False
                try:
                    os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=d.fd, follow_symlinks=False)
                    if self.overwrite:
                        os.rename(tmp, name, src_dir_fd=d.fd, dst_dir_fd=d.fd)
                        renamed = True
                    else:
                        os.link(tmp, name, src_dir_fd=d.fd, dst_dir_fd=d.fd, follow_symlinks=False)
                finally:
                    if not renamed:
                        unlink_quietly(tmp, d.fd)
            except FileExistsError:
                raise StorageError(f"{os.fsdecode(rel)} appeared meanwhile; not replaced", ErrorCode.EXISTS) from None
            except OSError as exc:
                raise storage_error(exc, f"cannot create symlink {os.fsdecode(rel)}") from exc
            finally:
                self.temps.done(tmp)
            self._written(d)
        return ErrorCode.OK

    # -- regular files ------------------------------------------------------
    def existing(self, path: bytes) -> os.stat_result | None:
        where, name = self._parent(path)
        with where as d:
            if d is None:
                return None
            try:
                st = os.stat(name, dir_fd=d.fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
        if stat.S_ISDIR(st.st_mode):
            raise StorageError(f"{os.fsdecode(path)} exists and is a directory", ErrorCode.EXISTS)
        return st

    def adopt(self, path: bytes, entry: FileEntry, found: os.stat_result) -> None:
        """The file at ``path``, as ``existing`` found it (``found``), holds what the sender has
        (same size and mtime, or their digests matched): it takes the sender's mode and mtime, as a
        file received is given them, so that the next send's checks of it and of its directory find
        it unchanged.  Only with --overwrite (ftx may replace the files it finds then; without,
        it changes none).  Not if it changed since it was found: its content may no longer be the
        one compared (its ctime moved, which nobody can set back, or it is another file)."""
        where, name = self._parent(path)
        with where as d:
            if d is None:
                return
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | FILE_FLAGS, dir_fd=d.fd)
            except OSError:
                return
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == \
                    (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns):
                fileops.seal(fd, entry.mode, entry.mtime_ns, sync=False)
        finally:
            os.close(fd)

    def hash_file(self, path: bytes, hasher=None) -> bytes:
        """XXH3-128 of the regular file at ``path`` (opened without following a symlink), through
        ``hasher`` when given (see ``fileops.hash_fd``)."""
        where, name = self._parent(path)
        with where as d:
            if d is None:
                raise FileNotFoundError(path)
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | FILE_FLAGS, dir_fd=d.fd)
        try:
            return hash_fd(fd, hasher=hasher)
        finally:
            os.close(fd)

    def remove_stale_partial(self, path: bytes) -> None:
        """Drop what an earlier run left for a destination that is already complete."""
        self.state_enter()
        try:
            self._remove_stale_partial(path)
        finally:
            self.state_leave()

    def _remove_stale_partial(self, path: bytes) -> None:
        state = self.state_fd()
        if state < 0:
            return
        jname = journal_name(self.rel_of(path))
        try:
            jfd = os.open(jname, os.O_RDONLY | os.O_NONBLOCK | FILE_FLAGS, dir_fd=state)
        except OSError:
            return
        try:
            fcntl.flock(jfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            drop_files(self, state, jname, JournalHeader.parse(os.pread(jfd, 1 << 13, 0)))
        except OSError:
            pass
        finally:
            os.close(jfd)


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _bytes(n: int) -> str:
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= mult:
            return f"{n / mult:.1f} {unit}"
    return f"{max(n, 0)} bytes"


class ByteBudget:
    """Bytes that may be held in memory over all partials (chunks kept for the digest)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        if n:
            with self._lock:
                self.used -= n


__all__ = ["Busy", "Destination", "KEEP_MIN", "PENDING_LIMIT", "PartialFile", "chunk_count", "claim", "in_use"]
