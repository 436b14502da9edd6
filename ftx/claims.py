"""Which destinations this process is writing now: ``claim`` (per connection) and the journals in use.

A second connection that offers a file another one is writing gets ``Busy``
(receiving.py decides whether it may take over); the expiry pass skips
journals that a live partial uses.  Other processes are kept out by the
journal's ``flock`` (partial.py).
"""

from __future__ import annotations

import os
import threading

from .errors import ErrorCode, StorageError

_busy_lock = threading.Lock()
_busy: dict[bytes, object] = {}  # destination -> who is writing it, in this process
_live: set[bytes] = set()  # journal keys of the partials this process is using (expiry skips them)


class Busy(StorageError):
    """Another connection of this process is writing the destination; ``holder`` says which."""

    code = ErrorCode.BUSY

    def __init__(self, message: str, holder: object) -> None:
        super().__init__(message)
        self.holder = holder


def take(path: bytes, owner: object) -> None:
    """Mark ``path`` as being written by ``owner``; ``Busy`` if another holder has it."""
    with _busy_lock:
        holder = _busy.get(path)
        if holder is not None:
            raise Busy(f"{os.fsdecode(path)} is being received from another sender", holder)
        _busy[path] = owner


def give(path: bytes, owner: object) -> None:
    """Drop ``owner``'s mark on ``path`` (nothing if someone else holds it now)."""
    with _busy_lock:
        if _busy.get(path) is owner:
            del _busy[path]


def take_run(paths: list, owner: object) -> dict:
    """``take`` for each of ``paths``, all for one ``owner``, under one lock: {position: Busy} of
    those another holder has (not taken; the others are).  A path twice is taken once."""
    busy = {}
    with _busy_lock:
        get = _busy.get
        for k, path in enumerate(paths):
            holder = get(path)
            if holder is None:
                _busy[path] = owner
            elif holder is not owner:
                busy[k] = Busy(f"{os.fsdecode(path)} is being received from another sender", holder)
    return busy


def give_run(paths: list, owner: object) -> None:
    """``give`` for each of ``paths``, under one lock."""
    with _busy_lock:
        get = _busy.get
        for path in paths:
            if get(path) is owner:
                del _busy[path]


class claim:
    """Context manager marking a destination as being written by ``owner``."""

    def __init__(self, path: bytes, owner: object = None) -> None:
        self.path = path
        self.owner = owner if owner is not None else self

    def __enter__(self) -> "claim":
        take(self.path, self.owner)
        return self

    def __exit__(self, *exc) -> None:
        give(self.path, self.owner)

    @staticmethod
    def is_free(path: bytes) -> bool:
        with _busy_lock:
            return path not in _busy


def mark_live(key: bytes, live: bool) -> None:
    with _busy_lock:
        if live:
            _live.add(key)
        else:
            _live.discard(key)


def in_use(key: bytes) -> bool:
    """Whether a partial of this process uses the journal ``key`` (open or not)."""
    with _busy_lock:
        return key in _live


__all__ = ["Busy", "claim", "in_use", "mark_live"]
