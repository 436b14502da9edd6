"""A byte-stream link between two peers, as the transport-neutral layers see it.

A link moves buffers out (``send``: scatter-gather, returns once the kernel has
them all) and fills buffers in (``recv_into``: 0 at end of stream).  It records
when bytes last moved; ``Watchdog`` uses that to ping a quiet peer and to give
up on a vanished one after ``idle_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from typing import Protocol

from ..core.frames import FrameType, encode_frame
from ..errors import TransportError


class Link(Protocol):
    last_recv: float
    last_send: float
    busy: int

    async def send(self, bufs: list) -> None: ...
    async def recv_into(self, buf: memoryview) -> int: ...
    def close(self) -> None: ...
    @property
    def sending(self) -> bool: ...


class Watchdog:
    """Pings when we have been quiet; fails the session when the peer has been.

    The peer answers PING with PONG from its frame layer, so any live peer
    refreshes ``last_recv`` at least every ``idle_timeout / 3`` seconds.  While
    we are busy ourselves (``with link_busy(link)``) silence is not held
    against the peer.
    """

    def __init__(self, link: Link, idle_timeout: float) -> None:
        self.link = link
        self.idle_timeout = idle_timeout
        self._task: asyncio.Task | None = None

    def start(self, on_dead) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(on_dead))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self, on_dead) -> None:
        link, timeout = self.link, self.idle_timeout
        period = max(0.05, min(1.0, timeout / 6))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if link.busy:  # our own slow work: not the peer's silence
                link.last_recv = now
            elif now - link.last_recv > timeout:
                on_dead(TransportError.silent(timeout))
                return
            # keep pinging even while busy, so the peer does not give up on us
            if now - link.last_send > timeout / 3 and not link.sending:
                try:
                    await link.send([encode_frame(FrameType.PING, struct.pack(">d", now))])
                except (OSError, TransportError):
                    pass


@contextlib.contextmanager
def link_busy(link: Link):
    link.busy += 1
    try:
        yield
    finally:
        link.busy -= 1
        link.last_recv = time.monotonic()
