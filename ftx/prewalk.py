"""The sender's tree listed ahead, in a thread, while ``ftx send`` starts up (``Prewalk``).

``ftx send`` spends some 60 ms importing, connecting and authenticating on one core;
meanwhile a thread lists and lstat's the named trees (``_smallread.prewalk``: C, without
the GIL, each directory opened under its parent's descriptor with O_NOFOLLOW), so that
``source.walk_groups`` has each directory's CHECK_DIR digest at hand and lists a directory
again only where its items are needed (one the receiver does not hold as it is, or the
first ``FILES_LISTED`` items of the report; see ``source.DirGroup``).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from typing import Iterable

from .core.manifest import MAX_PATH, Kind
from .errors import FtxError
from .source import arguments

log = logging.getLogger("ftx.send")

try:  # optional C helper (setup.py); without it (or with FTX_PURE_PYTHON=1) nothing is listed ahead
    from ._smallread import prewalk as _c_prewalk
except ImportError:  # pragma: no cover - no compiler where ftx was installed
    _c_prewalk = None
if os.environ.get("FTX_PURE_PYTHON"):
    _c_prewalk = None

PREWALK_ENTRIES = 1 << 15
"""Entries a ``Prewalk`` lists at most (about 40 ms of lstat on tmpfs); the directories after
them, and any holding a symlink, special file or name ftx skips, the walk lists as it goes."""
PREWALK_DEPTH = 64  # directory levels below a named directory it goes into (descriptors it holds)
PREWALK_WAIT = 0.05
"""Seconds the walk waits for a walk ahead that is not done yet before it stops it.  Listed here,
an entry costs the send's own thread ~3 us (lstat, and the item made in Python); the thread ahead
lists it in ~1.3 us on another core.  A re-send of 20 000 files asked ~1 ms before the thread was
done, 7 times in 8: it stopped it and listed up to 3 700 entries itself (2-15 ms).  Bounded for
a thread that gets little of a core, or a slow file system."""


class Prewalk:
    """The named directories' trees listed ahead, in a thread.

    Each directory's entry: (path relative to the named directory, st_dev, st_ino, entry
    count, listing records, regular files, their bytes, subdirectories as (name, st_mode)).
    A directory holding a symlink, special file or name the walk skips, and all below it,
    is left to the walk.  Bounded: ``PREWALK_ENTRIES`` entries
    in all (their names and records held until their groups are made), ``PREWALK_DEPTH``
    levels.  ``known`` waits for the thread.  ``after``: called in the thread once the walk is
    done (ftx send imports its JSON output there, while its own thread waits on the network).
    ``freeze`` (the ``ftx`` command): what the walk made is frozen (``gc.freeze``) before ``known``
    returns it, as the command froze its modules when its loop started (cli._loaded): it stays until
    its groups are sent, and the collector's older generations walked it again and again (~2 ms
    of a re-send of 20 000 files); reference counts still free it."""

    def __init__(self, paths: Iterable[str | bytes], after=None, freeze: bool = False) -> None:
        self.roots = [os.fsencode(p) for p in paths]
        self._known: dict[bytes, dict[bytes, tuple]] = {}
        self._after = after
        self._freeze = freeze
        self._stop = bytearray(1)  # set by known(): the C walk ends at the next directory
        self._walked = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftx-prewalk", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            try:
                self._walk()
                if self._freeze:
                    gc.freeze()
            finally:
                self._walked.set()
            if self._after is not None:
                self._after()
        except Exception:  # whatever went wrong here, the walk lists those directories itself
            log.debug("listing ahead failed", exc_info=True)

    def _walk(self) -> None:
        budget = PREWALK_ENTRIES
        try:
            tops = arguments(self.roots)
        except FtxError:
            return
        for item in tops:
            if item.kind != Kind.DIR or budget <= 0 or self._stop[0]:
                continue
            try:
                found = _c_prewalk(item.local, budget, PREWALK_DEPTH, MAX_PATH - len(item.wire), MAX_PATH,
                                   self._stop)
            except (OSError, MemoryError):
                continue
            self._known[item.local] = {entry[0]: entry for entry in found}
            budget -= sum(entry[3] for entry in found)

    def wait(self) -> None:
        """Until the walk is done (not ``after``)."""
        self._walked.wait()

    def stop(self) -> None:
        """Not wanted after all: the walk ends at its next directory."""
        self._stop[0] = 1

    def known(self, local: bytes) -> dict[bytes, tuple] | None:
        """What was listed ahead below the named directory ``local``: relative path -> entry.
        A walk not done within ``PREWALK_WAIT`` ends at its next directory (on a busy machine the
        thread may have had little of a core): what it listed is used, the sender lists the rest
        as it goes."""
        if not self._walked.wait(PREWALK_WAIT):
            self._stop[0] = 1
            self.wait()
        return self._known.pop(local, None)


_started: Prewalk | None = None  # the one ``start_prewalk`` began, until ``take_prewalk``


def start_prewalk(paths: Iterable[str | bytes], after=None, freeze: bool = False) -> None:
    """Begin listing ``paths`` ahead (``Prewalk``), for the ``walk_groups`` of a send of them:
    unless that listing is begun already (the program's entry began it before the command line
    was parsed: ftx/entry.py); one of other paths is stopped."""
    global _started
    roots = [os.fsencode(p) for p in paths]
    if _started is not None:
        if _started.roots == roots:
            return
        _started.stop()
    if _c_prewalk is not None:
        _started = Prewalk(roots, after, freeze)


def take_prewalk(paths: Iterable[str | bytes]) -> Prewalk | None:
    """The ``Prewalk`` begun for exactly ``paths``, if any (once); one of other paths is stopped."""
    global _started
    found, _started = _started, None
    if found is not None and found.roots != [os.fsencode(p) for p in paths]:
        found.stop()
        return None
    return found
