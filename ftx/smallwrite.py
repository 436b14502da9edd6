"""Small files, each received whole in one frame: ``write_small`` (one) and ``write_small_run``
(a run, the many-files path), methods of the receive root (storage.Destination).

A small file is written to an ``O_TMPFILE`` (or an exclusively created random name) in its
directory, its mode and mtime set, and linked under its name (EEXIST: the file that is there
stays); with --overwrite renamed over.  Durable once ``Destination.sync()`` has returned.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from xxhash import xxh3_128_digest

from . import claims, fileops
from .core.checksum import file_digest
from .core.manifest import MAX_COMPONENT, FileEntry, check_wire_path
from .errors import ErrorCode, FtxError, StorageError
from .fileops import FILE_FLAGS, Temp, creation_mode, hash_fd, link_new, pwrite_full, seal, storage_error
from .helddirs import HeldDir

STATE_DIR = b".ftx"  # the receiver's own state directory below --dir (storage.py)
SPACE_AGE = 1.0  # seconds a free-space figure is trusted
_OK = ErrorCode.OK
_digest_of = xxh3_128_digest  # checksum.file_digest, without its call (per small file)


class SmallWrites:
    """``Destination``'s small-file methods (it has ``dirs``, ``root``, ``overwrite``, ``quota``,
    ``limits``, ``_space``, ``_dirty``, ``_no_tmpfile``, ``_c_link_new``, ``temps``, ``_fits``,
    ``_written``, ``check``, ``replaced_size``)."""

    def write_small(self, entry: FileEntry, data, digest: bytes) -> ErrorCode:
        """Store a whole small file: verify, write a temporary in its directory, link it into place.

        Durable once ``sync()`` has returned.  The per-file Python is kept short (a tree of tiny
        files is mostly this): the path check, the free-space figure's fast case, the claim and
        the dirty mark are inline; anything unusual goes the long way (``_fits``, ``_written``)."""
        if file_digest(data) != digest:
            raise StorageError("whole-file digest mismatch", ErrorCode.DIGEST_MISMATCH)
        rel = entry.path
        check_wire_path(rel)
        if rel[:4] == STATE_DIR and (len(rel) == 4 or rel[4] == 47):  # b".ftx" or b".ftx/..."
            self.check(rel)  # raises
        parent, _, name = rel.rpartition(b"/")
        d = self.dirs.hold(parent, create=True)
        counted = 0  # bytes an area's quota counted for this file: given back unless it is stored
        size = len(data)
        try:
            if self.overwrite and self._same(d, name, size, digest):
                return ErrorCode.IDENTICAL
            if self.quota is not None:
                old = self.replaced_size(d.fd, name) if self.overwrite else 0
                self._fits(d.fd, d.dev, size, size, old)
                self._space[d.dev][2] += size
                self.quota.take(size - old)  # counted at once: small files arriving together cannot pass it
                counted = size - old
            elif size:  # _fits' common case inline: a fresh figure with room to spare
                ent = self._space.get(d.dev)
                if ent is None or ent[2] > ent[3] or size > ent[0] - ent[2] - self.limits.min_free \
                        or time.monotonic() - ent[1] > SPACE_AGE:
                    self._fits(d.fd, d.dev, size, size)
                    ent = self._space[d.dev]
                ent[2] += size
            key = self.root + b"/" + rel
            claims.take(key, entry)  # as claim() does, with no claim object: the entry marks it as ours
            try:
                t = None
                try:
                    # the common case in one call (a nameless file linked into place); else a Temp
                    if self.overwrite or d.dev in self._no_tmpfile:
                        done = False
                    elif (c_link_new := self._c_link_new) is not None:  # fileops.link_new, inline
                        mode = entry.mode
                        done = c_link_new(d.fd, name, data, creation_mode(mode), mode, entry.mtime_ns)
                    else:
                        done = link_new(d.fd, name, data, entry.mode, entry.mtime_ns)
                    if not done:
                        t = self._small_temp(d, rel, entry.mode)
                        if data and os.write(t.fd, data) != size:
                            pwrite_full(t.fd, data, 0)  # a short write (a signal, a full disk): finish or fail
                        seal(t.fd, entry.mode, entry.mtime_ns, sync=False,
                             chmod=bool(t.name) or creation_mode(entry.mode) != entry.mode & 0o777)
                        if self.overwrite:
                            t.replace(name)
                        else:
                            t.link(name)
                    counted = 0  # stored: it stays counted
                except FileExistsError:
                    if self._same(d, name, size, digest):
                        return ErrorCode.IDENTICAL
                    raise StorageError(f"{os.fsdecode(rel)} exists and differs (receiver has no --overwrite)",
                                       ErrorCode.EXISTS) from None
                except IsADirectoryError:
                    raise StorageError(f"{os.fsdecode(rel)} exists and is a directory", ErrorCode.EXISTS) from None
                except OSError as exc:
                    raise storage_error(exc, f"cannot write {os.fsdecode(rel)}") from exc
                finally:
                    if t is not None:
                        t.close()
            finally:
                claims.give(key, entry)
            if d.dev not in self._dirty:
                self._written(d)
        finally:
            if counted:
                self.quota.give(counted)
            self.dirs.release(d)
        return ErrorCode.OK

    def write_small_run(self, entries: list, datas: list, digests: list) -> list:
        """``write_small`` for a run of small files, in order: a list with, for each file,
        ErrorCode.OK, ErrorCode.IDENTICAL or the exception (FtxError, OSError) that failed it.

        The same checks and outcomes as file by file, with the per-file Python cut to the checks:
        consecutive files of one directory are one group -- its directory held once, its bytes
        checked against --min-free once (a group that does not fit goes file by file, for the
        exact refusals), its claims taken and given under one lock, its files written and linked
        by one C call (fileops.link_run).  --overwrite, an area's quota and file systems without
        O_TMPFILE go file by file."""
        n = len(entries)
        out = [_OK] * n
        if self.overwrite or self.quota is not None or not fileops.NAMELESS:
            for i in range(n):
                try:
                    out[i] = self.write_small(entries[i], datas[i], digests[i])
                except (FtxError, OSError) as exc:
                    out[i] = exc
            return out
        groups = []  # (parent, [index, ...]) of consecutive valid files with one parent
        parent = None
        idx: list = []
        digest_of = _digest_of
        for i in range(n):
            rel = entries[i].path
            try:
                if digest_of(datas[i]) != digests[i]:
                    raise StorageError("whole-file digest mismatch", ErrorCode.DIGEST_MISMATCH)
                # check_wire_path's common case inline (no leading '/' or '.', no '//', '/.', trailing
                # '/' or NUL, short): a path that starts with '.' (.ftx too) goes to the checks
                if not (0 < len(rel) <= MAX_COMPONENT and rel[0] != 47 and rel[0] != 46 and rel[-1] != 47
                        and rel.find(b"//") < 0 and rel.find(b"/.") < 0 and 0 not in rel):
                    self.check(rel)  # check_wire_path and .ftx: raises, or the path is fine after all
            except FtxError as exc:
                out[i] = exc
                continue
            p = rel[: rel.rfind(b"/") + 1]
            if p != parent:
                parent, idx = p, []
                groups.append((p, idx))
            idx.append(i)
        for parent, idx in groups:
            try:
                self._write_group(parent[:-1], idx, entries, datas, digests, out)
            except (FtxError, OSError) as exc:  # its directory: every file of the group fails alike
                for i in idx:
                    if out[i] is _OK:
                        out[i] = exc
        return out

    def _write_group(self, parent: bytes, idx: list, entries: list, datas: list, digests: list, out: list) -> None:
        """The files ``idx`` (checked, all in ``parent``) of ``write_small_run``; ``out`` gets their outcomes."""
        d = self.dirs.hold(parent, create=True)
        try:
            if d.dev in self._no_tmpfile:
                return self._one_by_one(idx, entries, datas, digests, out)
            total = 0
            for i in idx:
                total += len(datas[i])
            if total:  # _fits' common case: a fresh figure with room to spare for the whole group
                ent = self._space.get(d.dev)
                if ent is None or ent[2] > ent[3] or total > ent[0] - ent[2] - self.limits.min_free \
                        or time.monotonic() - ent[1] > SPACE_AGE:
                    try:
                        self._fits(d.fd, d.dev, total)
                    except StorageError:  # not all of them fit: file by file, each told exactly
                        return self._one_by_one(idx, entries, datas, digests, out)
                    ent = self._space[d.dev]
                ent[2] += total
            root = self.root + b"/"
            keys = [root + entries[i].path for i in idx]
            owner = object()  # the group's mark on each claim (a path twice in it is not busy: the second
            busy = claims.take_run(keys, owner)  # finds the first's file, as one by one)
            rest = None
            try:
                todo = idx
                if busy:
                    for k, exc in busy.items():
                        out[idx[k]] = exc
                    todo = [i for k, i in enumerate(idx) if k not in busy]
                cut = len(parent) + 1 if parent else 0
                done, failures, exc = fileops.link_run(
                    d.fd, [entries[i].path[cut:] for i in todo], [datas[i] for i in todo],
                    [entries[i].mode for i in todo], [entries[i].mtime_ns for i in todo])
                for k, err in failures:
                    i = todo[k]
                    out[i] = self._link_failed(d, entries[i], datas[i], digests[i], err)
                if done < len(todo):
                    if exc is not None:
                        raise exc
                    self._no_tmpfile.add(d.dev)
                    rest = todo[done:]
                if done and d.dev not in self._dirty:
                    self._written(d)
            finally:
                claims.give_run(keys, owner)
            if rest:  # this file system has no O_TMPFILE: the rest through a named temporary
                self._one_by_one(rest, entries, datas, digests, out)
        finally:
            self.dirs.release(d)

    def _one_by_one(self, idx: list, entries: list, datas: list, digests: list, out: list) -> None:
        for i in idx:
            try:
                out[i] = self.write_small(entries[i], datas[i], digests[i])
            except (FtxError, OSError) as exc:
                out[i] = exc

    def _link_failed(self, d: HeldDir, entry: FileEntry, data, digest: bytes, err: int):
        """The outcome of a small file whose link_run failed with ``err``, as write_small words it."""
        rel = entry.path
        name = rel.rpartition(b"/")[2]
        if err == errno.EEXIST:
            if self._same(d, name, len(data), digest):
                return ErrorCode.IDENTICAL
            return StorageError(f"{os.fsdecode(rel)} exists and differs (receiver has no --overwrite)",
                                ErrorCode.EXISTS)
        if err == errno.EISDIR:
            return StorageError(f"{os.fsdecode(rel)} exists and is a directory", ErrorCode.EXISTS)
        return storage_error(OSError(err, os.strerror(err)), f"cannot write {os.fsdecode(rel)}")

    def _small_temp(self, d: HeldDir, rel: bytes, mode: int) -> Temp:
        """A temporary for the small file ``rel`` in ``d`` (nameless where the file system allows)."""
        try:
            t = Temp(d.fd, d.dev not in self._no_tmpfile, creation_mode(mode), self.temps.names(d))
        except OSError as exc:
            raise storage_error(exc, f"cannot create {os.fsdecode(rel)}") from exc
        if t.no_tmpfile:
            self._no_tmpfile.add(d.dev)
        return t

    @staticmethod
    def _same(d: HeldDir, name: bytes, size: int, digest: bytes) -> bool:
        """Whether ``name`` is a regular file of ``size`` bytes with ``digest``."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | FILE_FLAGS, dir_fd=d.fd)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            return stat.S_ISREG(st.st_mode) and st.st_size == size and hash_fd(fd) == digest
        finally:
            os.close(fd)
