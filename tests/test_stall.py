"""The receiver's --stall-timeout counts file bytes as they arrive, not whole chunks.

A sender slower than one chunk per stall timeout (a terrible link, a low
``--max-rate``) moves data all the time and must finish; one that stops moving
file data is still cut, however it keeps the connection alive.  Real ``ftx``
subprocesses and sockets; the stall timeout is made small (1 s) and each chunk
takes about twice that.
"""

from __future__ import annotations

import time

import pytest

from ftx.core.frames import FrameDecoder, FrameType, encode_data_frame, encode_data_header, encode_frame
from ftx.errors import ErrorCode

from ftx.core.udp import packets as P

from .helpers import Receiver, run_send, write_random
from .test_bounds import HELLO, MIB, Raw
from .udp_attacker import RawPeer

pytestmark = pytest.mark.timeout(60)


def _slow_send(tmp_path, r, *extra: str, mib: int = 2) -> None:
    """One chunk of ``mib`` MiB at 1 MiB/s: 2 s by default, twice the receiver's stall timeout."""
    data = write_random(tmp_path / "src" / "slow.bin", mib * MIB)
    rc, report, stderr = run_send(str(tmp_path / "src" / "slow.bin"), r.dest, "--chunk-size", f"{mib}M",
                                  "--max-rate", "1M", *extra, timeout=40)
    assert rc == 0, stderr
    assert report["files"][0]["status"] == "ok", report
    assert (r.dir / "slow.bin").read_bytes() == data


def test_a_chunk_slower_than_the_stall_timeout_completes_over_tcp(tmp_path, receiver_factory):
    _slow_send(tmp_path, receiver_factory("--stall-timeout", "1", "--idle-timeout", "30"))


def test_a_chunk_slower_than_the_stall_timeout_completes_over_plain_tcp(tmp_path, receiver_factory):
    _slow_send(tmp_path, receiver_factory("--stall-timeout", "1", "--insecure"), "--insecure")


def test_a_chunk_slower_than_the_stall_timeout_completes_over_udp(tmp_path, receiver_factory):
    _slow_send(tmp_path, receiver_factory("--stall-timeout", "1"), "--udp")


def test_a_paced_chunk_longer_than_the_idle_timeouts_keeps_both_sides_talking(tmp_path, receiver_factory):
    """While a chunk trickles out at --max-rate (4 s), the quiet receiver PINGs the sender (every
    0.5 s with --idle-timeout 1.5); the sender must go on reading and answering, or it would
    call the receiver silent (and the receiver the sender) before the chunk is out."""
    r = receiver_factory("--stall-timeout", "1", "--idle-timeout", "1.5")
    _slow_send(tmp_path, r, "--idle-timeout", "1.5", mib=4)


def test_a_sender_that_stops_in_the_middle_of_a_chunk_is_still_cut(receiver_factory):
    r = receiver_factory("--stall-timeout", "1", "--idle-timeout", "60")
    c = Raw(r.port)
    try:
        # a DATA frame announcing 1 MiB, half of it sent, then nothing more (the connection stays up)
        c.send(HELLO + encode_data_header(0, 0, 0, MIB) + bytes(MIB // 2))
        t0 = time.monotonic()
        err = c.error(timeout=10)
        assert err.code == ErrorCode.TIMEOUT and "--stall-timeout" in err.message, err
        assert 0.8 <= time.monotonic() - t0 <= 5
    finally:
        c.close()


def test_a_udp_sender_that_stops_in_the_middle_of_a_chunk_and_only_pings_is_still_cut(tmp_path):
    (tmp_path / "dst").mkdir()
    r = Receiver(tmp_path / "dst", "-q", "--stall-timeout", "1")
    try:
        peer = RawPeer(r.port)
        s = peer.handshake()
        s.hello()
        for off in range(0, 20 * 1200, 1200):  # the first pieces of a 1 MiB chunk, then only PINGs
            s.chunk(1, 0, MIB, off, bytes(1200))
        t0 = time.monotonic()
        while s.closed_by is None and time.monotonic() - t0 < 10:
            s.send(bytes([P.F_PING]))  # alive, but moving nothing
            s.poll(0.2)
        assert s.closed_by is not None and s.closed_by.code == ErrorCode.TIMEOUT, s.closed_by
        assert 0.8 <= time.monotonic() - t0 <= 5
        peer.close()
    finally:
        r.stop()


def test_the_decoder_counts_file_bytes_as_they_arrive_and_nothing_else():
    d = FrameDecoder(max_payload=4 * MIB)
    ping = encode_frame(FrameType.PING, bytes(8))
    d.feed(ping)
    assert d.file_bytes == 0 and not d.in_file_frame
    frame = encode_data_frame(1, 0, bytes(300_000))
    seen = []
    for at in range(0, len(frame), 70_000):  # a chunk in pieces: each piece counts
        d.feed(frame[at : at + 70_000])
        seen.append(d.file_bytes)
    assert seen == sorted(set(seen)) and seen[-1] == len(frame)
    assert d.next_frame().type == FrameType.PING and d.next_frame().type == FrameType.DATA
    d.feed(ping * 3)
    assert d.file_bytes == len(frame) and not d.in_file_frame
