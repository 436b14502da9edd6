"""The receiver's side of a directory check (CHECK_DIR, protocol.md 5.11): list and digest.

``directory_state`` lists one destination directory and compares its direct
entries with what the sender announced.  A peer chooses the directory and
claims the count, so the cost is bounded: at most ``count + 1`` entries (and
never more than ``MAX_CHECK_ENTRIES + 1``) are read, and held in at most
``MAX_LISTING_BYTES`` (long names and symlink targets could otherwise make one
listing hold ~290 MiB); at most ``LISTINGS_AT_ONCE`` listings are held at once in
the process, whatever the number of senders; one directory descriptor is open
while it runs, nothing is created or changed.  A listing past its bound is not
compared (DIR_DIFFERENT): the sender goes on item by item, each with its own
quick check.

ftx's own names (``core.tree.is_ftx_own``: the state directory and temporaries)
are left out, as the sender's walk leaves them out.
"""

from __future__ import annotations

import os
import stat
import threading

from .core.manifest import Kind
from .core.messages import DIR_ABSENT, DIR_DIFFERENT, DIR_SAME
from .core.tree import MAX_CHECK_ENTRIES, ListingHasher, entry_record, is_ftx_own
from .errors import FtxError

try:  # optional C helper (setup.py); FTX_PURE_PYTHON=1 lists in Python
    from ._smallread import dir_digest as _c_dir_digest
except ImportError:  # pragma: no cover - where the C helper is not built
    _c_dir_digest = None
if os.environ.get("FTX_PURE_PYTHON"):
    _c_dir_digest = None

_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


MAX_LISTING_BYTES = 16 << 20
"""Memory one listing may hold: each entry counts its name, its digest record and
``ENTRY_OVERHEAD`` (65 536 entries of 20-byte names take ~6 MiB)."""
ENTRY_OVERHEAD = 48  # a bytes object's header and its list slot
LISTINGS_AT_ONCE = 2  # listings held at once, all sessions together (worker threads wait)
_listing_slots = threading.BoundedSemaphore(LISTINGS_AT_ONCE)


class NotComparable(Exception):
    """The directory holds something no sender sends (or more entries than claimed)."""


def digest_of_directory(path: bytes, limit: int = MAX_CHECK_ENTRIES + 1) -> tuple[int, bytes]:
    """(entry count, listing digest) of the directory at ``path``, reading at most ``limit`` entries.

    Raises FileNotFoundError when there is none, NotComparable when it cannot match
    (more than ``limit`` entries, a special file), OSError otherwise (not a directory,
    a symlink: ELOOP/ENOTDIR)."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        return _digest_fd(fd, min(limit, MAX_CHECK_ENTRIES + 1))
    finally:
        os.close(fd)


def _digest_fd(fd: int, limit: int, budget: int = MAX_LISTING_BYTES) -> tuple[int, bytes]:
    with _listing_slots:
        return _listing_digest(fd, limit, budget)


def _listing_digest(fd: int, limit: int, budget: int) -> tuple[int, bytes]:
    if _c_dir_digest is not None:  # files and directories only (the common case) in one C call
        h = ListingHasher()
        count = _c_dir_digest(fd, limit, budget, h.update)
        if count == -1:
            raise NotComparable(f"more than {limit} entries, or a listing larger than {budget} bytes")
        if count is not None:
            return count, h.digest()
    return py_listing_digest(fd, limit, budget)


def py_listing_digest(fd: int, limit: int, budget: int) -> tuple[int, bytes]:
    """``_listing_digest`` in Python: where the C helper is not built, and where it leaves the
    judgement to Python (a symlink, a special file, an entry gone while listed)."""
    # One bytes object per entry, ``name NUL record``: names hold no NUL, so sorting these
    # sorts by name bytes (a name that is a prefix of another sorts first, as in
    # core.tree.dir_digest), and the record is what follows the first NUL.
    keyed = []
    held = 0
    with os.scandir(fd) as it:  # names come as str here: fsencode gives the bytes back
        for de in it:
            name = os.fsencode(de.name)
            if is_ftx_own(name):
                continue
            if len(keyed) >= limit:
                raise NotComparable(f"more than {limit} entries")
            st = de.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                rec = entry_record(Kind.FILE, name, st.st_mode, st.st_size, st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                rec = entry_record(Kind.DIR, name, st.st_mode)
            elif stat.S_ISLNK(st.st_mode):
                rec = entry_record(Kind.SYMLINK, name, 0, target=os.readlink(name, dir_fd=fd))
            else:
                raise NotComparable(f"{os.fsdecode(name)} is a special file")
            key = name + b"\0" + rec
            held += len(key) + ENTRY_OVERHEAD
            if held > budget:
                raise NotComparable(f"listing larger than {budget} bytes")
            keyed.append(key)
    keyed.sort()
    h = ListingHasher()
    for key in keyed:
        h.update(memoryview(key)[key.index(0) + 1:])
    return len(keyed), h.digest()


def directory_state(fd: int | None, count: int, digest: bytes) -> int:
    """DIR_SAME, DIR_DIFFERENT or DIR_ABSENT for the sender's claim about the directory open
    at ``fd`` (None: there is none)."""
    if fd is None:
        return DIR_ABSENT
    try:
        have = _digest_fd(fd, min(count, MAX_CHECK_ENTRIES) + 1)
    except NotComparable:
        return DIR_DIFFERENT
    except OSError:
        return DIR_DIFFERENT  # unreadable: its items meet their own errors
    if have == (count, digest):
        return DIR_SAME
    # an empty directory (made by this session's own DIR offers, say) holds nothing to compare:
    # the sender sends as to an absent one (small files whole, with no round trip)
    return DIR_ABSENT if have[0] == 0 else DIR_DIFFERENT


def check_directory(dest, wire_dir: bytes, count: int, digest: bytes) -> int:
    """The answer to a CHECK_DIR for ``wire_dir`` below ``dest`` (a storage.Destination): the
    directory is opened through the destination's held parent, never through a symlink."""
    try:
        fd = dest.open_dir(wire_dir)
    except (FtxError, OSError):
        return DIR_DIFFERENT  # a bad path, a symlink, a file: each item meets its own error
    try:
        return directory_state(fd, count, digest)
    finally:
        if fd is not None:
            os.close(fd)


_helper = None  # the thread that lists beside a session's worker (check_directories), made on first use
_helper_made = threading.Lock()


def _lister():
    global _helper
    with _helper_made:
        if _helper is None:
            from concurrent.futures import ThreadPoolExecutor

            _helper = ThreadPoolExecutor(1, thread_name_prefix="ftx-list")
        return _helper


def check_directories(dest, checks: list[tuple[bytes, int, bytes]]) -> list[int]:
    """``check_directory`` for each (wire_dir, count, digest) of ``checks``, in order, listed by
    this thread and one helper thread side by side: a listing's lstat calls run without the GIL,
    so a run of checks takes two cores, not one.  Each thread takes the next check not yet taken;
    the helper is one thread for the whole process (a session finds it busy with another's: this
    thread lists them all), and ``LISTINGS_AT_ONCE`` still bounds the listings held at once.
    This thread never waits for the helper: a check the helper took and has not answered when
    this one runs out (the helper started late, or the machine is busy and it is not running) is
    listed again here; a check changes nothing, so either answer is the directory's."""
    states: list[int | None] = [None] * len(checks)
    todo = iter(range(len(checks)))  # shared: each index is taken by one thread (next() holds the GIL)

    def work() -> None:
        for i in todo:
            states[i] = check_directory(dest, *checks[i])

    helping = _lister().submit(work)
    work()
    helping.cancel()  # (if it has not started)
    return [check_directory(dest, *checks[i]) if state is None else state for i, state in enumerate(states)]
