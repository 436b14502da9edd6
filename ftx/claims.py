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


class claim:
    """Context manager marking a destination as being written by ``owner``."""

    def __init__(self, path: bytes, owner: object = None) -> None:
        self.path = path
        self.owner = owner

    def __enter__(self) -> "claim":
        with _busy_lock:
            holder = _busy.get(self.path)
            if holder is not None:
                raise Busy(f"{os.fsdecode(self.path)} is being received from another sender", holder)
            _busy[self.path] = self.owner if self.owner is not None else self
        return self

    def __exit__(self, *exc) -> None:
        with _busy_lock:
            if _busy.get(self.path) is (self.owner if self.owner is not None else self):
                del _busy[self.path]

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
