"""The receiver's side of a directory check (CHECK_DIR, protocol.md 5.11): list and digest.

``directory_state`` lists one destination directory and compares its direct
entries with what the sender announced.  A peer chooses the directory and
claims the count, so the cost is bounded: at most ``count + 1`` entries (and
never more than ``MAX_CHECK_ENTRIES + 1``) are read and held, one directory
descriptor is open while it runs, nothing is created or changed.

ftx's own names (``core.tree.is_ftx_own``: the state directory and temporaries)
are left out, as the sender's walk leaves them out.
"""

from __future__ import annotations

import os
import stat

from .core.manifest import Kind
from .core.messages import DIR_ABSENT, DIR_DIFFERENT, DIR_SAME
from .core.tree import MAX_CHECK_ENTRIES, dir_digest, entry_record, is_ftx_own
from .errors import FtxError

_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def _digest_fd(fd: int, limit: int) -> tuple[int, bytes]:
    records = []
    with os.scandir(fd) as it:  # names come as str here: fsencode gives the bytes back
        for de in it:
            name = os.fsencode(de.name)
            if is_ftx_own(name):
                continue
            if len(records) >= limit:
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
            records.append((name, rec))
    return len(records), dir_digest(records)


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
