"""Named temporaries in users' directories, recorded before they are made, so that no kill leaves one.

Where ftx needs a temporary under a name in a destination directory -- ``.ftx-<32 random hex>.tmp``:
a small file on a file system without O_TMPFILE, a file put in place with --overwrite (a name to
rename over the old file from), a symlink, a file copied across a mount point -- the name is first
written to this receiver's log of temporaries in its state directory::

    --dir/.ftx/t-<32 random hex>   "FTXT" u16 version=1, then records, big-endian:
        u8 kind (0 a regular file, 1 a symlink) u64 st_dev u64 st_ino (of the directory)
        u16 path_len u16 count, the directory's wire path (empty: --dir itself),
        count x 16-byte tokens (a token names ``.ftx-<token hex>.tmp``), u64 xxh3_64 of the record

A directory gets ``RESERVE`` names in one record, handed out one per temporary, so a run of files
in one directory costs one write.  The log is made (``O_CREAT | O_EXCL``) and ``flock``ed by the
first name, and removed by ``settle`` (``Destination.sync``, after the batch's ``syncfs``; and on
close) once every name handed out is gone again: linked or renamed away, or unlinked.

``sweep`` (at start and with every expiry pass, whatever --partial-ttl): for each log that no live
receiver holds locked, every recorded name that still exists is removed -- only if its directory,
reached from --dir through held descriptors (``O_NOFOLLOW`` on every component), is the recorded
(st_dev, st_ino), and the name is a regular file (kind 1: a symlink) owned by this user; nothing
else, whatever its name.  Then the log goes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import struct
import threading

import xxhash

from .errors import FtxError, StorageError
from .fileops import FILE_FLAGS, unlink_quietly
from .helddirs import HeldDir, pinned

log = logging.getLogger("ftx.receive")

MAGIC, VERSION = b"FTXT", 1
HEAD = struct.Struct(">4sH")
RECORD = struct.Struct(">BQQHH")
TOKEN = 16
FILE, SYMLINK = 0, 1
RESERVE = 32  # names recorded at once for one directory
LOG_LIMIT = 1 << 20  # a log this long is started afresh with only the names still out
READ_LIMIT = 4 * LOG_LIMIT  # what a sweep reads of one log (ours stay below LOG_LIMIT + one record)
LOG_NAME = re.compile(r"t-[0-9a-f]{32}")


def temp_name(token: bytes) -> bytes:
    return b".ftx-" + token.hex().encode() + b".tmp"


def pack_record(kind: int, rel: bytes, dev: int, ino: int, tokens) -> bytes:
    """One record: ``tokens`` a list of 16-byte tokens, or their bytes joined."""
    raw = tokens if isinstance(tokens, bytes) else b"".join(tokens)
    rec = RECORD.pack(kind, dev, ino, len(rel), len(raw) // TOKEN) + rel + raw
    return rec + xxhash.xxh3_64_digest(rec)


def parse_log(raw: bytes) -> list:
    """The records of a log: (kind, rel, dev, ino, tokens), up to the first torn or bad one."""
    if len(raw) < HEAD.size or HEAD.unpack_from(raw) != (MAGIC, VERSION):
        return []
    out = []
    off = HEAD.size
    while off + RECORD.size <= len(raw):
        kind, dev, ino, plen, count = RECORD.unpack_from(raw, off)
        end = off + RECORD.size + plen + count * TOKEN
        if kind not in (FILE, SYMLINK) or end + 8 > len(raw) \
                or xxhash.xxh3_64_digest(raw[off:end]) != raw[end : end + 8]:
            break
        rel = raw[off + RECORD.size : off + RECORD.size + plen]
        tokens = [raw[i : i + TOKEN] for i in range(off + RECORD.size + plen, end, TOKEN)]
        out.append((kind, rel, dev, ino, tokens))
        off = end + 8
    return out


class Names:
    """Where ``fileops.Temp`` gets its names in one directory: ``take()`` a recorded one, ``done(name)``
    once that name is gone again."""

    __slots__ = ("log", "d", "kind")

    def __init__(self, templog: "TempLog", d: HeldDir, kind: int = FILE) -> None:
        self.log, self.d, self.kind = templog, d, kind

    def take(self) -> bytes:
        return self.log.take(self.d, self.kind)

    def done(self, name: bytes) -> None:
        self.log.done(name)


class TempLog:
    """A receive root's log of the temporaries it may have made (one per Destination)."""

    def __init__(self, dest) -> None:
        self.dest = dest
        self._lock = threading.Lock()
        self._fd = -1
        self._name = b""
        self._size = 0
        self._pool: dict[tuple, list] = {}  # (kind, rel, dev, ino) -> recorded tokens not handed out
        self._out: dict[bytes, tuple] = {}  # name handed out -> (kind, rel, dev, ino): it may exist

    def names(self, d: HeldDir, kind: int = FILE) -> Names:
        return Names(self, d, kind)

    def take(self, d: HeldDir, kind: int = FILE) -> bytes:
        """A name for a temporary in ``d``, recorded in the log before it is returned."""
        key = (kind, d.rel, d.dev, d.ino)
        with self._lock:
            pool = self._pool.get(key)
            if not pool:
                raw = secrets.token_bytes(TOKEN * (RESERVE if kind == FILE else 1))
                self._append(pack_record(kind, d.rel, d.dev, d.ino, raw))
                pool = self._pool[key] = [raw[i : i + TOKEN] for i in range(0, len(raw), TOKEN)]
            name = temp_name(pool.pop())
            self._out[name] = key
            return name

    def done(self, name: bytes) -> None:
        """``name`` is gone (renamed or linked away and unlinked, or never made)."""
        with self._lock:
            self._out.pop(name, None)

    def settle(self) -> None:
        """Remove the log if no name handed out may still exist (after a batch's sync, and on close)."""
        if self._fd < 0:
            return
        with self._lock:
            if self._fd >= 0 and not self._out:
                self._pool.clear()
                self._drop(self._fd, self._name)
                self._fd, self._name, self._size = -1, b"", 0

    # -- the log file -------------------------------------------------------------
    def _append(self, rec: bytes) -> None:
        try:
            if self._fd >= 0 and self._size + len(rec) > LOG_LIMIT:
                self._rotate()
            if self._fd < 0:
                self._fd, self._name = self._create()
                self._size = HEAD.size
            if os.pwrite(self._fd, rec, self._size) != len(rec):  # a full disk: the next one goes here
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._size += len(rec)
        except OSError as exc:
            raise StorageError(f"cannot record a temporary in .ftx: {exc.strerror or exc}") from None

    def _create(self) -> tuple[int, bytes]:
        """A new log, exclusively ours and locked for as long as we use it."""
        self.dest.state_enter()  # .ftx stays while the log is in it
        try:
            for _ in range(8):
                state = self.dest.state_fd(create=True)
                name = b"t-" + secrets.token_hex(16).encode()
                try:
                    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | FILE_FLAGS, 0o600, dir_fd=state)
                except FileExistsError:
                    continue
                except FileNotFoundError:  # another receiver on this --dir removed .ftx when it was empty
                    self.dest.state_lost(state)
                    continue
                try:  # a sweep of another receiver may have taken (and removed) it in between: another name
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if os.fstat(fd).st_nlink:
                        if os.pwrite(fd, HEAD.pack(MAGIC, VERSION), 0) != HEAD.size:
                            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                        return fd, name
                except BlockingIOError:
                    pass
                except BaseException:
                    unlink_quietly(name, state)
                    os.close(fd)
                    raise
                os.close(fd)
            raise StorageError("cannot make a log of temporaries in .ftx")
        except BaseException:
            self.dest.state_leave()
            raise

    def _rotate(self) -> None:
        """Start a new log with the names still out, then drop the old one (a kill in between leaves
        both, and a sweep reads both)."""
        groups: dict[tuple, list] = {}
        for name, key in self._out.items():
            groups.setdefault(key, []).append(bytes.fromhex(name[5:-4].decode()))
        recs = b"".join(pack_record(kind, rel, dev, ino, tokens) for (kind, rel, dev, ino), tokens in groups.items())
        fd, name = self._create()
        try:
            if recs and os.pwrite(fd, recs, HEAD.size) != len(recs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except BaseException:
            self._drop(fd, name)  # the old log stays, with every name still out
            raise
        self._drop(self._fd, self._name)
        self._fd, self._name, self._size = fd, name, HEAD.size + len(recs)
        self._pool.clear()

    def _drop(self, fd: int, name: bytes) -> None:
        try:
            unlink_quietly(name, self.dest.state_fd())
        except FtxError:
            pass
        os.close(fd)
        self.dest.state_leave()

    def close(self) -> None:
        self.settle()


def sweep(dest, state: int, names: list) -> list[bytes]:
    """Remove what dead receivers' logs (``t-*`` among ``names`` in ``.ftx``, fd ``state``) record and
    what still exists as recorded; return the wire paths removed.  Logs locked by a live receiver
    (this one's own included) are left alone."""
    removed: list[bytes] = []
    for name in names:
        if not LOG_NAME.fullmatch(name):
            continue
        bname = os.fsencode(name)
        try:
            fd = os.open(bname, os.O_RDONLY | os.O_NONBLOCK | FILE_FLAGS, dir_fd=state)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use by a live receiver
            raw = os.pread(fd, READ_LIMIT, 0)
            keep = False
            for rec in parse_log(raw):
                keep |= _remove_recorded(dest, rec, removed)
            if not keep:
                os.unlink(bname, dir_fd=state)
        except OSError:
            continue
        finally:
            os.close(fd)
    for path in removed:
        log.warning("removed a temporary file left by a receiver that was killed: %s", os.fsdecode(path))
    return removed


def _remove_recorded(dest, rec: tuple, removed: list) -> bool:
    """Remove the names of one record that exist as recorded; True if its directory could not be
    looked at now (an error worth another try: the log stays)."""
    kind, rel, dev, ino, tokens = rec
    want = stat.S_ISLNK if kind == SYMLINK else stat.S_ISREG
    uid = os.geteuid()
    try:
        if rel:
            dest.check(rel)
        with pinned(dest.dirs, rel) as d:
            if d is None or (d.dev, d.ino) != (dev, ino):
                return False  # not the directory it was made in: nothing there is ours
            for token in tokens:
                name = temp_name(token)
                try:
                    st = os.stat(name, dir_fd=d.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if want(st.st_mode) and st.st_uid == uid:
                    os.unlink(name, dir_fd=d.fd)
                    removed.append(rel + b"/" + name if rel else name)
    except FtxError:
        return False  # a symlink or a file where the directory was: not reachable as recorded
    except OSError as exc:
        return exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
    return False


__all__ = ["FILE", "SYMLINK", "Names", "TempLog", "parse_log", "sweep", "temp_name"]
