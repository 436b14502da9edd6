"""Stale partial files go away: journals and data in ``--dir/.ftx`` untouched for ``--partial-ttl``.

Only ftx's state directory is looked in (partial.py): the journals ``j-*`` and
the data they name, and data files ``p-<32 hex>`` that no journal names (left by
an older ftx killed between making the data and writing the journal's header;
today the header names the data before it is made).  Data kept beside its file
(a mount point below --dir) is reached only through the journal naming it, and
removed only if it is the file ftx made (``JournalHeader.made_by_us``), so a
user's file is never touched, whatever its name.  The logs of temporaries
``t-*`` that killed receivers left are swept too, whatever the TTL (templog.py).  A partial
that this process is using, or that another process holds locked, is skipped.
The receiver runs a pass at start and then every hour (or every TTL/2 when
that is shorter, at least a second apart), in a worker thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import stat
import time
from typing import Callable

from . import templog
from .errors import FtxError
from .fileops import FILE_FLAGS
from .helddirs import pinned
from .journal import IN_STATE, JournalHeader, drop_files

log = logging.getLogger("ftx.receive")

DEFAULT_INTERVAL = 3600.0
_DATA_NAME = re.compile(r"p-[0-9a-f]{32}")  # journal.data_name in .ftx


def expire_partials(dest, ttl: float, now: float | None = None,
                    in_use: Callable[[bytes], bool] = lambda key: False) -> list[tuple[bytes, int, float]]:
    """Remove partials of ``dest`` whose files were all last modified ``ttl`` seconds ago or earlier.

    Returns (wire path, bytes freed, age in seconds) for each partial removed.
    """
    now = time.time() if now is None else now
    state = dest.state_fd()
    if state < 0:
        return []
    removed = []
    named: set[bytes] = set()  # data files some journal names
    try:
        with os.scandir(state) as it:
            names = [e.name for e in it]
    except OSError:
        return []
    for name in names:
        if not name.startswith("j-"):
            continue
        gone = _remove_if_stale(dest, state, os.fsencode(name), ttl, now, in_use, named)
        if gone is not None:
            removed.append(gone)
            log.warning("removed a stale partial file: %s (%d bytes, untouched for %.1f days)",
                        os.fsdecode(gone[0]), gone[1], gone[2] / 86400)
    templog.sweep(dest, state, names)  # temporaries in users' directories that killed receivers recorded
    for name in names:  # data in .ftx that no journal names (an older ftx, killed before its header)
        bname = os.fsencode(name)
        if not _DATA_NAME.fullmatch(name) or bname in named:
            continue
        try:
            st = os.stat(bname, dir_fd=state, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= ttl:
                os.unlink(bname, dir_fd=state)
                removed.append((bname, min(st.st_size, st.st_blocks * 512), now - st.st_mtime))
        except OSError:
            continue
    return removed


def _remove_if_stale(dest, state: int, jname: bytes, ttl: float, now: float, in_use, named: set):
    try:
        fd = os.open(jname, os.O_RDONLY | os.O_NONBLOCK | FILE_FLAGS, dir_fd=state)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        info = JournalHeader.parse(os.pread(fd, 1 << 13, 0))
        newest = st.st_mtime
        if info is not None:
            if info.where == IN_STATE:
                named.add(info.data_name)
            newest = max(newest, _data_mtime(dest, state, info))
        if now - newest < ttl:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a receiver writing it: in use
        except BlockingIOError:
            return None
        if in_use(dest.state_key(jname)):  # a connection took it up meanwhile (it registers before it opens)
            return None
        size = st.st_size + drop_files(dest, state, jname, info)
        return (info.path if info is not None else jname), size, now - newest
    except OSError:
        return None
    finally:
        os.close(fd)


def _data_mtime(dest, state: int, info: JournalHeader) -> float:
    try:
        if info.where == IN_STATE:
            return os.stat(info.data_name, dir_fd=state, follow_symlinks=False).st_mtime
        with pinned(dest.dirs, info.path.rpartition(b"/")[0]) as d:
            if d is not None:
                return os.stat(info.data_name, dir_fd=d.fd, follow_symlinks=False).st_mtime
    except (OSError, FtxError):
        pass
    return 0.0


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
