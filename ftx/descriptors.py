"""A cap on the partial files that hold descriptors, over every session of a receiver.

Each open partial holds two descriptors (data and journal).  ``DescriptorBudget``
lets at most ``limit`` partials have theirs open at once: a partial opens when a
chunk arrives for it, and when the budget is full the least recently used idle
partial closes its descriptors (its next chunk reopens them).  A partial is
pinned while a thread writes it, so it is never closed under a write; when every
open partial is pinned a new one waits for a release.

The hot path (a chunk for an open partial) costs two lock round trips and an
``OrderedDict.move_to_end``.
"""

from __future__ import annotations

import resource
import threading
from collections import OrderedDict
from typing import Protocol


class Holder(Protocol):
    pins: int

    def open_descriptors(self) -> None: ...

    def close_descriptors(self) -> None: ...


class DescriptorBudget:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the descriptor budget needs room for one partial file")
        self.limit = limit
        self._cond = threading.Condition()
        self._open: OrderedDict[Holder, None] = OrderedDict()  # least recently used first
        self._waiting = 0
        self.peak = 0  # most partials open at once (for tests and benchmarks)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def acquire(self, holder: Holder) -> None:
        """Pin ``holder``'s descriptors for use, opening them first if they are closed.

        Raises whatever ``holder.open_descriptors`` raises (nothing stays counted then).
        """
        with self._cond:
            if holder in self._open:
                self._open.move_to_end(holder)
                holder.pins += 1
                return
            while len(self._open) >= self.limit:
                victim = next((h for h in self._open if h.pins == 0), None)
                if victim is None:  # every open partial is being written: wait for one
                    self._waiting += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._waiting -= 1
                    continue
                del self._open[victim]
                victim.close_descriptors()
            holder.open_descriptors()
            self._open[holder] = None
            holder.pins += 1
            if len(self._open) > self.peak:
                self.peak = len(self._open)

    def release(self, holder: Holder) -> None:
        with self._cond:
            holder.pins -= 1
            if self._waiting:
                self._cond.notify_all()

    @property
    def lock(self) -> threading.Condition:
        """Held while descriptors open and close: a holder may change its state under it."""
        return self._cond

    def forget(self, holder: Holder) -> None:
        """Close ``holder``'s descriptors and free its place, once no other thread uses them.

        The calling thread must not hold a pin on ``holder`` itself.
        """
        with self._cond:
            while holder.pins:
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            if self._open.pop(holder, False) is None:
                holder.close_descriptors()
                if self._waiting:
                    self._cond.notify_all()


def raise_descriptor_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to ``needed`` if the hard limit allows; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


__all__ = ["DescriptorBudget", "raise_descriptor_limit"]
