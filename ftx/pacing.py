"""The sender's optional rate limit (``ftx send --max-rate``)."""

from __future__ import annotations

import asyncio
import time

SLICE_TIME = 0.1  # seconds of the rate written at once by ``send``
MIN_SLICE = 16 * 1024


class Pacer:
    """Keeps the average payload rate at or below ``rate`` bytes per second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = time.monotonic()

    async def pace(self, nbytes: int) -> None:
        now = time.monotonic()
        self._next = max(self._next, now - 0.1) + nbytes / self.rate  # at most 100 ms of credit
        if self._next > now:
            await asyncio.sleep(self._next - now)

    def slices(self, bufs: list):
        """``bufs`` cut into runs of SLICE_TIME at the rate (at least MIN_SLICE bytes): (views,
        size) pairs to write one after another, each then ``pace``d, so that a chunk at a low
        rate leaves as a steady trickle, not in one burst and then silence for as long as it
        would take (its bytes keep arriving: the receiver's --stall-timeout sees them move)."""
        step = max(MIN_SLICE, int(self.rate * SLICE_TIME))
        batch, size = [], 0
        for buf in bufs:
            view = memoryview(buf).cast("B")
            while view:
                part = view[: step - size]
                view = view[len(part):]
                batch.append(part)
                size += len(part)
                if size >= step:
                    yield batch, size
                    batch, size = [], 0
        if batch:
            yield batch, size
