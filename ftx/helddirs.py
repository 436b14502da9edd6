"""Directories below --dir, held open: every path operation is relative to a descriptor.

A wire path is never handed to the kernel as a string from ``/``.  Each
directory component is opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to
its parent's descriptor, starting from the descriptor of ``--dir`` itself, and
created with ``mkdir(name, dir_fd=parent)`` when it is missing.  A symlink (or
anything else) swapped in for a component makes that open fail: nothing is
ever looked up through it.  Files are then opened, linked, renamed and
unlinked by name relative to the held descriptor of their own directory.

``HeldDirs`` keeps up to ``limit`` directory descriptors open (least recently
used ones close first), so a tree of many files does not re-walk every path: a
file in a directory seen recently costs no directory syscall at all.  A
descriptor in use is pinned and never closed under its user.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections import OrderedDict

from .errors import ErrorCode, StorageError, UnsafePath

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: directory descriptors kept open per receive root (its own bound, beside --max-open-files)
DIR_CACHE = 32
#: seconds a held descriptor is trusted to still be the directory at its path before it is looked at again
RECHECK = 0.5


def open_dir_at(parent: int, name: bytes, shown: bytes) -> int:
    """Open directory ``name`` in ``parent`` without following a symlink; typed errors."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    # which refusal to give (the open already failed: nothing is used on the strength of this look)
    try:
        link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        link = False
    if link:
        raise UnsafePath(f"refusing to write through symlink {os.fsdecode(shown)}")
    raise StorageError(f"{os.fsdecode(shown)} exists and is not a directory", ErrorCode.EXISTS)


class HeldDir:
    """One open directory: its descriptor, device and inode, and how many users pin it."""

    __slots__ = ("rel", "fd", "dev", "ino", "pins", "evicted", "checked")

    def __init__(self, rel: bytes, fd: int) -> None:
        st = os.fstat(fd)
        self.rel, self.fd, self.dev, self.ino = rel, fd, st.st_dev, st.st_ino
        self.pins = 0
        self.evicted = False
        self.checked = time.monotonic()


class HeldDirs:
    """An LRU of open directory descriptors below one root descriptor (which the caller owns)."""

    def __init__(self, root_fd: int, limit: int = DIR_CACHE) -> None:
        self.root = HeldDir(b"", root_fd)
        self.limit = max(1, limit)
        self._lock = threading.Lock()
        self._open: OrderedDict[bytes, HeldDir] = OrderedDict()

    # -- pinning -------------------------------------------------------------------
    def hold(self, rel: bytes, create: bool = False, mode: int = 0o755) -> HeldDir | None:
        """Pin the directory ``rel`` (b"" is the root); None if it is missing and not ``create``.

        Components that are missing are made with ``mode`` (the umask applies).
        Raises UnsafePath for a symlink on the way, StorageError(EXISTS) for a non-directory.
        """
        if not rel:
            return self.root
        with self._lock:
            held = self._open.get(rel)
            if held is not None:
                if time.monotonic() - held.checked > RECHECK and not self._still_there(held):
                    self._drop(rel)
                else:
                    self._open.move_to_end(rel)
                    held.pins += 1
                    return held
        return self._walk(rel, create, mode)

    def _still_there(self, held: HeldDir) -> bool:
        """Whether ``held`` is still the directory at its path (a user may have removed or renamed it
        between transfers: new files must then go where the path leads now, not into the old inode).
        Only decides whether to keep the descriptor: a new one is opened the safe way."""
        try:
            st = os.stat(held.rel, dir_fd=self.root.fd, follow_symlinks=False)
        except OSError:
            return False
        held.checked = time.monotonic()
        return (st.st_dev, st.st_ino) == (held.dev, held.ino)

    def _drop(self, rel: bytes) -> None:
        held = self._open.pop(rel)
        held.evicted = True
        if held.pins == 0:
            os.close(held.fd)

    def release(self, held: HeldDir | None) -> None:
        if held is None or held is self.root:
            return
        with self._lock:
            held.pins -= 1
            if held.evicted and held.pins == 0:
                os.close(held.fd)

    def close(self) -> None:
        with self._lock:
            for held in self._open.values():
                held.evicted = True
                if held.pins == 0:
                    os.close(held.fd)
            self._open.clear()

    # -- walking ---------------------------------------------------------------------
    def _walk(self, rel: bytes, create: bool, mode: int) -> HeldDir | None:
        parts = rel.split(b"/")
        # the deepest ancestor already held
        start, base = 0, self.root
        with self._lock:
            for i in range(len(parts) - 1, 0, -1):
                key = b"/".join(parts[:i])
                held = self._open.get(key)
                if held is not None:
                    if time.monotonic() - held.checked > RECHECK and not self._still_there(held):
                        self._drop(key)
                        continue
                    held.pins += 1
                    start, base = i, held
                    break
        cur = base
        try:
            for i in range(start, len(parts)):
                sub = b"/".join(parts[: i + 1])
                fd = self._open_component(cur.fd, parts[i], sub, create, mode)
                if fd < 0:
                    return None
                nxt = self._insert(sub, fd)
                self.release(cur)
                cur = nxt
            result, cur = cur, None
            return result
        finally:
            if cur is not None:
                self.release(cur)

    @staticmethod
    def _open_component(parent: int, name: bytes, shown: bytes, create: bool, mode: int) -> int:
        try:
            return open_dir_at(parent, name, shown)
        except FileNotFoundError:
            if not create:
                return -1
        try:
            os.mkdir(name, mode, dir_fd=parent)
        except FileExistsError:
            pass  # made meanwhile (another file of this tree): opened below like any other
        except OSError as exc:
            raise StorageError(f"cannot create directory {os.fsdecode(shown)}: {exc.strerror}") from exc
        return open_dir_at(parent, name, shown)

    def _insert(self, rel: bytes, fd: int) -> HeldDir:
        """Add (pinned) ``fd`` for ``rel``; if another thread got there first, use its descriptor."""
        fresh = HeldDir(rel, fd)
        with self._lock:
            held = self._open.get(rel)
            if held is not None:
                os.close(fd)
                self._open.move_to_end(rel)
                held.pins += 1
            else:
                held = self._open[rel] = fresh
                held.pins += 1  # before the eviction below, which must never pick it
                while len(self._open) > self.limit:
                    victim = next((h for h in self._open.values() if h.pins == 0), None)
                    if victim is None:
                        break  # every one is in use: over the bound until they are released
                    del self._open[victim.rel]
                    victim.evicted = True
                    os.close(victim.fd)
            return held

    def forget(self, rel: bytes) -> None:
        """Drop ``rel`` and everything below it from the cache (it was replaced or removed)."""
        with self._lock:
            for key in [k for k in self._open if k == rel or k.startswith(rel + b"/")]:
                self._drop(key)

    @property
    def open_count(self) -> int:
        return len(self._open)


class pinned:
    """``with pinned(dirs, rel, create) as d:`` -- ``d`` is a HeldDir or None."""

    __slots__ = ("dirs", "rel", "create", "mode", "held")

    def __init__(self, dirs: HeldDirs, rel: bytes, create: bool = False, mode: int = 0o755) -> None:
        self.dirs, self.rel, self.create, self.mode = dirs, rel, create, mode

    def __enter__(self) -> HeldDir | None:
        self.held = self.dirs.hold(self.rel, self.create, self.mode)
        return self.held

    def __exit__(self, *exc) -> None:
        self.dirs.release(self.held)


__all__ = ["DIR_CACHE", "HeldDir", "HeldDirs", "open_dir_at", "pinned"]
