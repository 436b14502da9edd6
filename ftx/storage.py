"""Receiver-side storage: safe paths, partial files with a journal, atomic finalize.

Layout beside each destination ``DIR/name``::

    DIR/.name.ftx-part      the data, written at chunk offsets (never the final name)
    DIR/.name.ftx-journal   header + one record per verified chunk

Journal (big-endian): a 36-byte header ``"FTXJ" u16 version u16 0 u32 chunk_size
u64 size i64 mtime_ns u64 xxh3_64(previous 28 bytes)``, then 24-byte records
``u64 index, u64 chunk checksum, u64 xxh3_64(previous 16 bytes)``.  A record is
appended after its chunk is written; on resume every recorded chunk is read back
and re-hashed, so torn or lost writes (a kill, a crash) are found and re-sent.
Finalize: verify the XXH3-128 digest, set mode and mtime, fsync, then link (or,
with overwrite, rename) into place and fsync the directory.

Bounds (``Limits``): nothing is created for an offer until its first chunk
arrives, and no space is reserved ahead of the data (no preallocation); an
offer whose missing bytes do not fit in the free space less ``min_free`` is
refused; at most ``max_open_files`` partials hold descriptors at once (least
recently used ones close and reopen on their next chunk); sidecars that hold
less than ``KEEP_MIN`` (1 MiB) of verified data are removed when their file
is let go.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading

import xxhash

from .core.checksum import FileHasher, HeldDigest, chunk_checksum, file_digest
from .core.manifest import FileEntry, check_link_target, check_wire_path, chunk_count
from .core.ranges import RangeSet
from .descriptors import DescriptorBudget
from .errors import ErrorCode, FtxError, StorageError, UnsafePath
from .limits import Limits

JOURNAL_MAGIC = b"FTXJ"
JOURNAL_HEADER = struct.Struct(">4sHHIQq")
RECORD = struct.Struct(">QQ")
RECORD_SIZE = RECORD.size + 8
PART_SUFFIX = b".ftx-part"
JOURNAL_SUFFIX = b".ftx-journal"
READ_BLOCK = 1024 * 1024

_busy_lock = threading.Lock()
_busy: dict[bytes, object] = {}  # destination -> who is writing it, in this process
_live: set[bytes] = set()  # journal paths of the partials this process is using (expiry skips them)


def _storage_error(exc: OSError, what: str) -> StorageError:
    return StorageError(f"{what}: {os.strerror(exc.errno) if exc.errno else exc}")


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _pwrite_full(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def hash_file(path: bytes, block: int = READ_BLOCK) -> bytes:
    """XXH3-128 of a file, streaming."""
    h = FileHasher()
    buf = bytearray(block)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while n := os.readv(fd, [view]):
            h.update(view[:n])
    finally:
        os.close(fd)
    return h.digest()


def _fsync_dir(path: bytes) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sidecar(dest: bytes, suffix: bytes) -> bytes:
    head, name = os.path.split(dest)
    if len(name) + len(suffix) + 1 > 255:
        name = xxhash.xxh3_64_hexdigest(name).encode()
    return os.path.join(head, b"." + name + suffix)


class Destination:
    """The receive root.  Every wire path is resolved below it, never through a symlink."""

    def __init__(self, root: str | bytes, overwrite: bool = False, limits: Limits | None = None) -> None:
        self.root = os.path.realpath(os.fsencode(root))
        self.overwrite = overwrite
        self.limits = limits or Limits()
        self.descriptors = DescriptorBudget(self.limits.max_open_files)
        self.pending = ByteBudget(min(PENDING_TOTAL, self.limits.digest_buffer_bytes))
        self._written = 0  # chunk bytes written (all files) since free space was last looked at
        self._check_every = 0  # ... and how many may go before it is looked at again
        os.makedirs(self.root, exist_ok=True)

    def check_space(self, path: bytes, needed: int) -> None:
        """Refuse (STORAGE) to store ``needed`` more bytes at ``path`` if they would eat into --min-free."""
        if needed <= 0:
            return
        try:
            st = os.statvfs(os.path.dirname(path))
        except OSError as exc:
            raise _storage_error(exc, "cannot tell the free space") from exc
        free = st.f_bavail * st.f_frsize
        if needed > free - self.limits.min_free:
            raise StorageError(
                f"not enough space on the receiver: {_bytes(needed)} needed, {_bytes(free)} free "
                f"and {_bytes(self.limits.min_free)} kept free (--min-free)"
            )

    def account(self, path: bytes, nbytes: int) -> None:
        """Before writing ``nbytes`` of a chunk: fail (STORAGE) if free space has sunk below --min-free.

        Files are checked one by one when offered; this keeps them from eating the
        reserve together.  Free space is looked at every eighth of the room that was
        left (1 to 64 MiB of writes, over all files), so the reserve is overrun by at
        most that much plus a chunk.  The counters are shared by threads without a
        lock: a lost update only moves a check a little.
        """
        self._written += nbytes
        if self._written < self._check_every:
            return
        self._written = 0
        try:
            st = os.statvfs(os.path.dirname(path))
        except OSError as exc:
            raise _storage_error(exc, "cannot tell the free space") from exc
        free = st.f_bavail * st.f_frsize
        room = free - nbytes - self.limits.min_free
        if room < 0:
            self._check_every = 0
            raise StorageError(f"the receiver's free space sank to {_bytes(free)}; "
                               f"{_bytes(self.limits.min_free)} are kept free (--min-free)")
        self._check_every = min(64 << 20, max(1 << 20, room // 8))

    def expire_partials(self, ttl: float, now: float | None = None) -> list:
        """Remove ftx's partials (data and journal) untouched for ``ttl`` seconds; return what went."""
        from .expiry import expire_partials

        return expire_partials(self.root, ttl, now, in_use=in_use)

    def resolve(self, wire_path: bytes, make_parents: bool = True) -> bytes:
        """Absolute local path for a wire path; parents are real directories (created if asked)."""
        check_wire_path(wire_path)
        parts = wire_path.split(b"/")
        last = parts[-1]
        if last.startswith(b".") and (last.endswith(PART_SUFFIX) or last.endswith(JOURNAL_SUFFIX)):
            raise UnsafePath(f"{os.fsdecode(wire_path)}: names ending in .ftx-part/.ftx-journal are ftx's own")
        cur = self.root
        for part in parts[:-1]:
            cur = os.path.join(cur, part)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                if not make_parents:
                    return os.path.join(self.root, wire_path)
                try:
                    os.mkdir(cur, 0o755)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise _storage_error(exc, f"cannot create directory {os.fsdecode(cur)}") from exc
                st = os.lstat(cur)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePath(f"refusing to write through symlink {os.fsdecode(cur)}")
            if not stat.S_ISDIR(st.st_mode):
                raise StorageError(f"{os.fsdecode(cur)} exists and is not a directory", ErrorCode.EXISTS)
        return os.path.join(cur, parts[-1])

    # -- directories and symlinks -----------------------------------------
    def make_dir(self, entry: FileEntry) -> bytes:
        """Create a directory (mode and mtime are applied later by ``finish_dirs``)."""
        path = self.resolve(entry.path)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise StorageError(f"{os.fsdecode(path)} exists and is not a directory", ErrorCode.EXISTS) from None
        except OSError as exc:
            raise _storage_error(exc, f"cannot create {os.fsdecode(path)}") from exc
        return path

    @staticmethod
    def finish_dirs(dirs: list[tuple[bytes, FileEntry]]) -> None:
        """Apply directory modes and mtimes, deepest first, once their contents are written."""
        for path, entry in sorted(dirs, key=lambda d: -d[0].count(b"/")):
            try:
                os.chmod(path, entry.mode & 0o777 | 0o700)
                os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            except OSError:
                pass

    def make_symlink(self, entry: FileEntry) -> ErrorCode:
        check_link_target(entry.path, entry.target)
        path = self.resolve(entry.path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISLNK(st.st_mode) and os.readlink(path) == entry.target:
                return ErrorCode.IDENTICAL
            if not self.overwrite or stat.S_ISDIR(st.st_mode):
                raise StorageError(f"{os.fsdecode(path)} exists and differs", ErrorCode.EXISTS)
        tmp = sidecar(path, PART_SUFFIX)
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(entry.target, tmp)
            os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            os.replace(tmp, path)
        except OSError as exc:
            raise _storage_error(exc, f"cannot create symlink {os.fsdecode(path)}") from exc
        return ErrorCode.OK

    # -- regular files ------------------------------------------------------
    def existing(self, path: bytes) -> os.stat_result | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            raise StorageError(f"{os.fsdecode(path)} exists and is a directory", ErrorCode.EXISTS)
        return st

    def write_small(self, entry: FileEntry, data, digest: bytes) -> ErrorCode:
        """Store a whole small file: verify, write beside, fsync, move into place."""
        if file_digest(data) != digest:
            raise StorageError("whole-file digest mismatch", ErrorCode.DIGEST_MISMATCH)
        path = self.resolve(entry.path)
        st = self.existing(path)
        if st is not None:
            if stat.S_ISREG(st.st_mode) and st.st_size == len(data) and hash_file(path) == digest:
                return ErrorCode.IDENTICAL
            if not self.overwrite:
                raise StorageError(f"{os.fsdecode(entry.path)} exists and differs (receiver has no --overwrite)", ErrorCode.EXISTS)
        self.check_space(path, len(data))
        with claim(path):
            tmp = sidecar(path, PART_SUFFIX)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    _pwrite_full(fd, data, 0)
                    _seal(fd, entry)
                finally:
                    os.close(fd)
                _commit(tmp, path, self.overwrite)
            except BaseException:
                _unlink_quietly(tmp)
                raise
        return ErrorCode.OK


def _bytes(n: int) -> str:
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= mult:
            return f"{n / mult:.1f} {unit}"
    return f"{max(n, 0)} bytes"


def in_use(journal_path: bytes) -> bool:
    """Whether a partial of this process uses the journal (open or not)."""
    with _busy_lock:
        return journal_path in _live


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


def _seal(fd: int, entry: FileEntry) -> None:
    os.fchmod(fd, entry.mode & 0o777)
    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    os.fsync(fd)


def _commit(tmp: bytes, path: bytes, overwrite: bool) -> None:
    """Move a finished file into place: never over a user's file unless overwrite."""
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise StorageError(f"{os.fsdecode(path)} appeared meanwhile; not replaced", ErrorCode.EXISTS) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                if os.path.lexists(path):
                    raise StorageError(f"{os.fsdecode(path)} appeared meanwhile; not replaced", ErrorCode.EXISTS) from None
                os.rename(tmp, path)
            else:
                os.unlink(tmp)
        _fsync_dir(os.path.dirname(path))
    except OSError as exc:
        raise _storage_error(exc, f"cannot finalize {os.fsdecode(path)}") from exc


def _unlink_quietly(path: bytes) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Busy(StorageError):
    """Another connection of this process is writing the destination; ``holder`` says which."""

    code = ErrorCode.BUSY

    def __init__(self, message: str, holder: object) -> None:
        super().__init__(message)
        self.holder = holder


class claim:
    """Context manager marking a destination as being written by ``owner``."""

    def __init__(self, path: bytes, owner: object = None) -> None:
        self.path = path
        self.owner = owner

    def __enter__(self) -> "claim":
        with _busy_lock:
            holder = _busy.get(self.path)
            if holder is not None:
                raise Busy(f"{os.fsdecode(self.path)} is being received from another sender", holder)
            _busy[self.path] = self.owner if self.owner is not None else self
        return self

    def __exit__(self, *exc) -> None:
        with _busy_lock:
            if _busy.get(self.path) is (self.owner if self.owner is not None else self):
                del _busy[self.path]

    @staticmethod
    def is_free(path: bytes) -> bool:
        with _busy_lock:
            return path not in _busy


PENDING_LIMIT = 32 * 1024 * 1024  # out-of-order chunk bytes kept for the digest (UDP's window is 16 MiB)
PENDING_TOTAL = 64 * 1024 * 1024  # ... over all partials of a receiver (at most Limits.digest_buffer_bytes)
# a partial let go with less verified data than this is removed, not kept for a resume: re-sending it
# costs little, and keeping it would let a client leave two files on disk for every tiny chunk it sends
KEEP_MIN = 1024 * 1024


class PartialFile:
    """A file being received in chunks, with its journal of verified chunks.

    Descriptors are opened when a chunk needs them, through the destination's
    ``DescriptorBudget``, and may be closed between chunks; the journal's
    ``flock`` is held while they are open.  Its sidecars are created by the
    first chunk, not by the offer.
    """

    def __init__(self, dest: Destination, entry: FileEntry, path: bytes, owner: object = None) -> None:
        self.dest, self.entry, self.path = dest, entry, path
        self.part_path = sidecar(path, PART_SUFFIX)
        self.journal_path = sidecar(path, JOURNAL_SUFFIX)
        self.fd = -1
        self.jfd = -1
        self.pins = 0  # threads using the descriptors now (DescriptorBudget)
        self.held = RangeSet()
        self._claim = claim(path, owner)
        self._claim.__enter__()
        with _busy_lock:
            _live.add(self.journal_path)
        self._closed = False  # let go of for good: never reopened
        self._on_disk = False  # our sidecars exist: kept from an earlier run, or made by the first chunk
        self._jsize = 0  # journal length: where the next record goes
        self._jino = 0
        self._jident: tuple[int, int] | None = None  # journal (inode, size) when last closed
        self._hasher: FileHasher | None = None  # made by the first chunk (~700 bytes an offer need not cost)
        self._hashed = 0  # chunks [0, _hashed) are in _hasher
        # chunks that arrived ahead of _hashed (UDP completes chunks out of order after a
        # loss), kept -- up to PENDING_LIMIT bytes -- so the whole-file digest need not read
        # them back from disk at the end
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self._unkept = 1 << 63  # the first chunk ahead that could not be kept in memory (see write_chunk)
        self.discarded = ""  # why an old partial was thrown away, if it was

    # -- what an earlier run left -------------------------------------------------
    def open(self, resume: bool) -> tuple[RangeSet, int]:
        """Return the verified held chunks and their held digest; keep no descriptor open.

        Leftovers that hold no verified chunk (or may not be used: no resume, another
        source version) are removed.  Nothing is created here.
        """
        try:
            try:
                self.jfd = os.open(self.journal_path, os.O_RDWR | os.O_NOFOLLOW)
            except FileNotFoundError:
                return RangeSet(), 0
            self._lock_journal()
            records = self._read_journal() if resume else None
            if records is not None:
                try:
                    self.fd = os.open(self.part_path, os.O_RDWR | os.O_NOFOLLOW)
                except FileNotFoundError:
                    records = None
            held_digest = self._verify(records) if records else 0
            if not self.held:
                _unlink_quietly(self.part_path)  # under the journal's lock
                _unlink_quietly(self.journal_path)
                return RangeSet(), 0
            self._on_disk = True
            self._jino = os.fstat(self.jfd).st_ino
            self._jident = (self._jino, self._jsize)
            return RangeSet(self.held), held_digest
        except OSError as exc:
            self.close()
            raise _storage_error(exc, f"cannot open partial file for {os.fsdecode(self.path)}") from exc
        except BaseException:
            self.close()
            raise
        finally:
            self.close_descriptors()

    def _lock_journal(self) -> None:
        try:
            fcntl.flock(self.jfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"{os.fsdecode(self.path)} is being received by another process", ErrorCode.BUSY) from None

    def _header(self) -> bytes:
        e = self.entry
        head = JOURNAL_HEADER.pack(JOURNAL_MAGIC, 1, 0, e.chunk_size, e.size, e.mtime_ns)
        return head + xxhash.xxh3_64_digest(head)

    def _read_journal(self) -> dict[int, int] | None:
        """Recorded chunks, or None when there is no usable journal for this source."""
        buf = bytearray()
        while chunk := os.read(self.jfd, 1 << 20):
            buf += chunk
        raw = bytes(buf)
        header = self._header()
        if not raw:
            return None
        if raw[: len(header)] != header:
            self.discarded = "the source changed since the partial was made (size, mtime or chunk size differ)"
            return None
        records: dict[int, int] = {}
        for off in range(len(header), len(raw) - RECORD_SIZE + 1, RECORD_SIZE):
            rec = raw[off : off + RECORD.size]
            if xxhash.xxh3_64_intdigest(rec) != int.from_bytes(raw[off + RECORD.size : off + RECORD_SIZE], "big"):
                break  # torn record: everything after it is suspect
            index, csum = RECORD.unpack(rec)
            if index < self.entry.chunks:
                records[index] = csum
        self._jsize = len(raw)
        return records

    def _rewrite_journal(self, records: dict[int, int]) -> None:
        out = bytearray(self._header())
        for index in sorted(records):
            out += _record(index, records[index])
        os.ftruncate(self.jfd, 0)
        _pwrite_full(self.jfd, out, 0)
        self._jsize = len(out)

    def _verify(self, records: dict[int, int]) -> int:
        """Re-hash every recorded chunk from disk; keep those that still match; return the held digest."""
        e = self.entry
        buf = bytearray(e.chunk_size)
        view = memoryview(buf)
        good: dict[int, int] = {}
        held_digest = HeldDigest()
        for index in sorted(records):
            length = e.chunk_length(index)
            got = _pread_full(self.fd, view[:length], index * e.chunk_size)
            if got != length or chunk_checksum(view[:length]) != records[index]:
                continue
            good[index] = records[index]
            held_digest.add(records[index])
            self.held.add(index)
            if index == self._hashed:
                self._hashing().update(view[:length])
                self._hashed += 1
        if good and (len(good) != len(records) or self._jsize != JOURNAL_HEADER.size + 8 + RECORD_SIZE * len(good)):
            self._rewrite_journal(good)
        return held_digest.value() if good else 0

    # -- descriptors (called by the DescriptorBudget, under its lock) ------------------
    def open_descriptors(self) -> None:
        if self._closed:
            raise StorageError(f"{os.fsdecode(self.entry.path)}: its connection has ended", ErrorCode.ABORTED)
        fresh = not self._on_disk
        try:
            jfd = os.open(self.journal_path, os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if fresh else 0), 0o600)
        except FileNotFoundError:
            raise StorageError(f"the partial file of {os.fsdecode(self.entry.path)} vanished") from None
        except OSError as exc:
            raise _storage_error(exc, f"cannot open partial file for {os.fsdecode(self.entry.path)}") from exc
        fd = -1
        try:
            self.jfd = jfd
            self._lock_journal()
            st = os.fstat(jfd)
            if fresh:
                os.ftruncate(jfd, 0)
                header = self._header()
                _pwrite_full(jfd, header, 0)
                self._jsize, self._jino = len(header), st.st_ino
                fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                self._on_disk = True
            else:
                if (st.st_ino, st.st_size) != self._jident:
                    raise StorageError(f"{os.fsdecode(self.path)}: its partial file was changed by another process",
                                       ErrorCode.BUSY)
                fd = os.open(self.part_path, os.O_RDWR | os.O_NOFOLLOW)
        except BaseException as exc:
            self.jfd = -1
            os.close(jfd)
            if fd >= 0:
                os.close(fd)
            if isinstance(exc, OSError):
                raise _storage_error(exc, f"cannot open partial file for {os.fsdecode(self.entry.path)}") from exc
            raise
        self.fd = fd

    def close_descriptors(self) -> None:
        if self.jfd >= 0:
            self._jident = (self._jino, self._jsize)
        for attr in ("fd", "jfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    # -- writing --------------------------------------------------------------
    def write_chunk(self, index: int, checksum: int, data) -> None:
        self.dest.account(self.path, len(data))
        budget = self.dest.descriptors
        budget.acquire(self)
        try:
            _pwrite_full(self.fd, data, index * self.entry.chunk_size)
            if os.pwrite(self.jfd, _record(index, checksum), self._jsize) != RECORD_SIZE:
                raise OSError(errno.ENOSPC, "short write to the journal")
            self._jsize += RECORD_SIZE
        except OSError as exc:
            raise _storage_error(exc, f"cannot write {os.fsdecode(self.entry.path)}") from exc
        finally:
            budget.release(self)
        self.held.add(index)
        if index == self._hashed:
            self._hashing().update(data)
            self._hashed += 1
            while self._hashed in self._pending:  # the gap is filled: hash what waited behind it
                waiting = self._pending.pop(self._hashed)
                self._pending_bytes -= len(waiting)
                self.dest.pending.give(len(waiting))
                self._hasher.update(waiting)
                self._hashed += 1
        elif self._hashed < index < self._unkept and index not in self._pending:
            if self._pending_bytes + len(data) <= PENDING_LIMIT and self.dest.pending.take(len(data)):
                self._pending[index] = bytes(data)
                self._pending_bytes += len(data)
            else:  # the running hash can never pass this chunk: what waits behind it is of no use
                self._unkept = index
                for later in [i for i in self._pending if i > index]:
                    self._pending_bytes -= len(self._pending[later])
                    self.dest.pending.give(len(self._pending.pop(later)))

    def restart(self) -> None:
        """The sender says the held chunks are stale: forget them (and remove the sidecars)."""
        self.held = RangeSet()
        self._hasher = None
        self._hashed = 0
        self._drop_pending()
        self.discarded = "the source content changed since the partial was made"
        self._remove_sidecars()

    def finalize(self, expected: bytes) -> bytes:
        """Verify the whole-file digest and move the file into place; return the digest."""
        e = self.entry
        budget = self.dest.descriptors
        try:
            budget.acquire(self)  # a file of no chunks gets its (empty) partial here
            try:
                self._drop_pending()
                if self._hashed < e.chunks:  # chunks arrived too far out of order: hash the rest from disk
                    buf = bytearray(e.chunk_size)
                    view = memoryview(buf)
                    for index in range(self._hashed, e.chunks):
                        n = e.chunk_length(index)
                        _pread_full(self.fd, view[:n], index * e.chunk_size)
                        self._hashing().update(view[:n])
                digest = self._hashing().digest()
                if digest != expected:
                    self._unlink_sidecars()
                    raise StorageError("whole-file digest mismatch: partial discarded", ErrorCode.DIGEST_MISMATCH)
                if os.fstat(self.fd).st_size != e.size:
                    os.ftruncate(self.fd, e.size)
                _seal(self.fd, e)
                st = self.dest.existing(self.path)
                if st is not None and not self.dest.overwrite:
                    raise StorageError(f"{os.fsdecode(self.path)} appeared meanwhile; not replaced", ErrorCode.EXISTS)
                _commit(self.part_path, self.path, self.dest.overwrite)
                _unlink_quietly(self.journal_path)
                self._on_disk = False
            finally:
                budget.release(self)
        except OSError as exc:
            raise _storage_error(exc, f"cannot finalize {os.fsdecode(e.path)}") from exc
        finally:
            self.close()
        return digest

    def discard(self) -> None:
        self._unlink_sidecars()
        self.close()

    def _unlink_sidecars(self) -> None:
        _unlink_quietly(self.part_path)
        _unlink_quietly(self.journal_path)
        self._on_disk = False

    def _hashing(self) -> FileHasher:
        if self._hasher is None:
            self._hasher = FileHasher()
        return self._hasher

    def _drop_pending(self) -> None:
        self._unkept = 1 << 63  # the first chunk ahead that could not be kept in memory
        self._pending.clear()
        self.dest.pending.give(self._pending_bytes)
        self._pending_bytes = 0

    def held_bytes(self) -> int:
        e = self.entry
        n = self.held.count() * e.chunk_size
        if e.chunks and (e.chunks - 1) in self.held:
            n -= e.chunk_size - e.chunk_length(e.chunks - 1)
        return n

    def _remove_sidecars(self) -> None:
        """Remove our sidecars, under the journal's lock (left alone if another process took them)."""
        if not self._on_disk:
            return
        budget = self.dest.descriptors
        try:
            budget.acquire(self)
        except (FtxError, OSError):
            self._on_disk = False
            return
        try:
            self._unlink_sidecars()
        finally:
            budget.release(self)
            budget.forget(self)

    def close(self) -> None:
        """Release descriptors and the claim; the sidecars stay for a resume if they hold KEEP_MIN
        bytes of verified data, and are removed otherwise."""
        self._drop_pending()
        if self.held_bytes() < KEEP_MIN:
            self._remove_sidecars()
        budget = self.dest.descriptors
        with budget.lock:  # from now on nothing reopens it (a worker thread may still be handling a chunk)
            self._closed = True
        budget.forget(self)
        self.close_descriptors()  # descriptors opened outside the budget (by ``open``)
        if self._claim is not None:
            with _busy_lock:  # before the claim goes: a successor's entry must not be dropped
                _live.discard(self.journal_path)
            self._claim.__exit__(None, None, None)
            self._claim = None


def _record(index: int, checksum: int) -> bytes:
    rec = RECORD.pack(index, checksum)
    return rec + xxhash.xxh3_64_digest(rec)


def remove_stale_partial(path: bytes) -> None:
    """Drop leftovers of an earlier run for a destination that is already complete."""
    _unlink_quietly(sidecar(path, PART_SUFFIX))
    _unlink_quietly(sidecar(path, JOURNAL_SUFFIX))


__all__ = ["Destination", "PartialFile", "hash_file", "chunk_count", "remove_stale_partial"]
