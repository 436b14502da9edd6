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
import gc
import time
import weakref

IDLE_TRIM = 1.0  # seconds without input after which a connection gives its buffer memory back
TRIM_INTERVAL = 1.0  # seconds: the least time between two heap trims
TRIM_COST_RATIO = 20  # and at least this many times as long as the last trim took (5 % of the CPU at most)


_UNKNOWN = object()
_malloc_trim_fn = _UNKNOWN  # glibc's malloc_trim, found on the first trim (None: there is none)


def _malloc_trim():
    """glibc's malloc_trim, or None.  Looked up when first needed: ctypes costs every ``ftx send``
    ~1 ms of start-up, and a sender rarely trims."""
    global _malloc_trim_fn
    if _malloc_trim_fn is _UNKNOWN:
        try:
            import ctypes

            _malloc_trim_fn = ctypes.CDLL(None).malloc_trim
        except (ImportError, OSError, AttributeError):
            _malloc_trim_fn = None
    return _malloc_trim_fn


def give_back(conn, loop: asyncio.AbstractEventLoop) -> None:
    """``conn``'s peer has been quiet for ``IDLE_TRIM``: trim its buffers, then the heap."""
    conn.trim_buffers()
    trim_heap_soon(loop)


_heap_trims: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list]" = weakref.WeakKeyDictionary()


def trim_heap_soon(loop: asyncio.AbstractEventLoop, collect: bool = False) -> None:
    """Give freed buffer memory back to the kernel after connections trimmed theirs or sessions
    ended: glibc keeps a freed 4 MiB buffer unless it sits at the top of the heap, so an idle
    receiver's RSS would depend on where its buffers had landed, or stay at the peak that senders
    long gone caused.  One trim for many requests, at least TRIM_INTERVAL apart and at most
    1/TRIM_COST_RATIO of the time; ``collect``: run a full garbage collection first (ended UDP
    sessions are reference cycles: free their buffers now, not at some later collection).
    A no-op without malloc_trim."""
    state = _heap_trims.setdefault(loop, [0.0, None, False])  # [no trim before, scheduled handle, collect]
    trim_fn = _malloc_trim()
    if trim_fn is None:
        return
    state[2] = state[2] or collect
    if state[1] is not None:
        return

    def trim() -> None:
        state[1] = None
        start = time.monotonic()
        if state[2]:
            state[2] = False
            gc.collect()
        trim_fn(0)
        # a full collection costs more the more objects there are: while sessions come and go by
        # the hundred (a flood of handshakes) it must not take much of the CPU
        state[0] = time.monotonic() + max(TRIM_INTERVAL, TRIM_COST_RATIO * (time.monotonic() - start))

    state[1] = loop.call_later(max(0.0, state[0] - time.monotonic()), trim)
