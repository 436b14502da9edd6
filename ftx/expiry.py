"""Stale partial files go away: ftx's own sidecars untouched for ``--partial-ttl``.

A partial is the pair ``.name.ftx-journal`` + ``.name.ftx-part`` (storage.py).
Only pairs whose journal is a regular file starting with ftx's magic are
considered, so a user's file is never touched, whatever its name; a partial
that this process is using, or that another process holds locked, is skipped.
The receiver runs a pass at start and then every hour (or every TTL/2 when
that is shorter, at least a second apart), in a worker thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import stat
import time
from typing import Callable

from .storage import JOURNAL_MAGIC, JOURNAL_SUFFIX, PART_SUFFIX

log = logging.getLogger("ftx.receive")

DEFAULT_INTERVAL = 3600.0


def expire_partials(root: bytes, ttl: float, now: float | None = None,
                    in_use: Callable[[bytes], bool] = lambda path: False) -> list[tuple[bytes, int, float]]:
    """Remove partials below ``root`` whose files were all last modified ``ttl`` seconds ago or earlier.

    Returns (journal path, bytes freed, age in seconds) for each partial removed.
    Never follows a symlink, never removes anything but a pair it recognises.
    """
    now = time.time() if now is None else now
    removed = []
    for dirpath, names in _walk(root):
        for name in names:
            if not (name.startswith(b".") and name.endswith(JOURNAL_SUFFIX)):
                continue
            journal = os.path.join(dirpath, name)
            part = os.path.join(dirpath, name[: -len(JOURNAL_SUFFIX)] + PART_SUFFIX)
            if in_use(journal):
                continue
            gone = _remove_if_stale(journal, part, ttl, now, in_use)
            if gone is not None:
                removed.append((journal, *gone))
                rel = os.fsdecode(os.path.relpath(journal, root))
                log.warning("removed a stale partial file: %s (%d bytes, untouched for %.1f days)",
                            rel, gone[0], gone[1] / 86400)
    return removed


def _walk(root: bytes):
    """(directory, file names) for every directory below ``root``, iteratively (a sender can make
    the tree deeper than Python's recursion limit), never through a symlink."""
    stack = [root]
    while stack:
        top = stack.pop()
        names = []
        try:
            with os.scandir(top) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            names.append(entry.name)
                    except OSError:
                        continue
        except OSError:
            continue
        yield top, names


def _remove_if_stale(journal: bytes, part: bytes, ttl: float, now: float,
                     in_use: Callable[[bytes], bool]) -> tuple[int, float] | None:
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # vanished, a symlink, unreadable: not ours to judge
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or os.pread(fd, len(JOURNAL_MAGIC), 0) != JOURNAL_MAGIC:
            return None
        try:
            pst = os.lstat(part)
        except FileNotFoundError:
            pst = None
        if pst is not None and not stat.S_ISREG(pst.st_mode):
            return None
        newest = max(st.st_mtime, pst.st_mtime if pst is not None else 0.0)
        if now - newest < ttl:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a receiver writing it: in use
        except BlockingIOError:
            return None
        if in_use(journal):  # a connection took it up meanwhile (it registers before it opens)
            return None
        size = st.st_size + (pst.st_size if pst is not None else 0)
        if pst is not None:
            os.unlink(part)
        os.unlink(journal)
        return size, now - newest
    except OSError:
        return None
    finally:
        os.close(fd)


def interval_for(ttl: float) -> float:
    return min(DEFAULT_INTERVAL, max(1.0, ttl / 2))


async def expire_periodically(dest, ttl: float) -> None:
    """Run ``dest.expire_partials(ttl)`` now and then every ``interval_for(ttl)`` seconds, forever."""
    while True:
        try:
            await asyncio.to_thread(dest.expire_partials, ttl)
        except Exception as exc:  # a full disk or a vanished --dir must not stop the receiver
            log.warning("could not expire stale partial files: %s", exc)
        await asyncio.sleep(interval_for(ttl))


__all__ = ["expire_partials", "expire_periodically", "interval_for"]
