"""What a UDP sender does before its file moves (issue #12, Speed: the whole command).

The first chunk of a UDP transfer leaves at once.

The sender queued chunks for as long as it held fewer than ``retain_limit`` (16 MiB)
unacknowledged: at the start of a transfer that was 16 chunks read, hashed and copied into
fresh buffers in one turn of the loop, about 15 ms on loopback, before its pump sent a
single datagram, with the receiver idle all that time.  The read-ahead now follows the
congestion window (at most ``READ_AHEAD_WINDOWS`` of it, never less than the one chunk):
the first chunk goes out while the next is read.  Real sockets, a real receiver, a real
file; the link's datagram output is only watched.

And a sender does not import the receiver's UDP server.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from ftx.receiving import receive_over
from ftx.sending import send_paths
from ftx.storage import Destination
from ftx.transport import udp, udp_link

pytestmark = pytest.mark.timeout(60)
CHUNK = 1 << 20  # the default chunk size


async def _send_watching(src: str, dst: str) -> tuple[list[int], object, bytes]:
    """Send ``src`` over a real UDP link into ``dst``; for every batch of datagrams the link
    hands its socket, how many chunk bytes the sender held (read, not yet acknowledged)."""
    done = asyncio.get_running_loop().create_future()

    async def handle(link):
        try:
            await receive_over(link, Destination(dst))
        finally:
            if not done.done():
                done.set_result(None)

    server = await udp.serve("127.0.0.1", 0, handle)
    try:
        link = await udp.connect("127.0.0.1", server.dsock.sock.getsockname()[1])
        held: list[int] = []
        send = link._send

        def watched(datagrams):
            held.append(link.session.retained_bytes)
            send(datagrams)

        link._send = watched
        try:
            report = await asyncio.wait_for(send_paths(link, [src]), 30)
        finally:
            await link.aclose(drain_timeout=2)
        await asyncio.wait_for(done, 10)
        return held, report, open(os.path.join(dst, os.path.basename(src)), "rb").read()
    finally:
        server.close()


def test_first_datagrams_leave_after_one_chunk_not_sixteen(tmp_path):
    src, dst = tmp_path / "big.bin", tmp_path / "in"
    dst.mkdir()
    data = os.urandom(24 * CHUNK)  # more than retain_limit: the old code read 16 chunks first
    src.write_bytes(data)
    held, report, got = asyncio.run(_send_watching(str(src), str(dst)))
    assert report.ok and got == data
    first = next(h for h in held if h)  # the first datagrams sent once a chunk was queued
    assert first <= CHUNK, f"{first / CHUNK:.0f} chunks read before the first chunk datagram left"
    assert udp_link.READ_AHEAD_WINDOWS >= 2  # (the bound is named, and leaves room to pipeline)


def test_udp_sender_does_not_load_the_receivers_server(tmp_path):
    """``ftx send --udp`` dials out: the receiver's UdpServer (its admission, socket filter
    and ctypes for malloc_trim) is not imported -- about 2 ms of every sender's start."""
    from .helpers import Receiver
    from .test_startup import _imported

    src = tmp_path / "a.txt"
    src.write_bytes(b"hello\n")
    r = Receiver(tmp_path / "in", "--insecure")
    try:
        mods = _imported(["send", str(src), r.dest, "--udp", "--insecure", "--no-progress"])
        assert "ftx.transport.udp_link" in mods  # the check sees the UDP send path
        assert "ftx.transport.udp_server" not in mods and "ctypes" not in mods
        assert (tmp_path / "in" / "a.txt").read_bytes() == b"hello\n"
    finally:
        r.stop()
    from ftx.transport import udp  # the names stay where they were

    assert udp.serve is udp_server_serve() and udp.UdpServer.__name__ == "UdpServer"


def udp_server_serve():
    from ftx.transport.udp_server import serve

    return serve
