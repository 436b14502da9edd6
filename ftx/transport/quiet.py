"""What a connection gives back while its peer is quiet: one mechanism, TCP and UDP alike.

A frame decoder grows with what arrives (a large frame, a burst of small files or
of a manifest) and keeps that capacity while bytes flow.  After ``IDLE_TRIM``
seconds without input a driver calls ``give_back``: the connection's buffers
keep only what their pending bytes need (``Connection.trim_buffers``, i.e.
``FrameDecoder.trim``; their share of ``--max-memory`` returns), and the heap
is trimmed soon after, so that an idle session holds little.
"""

from __future__ import annotations

import asyncio
import time
import weakref

IDLE_TRIM = 1.0  # seconds without input after which a connection gives its buffer memory back


def give_back(conn, loop: asyncio.AbstractEventLoop) -> None:
    """``conn``'s peer has been quiet for ``IDLE_TRIM``: trim its buffers, then the heap."""
    conn.trim_buffers()
    trim_heap_soon(loop)


_heap_trims: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list]" = weakref.WeakKeyDictionary()


def trim_heap_soon(loop: asyncio.AbstractEventLoop) -> None:
    """Give freed buffer memory back to the kernel after connections trimmed theirs: glibc keeps a
    freed 4 MiB buffer unless it sits at the top of the heap, so an idle receiver's RSS depended on
    where its buffers had landed.  One trim for many requests, paced as the UDP server's
    (udp_server.py: at least TRIM_INTERVAL apart, at most 1/TRIM_COST_RATIO of the time)."""
    from .udp_server import TRIM_COST_RATIO, TRIM_INTERVAL, _malloc_trim_fn

    state = _heap_trims.setdefault(loop, [0.0, None])  # [no trim before, scheduled handle]
    if _malloc_trim_fn is None or state[1] is not None:
        return

    def trim() -> None:
        state[1] = None
        start = time.monotonic()
        _malloc_trim_fn(0)
        state[0] = time.monotonic() + max(TRIM_INTERVAL, TRIM_COST_RATIO * (time.monotonic() - start))

    state[1] = loop.call_later(max(0.0, state[0] - time.monotonic()), trim)
