"""Event payloads stay intact however a driver feeds the input (issue #11, item 1).

A driver may move more bytes into a connection (``get_buffer`` /
``buffer_updated``) before it has drained the events of the bytes before:
UdpLink.feed did so whenever more stream bytes were waiting than one buffer
holds, and thousands of small files lost a block of about 60 files (one 64 KiB
read) to a "whole-file digest mismatch".  These tests feed a whole stream of
frames in many turns before draining once, and check every payload.
"""

from __future__ import annotations

import random

import pytest

from ftx.core import events as ev
from ftx.core.checksum import chunk_checksum, file_digest
from ftx.core.config import Config
from ftx.core.manifest import MIN_CHUNK_SIZE, FileEntry
from ftx.core.receiver import ReceiverConnection
from ftx.core.sender import SenderConnection

CS = MIN_CHUNK_SIZE


def _pair(**kw):
    s = SenderConnection(Config(chunk_size=CS, **kw))
    r = ReceiverConnection(Config(chunk_size=CS, **kw))
    _move(s, r, 65536)
    _move(r, s, 65536)
    assert isinstance(r.next_event(), ev.HandshakeComplete)
    assert isinstance(s.next_event(), ev.HandshakeComplete)
    return s, r


def _move(src, dst, read_size: int) -> None:
    """Copy everything ``src`` has to send into ``dst``, ``read_size`` bytes per turn,
    without draining ``dst``'s events in between (as a busy driver does)."""
    blob = memoryview(b"".join(bytes(b) for b in src.data_to_send()))
    while blob:
        buf = dst.get_buffer()
        n = min(len(buf), len(blob), read_size)
        buf[:n] = blob[:n]
        blob = blob[n:]
        dst.buffer_updated(n)


def _files(count: int, seed: int) -> list[bytes]:
    r = random.Random(seed)
    return [r.randbytes(r.randrange(0, 2048)) for _ in range(count)]


@pytest.mark.parametrize("read_size", [65536, 1500, 9000, 100_000])
def test_thousands_of_small_files_fed_before_draining(read_size):
    s, r = _pair(max_files_in_flight=4000)  # no RESULT goes back in this test: all 3000 stay unsettled
    datas = _files(3000, read_size)
    fids = [s.send_small_file(FileEntry(b"d%03d/f%05d" % (i % 200, i), size=len(d), chunk_size=CS), d,
                              file_digest(d)) for i, d in enumerate(datas)]
    _move(s, r, read_size)
    got = {}
    while (e := r.next_event()) is not None:
        assert isinstance(e, ev.SmallFileReceived)
        got[e.file_id] = e
    assert sorted(got) == fids
    bad = [fid for fid, d in zip(fids, datas) if bytes(got[fid].data) != d]
    assert not bad, f"{len(bad)} of {len(fids)} files arrived corrupted, first {bad[:5]}"
    assert all(got[fid].digest == file_digest(d) for fid, d in zip(fids, datas))


def test_chunks_fed_before_draining_stay_intact():
    """DATA payloads (zero-copy on TCP) too: many chunks, many reads, one drain."""
    s, r = _pair(max_payload=128 * 1024)
    datas = [random.Random(i).randbytes(CS * 3 + i) for i in range(40)]
    fids = [s.offer(FileEntry(b"big%d" % i, size=len(d), chunk_size=CS)) for i, d in enumerate(datas)]
    _move(s, r, 65536)
    while (e := r.next_event()) is not None:
        r.decide(e.file_id)
    _move(r, s, 65536)
    while s.next_event() is not None:
        pass
    for fid, d in zip(fids, datas):
        for i in range(0, len(d), CS):
            s.send_chunk(fid, i // CS, d[i : i + CS])
        s.end_file(fid, file_digest(d))
    _move(s, r, 7000)
    rebuilt = {fid: bytearray(len(d)) for fid, d in zip(fids, datas)}
    while (e := r.next_event()) is not None:
        if isinstance(e, ev.ChunkReceived):
            assert chunk_checksum(e.data) == e.checksum, f"chunk {e.index} of file {e.file_id} overwritten"
            rebuilt[e.file_id][e.offset : e.offset + len(e.data)] = e.data
    assert all(bytes(rebuilt[fid]) == d for fid, d in zip(fids, datas))


def test_decoder_feed_keeps_the_frames_it_queues_intact():
    """``FrameDecoder.feed`` fills its buffer region by region and queues the frames it
    parses on the way: the same pattern, inside the decoder itself."""
    from ftx.core.frames import FrameDecoder, FrameType, encode_frame

    r = random.Random(5)
    payloads = [r.randbytes(1024 - 16) for _ in range(500)]  # 1 KiB frames: every read ends on one
    blob = b"".join(encode_frame(FrameType.OFFER, p) for p in payloads)
    d = FrameDecoder()
    d.feed(blob)
    got = []
    while (f := d.next_frame()) is not None:
        got.append(bytes(f.payload))
    assert len(got) == len(payloads)
    bad = [i for i, (a, b) in enumerate(zip(got, payloads)) if a != b]
    assert not bad, f"{len(bad)} of {len(payloads)} payloads overwritten, first {bad[:5]}"
