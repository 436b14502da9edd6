"""The sender's optional rate limit (``ftx send --max-rate``)."""

from __future__ import annotations

import asyncio
import time


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
