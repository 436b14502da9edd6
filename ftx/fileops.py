"""Small file-system steps shared by the receiver's storage modules, all on descriptors.

Temporaries are made exclusively: ``O_TMPFILE`` (nameless until linked) where
the file system supports it, else ``O_CREAT | O_EXCL | O_NOFOLLOW`` with a
random name; mode 0600.  A file is put under its final name with
``linkat(/proc/self/fd/N)`` -- the very inode ftx holds open, never a name
someone could have swapped -- which fails with EEXIST instead of replacing
anything; with --overwrite, through ``renameat``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets

from .core.checksum import FileHasher
from .errors import ErrorCode, StorageError

READ_BLOCK = 1024 * 1024
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC
_TMPFILE = getattr(os, "O_TMPFILE", 0)
_PROC_FD = os.path.isdir("/proc/self/fd")
try:  # optional C helper (setup.py); FTX_PURE_PYTHON=1 runs the Python reference instead
    from ._smallfile import link_new as _c_link_new, link_run as _c_link_run
except ImportError:
    _c_link_new = _c_link_run = None
if os.environ.get("FTX_PURE_PYTHON"):
    _c_link_new = _c_link_run = None


def storage_error(exc: OSError, what: str) -> StorageError:
    return StorageError(f"{what}: {os.strerror(exc.errno) if exc.errno else exc}")


def pread_full(fd: int, view: memoryview, offset: int) -> int:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def pwrite_full(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def hash_fd(fd: int, block: int = READ_BLOCK, hasher=None) -> bytes:
    """XXH3-128 of an open file from its start, streaming (into ``hasher`` when given: one
    that also computes another digest over the same read)."""
    h = hasher if hasher is not None else FileHasher()
    buf = bytearray(block)
    view = memoryview(buf)
    offset = 0
    while n := os.preadv(fd, [view], offset):
        h.update(view[:n])
        offset += n
    return h.digest()


def random_name(prefix: bytes, suffix: bytes = b"") -> bytes:
    return prefix + secrets.token_hex(16).encode() + suffix


def unlink_quietly(name: bytes, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


class Temp:
    """A new file in a held directory: nameless (O_TMPFILE) or under a random name of ours."""

    __slots__ = ("fd", "name", "dir_fd", "no_tmpfile", "names")

    def __init__(self, dir_fd: int, try_tmpfile: bool = True, mode: int = 0o600, names=None) -> None:
        """``mode`` other than 0600 only for a nameless file (nobody can open it before it is linked).
        ``names``: where a name comes from when one is needed -- ``names.take()`` one recorded in the
        receiver's state before it is used, ``names.done(name)`` once it is gone (templog.Names), so
        that a kill leaves none behind; None: an unrecorded random name (tests)."""
        self.dir_fd = dir_fd
        self.name = b""
        self.names = names
        self.no_tmpfile = False  # set when the file system refused O_TMPFILE: the caller need not try again
        if _TMPFILE and _PROC_FD and try_tmpfile:
            try:
                self.fd = os.open(b".", _TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode, dir_fd=dir_fd)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self.no_tmpfile = True
        self.fd, self.name = create_exclusive(dir_fd, b".ftx-", b".tmp", names)

    def link(self, name: bytes) -> None:
        """Give the file ``name`` in its directory; FileExistsError if anything is there already."""
        link_fd(self.fd, self.name, self.dir_fd, name, self.dir_fd)

    def replace(self, name: bytes) -> None:
        """Put the file at ``name``, replacing what is there (--overwrite)."""
        if not self.name:  # nameless: first a random name of ours, then rename over
            tmp = self.names.take() if self.names is not None else random_name(b".ftx-", b".tmp")
            try:
                link_fd(self.fd, b"", self.dir_fd, tmp, self.dir_fd)
            except BaseException:
                if self.names is not None:
                    self.names.done(tmp)
                raise
            self.name = tmp  # close() removes it (and says it is gone) if the rename fails
        os.rename(self.name, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        if self.names is not None:
            self.names.done(self.name)
        self.name = b""

    def close(self) -> None:
        """Close; a named temporary that was not linked elsewhere is removed."""
        os.close(self.fd)
        if self.name:
            unlink_quietly(self.name, self.dir_fd)
            if self.names is not None:
                self.names.done(self.name)
            self.name = b""


_NAMELESS = _TMPFILE | os.O_RDWR | os.O_CLOEXEC
NAMELESS = bool(_TMPFILE and _PROC_FD)  # link_new / link_run can work here (per file system: they may say no)


def link_new(dir_fd: int, name: bytes, data, mode: int, mtime_ns: int) -> bool:
    """A whole small file at ``name`` in ``dir_fd`` in one call, as ``Temp`` + ``seal`` + ``link``
    would make it: nameless, its bytes, ``mode`` (set by ``creation_mode`` where the umask allows,
    else by fchmod) and mtime, then linked -- FileExistsError if anything is there.  False (nothing
    done) where the file system has no O_TMPFILE: then use ``Temp``.

    The C helper ``ftx._smallfile`` does it in one call (a quarter of the receiver session's CPU
    per tiny file is spent here, mostly in the system calls: the helper drops the five Python
    calls around them); ``py_link_new`` where it is not built or FTX_PURE_PYTHON=1."""
    if not (_TMPFILE and _PROC_FD):
        return False
    if _c_link_new is not None:
        return _c_link_new(dir_fd, name, data, creation_mode(mode), mode, mtime_ns)
    return py_link_new(dir_fd, name, data, mode, mtime_ns)


def py_link_new(dir_fd: int, name: bytes, data, mode: int, mtime_ns: int) -> bool:
    """``link_new`` in Python: the reference the C helper is tested against."""
    if not (_TMPFILE and _PROC_FD):
        return False
    create = creation_mode(mode)
    try:
        fd = os.open(b".", _NAMELESS, create, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        return False
    try:
        if data and os.write(fd, data) != len(data):
            pwrite_full(fd, data, 0)  # a short write (a signal, a full disk): finish or fail
        if create != mode & 0o777:
            os.fchmod(fd, mode & 0o777)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        os.link(b"/proc/self/fd/%d" % fd, name, dst_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(fd)
    return True


def link_run(dir_fd: int, names: list, datas: list, modes: list, mtimes: list) -> tuple:
    """``link_new`` for a run of small files in one directory, in order: (done, failures, exc).

    ``failures``: (index, errno) of the files that failed (EEXIST: something is at the name); the
    others before ``done`` are linked.  ``done`` < len(names): nothing was done from that index on --
    the file system has no O_TMPFILE (``exc`` None: use ``Temp``), or a signal handler raised ``exc``.
    The C helper runs the loop (``ftx._smallfile.link_run``); ``py_link_run`` is its reference."""
    if not (_TMPFILE and _PROC_FD):
        return 0, [], None
    if _c_link_run is not None:
        return _c_link_run(dir_fd, names, datas, modes, mtimes, -1 if UMASK is None else UMASK)
    return py_link_run(dir_fd, names, datas, modes, mtimes)


def py_link_run(dir_fd: int, names: list, datas: list, modes: list, mtimes: list) -> tuple:
    """``link_run`` in Python (the reference the C helper is tested against)."""
    failures = []
    for i, name in enumerate(names):
        try:
            if not py_link_new(dir_fd, name, datas[i], modes[i], mtimes[i]):
                return i, failures, None
        except OSError as exc:
            failures.append((i, exc.errno))
        except BaseException as exc:  # a signal handler's exception: stop here, as the C helper does
            return i, failures, exc
    return len(names), failures, None


def create_exclusive(dir_fd: int, prefix: bytes, suffix: bytes = b"", names=None) -> tuple[int, bytes]:
    """A new regular file under a random name in ``dir_fd`` (never an existing one); (fd, name).
    ``names``: as for ``Temp`` (the name is recorded before it is made)."""
    for _ in range(8):
        name = names.take() if names is not None else random_name(prefix, suffix)
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | FILE_FLAGS, 0o600, dir_fd=dir_fd), name
        except BaseException as exc:
            if names is not None:
                names.done(name)
            if not isinstance(exc, FileExistsError):
                raise
    raise StorageError("cannot create a temporary file: every random name was taken")


def link_fd(fd: int, name: bytes, src_dir: int, dest: bytes, dst_dir: int) -> None:
    """``linkat`` the open file ``fd`` (named ``name`` in ``src_dir``, if it has a name) to ``dest``.

    Through /proc/self/fd the link is made to the inode held open, whatever is at
    ``name`` now; FileExistsError if ``dest`` exists, OSError(EXDEV) across file systems.
    """
    if _PROC_FD:
        os.link(b"/proc/self/fd/%d" % fd, dest, dst_dir_fd=dst_dir, follow_symlinks=True)
    else:
        if not name:
            raise OSError(errno.EOPNOTSUPP, "a nameless file cannot be linked without /proc")
        os.link(name, dest, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)


def _read_umask() -> int | None:
    """The process umask, read without changing it (os.umask would, racing other threads)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


UMASK = _read_umask()


def creation_mode(mode: int) -> int:
    """The mode to create a nameless file with so that no fchmod is needed (0600 when the umask would
    take bits away: then ``seal`` sets it)."""
    mode &= 0o777
    return mode if UMASK is not None and not mode & UMASK else 0o600


def seal(fd: int, mode: int, mtime_ns: int, sync: bool = True, chmod: bool = True) -> None:
    """The received mode and mtime on the open file; fsync it if ``sync``."""
    if chmod:
        os.fchmod(fd, mode & 0o777)
    os.utime(fd, ns=(mtime_ns, mtime_ns))
    if sync:
        os.fsync(fd)


def copy_fd(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from the start of ``src`` to ``dst`` (a mount point moved under --dir)."""
    offset = 0
    while offset < size:
        try:
            n = os.copy_file_range(src, dst, size - offset, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            n = 0
        if n == 0:
            data = os.pread(src, min(READ_BLOCK, size - offset), offset)
            if not data:
                break
            pwrite_full(dst, data, offset)
            n = len(data)
        offset += n


_libc = None


def syncfs(fd: int) -> None:
    """Flush the file system holding ``fd`` (syncfs(2)); fsync of ``fd`` alone where it is missing."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.syncfs.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        if _libc.syncfs(fd) == 0:
            return
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    os.sync()


def exists_error(shown: bytes, what: str = "exists and differs (receiver has no --overwrite)") -> StorageError:
    return StorageError(f"{os.fsdecode(shown)} {what}", ErrorCode.EXISTS)


__all__ = ["Temp", "copy_fd", "create_exclusive", "hash_fd", "link_fd", "link_new", "pread_full", "pwrite_full",
           "random_name", "seal", "storage_error", "syncfs", "unlink_quietly"]
