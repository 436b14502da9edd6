"""A file received in chunks: its partial data and its journal, inside ftx's state directory.

Layout: ``--dir/.ftx/`` (made by ftx, mode 0700, opened O_NOFOLLOW and held; see
storage.py) holds, per file being received,

    .ftx/j-<xxh3_128 hex of the wire path>   the journal
    .ftx/p-<32 random hex>                   the data, written at chunk offsets

The data lives in the destination's own directory instead (as
``.ftx-<32 random hex>.part``) when that directory is on another file system than
``.ftx`` (a mount point below --dir), so that the final link stays within one
file system.  Both are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: ftx
never opens, truncates or removes a file it did not create.

The journal (journal.py) records the source version, the wire path and the data
file's (dev, inode) -- its header is written once before the data file is made,
naming it, so that a receiver killed in between leaves nothing expiry cannot
find -- then one record per chunk, appended after it is written.  On
resume every recorded chunk is read back and re-hashed, so torn or lost writes
are found and re-sent; data whose (dev, inode) is not the one recorded is not
ftx's and is neither used nor removed.  Finalize: verify the XXH3-128 digest,
set mode and mtime, fsync, ``linkat`` the open data file under its final name
(EEXIST: not replaced; with --overwrite ``renameat``), fsync the directory,
remove the journal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets

import xxhash

from .claims import claim, mark_live
from .core.checksum import FileHasher, HeldDigest, chunk_checksum
from .core.manifest import FileEntry
from .core.ranges import RangeSet
from .errors import ErrorCode, FtxError, StorageError
from .fileops import (FILE_FLAGS, READ_BLOCK, Temp, copy_fd, link_fd, pread_full, pwrite_full, seal, storage_error,
                      unlink_quietly)
from .helddirs import pinned
from .journal import (IN_DIR, IN_STATE, RECORD, RECORD_SIZE, UNRECORDED, JournalHeader, data_name, drop_files,
                      journal_header_size, journal_name, record)

PENDING_LIMIT = 32 * 1024 * 1024  # out-of-order chunk bytes kept for the digest (UDP's window is 16 MiB)
PENDING_TOTAL = 64 * 1024 * 1024  # ... over all partials of a receiver (at most Limits.digest_buffer_bytes)
# a partial let go with less verified data than this is removed, not kept for a resume: re-sending it
# costs little, and keeping it would let a client leave two files on disk for every tiny chunk it sends
KEEP_MIN = 1024 * 1024


class PartialFile:
    """A file being received in chunks, with its journal of verified chunks.

    Descriptors are opened when a chunk needs them, through the destination's
    ``DescriptorBudget``, and may be closed between chunks; the journal's
    ``flock`` is held while they are open.  Nothing is created by the offer:
    the journal and the data file are made by the first chunk.
    """

    def __init__(self, dest, entry: FileEntry, path: bytes, owner: object = None) -> None:
        self.dest, self.entry, self.path = dest, entry, path
        self.rel = dest.rel_of(path)
        self.dir_rel, _, self.name = self.rel.rpartition(b"/")
        self.jname = journal_name(self.rel)
        self.fd = -1
        self.jfd = -1
        self.pins = 0  # threads using the descriptors now (DescriptorBudget)
        self.held = RangeSet()
        self._claim = claim(path, owner)
        self._claim.__enter__()
        dest.state_enter()
        self._live_key = dest.state_key(self.jname)
        mark_live(self._live_key, True)
        self._closed = False  # let go of for good: never reopened
        self._on_disk = False  # our journal and data exist: kept from an earlier run, or made by the first chunk
        self._info: JournalHeader | None = None  # where our data is (known once it is ours)
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
        state = self.dest.state_fd(create=False)
        if state < 0:
            return RangeSet(), 0
        try:
            try:
                self.jfd = os.open(self.jname, os.O_RDWR | FILE_FLAGS, dir_fd=state)
            except FileNotFoundError:
                return RangeSet(), 0
            self._lock_journal()
            records = self._read_journal(resume)
            if records:
                records = self._open_data(records)
            held_digest = self._verify(records) if records else 0
            if not self.held:
                self._unlink_files(state)  # under the journal's lock
                return RangeSet(), 0
            self._on_disk = True
            self._jino = os.fstat(self.jfd).st_ino
            self._jident = (self._jino, self._jsize)
            return RangeSet(self.held), held_digest
        except OSError as exc:
            self.close()
            raise storage_error(exc, f"cannot open partial file for {os.fsdecode(self.path)}") from exc
        except BaseException:
            self.close()
            raise
        finally:
            self.close_descriptors()

    def _open_data(self, records):
        """Open the data the journal names; None (and forget it) if it is missing or not ours."""
        info = self._info
        try:
            with self._data_dir() as dir_fd:
                fd = os.open(info.data_name, os.O_RDWR | FILE_FLAGS, dir_fd=dir_fd)
        except (OSError, FtxError):
            self._info = None  # gone, or a symlink: nothing of ours to use or remove
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != info.ident:
            os.close(fd)
            self._info = None
            self.discarded = "its partial data was replaced by another file"
            return None
        self.fd = fd
        return records

    @contextlib.contextmanager
    def _data_dir(self):
        """The descriptor of the directory our data file is in (.ftx, or the destination's)."""
        if self._info.where == IN_STATE:
            yield self.dest.state_fd()
            return
        with pinned(self.dest.dirs, self.dir_rel) as d:
            if d is None:
                raise FileNotFoundError(errno.ENOENT, "the destination's directory is gone")
            yield d.fd

    def _lock_journal(self) -> None:
        try:
            fcntl.flock(self.jfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"{os.fsdecode(self.path)} is being received by another process", ErrorCode.BUSY) from None

    def _same_source(self, info: JournalHeader) -> bool:
        e = self.entry
        return (info.chunk_size, info.size, info.mtime_ns) == (e.chunk_size, e.size, e.mtime_ns)

    def _read_journal(self, resume: bool) -> dict[int, int] | None:
        """Recorded chunks, or None when there is no usable journal for this source."""
        buf = bytearray()
        while chunk := os.read(self.jfd, 1 << 20):
            buf += chunk
        raw = bytes(buf)
        info = JournalHeader.parse(raw)
        if info is None or info.path != self.rel:
            return None  # torn at its creation (or not for this path): the journal alone goes
        self._info = info
        if not resume:
            return None
        if not self._same_source(info):
            self.discarded = "the source changed since the partial was made (size, mtime or chunk size differ)"
            return None
        records: dict[int, int] = {}
        start = journal_header_size(self.rel)
        for off in range(start, len(raw) - RECORD_SIZE + 1, RECORD_SIZE):
            rec = raw[off : off + RECORD.size]
            if xxhash.xxh3_64_intdigest(rec) != int.from_bytes(raw[off + RECORD.size : off + RECORD_SIZE], "big"):
                break  # torn record: everything after it is suspect
            index, csum = RECORD.unpack(rec)
            if index < self.entry.chunks:
                records[index] = csum
        self._jsize = len(raw)
        return records

    def _rewrite_journal(self, records: dict[int, int]) -> None:
        out = bytearray(self._info.pack())
        for index in sorted(records):
            out += record(index, records[index])
        os.ftruncate(self.jfd, 0)
        pwrite_full(self.jfd, out, 0)
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
            got = pread_full(self.fd, view[:length], index * e.chunk_size)
            if got != length or chunk_checksum(view[:length]) != records[index]:
                continue
            good[index] = records[index]
            held_digest.add(records[index])
            self.held.add(index)
            if index == self._hashed:
                self._hashing().update(view[:length])
                self._hashed += 1
        if good and (len(good) != len(records) or self._jsize != journal_header_size(self.rel) + RECORD_SIZE * len(good)):
            self._rewrite_journal(good)
        return held_digest.value() if good else 0

    # -- descriptors (called by the DescriptorBudget, under its lock) ------------------
    def open_descriptors(self) -> None:
        if self._closed:
            raise StorageError(f"{os.fsdecode(self.entry.path)}: its connection has ended", ErrorCode.ABORTED)
        try:
            if self._on_disk:
                self._reopen()
            else:
                self._create()
        except OSError as exc:
            raise storage_error(exc, f"cannot open partial file for {os.fsdecode(self.entry.path)}") from exc

    def _create(self) -> None:
        """The first chunk: a new journal and a new data file, both exclusively ours."""
        self._info = None  # a RESTART's old data is gone: nothing of it may be named again
        for attempt in (0, 1):
            state = self.dest.state_fd(create=True)
            try:
                jfd = os.open(self.jname, os.O_RDWR | os.O_CREAT | os.O_EXCL | FILE_FLAGS, 0o600, dir_fd=state)
                break
            except FileExistsError:
                raise StorageError(f"{os.fsdecode(self.path)} is being received by another process",
                                   ErrorCode.BUSY) from None
            except FileNotFoundError:  # another receiver on this --dir removed .ftx when it was empty
                if attempt:
                    raise
                self.dest.state_lost(state)
        fd = -1
        where = IN_STATE
        try:
            self.jfd = jfd
            self._lock_journal()
            e = self.entry
            with pinned(self.dest.dirs, self.dir_rel, create=True) as d:
                if d.dev != self.dest.state_dev:
                    where = IN_DIR
                token = secrets.token_bytes(16)
                # named before it exists: a receiver killed from here on leaves a journal that names
                # its data file, and expiry finds both (the data may be beside its file, outside .ftx)
                named = JournalHeader(where, e.chunk_size, e.size, e.mtime_ns, UNRECORDED, token, self.rel)
                pwrite_full(jfd, named.pack(), 0)
                fd = os.open(data_name(where, token), os.O_RDWR | os.O_CREAT | os.O_EXCL | FILE_FLAGS, 0o600,
                             dir_fd=state if where == IN_STATE else d.fd)
                self._info = named  # from now on a failure removes the data file too
            st = os.fstat(fd)
            self._info = JournalHeader(where, e.chunk_size, e.size, e.mtime_ns, (st.st_dev, st.st_ino), token, self.rel)
            header = self._info.pack()
            pwrite_full(jfd, header, 0)  # the same length: the header with the data file's identity
            self._jsize, self._jino = len(header), os.fstat(jfd).st_ino
            self._on_disk = True
            self.fd = fd
        except BaseException:
            self.jfd = -1
            if fd >= 0:
                os.close(fd)
            if self._info is not None:
                self._unlink_files(state)
                self._info = None
            else:
                unlink_quietly(self.jname, state)
            os.close(jfd)
            raise

    def _reopen(self) -> None:
        state = self.dest.state_fd()
        try:
            jfd = os.open(self.jname, os.O_RDWR | FILE_FLAGS, dir_fd=state)
        except FileNotFoundError:
            raise StorageError(f"the partial file of {os.fsdecode(self.entry.path)} vanished") from None
        fd = -1
        try:
            self.jfd = jfd
            self._lock_journal()
            st = os.fstat(jfd)
            if (st.st_ino, st.st_size) != self._jident:
                raise StorageError(f"{os.fsdecode(self.path)}: its partial file was changed by another process",
                                   ErrorCode.BUSY)
            info = self._info
            with self._data_dir() as dir_fd:
                fd = os.open(info.data_name, os.O_RDWR | FILE_FLAGS, dir_fd=dir_fd)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != info.ident:
                raise StorageError(f"{os.fsdecode(self.path)}: its partial file was replaced by another process",
                                   ErrorCode.BUSY)
        except BaseException:
            self.jfd = -1
            os.close(jfd)
            if fd >= 0:
                os.close(fd)
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
        budget = self.dest.descriptors
        budget.acquire(self)
        try:
            self.dest.account(self.fd, len(data), self._info.ident[0])
            if index < self._hashed and not self._same_on_disk(index, data):
                self._rehash_at_end()  # a repeated chunk (5.5) with other bytes: the digest covers what lands
            pwrite_full(self.fd, data, index * self.entry.chunk_size)
            if os.pwrite(self.jfd, record(index, checksum), self._jsize) != RECORD_SIZE:
                raise OSError(errno.ENOSPC, "short write to the journal")
            self._jsize += RECORD_SIZE
        except OSError as exc:
            raise storage_error(exc, f"cannot write {os.fsdecode(self.entry.path)}") from exc
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
        elif index in self._pending:  # repeated while it waits: the bytes now written are the ones to hash
            self._pending[index] = bytes(data)
        elif self._hashed < index < self._unkept:
            if self._pending_bytes + len(data) <= PENDING_LIMIT and self.dest.pending.take(len(data)):
                self._pending[index] = bytes(data)
                self._pending_bytes += len(data)
            else:  # the running hash can never pass this chunk: what waits behind it is of no use
                self._unkept = index
                for later in [i for i in self._pending if i > index]:
                    self._pending_bytes -= len(self._pending[later])
                    self.dest.pending.give(len(self._pending.pop(later)))

    def _same_on_disk(self, index: int, data) -> bool:
        """Whether chunk ``index`` on disk is ``data`` (read a block at a time: a chunk may be 16 MiB)."""
        view, offset = memoryview(data), index * self.entry.chunk_size
        buf = bytearray(min(len(view), READ_BLOCK))
        for at in range(0, len(view), len(buf)):
            piece = view[at : at + len(buf)]
            got = memoryview(buf)[: len(piece)]
            if pread_full(self.fd, got, offset + at) != len(piece) or got != piece:
                return False
        return True

    def _rehash_at_end(self) -> None:
        """Forget the running hash: ``finalize`` hashes the whole file from disk."""
        self._hasher = None
        self._hashed = 0
        self._drop_pending()
        self._unkept = 0  # nothing ahead is kept in memory any more

    def restart(self) -> None:
        """The sender says the held chunks are stale: forget them (and remove the partial's files)."""
        self.held = RangeSet()
        self._hasher = None
        self._hashed = 0
        self._drop_pending()
        self.discarded = "the source content changed since the partial was made"
        self._remove_files()

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
                        pread_full(self.fd, view[:n], index * e.chunk_size)
                        self._hashing().update(view[:n])
                digest = self._hashing().digest()
                if digest != expected:
                    self._unlink_files(self.dest.state_fd())
                    raise StorageError("whole-file digest mismatch: partial discarded", ErrorCode.DIGEST_MISMATCH)
                if os.fstat(self.fd).st_size != e.size:
                    os.ftruncate(self.fd, e.size)
                seal(self.fd, e.mode, e.mtime_ns)
                self._commit()
                unlink_quietly(self.jname, self.dest.state_fd())
                self._on_disk = False
            finally:
                budget.release(self)
        except OSError as exc:
            raise storage_error(exc, f"cannot finalize {os.fsdecode(e.path)}") from exc
        finally:
            self.close()
        return digest

    def _commit(self) -> None:
        """Our data file under the final name: linked (never over anything) or, with overwrite, renamed."""
        info, state, overwrite = self._info, self.dest.state_fd(), self.dest.overwrite
        with pinned(self.dest.dirs, self.dir_rel, create=True) as d:
            src_dir = state if info.where == IN_STATE else d.fd
            try:
                if overwrite:
                    self.dest.replacing(d.fd, self.name)  # an area's quota counts the difference
                if overwrite and info.where == IN_STATE:
                    os.rename(info.data_name, self.name, src_dir_fd=state, dst_dir_fd=d.fd)
                elif overwrite:  # a fresh random name first: the data's own name sits in a user's directory
                    tmp = self.dest.temps.take(d)  # recorded before it is made: a kill leaves none behind
                    try:
                        link_fd(self.fd, info.data_name, src_dir, tmp, d.fd)
                        try:
                            os.rename(tmp, self.name, src_dir_fd=d.fd, dst_dir_fd=d.fd)
                        except BaseException:
                            unlink_quietly(tmp, d.fd)
                            raise
                    finally:
                        self.dest.temps.done(tmp)
                    unlink_quietly(info.data_name, src_dir)
                else:
                    link_fd(self.fd, info.data_name, src_dir, self.name, d.fd)
                    unlink_quietly(info.data_name, src_dir)
            except FileExistsError:
                raise StorageError(f"{os.fsdecode(self.path)} appeared meanwhile; not replaced", ErrorCode.EXISTS) from None
            except IsADirectoryError:
                raise StorageError(f"{os.fsdecode(self.path)} exists and is a directory", ErrorCode.EXISTS) from None
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._commit_by_copy(d)  # a mount point appeared below --dir meanwhile
                unlink_quietly(info.data_name, src_dir)
            os.fsync(d.fd)

    def _commit_by_copy(self, d) -> None:
        t = Temp(d.fd, names=self.dest.temps.names(d))
        try:
            copy_fd(self.fd, t.fd, self.entry.size)
            seal(t.fd, self.entry.mode, self.entry.mtime_ns)
            try:
                t.replace(self.name) if self.dest.overwrite else t.link(self.name)
            except FileExistsError:
                raise StorageError(f"{os.fsdecode(self.path)} appeared meanwhile; not replaced",
                                   ErrorCode.EXISTS) from None
        finally:
            t.close()

    def discard(self) -> None:
        self._unlink_files(self.dest.state_fd(create=False))
        self.close()

    def _unlink_files(self, state: int) -> None:
        """Remove our journal and data file (by their names in our directories)."""
        if state >= 0:
            drop_files(self.dest, state, self.jname, self._info)
        if self._on_disk and self.dest.quota is not None:
            self.dest.dropped(self.path, self.held_bytes())
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

    def _remove_files(self) -> None:
        """Remove our journal and data, under the journal's lock (left alone if another process took them)."""
        if not self._on_disk:
            return
        budget = self.dest.descriptors
        try:
            budget.acquire(self)
        except (FtxError, OSError):
            self._on_disk = False
            return
        try:
            self._unlink_files(self.dest.state_fd())
        finally:
            budget.release(self)
            budget.forget(self)

    def close(self) -> None:
        """Release descriptors and the claim; the partial stays for a resume if it holds KEEP_MIN
        bytes of verified data, and is removed otherwise."""
        self._drop_pending()
        on_disk = self._on_disk
        if self.held_bytes() < KEEP_MIN:
            self._remove_files()
        if self.dest.quota is not None:  # a sender's area (ftx/areas.py): what was removed is counted back
            self.dest.dropped(self.path, self.held_bytes() if on_disk and not self._on_disk else 0)
        budget = self.dest.descriptors
        with budget.lock:  # from now on nothing reopens it (a worker thread may still be handling a chunk)
            self._closed = True
        budget.forget(self)
        self.close_descriptors()  # descriptors opened outside the budget (by ``open``)
        if self._claim is not None:
            mark_live(self._live_key, False)  # before the claim goes: a successor's entry must not be dropped
            self._claim.__exit__(None, None, None)
            self._claim = None
            self.dest.state_leave()


__all__ = ["KEEP_MIN", "PENDING_LIMIT", "PENDING_TOTAL", "PartialFile"]
