"""Thousands of small files over UDP arrive intact (issue #11, item 1).

The receiver's ``UdpLink.feed`` moved every waiting stream byte into the frame
decoder before the events of the earlier bytes were handled; the decoder then
moved or overwrote the bytes under queued SMALL_FILE payloads, and a block of
files failed with "whole-file digest mismatch".  It showed when stream bytes
piled up while the receiver was busy (CPU contention); the in-process test
below makes them pile up deterministically, the end-to-end tests run the real
CLI with thousands of files, clean and through the impairing relay.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from ftx.core import events as ev
from ftx.core.checksum import file_digest
from ftx.core.config import Config
from ftx.core.manifest import FileEntry
from ftx.core.receiver import ReceiverConnection
from ftx.core.sender import SenderConnection
from ftx.transport import udp, udp_link

from .helpers import Relay, run_send, tree_equal

pytestmark = pytest.mark.timeout(120)


def _small_files_stream(count: int, seed: int, tiled: bool) -> tuple[bytes, list[bytes]]:
    """The bytes a sender writes for ``count`` SMALL_FILEs (HELLO first), and the files.

    ``tiled``: every frame 1 KiB long, the first padded so that frames end on every
    1 KiB boundary of the stream -- and so on every boundary between two reads of the
    decoder's 64 KiB, where the old code rewound its buffer under the queued payloads
    (with random sizes that takes a chance alignment)."""
    s, peer = SenderConnection(Config()), ReceiverConnection(Config())
    s.receive_data(b"".join(bytes(b) for b in peer.data_to_send()))
    assert isinstance(s.next_event(), ev.HandshakeComplete)
    sent = sum(len(b) for b in s._out)  # HELLO
    r = random.Random(seed)
    overhead = 16 + 36 + len(b"d000/f00000") + 16  # frame header, entry, path, digest
    datas = []
    for i in range(count):
        size = (-(sent + overhead) % 1024 or 1024) if tiled else r.randrange(0, 2048)
        d = r.randbytes(size)
        s.send_small_file(FileEntry(b"d%03d/f%05d" % (i % 100, i), size=len(d)), d, file_digest(d))
        sent += overhead + size
        datas.append(d)
    blob = b"".join(bytes(b) for b in s.data_to_send())
    assert len(blob) == sent
    return blob, datas


async def _send_to_one_link(handle, blob, got, deadline):
    """Serve on loopback with ``handle``, send ``blob`` from a client link, and wait for ``got``."""
    server = await udp.serve("127.0.0.1", 0, handle)
    port = server.dsock.sock.getsockname()[1]
    link = await udp.connect("127.0.0.1", port)
    try:
        await link.send([blob])
        return await asyncio.wait_for(got, deadline - time.monotonic())
    finally:
        link.close()
        server.close()


async def _deliver_all_then_feed(blob: bytes, deadline: float, placed: list | None = None) -> list:
    """Send ``blob`` over a real UDP link; feed the receiver once all of it is waiting.
    ``placed``: gets the size of each region of stream bytes the link placed in the decoder."""
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handle(link):
        try:
            s = link.session
            while s.stream_readable < len(blob):  # let every byte pile up, as under contention
                if time.monotonic() > deadline:
                    raise AssertionError(f"only {s.stream_readable} of {len(blob)} stream bytes arrived")
                await asyncio.sleep(0.005)
            conn = ReceiverConnection(Config(max_files_in_flight=10_000))  # no RESULT goes back here
            if placed is not None:
                updated = conn.buffer_updated
                conn.buffer_updated = lambda n: (placed.append(n), updated(n))
            await link.feed(conn)  # one call: the link moves every waiting byte into conn
            events = []
            while (e := conn.next_event()) is not None:
                events.append(e)
            got.set_result(events)
        except BaseException as exc:
            got.set_exception(exc)
        finally:
            link.close()

    return await _send_to_one_link(handle, blob, got, deadline)


@pytest.mark.parametrize("tiled", [False, True], ids=["random-sizes", "frames-tile-reads"])
def test_udp_link_feeds_a_backlog_of_small_files_intact(tiled):
    blob, datas = _small_files_stream(3000, seed=11, tiled=tiled)
    assert len(blob) > 20 * 65536  # many decoder buffers' worth waits at once
    events = asyncio.run(_deliver_all_then_feed(blob, time.monotonic() + 30))
    files = [e for e in events if isinstance(e, ev.SmallFileReceived)]
    assert [e.file_id for e in files] == list(range(len(datas)))
    bad = [e.file_id for e in files if bytes(e.data) != datas[e.file_id]]
    assert not bad, f"{len(bad)} files corrupted, first {bad[:5]}"


def _tree(root, count: int, dirs: int, seed: int, max_size: int = 2048):
    r = random.Random(seed)
    for i in range(count):
        p = root / f"d{i % dirs:03d}" / f"f{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(r.randbytes(r.randrange(0, max_size + 1)))
    return root


@pytest.fixture
def fast_receiver(tmp_path, receiver_factory):
    """A receiver writing to tmpfs where there is one: the receiver fsyncs every file, and
    thousands of fsyncs on a shared disk would time the disk, not the transport."""
    if not os.path.isdir("/dev/shm"):
        yield receiver_factory()
        return
    directory = tempfile.mkdtemp(prefix="ftx-test-", dir="/dev/shm")
    try:
        receiver = receiver_factory(directory=Path(directory))
        yield receiver
        receiver.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_udp_thousands_of_small_files_in_hundreds_of_dirs(tmp_path, fast_receiver):
    receiver = fast_receiver
    src = _tree(tmp_path / "many", 2000, 200, seed=1)
    rc, report, err = run_send(str(src), receiver.dest, "--udp")
    assert rc == 0, err
    assert report["failed"] == 0 and report["file_count"] == 2000 + 200 + 1  # files, dirs, the root
    assert tree_equal(src, receiver.dir / "many")


def test_udp_thousands_of_small_files_through_impairments(tmp_path, fast_receiver):
    receiver = fast_receiver
    src = _tree(tmp_path / "many", 1500, 150, seed=2, max_size=8192)
    relay = Relay(receiver.port, "--both", "loss=0.02,reorder=0.02,dup=0.01", "--seed", "5")
    try:
        rc, report, err = run_send(str(src), relay.dest, "--udp")
    finally:
        counters = relay.stop()
    assert rc == 0, err
    assert report["failed"] == 0 and counters["forward"]["dropped"] > 0
    assert tree_equal(src, receiver.dir / "many")


async def _grow_then_idle(blob: bytes, deadline: float) -> tuple[int, int, int]:
    """Send ``blob`` over a real UDP link; the receiver feeds it as its driver does (events drained
    after each feed), then stays idle.  Its decoder's capacity: grown, once consumed, once idle."""
    from ftx.transport.quiet import IDLE_TRIM

    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handle(link):
        try:
            conn = ReceiverConnection(Config(max_files_in_flight=10_000))
            files = 0
            while files < 2:
                await asyncio.wait_for(link.feed(conn), deadline - time.monotonic())
                while (e := conn.next_event()) is not None:
                    files += isinstance(e, ev.SmallFileReceived)
            grown, consumed = conn._decoder.capacity, conn._decoder.pending_bytes
            try:  # nothing more comes: the link waits, idle, for IDLE_TRIM and more
                await asyncio.wait_for(link.feed(conn), 1.5 * IDLE_TRIM)  # (the trim timer comes first)
            except asyncio.TimeoutError:
                pass
            got.set_result((grown, consumed, conn._decoder.capacity))
        except BaseException as exc:
            got.set_exception(exc)
        finally:
            link.close()

    return await _send_to_one_link(handle, blob, got, deadline)


def test_udp_control_decoder_gives_its_memory_back_when_idle():
    """A large control frame grows the control stream's frame decoder (here a 2 MiB SMALL_FILE:
    a big manifest burst does the same); once it is consumed and the peer is quiet, the decoder
    holds no more than a small bound, as on TCP (it held the 2 MiB for the whole session)."""
    s, peer = SenderConnection(Config(chunk_size=4 << 20)), ReceiverConnection(Config())
    s.receive_data(b"".join(bytes(b) for b in peer.data_to_send()))
    assert isinstance(s.next_event(), ev.HandshakeComplete)
    for i, size in enumerate((2 << 20, 10)):
        d = random.Random(i).randbytes(size)
        s.send_small_file(FileEntry(b"f%d" % i, size=size, chunk_size=4 << 20), d, file_digest(d))
    blob = b"".join(bytes(b) for b in s.data_to_send())
    grown, pending, idle = asyncio.run(_grow_then_idle(blob, time.monotonic() + 30))
    assert grown >= 2 << 20 and pending == 0
    assert idle <= 4096, f"the idle decoder still holds {idle} bytes"


def test_udp_link_send_puts_control_bytes_on_the_wire_at_once():
    """A RESULT (or RESULT_RUN) written to the link is handed to the socket within the
    ``send`` call, not a turn of the loop later when the pump task runs: on a receiver busy
    reading, that turn held back each RESULT -- and with it the sender's offer window."""
    async def main():
        async def handle(link):
            await link.closed_event.wait()

        server = await udp.serve("127.0.0.1", 0, handle)
        link = await udp.connect("127.0.0.1", server.dsock.sock.getsockname()[1])
        try:
            sent: list[int] = []
            real = link._send

            def recording(bursts) -> None:
                sent.append(sum(len(buf) for buf, _ in bursts))
                real(bursts)

            link._send = recording
            await link.send([b"r" * 500])  # room in the send buffer: returns without a turn of the loop
            assert sum(sent) >= 500, "the bytes wait for the pump"
        finally:
            link.close()
            server.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_udp_link_places_waiting_stream_bytes_in_large_regions():
    """Stream bytes that wait go to the frame decoder up to FEED_BYTES at a time (as a sealed TCP
    record does), so that a run of small files is decoded in one go: 64 KiB at a time, every
    region ended in a cut frame that was moved again, and a run took eight decoder calls."""
    blob, datas = _small_files_stream(1500, seed=12, tiled=False)
    placed: list[int] = []
    events = asyncio.run(_deliver_all_then_feed(blob, time.monotonic() + 30, placed))
    files = [e for e in events if isinstance(e, ev.SmallFileReceived)]
    assert [bytes(e.data) for e in files] == datas
    assert sum(placed) == len(blob) and len(placed) <= -(-len(blob) // udp_link.FEED_BYTES) + 2, placed[:10]
