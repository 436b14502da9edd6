"""The UDP control stream's out-of-order pieces: every byte acknowledged is delivered, once, in order.

A STREAM frame's bytes beyond the in-order point wait in ``StreamAssembler`` until the
gap before them fills.  Whatever the peer re-packs -- a retransmission carrying more
bytes than the packet it replaces, overlapping frames, a frame that starts inside or
covers several held pieces -- the bytes of every packet the receiver acknowledged must
reach the application, or the sender (which never sends acknowledged bytes again)
waits for good.  What does not fit the bounds (bytes and entries) is not acknowledged.

Sessions here are real ``UdpSession`` receivers fed packets with explicit ``now``.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.core.ranges import RangeSet
from ftx.core.udp import packets as P
from ftx.core.udp.reassembly import STREAM_OOO_ENTRIES, STREAM_OOO_LIMIT
from ftx.core.udp.session import UdpConfig, UdpSession

pytestmark = pytest.mark.timeout(60)


def _receiver() -> UdpSession:
    return UdpSession(2, 1, UdpConfig(), 0.0, chunk_receiver=True)


def _frames(*pieces: tuple[int, bytes], ping: bool = False) -> memoryview:
    """One packet's payload: a STREAM frame per ``(offset, data)`` (after a PING: not the
    one-frame fast path)."""
    return memoryview(bytes([P.F_PING] if ping else []) + b"".join(P.encode_stream(off, data) for off, data in pieces))


def _read_all(s: UdpSession) -> bytes:
    out = bytearray(s.stream_readable)
    assert s.stream_read_into(memoryview(out)) == len(out)
    return bytes(out)


def _acked(s: UdpSession, now: float) -> RangeSet:
    acks = [f for d in s.datagrams_to_send(now) for f in P.parse_frames(P.parse(d).payload)
            if isinstance(f, P.AckFrame)]
    return acks[-1].acked if acks else RangeSet()


@pytest.mark.parametrize("multi", [False, True], ids=["one-frame", "parsed"])
def test_a_longer_piece_at_an_offset_already_held_extends_it(multi):
    """A retransmission re-packed with more bytes (lost [1000, 1010) and [1010, 2400) go
    again as one frame at 1000) arrives while the short piece still waits behind a gap:
    the extra bytes were dropped although the packet was acknowledged, so the stream
    stopped at 1010 for good."""
    s = _receiver()
    data = random.Random(1).randbytes(2400)
    s.receive_payload(0, _frames((1000, data[1000:1010]), ping=multi), 0.1)
    s.receive_payload(1, _frames((1000, data[1000:2400]), ping=multi), 0.1)
    assert s.stats["dropped_no_buffer"] == 0
    s.receive_payload(2, _frames((0, data[:1000])), 0.1)
    assert _read_all(s) == data
    assert 1 in _acked(s, 0.2)
    assert s.held == 0 and s._sin.entries == 0 and s._sin.ooo_bytes == 0


def test_a_shorter_piece_at_a_held_offset_changes_nothing():
    s = _receiver()
    data = random.Random(2).randbytes(300)
    s.receive_payload(0, _frames((100, data[100:300])), 0.1)
    held = s.held
    s.receive_payload(1, _frames((100, data[100:150])), 0.1)
    assert s.held == held and s._sin.ooo_bytes == 200
    s.receive_payload(2, _frames((0, data[:100])), 0.1)
    assert _read_all(s) == data and s.held == 0


def test_a_longer_piece_at_a_held_offset_is_bounded_in_bytes():
    """Growing a held piece counts against the out-of-order byte limit like a new one: when
    the extra bytes do not fit, the packet is dropped unacknowledged (sent again later)."""
    s = _receiver()
    big = 64 * 1024
    off, pn = 1, 0
    while s._sin.ooo_bytes < STREAM_OOO_LIMIT - 100:  # byte 0 is "lost"
        n = min(big, STREAM_OOO_LIMIT - 100 - s._sin.ooo_bytes)
        s.receive_payload(pn, _frames((off, bytes(n))), 0.1)
        assert s.stats["dropped_no_buffer"] == 0
        off, pn = off + n, pn + 1
    s.receive_payload(pn, _frames((off, b"x")), 0.1)
    before = s._sin.ooo_bytes
    assert before == STREAM_OOO_LIMIT - 99 and s.stats["dropped_no_buffer"] == 0
    s.receive_payload(pn + 1, _frames((off, b"x" * 200)), 0.1)  # would pass the limit
    assert s.stats["dropped_no_buffer"] == 1
    assert pn + 1 not in _acked(s, 0.2)
    assert s._sin.ooo_bytes == before <= STREAM_OOO_LIMIT


def test_one_packet_of_many_tiny_frames_is_bounded_in_entries():
    """The entry bound was checked frame by frame against what was held before the packet,
    so one datagram of thousands of one-byte frames beyond a gap was kept whole (a 64 KiB
    datagram holds ~16 000): the frames of one packet count together."""
    s = _receiver()
    n = STREAM_OOO_ENTRIES + 2000
    data = random.Random(3).randbytes(n + 1)
    s.receive_payload(0, _frames(*[(off, data[off : off + 1]) for off in range(1, n + 1)]), 0.1)
    assert s._sin.entries <= STREAM_OOO_ENTRIES
    assert s.stats["dropped_no_buffer"] == 1 and 0 not in _acked(s, 0.2)
    # sent again once the gap is filled, it fits
    s.receive_payload(1, _frames((0, data[:1])), 0.2)
    s.receive_payload(2, _frames(*[(off, data[off : off + 1]) for off in range(1, n + 1)]), 0.2)
    assert _read_all(s) == data and s.held == 0


# ---------------------------------------------------------------------------------------------
# any overlap pattern, against a model: the bytes delivered are the stream's prefix that the
# acknowledged pieces cover from offset 0, each byte once
# ---------------------------------------------------------------------------------------------
@st.composite
def _packets(draw):
    """Pieces between a few cut points (so that starts and ends coincide often: same start,
    starting inside, covering several), 1-3 to a packet, and whether to read after each."""
    size = draw(st.integers(2, 400))
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=5)) | {0, size})
    span = st.tuples(st.sampled_from(cuts[:-1]), st.sampled_from(cuts[1:])).filter(lambda t: t[0] < t[1])
    piece = span.map(lambda t: (t[0], t[1] - t[0]))
    packets = draw(st.lists(st.lists(piece, min_size=1, max_size=3), min_size=1, max_size=25))
    reads = draw(st.lists(st.booleans(), min_size=len(packets), max_size=len(packets)))
    return size, packets, reads


@settings(max_examples=300, deadline=None)
@given(_packets())
def test_any_overlap_pattern_delivers_every_acknowledged_byte_once_in_order(case):
    size, packets, reads = case
    data = random.Random(size).randbytes(size)
    s = _receiver()
    covered = RangeSet()
    got = bytearray()
    for pn, (pieces, read) in enumerate(zip(packets, reads)):
        s.receive_payload(pn, _frames(*[(off, data[off : off + n]) for off, n in pieces]), 0.1)
        for off, n in pieces:
            covered.add(off, off + n)
        if read:
            got += _read_all(s)
        prefix = covered.prefix_end() if covered else 0
        assert bytes(got) + s._sin.data == data[:prefix]
    assert s.stats["dropped_no_buffer"] == 0
    s.receive_payload(len(packets), _frames((0, data)), 0.1)  # everything, once more
    got += _read_all(s)
    assert bytes(got) == data
    assert s.held == 0 and s._sin.entries == 0 and s._sin.ooo_bytes == 0


def test_a_late_piece_and_a_repacked_retransmission_do_not_stall_the_stream():
    """Two sessions wired in memory, the way it happened: [R, R+10) (a short write) arrives
    late, after the sender declared it and its neighbours lost and re-packed them from R
    with more bytes.  The receiver kept the late short piece, acknowledged the long one, and
    the stream stopped at R+10 for good while the sender saw all of it acknowledged."""
    a = UdpSession(1, 2, UdpConfig(), 0.0, chunk_receiver=False)
    b = _receiver()
    room = a.max_datagram - P.OVERHEAD - 4  # a full packet's stream bytes (frame header: 4)
    data = random.Random(6).randbytes(5 * room + 10)
    sent: dict[int, bytes] = {}
    now = 0.0

    def send() -> None:
        nonlocal now
        while True:
            now += 0.001  # (pacing)
            out = a.datagrams_to_send(now)
            sent.update((P.parse(d).pn, d) for d in out)
            if not out:
                return

    def deliver(dst: UdpSession, datagrams) -> None:
        for d in datagrams:
            pkt = P.parse(d)
            dst.receive_payload(pkt.pn, pkt.payload, now)

    for part in (data[:room], data[room : room + 10], data[room + 10 :]):  # packets 0, 1 (short), 2-6
        a.stream_write(part)
        send()
    deliver(b, [sent[pn] for pn in (3, 4, 5, 6)])  # 0 and 2 lost, 1 late
    b._ack_now = True
    deliver(a, b.datagrams_to_send(now))  # 0-2 declared lost: [0, 2 room + 10) goes again
    first = max(sent) + 1
    send()
    assert [P.parse_frames(P.parse(sent[first + 1]).payload)[0].offset] == [room]  # re-packed from R
    deliver(b, [sent[1]] + [sent[pn] for pn in sent if pn > first])  # the late one; the first retx lost
    got = bytearray()
    while len(got) < len(data) and now < 10.0:  # then a clean link
        a.handle_timer(now)
        b.handle_timer(now)
        deliver(b, a.datagrams_to_send(now))
        deliver(a, b.datagrams_to_send(now))
        got += _read_all(b)
        now = max(now + 1e-4, min(t for t in (a.next_timer(), b.next_timer()) if t is not None))
    assert bytes(got) == data, f"{len(got)} of {len(data)} bytes by t={now:.2f}, sender done: {a.stream_all_acked}"
