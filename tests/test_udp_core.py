"""The sans-I/O core of the reliable UDP transport, with explicit clocks and no sockets.

* packets: datagram layout, checksum, ACK/CHUNK/STREAM/CLOSE frame codecs;
* recovery: RFC 9002 RTT estimation, loss detection and PTO, driven with
  ``now`` values chosen by the test (in the style of aioquic's test_recovery);
* congestion: the BBR-style controller fed synthetic rate samples;
* a whole Dialer/Listener pair shuttling datagrams through a seeded lossy
  in-memory link whose clock the test advances (``InMemoryNet`` below), the
  way a real driver would: wake at ``next_timer()``, call ``handle_timer()``,
  send ``datagrams_to_send()``.

Everything is seeded and bounded; a run that does not finish within its budget
of simulated seconds and loop iterations fails with the state it reached.
"""

from __future__ import annotations

import heapq
import math
import random
import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.core.ranges import RangeSet, write_varint
from ftx.core.udp import burst
from ftx.core.udp import packets as P
from ftx.core.udp.congestion import INITIAL_CWND_PACKETS, STARTUP_GAIN, Bbr
from ftx.core.udp.endpoint import Dialer, Listener, make_token, padded_initial
from ftx.core.udp.recovery import (
    K_GRANULARITY,
    K_INITIAL_RTT,
    RateSample,
    Recovery,
    RttEstimator,
    SentPacket,
)
from ftx.core.udp.session import UdpConfig, UdpSession
from ftx.errors import ErrorCode, RemoteProtocolError

pytestmark = pytest.mark.timeout(60)
# How datagrams reach the listener: one by one, or as GRO bursts read by the Python or the C loops
DELIVERY = [pytest.param(False, id="single"), pytest.param("py", id="gro-python"),
            pytest.param("c", id="gro-c", marks=pytest.mark.skipif(burst._burst is None,
                                                                   reason="the C accelerator was not built"))]


@pytest.fixture
def loops():
    """Restores the default bulk loops after a test that picked some."""
    yield burst.use
    burst.use(True)


def _sealed(ptype: int, version: int, dcid: int, pn: int, payload: bytes) -> bytes:
    """A datagram with an arbitrary header and a *valid* checksum."""
    out = bytearray(P.HEADER.pack(ptype, version, dcid, pn) + payload + bytes(P.TRAILER_SIZE))
    P.seal(out, len(out) - P.TRAILER_SIZE)
    return bytes(out)


def _chunk_frame(fid=1, index=2, clen=100, off=0, csum=0xABCD, data=b"x" * 10, length=None) -> bytes:
    n = len(data) if length is None else length
    return P.CHUNK_HEADER.pack(P.F_CHUNK, fid, index, clen, off, csum, n) + data


# =====================================================================================
# packets
# =====================================================================================
class TestPackets:
    def test_build_parse_round_trip(self):
        payload = bytes(range(256)) * 3
        for ptype in P.PACKET_TYPES:
            d = P.build(ptype, 0x0123456789ABCDEF, 2**64 - 1, payload)
            assert len(d) == P.OVERHEAD + len(payload)
            pkt = P.parse(d)
            assert (pkt.ptype, pkt.dcid, pkt.pn) == (ptype, 0x0123456789ABCDEF, 2**64 - 1)
            assert bytes(pkt.payload) == payload
            # the trailer is XXH3-64 (seed 0) over everything before it, big-endian
            assert struct.unpack(">Q", d[-8:])[0] == xxhash.xxh3_64_intdigest(d[:-8])

    def test_empty_payload_round_trip(self):
        pkt = P.parse(P.build(P.DATA, 7, 0, b""))
        assert (pkt.ptype, pkt.dcid, pkt.pn, bytes(pkt.payload)) == (P.DATA, 7, 0, b"")

    def test_every_single_byte_change_is_rejected(self):
        d = P.build(P.DATA, 0xDEADBEEF, 12345, P.encode_stream(0, b"hello world") + bytes(20))
        for i in range(len(d)):
            for x in range(1, 256):
                bad = bytearray(d)
                bad[i] ^= x
                with pytest.raises(RemoteProtocolError):
                    P.parse(bytes(bad))

    def test_every_truncation_and_extension_is_rejected(self):
        d = P.build(P.INITIAL, 1, 2, P.initial_payload(3, b"t" * 20) + bytes(40))
        for n in range(len(d)):
            with pytest.raises(RemoteProtocolError):
                P.parse(d[:n])
        for extra in (b"\0", b"\xff" * 8, d[-8:]):
            with pytest.raises(RemoteProtocolError):
                P.parse(d + extra)
        with pytest.raises(RemoteProtocolError):
            P.parse(d[1:])

    def test_wrong_version_rejected_even_with_valid_checksum(self):
        for version in (0, 2, 255):
            with pytest.raises(RemoteProtocolError, match="version"):
                P.parse(_sealed(P.DATA, version, 1, 1, b"\x01"))
        P.parse(_sealed(P.DATA, P.VERSION, 1, 1, b"\x01"))  # control

    def test_unknown_packet_type_rejected_even_with_valid_checksum(self):
        for ptype in (0x00, 0x04, 0x7F, 0xFF):
            with pytest.raises(RemoteProtocolError, match="type"):
                P.parse(_sealed(ptype, P.VERSION, 1, 1, b""))

    def test_initial_payload_round_trip_and_truncation(self):
        payload = P.initial_payload(0xFEED, b"tok") + b"\0\0rest"
        scid, token, rest = P.parse_initial(memoryview(payload))
        assert (scid, token, bytes(rest)) == (0xFEED, b"tok", b"\0\0rest")
        full = P.initial_payload(5, b"0123456789")
        for n in range(len(full)):
            with pytest.raises(RemoteProtocolError):
                P.parse_initial(memoryview(full[:n]))

    def test_padded_initial_is_exactly_min_size(self):
        d = padded_initial(1, 1, 2, b"")
        assert len(d) == P.MIN_INITIAL_SIZE
        d = padded_initial(1, 1, 2, b"x" * 20)
        assert len(d) == P.MIN_INITIAL_SIZE
        assert P.parse_initial(P.parse(d).payload)[:2] == (2, b"x" * 20)


# -- ACK ---------------------------------------------------------------------------
_range_lists = st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 5000)), min_size=1, max_size=150)


def _rangeset(pairs) -> RangeSet:
    """(gap, length) pairs with gap >= 1 after the first, so the ranges stay distinct."""
    rs, pos = RangeSet(), 0
    for i, (gap, length) in enumerate(pairs):
        start = pos + (gap if i == 0 else gap + 1)
        rs.add(start, start + length)
        pos = start + length
    return rs


class TestAck:
    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(_range_lists, st.integers(0, 2**40))
    def test_round_trip_keeps_the_highest_64_ranges(self, pairs, delay):
        rs = _rangeset(pairs)
        frame = P.encode_ack(rs, delay)
        assert frame[0] == P.F_ACK
        decoded, d, off = P.decode_ack(frame, 1)
        assert off == len(frame) and d == delay
        assert list(decoded) == list(rs)[-64:]
        (f,) = P.parse_frames(memoryview(frame))
        assert list(f.acked) == list(rs)[-64:] and f.delay_us == delay

    @settings(max_examples=100, deadline=None, derandomize=True)
    @given(_range_lists, st.integers(1, 10))
    def test_max_ranges_parameter(self, pairs, k):
        rs = _rangeset(pairs)
        decoded, _, _ = P.decode_ack(P.encode_ack(rs, 0, max_ranges=k), 1)
        assert list(decoded) == list(rs)[-k:]

    def test_known_encoding(self):
        # ranges [0,3) and [5,10): largest 9, delay 7, 1 extra range, first length-1 = 4,
        # gap: unacked 3,4 -> 2 packets -> gap-1 = 1, then length-1 = 2
        assert P.encode_ack(RangeSet([(0, 3), (5, 10)]), 7) == bytes([P.F_ACK, 9, 7, 1, 4, 1, 2])

    def test_ranges_below_zero_rejected(self):
        body = bytearray()
        for v in (3, 0, 0, 4):  # largest 3, first range length 5 -> below zero
            write_varint(body, v)
        with pytest.raises(RemoteProtocolError):
            P.decode_ack(bytes(body), 0)
        body = bytearray()
        for v in (10, 0, 1, 2, 6, 2):  # [8,11), then gap reaching below zero
            write_varint(body, v)
        with pytest.raises(RemoteProtocolError):
            P.decode_ack(bytes(body), 0)


# -- frames ---------------------------------------------------------------------------
class TestFrames:
    def test_chunk_frame_bounds(self):
        (f,) = P.parse_frames(memoryview(_chunk_frame(clen=100, off=90, data=b"y" * 10)))
        assert (f.file_id, f.index, f.chunk_len, f.offset, f.checksum, bytes(f.data)) == (
            1, 2, 100, 90, 0xABCD, b"y" * 10)
        with pytest.raises(RemoteProtocolError, match="beyond"):
            P.parse_frames(memoryview(_chunk_frame(clen=100, off=91, data=b"y" * 10)))
        with pytest.raises(RemoteProtocolError, match="beyond"):
            P.parse_frames(memoryview(_chunk_frame(clen=0, off=0, data=b"y")))
        with pytest.raises(RemoteProtocolError, match="beyond"):
            P.parse_frames(memoryview(_chunk_frame(clen=2**32 - 1, off=2**32 - 1, data=b"y")))

    def test_chunk_truncations(self):
        frame = _chunk_frame()
        for n in range(1, len(frame)):
            with pytest.raises(RemoteProtocolError):
                P.parse_frames(memoryview(frame[:n]))
        # a length field that claims more than the packet holds
        with pytest.raises(RemoteProtocolError):
            P.parse_frames(memoryview(_chunk_frame(data=b"z" * 5, length=6)))

    FRAMES = {
        "stream": P.encode_stream(300, b"abcdefgh"),
        "stream_big_offset": P.encode_stream(2**50, b"q"),
        "ack": P.encode_ack(RangeSet([(0, 3), (5, 10), (200, 300)]), 1234),
        "max_data": P.encode_varint_frame(P.F_MAX_DATA, 2**40),
        "chunk": _chunk_frame(),
        "close": P.encode_close(ErrorCode.PROTOCOL, "a reason of some length"),
        "close_empty_reason": P.encode_close(0, ""),
    }

    @pytest.mark.parametrize("name", list(FRAMES))
    def test_every_truncation_of_a_frame_is_rejected(self, name):
        frame = self.FRAMES[name]
        assert len(P.parse_frames(memoryview(frame))) == 1
        for n in range(1, len(frame)):
            with pytest.raises(RemoteProtocolError):
                P.parse_frames(memoryview(frame[:n]))

    def test_close_header_truncation_rejected(self):
        frame = P.encode_close(ErrorCode.PROTOCOL, "bye")
        (f,) = P.parse_frames(memoryview(frame))
        assert (f.code, f.reason) == (ErrorCode.PROTOCOL, "bye")
        for n in range(1, 5):
            with pytest.raises(RemoteProtocolError):
                P.parse_frames(memoryview(frame[:n]))

    def test_close_reason_cut_to_200_bytes(self):
        (f,) = P.parse_frames(memoryview(P.encode_close(1, "é" * 150)))
        assert f.reason == "é" * 100

    def test_unknown_frame_types_rejected(self):
        known = {P.F_PADDING, P.F_PING, P.F_ACK, P.F_STREAM, P.F_CHUNK, P.F_MAX_DATA, P.F_CLOSE}
        for t in range(256):
            if t in known:
                continue
            with pytest.raises(RemoteProtocolError, match="unknown frame"):
                P.parse_frames(memoryview(bytes([t]) + bytes(40)))
            # also after a valid frame
            with pytest.raises(RemoteProtocolError, match="unknown frame"):
                P.parse_frames(memoryview(bytes([P.F_PING, t])))

    def test_sequence_of_frames_with_padding(self):
        payload = (bytes(3) + P.encode_stream(0, b"ab") + bytes([P.F_PING]) + bytes(2)
                   + P.encode_varint_frame(P.F_MAX_DATA, 99) + _chunk_frame() + P.encode_close(5, "x") + bytes(7))
        frames = P.parse_frames(memoryview(payload))
        assert len(frames) == 5
        assert isinstance(frames[0], P.StreamFrame) and bytes(frames[0].data) == b"ab"
        assert frames[1] is P.PING
        assert frames[2] == P.MaxDataFrame(99)
        assert isinstance(frames[3], P.ChunkFrame)
        assert frames[4] == P.CloseFrame(5, "x")


# =====================================================================================
# recovery (RFC 9002), explicit clocks
# =====================================================================================
def _send(rec: Recovery, pn: int, t: float, size: int = 1000, eliciting: bool = True) -> SentPacket:
    p = SentPacket(pn, t, size, eliciting, [("s", pn, 1)])
    rec.on_sent(p)
    return p


def _pns(pieces) -> list[int]:
    """Packet numbers named by (run, first, stop) pieces."""
    return [pn for _run, a, b in pieces for pn in range(a, b)]


class TestRtt:
    def test_initial_values(self):
        r = RttEstimator(0.025)
        assert r.smoothed == K_INITIAL_RTT and r.var == K_INITIAL_RTT / 2 and not r.has_sample
        assert r.pto() == pytest.approx(0.333 + 4 * 0.1665 + 0.025)

    def test_first_sample_ignores_ack_delay(self):
        r = RttEstimator(0.025)
        r.update(0.1, 0.02)
        assert (r.latest, r.min, r.smoothed, r.var) == (0.1, 0.1, 0.1, 0.05)

    def test_later_samples_use_weights_and_ack_delay(self):
        r = RttEstimator(0.025)
        r.update(0.1, 0.0)
        r.update(0.2, 0.01)  # adjusted 0.19 >= min 0.1
        assert r.var == pytest.approx(0.75 * 0.05 + 0.25 * abs(0.1 - 0.19))
        assert r.smoothed == pytest.approx(0.875 * 0.1 + 0.125 * 0.19)
        assert r.min == 0.1 and r.latest == 0.2

    def test_ack_delay_not_subtracted_below_min_rtt(self):
        r = RttEstimator(0.025)
        r.update(0.1, 0.0)
        r.update(0.12, 0.024)  # 0.096 < min 0.1: use 0.12
        assert r.smoothed == pytest.approx(0.875 * 0.1 + 0.125 * 0.12)
        assert r.var == pytest.approx(0.75 * 0.05 + 0.25 * 0.02)
        r2 = RttEstimator(0.25)  # binary-exact values: 0.625 - 0.125 == 0.5 == min
        r2.update(0.5, 0.0)
        r2.update(0.625, 0.125)  # lands exactly on min: subtract
        assert r2.smoothed == 0.5 and r2.var == 0.75 * 0.25

    def test_ack_delay_capped_at_max_ack_delay(self):
        r = RttEstimator(0.025)
        r.update(0.1, 0.0)
        r.update(0.3, 0.1)  # delay capped at 0.025 -> 0.275
        assert r.smoothed == pytest.approx(0.875 * 0.1 + 0.125 * 0.275)

    def test_min_rtt_is_raw_minimum(self):
        r = RttEstimator(0.025)
        for s in (0.3, 0.2, 0.25, 0.05, 0.4):
            r.update(s, 0.02)
        assert r.min == 0.05

    def test_pto_uses_granularity_floor(self):
        r = RttEstimator(0.0)
        for _ in range(200):
            r.update(0.01, 0.0)
        assert r.var < K_GRANULARITY / 4
        assert r.pto() == pytest.approx(r.smoothed + K_GRANULARITY)

    def test_sample_through_on_ack(self):
        rec = Recovery(0.025)
        _send(rec, 0, 1.0)
        _send(rec, 1, 1.01)
        rs = rec.on_ack(RangeSet([(1, 2)]), 0.005, 1.11)
        assert rs.rtt == pytest.approx(0.1) and rec.rtt.latest == pytest.approx(0.1)
        # ACK newly covering only a lower packet: largest is not newly acked -> no RTT sample
        rs = rec.on_ack(RangeSet([(0, 2)]), 0.0, 1.5)
        assert _pns(rs.acked) == [0] and rs.rtt == 0.0
        assert rec.rtt.latest == pytest.approx(0.1)


class TestLossDetection:
    def test_packet_threshold(self):
        rec = Recovery()
        for pn in range(6):
            _send(rec, pn, 0.0)
        rs = rec.on_ack(RangeSet([(3, 4)]), 0.0, 0.1)
        assert _pns(rs.acked) == [3]
        assert _pns(rs.lost) == [0]  # 0 <= 3 - 3; 1 and 2 are not (yet)
        assert rs.newly_lost == 1000 and rec.lost_packets == 1
        rs = rec.on_ack(RangeSet([(3, 5)]), 0.0, 0.1)
        assert _pns(rs.lost) == [1]
        assert rec.unsettled() == [2, 5]

    def test_time_threshold_via_timer(self):
        rec = Recovery()
        for pn in range(5):
            _send(rec, pn, 0.0)
        rs = rec.on_ack(RangeSet([(3, 4)]), 0.0, 0.1)
        assert _pns(rs.lost) == [0]
        # 1 and 2 wait for 9/8 * max(srtt, latest) = 0.1125 after they were sent
        assert rec.loss_time() == pytest.approx(9 / 8 * 0.1)
        assert rec.timer() == rec.loss_time()
        rs, probe = rec.on_timer(rec.loss_time())
        assert not probe and _pns(rs.lost) == [1, 2]
        assert rec.unsettled() == [4]  # above the largest acked: not lost
        assert rec.loss_time() is None

    def test_time_threshold_uses_max_of_smoothed_and_latest(self):
        rec = Recovery()
        _send(rec, 0, 0.0)
        _send(rec, 1, 0.0)
        rec.on_ack(RangeSet([(1, 2)]), 0.0, 0.1)  # srtt = latest = 0.1
        _send(rec, 2, 1.0)
        _send(rec, 3, 1.0)
        rs = rec.on_ack(RangeSet([(0, 2), (3, 4)]), 0.0, 1.5)  # latest 0.5 > srtt
        assert rec.rtt.latest == pytest.approx(0.5) and rec.rtt.smoothed < 0.5
        assert rs.lost == []
        assert rec.loss_time() == pytest.approx(1.0 + 9 / 8 * 0.5)

    def test_time_threshold_on_ack(self):
        rec = Recovery()
        _send(rec, 0, 0.0)
        _send(rec, 1, 0.05)
        rs = rec.on_ack(RangeSet([(1, 2)]), 0.0, 0.15)  # delay 0.1125; 0 <= 0.15 - 0.1125
        assert _pns(rs.lost) == [0] and _pns(rs.acked) == [1]

    def test_an_unacknowledged_ack_alone_is_not_a_loss(self):
        """A packet that carries only an ACK is never acknowledged for itself (the peer need not
        have kept it: one that came before the peer's keys were ready is dropped there).  Once
        later packets are acknowledged it is forgotten, not counted lost: nothing goes again and
        it was never in flight (RFC 9002 6.1, 7: only packets in flight are a congestion signal).
        It was counted, and test_udp_plain_loopback saw ``lost_packets == 1`` on a busy machine."""
        rec = Recovery()
        rec.on_sent(SentPacket(0, 0.0, 40, False, []))
        for pn in range(1, 5):
            _send(rec, pn, 0.0)
        rs = rec.on_ack(RangeSet([(1, 5)]), 0.0, 0.1)
        assert rs.lost == [] and rs.lost_count == 0 and rs.newly_lost == 0
        assert rec.lost_packets == 0 and rec.lost_bytes == 0 and rec.unsettled() == []

    def test_lost_packet_acked_late_is_not_acked_again(self):
        rec = Recovery()
        for pn in range(5):
            _send(rec, pn, 0.0)
        rs = rec.on_ack(RangeSet([(4, 5)]), 0.0, 0.1)
        assert _pns(rs.lost) == [0, 1] and rec.bytes_in_flight == 2000
        rs = rec.on_ack(RangeSet([(0, 5)]), 0.0, 0.2)  # the "lost" ones arrive after all
        assert _pns(rs.acked) == [2, 3] and rs.newly_acked == 2000
        assert rec.bytes_in_flight == 0 and not rec.unsettled() and rec.delivered == 3000
        assert rec.lost_packets == 2

    def test_repeated_and_overlapping_acks_do_not_reack(self):
        rec = Recovery()
        for pn in range(10):
            _send(rec, pn, 0.0)
        rs = rec.on_ack(RangeSet([(0, 3)]), 0.0, 0.1)
        assert _pns(rs.acked) == [0, 1, 2]
        rs = rec.on_ack(RangeSet([(0, 5)]), 0.0, 0.1)
        assert _pns(rs.acked) == [3, 4] and rs.newly_acked == 2000
        rs = rec.on_ack(RangeSet([(0, 5)]), 0.0, 0.11)
        assert rs.acked == [] and rs.newly_acked == 0 and rs.lost == []
        rs = rec.on_ack(RangeSet([(1, 2), (4, 7)]), 0.0, 0.12)
        assert _pns(rs.acked) == [5, 6]
        assert rec.delivered == 7000 and rec.bytes_in_flight == 3000

    def test_bytes_in_flight_bookkeeping(self):
        rec = Recovery()
        _send(rec, 0, 0.0, 1200)
        _send(rec, 1, 0.0, 50, eliciting=False)
        _send(rec, 2, 0.0, 1300)
        _send(rec, 3, 0.0, 1400)
        _send(rec, 4, 0.0, 1500)
        assert rec.bytes_in_flight == 1200 + 1300 + 1400 + 1500
        rec.on_ack(RangeSet([(1, 2)]), 0.0, 0.1)  # non-eliciting: no change
        assert rec.bytes_in_flight == 5400
        rs = rec.on_ack(RangeSet([(1, 3), (4, 5)]), 0.0, 0.1)
        assert _pns(rs.acked) == [2, 4] and _pns(rs.lost) == [0]
        assert rec.bytes_in_flight == 1400
        rs, probe = rec.on_timer(rec.timer())
        assert _pns(rs.lost) == [3] and not probe
        assert rec.bytes_in_flight == 0 and not rec.unsettled() and rec.timer() is None
        assert rec.lost_bytes == 2600 and rec.lost_packets == 2

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), min_size=1, max_size=40),
           st.lists(st.booleans(), min_size=60, max_size=60))
    def test_bytes_in_flight_invariant_random_acks(self, acks, eliciting):
        rec = Recovery()
        sizes = {}
        for pn in range(60):
            sizes[pn] = 100 + pn
            _send(rec, pn, pn * 0.001, sizes[pn], eliciting[pn])
        settled = set()
        now = 0.1
        for start, length in acks:
            now += 0.01
            start = min(start, 59)
            rs = rec.on_ack(RangeSet([(start, min(60, start + length))]), 0.0, now)
            for pn in _pns(rs.acked + rs.lost):
                assert pn not in settled
                settled.add(pn)
            expect = sum(sizes[pn] for pn in rec.unsettled() if eliciting[pn])
            assert rec.bytes_in_flight == expect >= 0
            assert set(rec.unsettled()).isdisjoint(settled)


def _send_run(rec: Recovery, pn: int, count: int, t: float, size: int = 1000, last: int = 0) -> SentPacket:
    p = SentPacket(pn, t, size, True, [("r", pn)], count, last)
    rec.on_sent(p)
    return p


class TestRuns:
    """Packets sent in one burst are one record: ACKs and losses split it into pieces."""

    def test_partial_acks_and_losses_split_a_run(self):
        rec = Recovery()
        run = _send_run(rec, 0, 10, 0.0, 1000, last=500)
        assert rec.bytes_in_flight == 9500 and rec.unsettled() == list(range(10))
        rs = rec.on_ack(RangeSet([(2, 5)]), 0.0, 0.1)
        assert rs.acked == [(run, 2, 5)] and rs.newly_acked == 3000
        assert rs.lost == [(run, 0, 2)] and rs.newly_lost == 2000 and rs.lost_count == 2  # 0, 1 <= 4 - 3
        assert rec.bytes_in_flight == 4500 and rec.unsettled() == [5, 6, 7, 8, 9]
        rs = rec.on_ack(RangeSet([(0, 10)]), 0.0, 0.2)  # the lost ones are not acked again
        assert rs.acked == [(run, 5, 10)] and rs.newly_acked == 4500  # the last packet is short
        assert rec.bytes_in_flight == 0 and rec.unsettled() == [] and rec.timer() is None
        assert rec.delivered == 7500 and rec.lost_bytes == 2000 and rec.lost_packets == 2

    def test_time_threshold_within_a_run(self):
        rec = Recovery()
        run = _send_run(rec, 0, 10, 0.0)
        rs = rec.on_ack(RangeSet([(9, 10)]), 0.0, 0.1)  # all sent together: only 0..6 are 3 behind
        assert rs.lost == [(run, 0, 7)] and rec.unsettled() == [7, 8]
        assert rec.loss_time() == pytest.approx(9 / 8 * 0.1)
        rs, probe = rec.on_timer(rec.loss_time())
        assert not probe and rs.lost == [(run, 7, 9)] and rec.unsettled() == []

    def test_ack_spanning_runs_and_single_packets(self):
        rec = Recovery()
        a = _send_run(rec, 0, 5, 0.0)
        b = _send(rec, 5, 0.001)
        c = _send_run(rec, 6, 5, 0.002, last=100)
        rs = rec.on_ack(RangeSet([(3, 8)]), 0.0, 0.1)
        assert rs.acked == [(a, 3, 5), (b, 5, 6), (c, 6, 8)] and rs.newly_acked == 5000
        assert rs.lost == [(a, 0, 3)]  # at least 3 below the largest, 7
        assert rs.prior_delivered == 0 and rs.rtt == pytest.approx(0.098)
        rs = rec.on_ack(RangeSet([(10, 11)]), 0.0, 0.2)
        assert rs.acked == [(c, 10, 11)] and rs.newly_acked == 100
        assert rs.lost == [] and rec.unsettled() == [8, 9]  # 8 > 10 - 3; not old enough either
        rs = rec.on_ack(RangeSet([(11, 12)]), 0.0, 0.21)  # a packet never sent: beyond the runs
        assert rs.acked == [] and rec.unsettled() == [8, 9]

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.lists(st.integers(1, 6), min_size=1, max_size=15),
           st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12)), min_size=1, max_size=30))
    def test_every_packet_settles_once(self, counts, acks):
        rec = Recovery()
        sizes, pn = {}, 0
        for i, count in enumerate(counts):
            last = 300 + i
            _send_run(rec, pn, count, pn * 0.001, 1000, last)
            for k in range(count):
                sizes[pn + k] = last if k == count - 1 else 1000
            pn += count
        total = sum(sizes.values())
        settled: set[int] = set()
        now = 0.1
        for start, length in acks:
            now += 0.01
            start = min(start, pn - 1)
            rs = rec.on_ack(RangeSet([(start, min(pn, start + length))]), 0.0, now)
            for p in _pns(rs.acked + rs.lost):
                assert p not in settled
                settled.add(p)
            assert rs.newly_acked == sum(sizes[p] for p in _pns(rs.acked))
            assert rs.newly_lost == sum(sizes[p] for p in _pns(rs.lost))
            assert rec.unsettled() == sorted(set(sizes) - settled)
            assert rec.bytes_in_flight == sum(sizes[p] for p in rec.unsettled())
            assert rec.delivered + rec.lost_bytes + rec.bytes_in_flight == total


def test_the_loss_timer_declares_the_loss_when_it_fires():
    rng = random.Random(1)
    for _ in range(20_000):
        rec = Recovery()
        t0 = rng.uniform(1000, 100000)
        _send(rec, 0, t0)
        _send(rec, 1, t0 + 0.001)
        rec.on_ack(RangeSet([(1, 2)]), 0, t0 + rng.uniform(0.01, 0.05))  # too soon for 0 to be lost yet
        rs, probe = rec.on_timer(rec.timer())
        assert _pns(rs.lost) == [0] and not probe


class TestReorderingAdaptation:
    def test_spurious_loss_raises_the_thresholds(self):
        rec = Recovery()
        for pn in range(10):
            _send(rec, pn, 0.0)
        rs = rec.on_ack(RangeSet([(5, 10)]), 0.0, 0.1)
        assert _pns(rs.lost) == [0, 1, 2, 3, 4]
        rs = rec.on_ack(RangeSet([(0, 10)]), 0.0, 0.101)  # they were only late
        assert rs.acked == [] and rec.spurious_losses == 5
        assert rec.packet_threshold == 10 and rec.time_threshold == pytest.approx(9 / 8 + 1 / 8)
        for pn in range(10, 20):
            _send(rec, pn, 0.2)
        rs = rec.on_ack(RangeSet([(19, 20)]), 0.0, 0.21)  # 9 behind: within the new threshold
        assert rs.lost == [] and rec.unsettled() == list(range(10, 19))
        rs, probe = rec.on_timer(rec.loss_time())  # still lost by time, only later
        assert rec.loss_time() is None and _pns(rs.lost) == list(range(10, 19))

    def test_thresholds_are_capped(self):
        from ftx.core.udp.recovery import MAX_PACKET_THRESHOLD, MAX_TIME_THRESHOLD

        rec = Recovery()
        pn = 0
        for _ in range(20):
            for k in range(1000):
                _send(rec, pn + k, pn * 1e-4)
            rec.on_ack(RangeSet([(pn + 999, pn + 1000)]), 0.0, pn * 1e-4 + 0.1)
            rec.on_ack(RangeSet([(pn, pn + 1000)]), 0.0, pn * 1e-4 + 0.1)
            pn += 1000
        assert rec.packet_threshold == MAX_PACKET_THRESHOLD and rec.time_threshold == MAX_TIME_THRESHOLD


class TestPto:
    def test_pto_timer_and_backoff(self):
        rec = Recovery(0.025)
        assert rec.timer() is None
        _send(rec, 0, 10.0)
        base = 0.333 + 4 * 0.1665 + 0.025
        assert rec.timer() == pytest.approx(10.0 + base)
        for k in range(1, 12):
            rs, probe = rec.on_timer(rec.timer())
            assert probe and rs.lost == [] and rec.pto_count == k
            assert rec.timer() == pytest.approx(10.0 + base * 2 ** min(k, 8))

    def test_pto_after_rtt_sample_and_reset_on_ack(self):
        rec = Recovery(0.025)
        _send(rec, 0, 0.0)
        rec.on_ack(RangeSet([(0, 1)]), 0.0, 0.1)
        _send(rec, 1, 1.0)
        _send(rec, 2, 1.2)
        pto = 0.1 + 4 * 0.05 + 0.025
        assert rec.timer() == pytest.approx(1.2 + pto)  # from the last ack-eliciting packet
        rec.on_timer(rec.timer())
        rec.on_timer(rec.timer())
        assert rec.pto_count == 2 and rec.timer() == pytest.approx(1.2 + 4 * pto)
        rec.on_ack(RangeSet([(2, 3)]), 0.0, 3.0)
        assert rec.pto_count == 0

    def test_non_eliciting_packets_arm_no_pto(self):
        rec = Recovery()
        _send(rec, 0, 0.0, eliciting=False)
        _send(rec, 1, 0.0, eliciting=False)
        assert rec.bytes_in_flight == 0 and rec.timer() is None
        _send(rec, 2, 0.5)
        assert rec.timer() == pytest.approx(0.5 + rec.rtt.pto())

    def test_loss_timer_takes_precedence_over_pto(self):
        rec = Recovery()
        _send(rec, 0, 0.0)
        _send(rec, 1, 0.01)
        rec.on_ack(RangeSet([(1, 2)]), 0.0, 0.1)
        assert 0 in rec.unsettled()
        assert rec.timer() == pytest.approx(0.0 + 9 / 8 * 0.09)
        rs, probe = rec.on_timer(rec.timer())
        assert _pns(rs.lost) == [0] and not probe and rec.pto_count == 0

    def test_delivery_rate_sample(self):
        rec = Recovery()
        for pn in range(10):
            _send(rec, pn, pn * 0.001, 1000)
        rs = rec.on_ack(RangeSet([(0, 10)]), 0.0, 0.1)
        assert rs.newly_acked == 10000 and rs.delivered == 10000
        assert rs.interval == pytest.approx(0.1) and rs.rate == pytest.approx(100000)


# =====================================================================================
# congestion (BBR), synthetic rate samples
# =====================================================================================
class BbrFeed:
    """Feeds a Bbr one ACK per call; each ACK starts a new round unless told otherwise."""

    def __init__(self, bbr: Bbr) -> None:
        self.bbr = bbr
        self.delivered = 0
        self.now = 0.0
        self.pn = 0

    def ack(self, rate: float, acked: int = 14000, lost: int = 0, lost_packets: int = 0,
            app_limited: bool = False, in_flight: int = 10**9, rtt: float = 0.05) -> None:
        self.now += rtt
        p = SentPacket(self.pn, self.now - rtt, 1400, True, [], delivered=self.delivered)
        self.pn += 1
        self.delivered += acked
        rs = RateSample(delivered=acked, interval=rtt, rate=rate, app_limited=app_limited, rtt=rtt,
                        newly_acked=acked, acked=[(p, p.pn, p.pn + 1)], prior_delivered=p.delivered)
        self.bbr.on_ack(rs, self.now, self.delivered, in_flight, rtt)
        if lost or lost_packets:
            lrs = RateSample(newly_lost=lost, lost_count=lost_packets)
            self.bbr.on_loss(lrs, self.now)


class TestBbr:
    def test_startup_exits_after_three_rounds_without_growth(self):
        f = BbrFeed(Bbr(1400))
        for rate in (1e6, 2e6, 3e6, 5e6):  # each at least 25% more
            f.ack(rate)
            assert f.bbr.state == "startup"
        f.ack(5.5e6)  # +10%
        f.ack(6.0e6)  # +20% over full_bw
        assert f.bbr.state == "startup" and f.bbr.pacing_gain == STARTUP_GAIN
        f.ack(6.2e6)
        assert f.bbr.state == "drain" and f.bbr.pacing_gain == pytest.approx(1 / STARTUP_GAIN)
        assert f.bbr.btl_bw == 6.2e6

    def test_growth_resets_the_count(self):
        f = BbrFeed(Bbr(1400))
        f.ack(1e6)
        f.ack(1e6)
        f.ack(1e6)
        f.ack(1.25e6)  # exactly 25%: growth
        f.ack(1.25e6)
        f.ack(1.25e6)
        assert f.bbr.state == "startup"
        f.ack(1.25e6)
        assert f.bbr.state != "startup"

    def test_app_limited_rounds_do_not_count(self):
        f = BbrFeed(Bbr(1400))
        f.ack(1e6)
        for _ in range(10):
            f.ack(1e6, app_limited=True)
        assert f.bbr.state == "startup"

    def test_drain_then_probe_bw(self):
        f = BbrFeed(Bbr(1400))
        for _ in range(4):
            f.ack(1e6)
        assert f.bbr.state == "drain"
        f.ack(1e6, in_flight=int(1e6 * 0.05))  # in flight down to the BDP
        assert f.bbr.state == "probe_bw" and f.bbr.cwnd_gain == 2.0

    def _cruising(self, loss_share: float, rtt_when_lossy: float = 0.05) -> Bbr:
        f = BbrFeed(Bbr(1400))
        for _ in range(4):
            f.ack(1e6)
        f.ack(1e6, in_flight=int(1e6 * 0.05))
        assert f.bbr.state == "probe_bw"
        for _ in range(30):  # rounds that each lose loss_share of their bytes
            acked = 100 * 1400
            lost = int(acked * loss_share / (1 - loss_share))
            f.ack(1e6, acked=acked, lost=lost, lost_packets=lost // 1400, rtt=rtt_when_lossy)
        f.bbr._cycle_index, f.bbr.pacing_gain = 2, 1.0  # a cruising phase
        return f.bbr

    def test_random_loss_raises_the_pacing_rate_by_what_it_takes(self):
        bbr = self._cruising(0.2)
        assert bbr.loss_rate == pytest.approx(0.2, abs=0.01)
        assert bbr.pacing_rate == pytest.approx(bbr.btl_bw / (1 - bbr.loss_rate))
        heavy = self._cruising(0.6)
        assert heavy.pacing_rate == pytest.approx(heavy.btl_bw / 0.7)  # compensation capped at 30%
        assert self._cruising(0.005).pacing_rate == pytest.approx(1e6)  # below 1%: left alone

    def test_no_compensation_while_a_queue_builds(self):
        bbr = self._cruising(0.2, rtt_when_lossy=0.08)  # RTT 80 ms against 50 ms min: our own queue
        assert bbr.loss_rate > 0.15 and bbr.pacing_rate == pytest.approx(bbr.btl_bw)

    def test_exits_startup_on_loss(self):
        f = BbrFeed(Bbr(1400))
        f.ack(1e6)
        f.ack(2e6)
        f.ack(4e6, acked=100 * 1400, lost=8 * 1400, lost_packets=8)  # 7.4% of the round, 8 packets
        assert f.bbr.state == "startup"  # judged when the round ends
        f.ack(8e6)
        assert f.bbr.state == "drain"

    def test_loss_exit_needs_eight_packets(self):
        f = BbrFeed(Bbr(1400))
        f.ack(1e6)
        f.ack(2e6, acked=1400, lost=7 * 1400, lost_packets=7)  # 87% but only 7 packets
        f.ack(4e6)
        assert f.bbr.state == "startup"

    def test_loss_exit_needs_more_than_two_percent(self):
        f = BbrFeed(Bbr(1400))
        f.ack(1e6)
        f.ack(2e6, acked=490 * 1400, lost=10 * 1400, lost_packets=10)  # exactly 2%
        f.ack(4e6)
        assert f.bbr.state == "startup"
        f.ack(8e6, acked=480 * 1400, lost=11 * 1400, lost_packets=11)  # 2.2%
        f.ack(16e6)
        assert f.bbr.state == "drain"

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(st.floats(1.0, 1e10), st.floats(1e-5, 2.0), st.integers(0, 10**7)),
                    min_size=1, max_size=30),
           st.integers(4, 100), st.integers(1200, 9000))
    def test_cwnd_never_below_floor(self, samples, floor_packets, mss):
        bbr = Bbr(mss, min_cwnd_packets=floor_packets)
        f = BbrFeed(bbr)
        floor = max(4, floor_packets) * mss
        for rate, rtt, in_flight in samples:
            f.ack(rate, rtt=rtt, in_flight=in_flight)
            if bbr.btl_bw:
                assert bbr.cwnd >= floor

    def test_floor_with_tiny_model(self):
        bbr = Bbr(1400, min_cwnd_packets=30)
        f = BbrFeed(bbr)
        f.ack(1.0, rtt=0.001)
        assert bbr.btl_bw == 1.0 and bbr.cwnd == 30 * 1400
        bbr2 = Bbr(1400, min_cwnd_packets=1)
        BbrFeed(bbr2).ack(1.0, rtt=0.001)
        assert bbr2.cwnd == 4 * 1400

    def test_initial_cwnd_respects_floor(self):
        bbr = Bbr(1400, min_cwnd_packets=INITIAL_CWND_PACKETS + 28)
        assert bbr.cwnd >= bbr.min_cwnd

    def test_pacing_rate_capped(self):
        bbr = Bbr(1400, max_rate=125_000)
        assert bbr.pacing_rate == 125_000  # before any sample
        f = BbrFeed(bbr)
        for rate in (1e6, 1e7, 1e8, 1e9):
            f.ack(rate)
            assert bbr.pacing_rate == 125_000
        uncapped = Bbr(1400)
        BbrFeed(uncapped).ack(1e6)
        assert uncapped.pacing_rate == pytest.approx(STARTUP_GAIN * 1e6)
        slow = Bbr(1400, max_rate=1e9)
        BbrFeed(slow).ack(1e6)
        assert slow.pacing_rate == pytest.approx(STARTUP_GAIN * 1e6)

    def test_startup_never_paces_below_its_initial_rate(self):
        """The handshake's ACKs give delivery-rate samples of a few hundred bytes, app-limited:
        they measure the handshake, not the path.  Taken as the bottleneck they made a sender
        pace its first data at ~1 MB/s (and its ACKs' samples, paced, stayed that low): on
        loopback the first 2 MB of a tree of small files took ~25 ms.  As Linux BBR, STARTUP
        never paces below its initial rate (initial window / smoothed RTT, x the gain)."""
        bbr = Bbr(1452)
        f = BbrFeed(bbr)
        f.ack(350e3, acked=300, app_limited=True, rtt=0.001)  # a handshake message, 1 ms RTT
        initial = STARTUP_GAIN * INITIAL_CWND_PACKETS * 1452 / 0.001
        assert bbr.state == "startup" and bbr.btl_bw == 350e3
        assert bbr.pacing_rate == pytest.approx(initial)
        for rate in (1e8, 2e8, 4e8):  # the path's real rate, growing: the model takes over
            f.ack(rate, rtt=0.001)
        assert bbr.pacing_rate == pytest.approx(STARTUP_GAIN * 4e8)
        capped = Bbr(1452, max_rate=1e6)
        BbrFeed(capped).ack(350e3, acked=300, app_limited=True, rtt=0.001)
        assert capped.pacing_rate == 1e6  # --max-rate still caps it

    def test_ack_without_new_packets_is_not_a_round(self):
        f = BbrFeed(Bbr(1400))
        f.ack(1e6)
        f.ack(1e6)  # one round without growth
        rounds = f.bbr.round_count
        for _ in range(2):  # what UdpSession._on_ack passes for an ACK that acks nothing new
            f.bbr.on_ack(RateSample(), f.now, f.delivered, 10**9, 0.05)
        assert f.bbr.round_count == rounds
        assert f.bbr.state == "startup"


# =====================================================================================
# a whole Dialer/Listener pair over a seeded in-memory link
# =====================================================================================
class Wire:
    """One direction: fixed delay, seeded loss / duplication / reordering / corruption,
    optional blackout windows.  Datagrams carry the address they are sent to/from."""

    def __init__(self, seed: int, delay: float = 0.01, loss: float = 0.0, dup: float = 0.0,
                 reorder: float = 0.0, corrupt: float = 0.0, reorder_delay: float = 0.015, mtu: int = 0) -> None:
        self.mtu = mtu  # datagrams larger than this are dropped (0: none)
        self.rng = random.Random(seed)
        self.delay, self.loss, self.dup, self.reorder, self.corrupt = delay, loss, dup, reorder, corrupt
        self.reorder_delay = reorder_delay
        self.blackouts: list[tuple[float, float]] = []
        self.heap: list = []
        self.seq = 0
        self.log: list[tuple[float, bytes, object]] = []
        self.stats = {"sent": 0, "dropped": 0, "dup": 0, "reordered": 0, "corrupted": 0, "corrupt_delivered": 0}

    def send(self, data: bytes, now: float, addr) -> None:
        self.stats["sent"] += 1
        self.log.append((now, data, addr))
        r = self.rng
        rl, rd, rr, rc, rpos, rbit = (r.random() for _ in range(6))
        if any(a <= now < b for a, b in self.blackouts) or rl < self.loss or (self.mtu and len(data) > self.mtu):
            self.stats["dropped"] += 1
            return
        bad = rc < self.corrupt
        if bad:
            buf = bytearray(data)
            buf[int(rpos * len(buf))] ^= 1 << int(rbit * 8)
            data = bytes(buf)
            self.stats["corrupted"] += 1
        when = now + self.delay
        if rr < self.reorder:
            when += self.reorder_delay
            self.stats["reordered"] += 1
        self._push(when, data, addr, bad)
        if rd < self.dup:
            self.stats["dup"] += 1
            self._push(when + 0.0005, data, addr, bad)

    def _push(self, when, data, addr, bad) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, data, addr, bad))

    def due(self, now: float) -> list:
        out = []
        while self.heap and self.heap[0][0] <= now:
            _, _, data, addr, bad = heapq.heappop(self.heap)
            self.stats["corrupt_delivered"] += bad
            out.append((data, addr))
        return out

    def next_time(self) -> float | None:
        return self.heap[0][0] if self.heap else None


class BudgetExceeded(AssertionError):
    pass


MIN_STEP = 1e-5  # a driver that wakes "now" again still lets a little time pass


def gro(arrivals: list) -> list:
    """Coalesce ``(datagram, address)`` arrivals as UDP GRO does: consecutive datagrams
    from one address and of one size (the last of a run may be shorter) become one
    ``(buffer, segment size, address)`` read of at most 64 segments."""
    out: list = []
    for data, addr in arrivals:
        if out:
            buf, seg, a, k = out[-1]
            if a == addr and len(data) <= seg and len(buf) % seg == 0 and k < 64 and len(buf) + len(data) <= 65535:
                out[-1] = (buf + data, seg, a, k + 1)
                continue
        out.append((bytes(data), len(data), addr, 1))
    return [(buf, seg, addr) for buf, seg, addr, _ in out]


class InMemoryNet:
    """A Dialer and a Listener joined by two Wires, one clock, driven like the asyncio driver."""

    def __init__(self, seed: int = 1, fwd: dict | None = None, rev: dict | None = None,
                 config: UdpConfig | None = None, listener_config: UdpConfig | None = None,
                 gro: bool = False) -> None:
        # gro: deliver as the asyncio driver does with UDP GRO, runs of datagrams in one read; and
        # wake at most every 2 ms, as the driver's pacing naps do, so that senders send bursts
        self.gro = gro
        self.min_step = 0.002 if gro else MIN_STEP
        self.now = 100.0
        self.rng = random.Random(seed)
        self.fwd = Wire(seed * 2 + 1, **(fwd or {}))  # dialer -> listener
        self.rev = Wire(seed * 2 + 2, **(rev or {}))  # listener -> dialer
        self.config = config or UdpConfig()
        self.listener = Listener(b"k" * 32, listener_config or self.config, lambda: self.rng.getrandbits(64))
        self.dialer = Dialer(self.config, self.rng.getrandbits(64), self.rng.getrandbits(64), self.now)
        self.addr = ("198.51.100.7", 40000)  # the dialer's current source address
        self.lsession: UdpSession | None = None
        self.iterations = 0
        self.hooks: list = []  # called after every step
        self.closed_at: dict[int, float] = {}
        self.chunks: list = []  # taken from the listener session
        self.take = True
        self.lstream = bytearray()
        self.dstream = bytearray()
        self.misrouted = 0
        self.stuck = False
        self._woken = False

    @property
    def dsession(self) -> UdpSession | None:
        return self.dialer.session

    def sessions(self):
        return [s for s in (self.dsession, self.lsession) if s is not None]

    def step(self) -> None:
        """Advance the clock to the next event (a delivery or a timer), then handle it."""
        if self.iterations and not self._woken:
            times = [self.fwd.next_time(), self.rev.next_time(), self.dialer.next_timer()]
            times += [s.next_timer() for s in self.sessions()]
            times = [t for t in times if t is not None]
            if not times:
                self.stuck = True  # nothing in flight, no timer: only the test can make progress
                return
            self.now = max(min(times), self.now + self.min_step)
        self._woken = False
        self.iterations += 1
        now = self.now
        fwd = self.fwd.due(now)
        results = ([(r, addr) for buf, seg, addr in gro(fwd) for r in self.listener.receive_burst(buf, seg, addr, now)]
                   if self.gro else [(self.listener.receive_datagram(data, addr, now), addr) for data, addr in fwd])
        for (s, new, replies), addr in results:
            if new:
                assert self.lsession is None, "a second session for the same dialer"
                self.lsession = s
            for r in replies:
                self.rev.send(r, now, addr)
        rev = []
        for data, addr in self.rev.due(now):
            if addr != self.addr:  # sent to an address the dialer no longer has
                self.misrouted += 1
                continue
            rev.append((data, addr))
        if self.gro:
            for buf, seg, _ in gro(rev):
                self.dialer.receive_burst(buf, seg, now)
        else:
            for data, _ in rev:
                self.dialer.receive_datagram(data, now)
        for s in self.sessions():
            t = s.next_timer()
            if t is not None and now >= t:
                s.handle_timer(now)
            if s.closed and s.local_cid not in self.closed_at:
                self.closed_at[s.local_cid] = now
        for d in self.dialer.datagrams_to_send(now):
            self.fwd.send(d, now, self.addr)
        if self.dsession is not None:
            for d in self.dsession.datagrams_to_send(now):
                self.fwd.send(d, now, self.addr)
        if self.lsession is not None:
            dest = self.listener.addresses.get(self.lsession.local_cid)
            for d in self.lsession.datagrams_to_send(now):
                self.rev.send(d, now, dest)
        self._drain_app()
        for h in self.hooks:
            h(self)

    def _drain_app(self) -> None:
        buf = memoryview(bytearray(65536))
        if self.lsession is not None:
            if self.take:
                taken = self.lsession.take_chunks()
                if taken:
                    self.chunks += taken
                    self._woken = True  # as UdpLink.feed: MAX_DATA may now be due
            n = self.lsession.stream_read_into(buf)
            self.lstream += buf[:n]
        if self.dsession is not None:
            n = self.dsession.stream_read_into(buf)
            self.dstream += buf[:n]

    def run_until(self, pred, max_seconds: float = 60.0, max_iterations: int = 200_000) -> None:
        t_end = self.now + max_seconds
        limit = self.iterations + max_iterations
        self._woken = True  # the test may have written or queued something: the driver wakes at once
        self.stuck = False
        while not pred(self):
            if self.stuck:
                raise BudgetExceeded(f"nothing in flight and no timer: {self.describe()}")
            if self.now > t_end or self.iterations > limit:
                raise BudgetExceeded(
                    f"not done after {self.now - (t_end - max_seconds):.3f} simulated s and "
                    f"{self.iterations} iterations: {self.describe()}")
            self.step()

    def describe(self) -> str:
        parts = [f"chunks={len(self.chunks)} fwd={self.fwd.stats} rev={self.rev.stats}"]
        for name, s in (("dialer", self.dsession), ("listener", self.lsession)):
            if s is not None:
                parts.append(f"{name}: closed={s.closed} code={s.close_code} {s.close_reason!r} "
                             f"inflight={s.recovery.bytes_in_flight} cwnd={s.cc.cwnd} stats={s.stats}")
        return "; ".join(parts)

    def handshake(self, **kw) -> None:
        self.run_until(lambda n: n.dsession is not None and n.lsession is not None, **kw)


def _chunks(n: int, size: int, seed: int) -> list[bytes]:
    r = random.Random(seed)
    return [r.randbytes(size) for _ in range(n)]


def _send_all(net: InMemoryNet, blobs: list[bytes], fid: int = 3) -> None:
    for i, b in enumerate(blobs):
        net.dsession.send_chunk(fid, i, xxhash.xxh3_64_intdigest(b), b)


def _check_chunks(net: InMemoryNet, blobs: list[bytes], fid: int = 3) -> None:
    keys = [(c[0], c[1]) for c in net.chunks]
    assert len(keys) == len(set(keys)), "a chunk was delivered twice"
    assert sorted(keys) == [(fid, i) for i in range(len(blobs))]
    for f, i, csum, buf in net.chunks:
        assert bytes(buf) == blobs[i]
        assert csum == xxhash.xxh3_64_intdigest(blobs[i])


def _all_done(fid: int, n: int, up: bytes = b"", down: bytes = b""):
    def pred(net: InMemoryNet) -> bool:
        d, s = net.dsession, net.lsession
        return (len(net.chunks) >= n and d.file_acked(fid) and bytes(net.lstream) == up
                and bytes(net.dstream) == down and d.stream_all_acked and s.stream_all_acked)
    return pred


class TestHandshake:
    def test_handshake_sequence(self):
        net = InMemoryNet(config=UdpConfig(pmtud=False))  # (no path MTU probe after the handshake)
        net.handshake(max_seconds=1, max_iterations=100)
        types = [(P.parse(d).ptype, len(d)) for _, d, _ in net.fwd.log]
        back = [P.parse(d) for _, d, _ in net.rev.log]
        assert [t for t, _ in types] == [P.INITIAL, P.INITIAL]
        assert all(n == P.MIN_INITIAL_SIZE for _, n in types)
        first = P.parse_initial(P.parse(net.fwd.log[0][1]).payload)
        second = P.parse_initial(P.parse(net.fwd.log[1][1]).payload)
        assert first[1] == b"" and len(second[1]) == 20
        assert first[0] == second[0] == net.dialer.local_cid
        assert [p.ptype for p in back] == [P.RETRY, P.INITIAL]
        assert all(p.dcid == net.dialer.local_cid for p in back)
        assert P.parse_initial(back[0].payload)[1] == second[1]  # the RETRY's token was echoed
        cid = P.parse_initial(back[1].payload)[0]
        assert net.lsession.local_cid == cid == net.dsession.peer_cid
        assert net.lsession.peer_cid == net.dsession.local_cid
        assert net.listener.addresses[cid] == net.addr
        assert net.listener.stats["retries"] == 1
        assert net.lsession.chunk_receiver and not net.dsession.chunk_receiver

    def test_handshake_survives_losing_each_message_once(self):
        net = InMemoryNet(config=UdpConfig(pmtud=False))
        kinds = {"fwd": [], "rev": []}

        def drop_first(name, wire):
            send = wire.send

            def filtered(data, now, addr):
                pkt = P.parse(data)
                kind = (pkt.ptype, bool(pkt.ptype == P.INITIAL and P.parse_initial(pkt.payload)[1]))
                if kind not in kinds[name]:  # the first of each kind is lost
                    kinds[name].append(kind)
                    return
                send(data, now, addr)
            wire.send = filtered
        drop_first("fwd", net.fwd)
        drop_first("rev", net.rev)
        net.handshake(max_seconds=5, max_iterations=200)
        # INITIAL lost, RETRY lost, INITIAL with token lost, receiver INITIAL lost
        assert kinds == {"fwd": [(P.INITIAL, False), (P.INITIAL, True)], "rev": [(P.RETRY, False), (P.INITIAL, False)]}
        assert len(net.listener.sessions) == 1 and net.listener.stats["retries"] == 2
        assert net.now - 100.0 < 5.0  # retries after 0.25, 0.5, 1, 2, 2 s

    @pytest.mark.parametrize("seed", [1, 2, 3, 4])
    def test_handshake_survives_random_loss(self, seed):
        net = InMemoryNet(seed=seed, fwd={"loss": 0.3}, rev={"loss": 0.3})
        net.handshake(max_seconds=15, max_iterations=1000)
        assert len(net.listener.sessions) == 1


    def test_handshake_recovers_after_the_token_expired(self):
        """A dialer whose INITIAL-with-token was lost for longer than the token lives must still
        connect before it gives up (it did not, before bad tokens were answered with a RETRY)."""
        net = InMemoryNet()
        # the RETRY arrives at +0.02 s; from then on the forward path is down for 10.6 s
        net.fwd.blackouts.append((100.015, 110.6))
        net.run_until(lambda n: n.dsession is not None or n.dialer.timed_out(n.now),
                      max_seconds=20, max_iterations=1000)
        assert net.dsession is not None, (f"gave up at +{net.now - 100:.1f} s after "
                                          f"{net.listener.stats['bad_tokens']} refused tokens")


class TestTransfer:
    def test_control_stream_both_ways_in_order(self):
        net = InMemoryNet()
        net.handshake()
        up = random.Random(1).randbytes(50_000)
        down = random.Random(2).randbytes(7_000)
        for i in range(0, len(up), 997):
            net.dsession.stream_write(up[i:i + 997])
        net.lsession.stream_write(down)
        net.run_until(lambda n: bytes(n.lstream) == up and bytes(n.dstream) == down
                      and n.dsession.stream_all_acked and n.lsession.stream_all_acked,
                      max_seconds=5, max_iterations=5000)
        assert net.dsession.stats["retransmitted_bytes"] == 0

    @pytest.mark.parametrize("gro", DELIVERY)
    def test_chunks_clean_link(self, gro, loops):
        loops(gro == "c")
        net = InMemoryNet(gro=bool(gro))
        net.handshake()
        blobs = _chunks(20, 64 * 1024, seed=7)
        _send_all(net, blobs)
        assert not net.dsession.file_acked(3)
        net.dsession.stream_write(b"HELLO")
        net.run_until(_all_done(3, 20, up=b"HELLO"), max_seconds=10, max_iterations=20_000)
        _check_chunks(net, blobs)
        assert net.dsession.retained_bytes == 0
        assert net.dsession.stats["retransmitted_bytes"] == 0
        assert net.dsession.stats["lost_packets"] == 0

    @pytest.mark.parametrize("gro", DELIVERY)
    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_everything_arrives_through_an_impaired_link(self, seed, gro, loops):
        loops(gro == "c")
        imp = {"loss": 0.10, "reorder": 0.05, "dup": 0.01, "corrupt": 0.001}
        self._impaired(seed, imp, max_seconds=30, max_iterations=50_000, gro=bool(gro))

    @pytest.mark.parametrize("gro", DELIVERY)
    def test_everything_arrives_through_a_very_bad_link(self, gro, loops):
        loops(gro == "c")
        imp = {"loss": 0.25, "reorder": 0.25, "dup": 0.1, "corrupt": 0.05}
        net = self._impaired(7, imp, max_seconds=90, max_iterations=100_000, gro=bool(gro))
        assert net.listener.stats["garbage"] > 0

    def _impaired(self, seed, imp, max_seconds, max_iterations, gro=False):
        net = InMemoryNet(seed=seed, fwd=imp, rev=imp, gro=gro)
        net.handshake(max_seconds=20, max_iterations=2000)
        blobs = _chunks(20, 64 * 1024, seed=seed)
        _send_all(net, blobs)
        up = random.Random(seed).randbytes(20_000)
        down = random.Random(-seed).randbytes(20_000)
        net.dsession.stream_write(up)
        net.lsession.stream_write(down)
        net.run_until(_all_done(3, 20, up, down), max_seconds=max_seconds, max_iterations=max_iterations)
        _check_chunks(net, blobs)
        st_ = net.dsession.stats
        assert st_["retransmitted_bytes"] > 0 and st_["lost_packets"] > 0
        assert net.fwd.stats["dup"] > 0 and net.fwd.stats["reordered"] > 0
        assert net.lsession.stats["duplicate_packets"] > 0
        assert not net.dsession.closed and not net.lsession.closed
        # every corrupted datagram that reached the listener was counted, not acted on
        assert net.listener.stats["garbage"] == net.fwd.stats["corrupt_delivered"]
        assert net.listener.stats["foreign"] == 0
        return net

    def test_reverse_path_blackout_then_recovery(self):
        net = InMemoryNet(seed=11)
        net.handshake()
        blobs = _chunks(20, 64 * 1024, seed=11)
        _send_all(net, blobs)
        window: list = []

        def blackout(n: InMemoryNet) -> None:
            if not window and n.chunks:
                window.append((n.now, n.now + 2.0))
                n.rev.blackouts.append(window[0])
        net.hooks.append(blackout)
        net.run_until(_all_done(3, 20), max_seconds=30, max_iterations=50_000)
        _check_chunks(net, blobs)
        start, end = window[0]
        assert net.now >= end  # nothing could be acknowledged during the blackout
        assert net.rev.stats["dropped"] > 0
        assert net.dsession.stats["probes"] > 0
        assert not net.dsession.closed and not net.lsession.closed

    def test_idle_timeout_closes_a_silent_peer(self):
        cfg = UdpConfig(idle_timeout=3.0)
        net = InMemoryNet(seed=4, config=cfg)
        net.handshake()
        net.dsession.stream_write(b"x" * 5000)
        net.run_until(lambda n: n.dsession.stream_all_acked, max_seconds=2, max_iterations=2000)
        net.fwd.blackouts.append((net.now, math.inf))
        net.rev.blackouts.append((net.now, math.inf))
        net.dsession.stream_write(b"y" * 5000)  # unanswered from now on
        last = net.dsession.last_recv_time
        net.run_until(lambda n: n.dsession.closed and n.lsession.closed, max_seconds=10, max_iterations=5000)
        d = net.dsession
        assert d.close_code == ErrorCode.TIMEOUT and "silent" in d.close_reason
        assert net.closed_at[d.local_cid] == pytest.approx(last + 3.0, abs=2 * MIN_STEP)
        assert net.lsession.close_code == ErrorCode.TIMEOUT
        assert net.closed_at[net.lsession.local_cid] == pytest.approx(
            net.lsession.last_recv_time + 3.0, abs=2 * MIN_STEP)
        assert d.next_timer() is None and d.datagrams_to_send(net.now) == []

    def test_idle_session_keeps_alive_with_pings(self):
        cfg = UdpConfig(idle_timeout=3.0)
        net = InMemoryNet(seed=4, config=cfg)
        net.handshake()
        t0 = net.now
        net.run_until(lambda n: n.now > t0 + 20, max_seconds=25, max_iterations=5000)
        assert not net.dsession.closed and not net.lsession.closed
        assert net.iterations < 5000

    # 32 KiB datagrams keep the >16 MiB flow-control cases to a few thousand packets
    BIG = dict(max_datagram=32 * 1024)
    MIB = 1024 * 1024

    def _credit(self, cfg: UdpConfig) -> int:
        """What the receiver can be made to hold before it has handed anything over."""
        from ftx.core.udp import session as S

        return max(getattr(S, "INITIAL_MAX_DATA", cfg.flow_window), cfg.flow_window)

    def test_flow_control_bounds_unfinished_chunk_bytes(self):
        cfg = UdpConfig(**self.BIG)
        size, window = self.MIB, cfg.flow_window
        credit = self._credit(cfg)
        n = credit // size + 8
        net = InMemoryNet(seed=8, config=cfg, fwd={"loss": 0.02, "reorder": 0.05}, rev={"loss": 0.02})
        net.handshake()
        net.take = False
        blobs = _chunks(n, size, seed=8)
        _send_all(net, blobs)
        peak = [0, 0]

        def check(n: InMemoryNet) -> None:
            s = n.lsession
            held = sum(len(slot.buf) for slot in s._cin.slots.values()) + sum(len(c[3]) for c in s._completed)
            limit = max(credit, s._delivered + window) - s._delivered + size
            peak[0 if not n.take else 1] = max(peak[0 if not n.take else 1], held)
            assert held <= limit, "receiver holds more than its credit allows"
            assert n.dsession._new_chunk_bytes <= n.dsession._peer_max_data
        net.hooks.append(check)
        t0 = net.now
        net.run_until(lambda n: n.now > t0 + 3, max_seconds=5, max_iterations=20_000)
        assert credit - size <= peak[0] <= credit + size
        assert net.dsession._new_chunk_bytes == credit  # stalled on credit, not finished
        assert not net.dsession.file_acked(3) and len(net.lsession._completed) <= credit // size
        net.take = True
        net.run_until(_all_done(3, n), max_seconds=30, max_iterations=50_000)
        _check_chunks(net, blobs)
        assert peak[1] <= window + size

    def test_lost_max_data_does_not_stall_the_sender(self):
        cfg = UdpConfig(**self.BIG)
        size, credit = self.MIB, self._credit(cfg)
        n = credit // size + 2
        net = InMemoryNet(config=cfg)
        net.handshake()
        net.take = False
        blobs = _chunks(n, size, seed=1)
        _send_all(net, blobs)
        # the sender uses up its credit; the receiver holds it all and has acknowledged everything
        net.run_until(lambda n: len(n.lsession._completed) == credit // size
                      and not n.dsession.recovery.bytes_in_flight and not n.rev.heap, max_seconds=5)
        assert net.dsession._new_chunk_bytes == net.dsession._peer_max_data == credit
        send, lost = net.rev.send, []

        def lose_first(data, now, addr):
            if not lost:  # the packet with the new MAX_DATA
                lost.extend(P.parse_frames(P.parse(data).payload))
                return
            send(data, now, addr)
        net.rev.send = lose_first
        net.take = True
        t0 = net.now
        net.run_until(_all_done(3, n), max_seconds=30)
        assert any(isinstance(f, P.MaxDataFrame) for f in lost)
        _check_chunks(net, blobs)
        assert net.now - t0 < 1.0, f"stalled for {net.now - t0:.2f} s"

    def test_source_address_change_mid_transfer(self):
        net = InMemoryNet(seed=9, fwd={"loss": 0.02}, rev={"loss": 0.02})
        net.handshake()
        cid = net.lsession.local_cid
        old, new = net.addr, ("203.0.113.50", 51234)
        blobs = _chunks(20, 64 * 1024, seed=9)
        _send_all(net, blobs)
        before: list = []

        def move(n: InMemoryNet) -> None:
            if not before and len(n.chunks) >= 5:
                before.append(len(n.chunks))
                n.addr = new  # NAT rebinding: replies to the old address are lost from now on
        net.hooks.append(move)
        net.run_until(_all_done(3, 20), max_seconds=20, max_iterations=50_000)
        _check_chunks(net, blobs)
        assert before and before[0] < 20
        assert net.listener.addresses[cid] == new
        # a late datagram from the old address (an old packet number) does not move it back
        old_data = next(d for _, d, a in net.fwd.log if a == old and P.parse(d).ptype == P.DATA)
        net.listener.receive_datagram(old_data, old, net.now)
        assert net.listener.addresses[cid] == new


class TestListener:
    def _listener(self, cfg=None):
        cids = iter(range(1000, 2000))
        return Listener(b"s" * 32, cfg or UdpConfig(), lambda: next(cids))

    ADDR = ("198.51.100.1", 5555)

    def _token(self, lst, now, addr=ADDR, scid=42):
        _, _, replies = lst.receive_datagram(padded_initial(7, 1, scid, b""), addr, now)
        (retry,) = replies
        pkt = P.parse(retry)
        assert pkt.ptype == P.RETRY and pkt.dcid == scid
        return P.parse_initial(pkt.payload)[1]

    def test_retry_is_smaller_than_the_initial(self):
        lst = self._listener()
        initial = padded_initial(7, 1, 42, b"")
        session, new, replies = lst.receive_datagram(initial, self.ADDR, 50.0)
        assert session is None and not new and len(replies) == 1
        assert len(replies[0]) < len(initial)
        assert len(replies[0]) <= 3 * len(initial)
        assert not lst.sessions and not lst.addresses and not lst._by_initial  # stateless

    def test_accepted_initial_reply_is_small_and_repeated(self):
        lst = self._listener()
        token = self._token(lst, 50.0)
        initial = padded_initial(7, 2, 42, token)
        s, new, replies = lst.receive_datagram(initial, self.ADDR, 50.5)
        assert new and s.local_cid == 1000 and len(replies) == 1 and len(replies[0]) < len(initial)
        s2, new2, replies2 = lst.receive_datagram(initial, self.ADDR, 51.0)  # our reply was lost
        assert s2 is s and not new2 and replies2 == replies
        assert len(lst.sessions) == 1

    def test_short_initial_gets_no_reply(self):
        lst = self._listener()
        for size in (P.OVERHEAD + 10, 600, P.MIN_INITIAL_SIZE - 1):
            payload = P.initial_payload(42, b"")
            d = P.build(P.INITIAL, 7, 1, payload + bytes(size - P.OVERHEAD - len(payload)))
            assert len(d) == size
            assert lst.receive_datagram(d, self.ADDR, 1.0) == (None, False, [])
        token = self._token(lst, 1.0)
        payload = P.initial_payload(42, token)
        d = P.build(P.INITIAL, 7, 2, payload + bytes(P.MIN_INITIAL_SIZE - 1 - P.OVERHEAD - len(payload)))
        assert lst.receive_datagram(d, self.ADDR, 1.0) == (None, False, [])
        assert lst.stats["short_initials"] == 4 and not lst.sessions

    def _refused(self, lst, initial, addr, now, old_token):
        """No session and no state; at most a RETRY with a fresh token, smaller than the INITIAL."""
        n_sessions, bad = len(lst.sessions), lst.stats["bad_tokens"]
        session, new, replies = lst.receive_datagram(initial, addr, now)
        assert session is None and not new
        assert len(lst.sessions) == n_sessions and lst.stats["bad_tokens"] == bad + 1
        for r in replies:
            pkt = P.parse(r)
            assert pkt.ptype == P.RETRY and len(r) < len(initial)
            assert P.parse_initial(pkt.payload)[1] != old_token
        return replies

    def test_token_bound_to_address_and_cid(self):
        lst = self._listener()
        token = self._token(lst, 50.0)
        other_port = (self.ADDR[0], self.ADDR[1] + 1)
        other_host = ("198.51.100.2", self.ADDR[1])
        self._refused(lst, padded_initial(7, 2, 42, token), other_port, 50.1, token)
        self._refused(lst, padded_initial(7, 2, 42, token), other_host, 50.1, token)
        self._refused(lst, padded_initial(7, 2, 43, token), self.ADDR, 50.1, token)
        forged = bytearray(token)
        forged[-1] ^= 1
        self._refused(lst, padded_initial(7, 2, 42, bytes(forged)), self.ADDR, 50.1, bytes(forged))
        other_secret = make_token(b"t" * 32, self.ADDR, 42, 50.0)
        self._refused(lst, padded_initial(7, 2, 42, other_secret), self.ADDR, 50.1, other_secret)
        self._refused(lst, padded_initial(7, 2, 42, token[:19]), self.ADDR, 50.1, token[:19])
        assert not lst.sessions and not lst.addresses and not lst._by_initial
        s, new, _ = lst.receive_datagram(padded_initial(7, 2, 42, token), self.ADDR, 50.1)
        assert new and s is not None and lst.addresses[s.local_cid] == self.ADDR

    def test_token_expiry(self):
        lst = self._listener()
        token = self._token(lst, 50.5)
        self._refused(lst, padded_initial(7, 2, 42, token), self.ADDR, 50.5 + 11, token)
        self._refused(lst, padded_initial(7, 2, 42, token), self.ADDR, 50.5 - 2, token)  # from the future
        assert not lst.sessions
        s, new, _ = lst.receive_datagram(padded_initial(7, 2, 42, token), self.ADDR, 50.5 + 9)
        assert new

    def test_token_lifetime_is_exact_to_the_millisecond(self):
        from ftx.core.udp.endpoint import check_token

        for t0 in (0.0, 50.9999, 1234.5678, 4294967.2):  # also where milliseconds wrap modulo 2^32
            token = make_token(b"k" * 32, self.ADDR, 42, t0)
            assert check_token(b"k" * 32, token, self.ADDR, 42, t0)
            assert check_token(b"k" * 32, token, self.ADDR, 42, t0 + 9.998)
            assert not check_token(b"k" * 32, token, self.ADDR, 42, t0 + 10.002)
            assert not check_token(b"k" * 32, token, self.ADDR, 42, t0 - 0.002)  # from the future

    def test_foreign_and_garbage(self):
        lst = self._listener()
        r = random.Random(3)
        assert lst.receive_datagram(P.build(P.DATA, 12345, 0, b"\x01"), self.ADDR, 1.0) == (None, False, [])
        assert lst.stats["foreign"] == 1
        assert lst.receive_datagram(P.build(P.RETRY, 12345, 0, b""), self.ADDR, 1.0) == (None, False, [])
        assert lst.stats["foreign"] == 2
        for n in (0, 1, 25, 26, 100, 1300):
            assert lst.receive_datagram(r.randbytes(n), self.ADDR, 1.0) == (None, False, [])
        assert lst.stats["garbage"] == 6
        # valid checksum and size, but the token length runs past the end of the INITIAL
        d = P.build(P.INITIAL, 1, 1, P.INITIAL_FIELDS.pack(1, 2000) + bytes(P.MIN_INITIAL_SIZE))
        assert lst.receive_datagram(d, self.ADDR, 1.0) == (None, False, [])
        assert lst.stats["garbage"] == 7 and not lst.sessions and lst.stats["retries"] == 0

    def test_bursts_of_tiny_datagrams_are_garbage_not_errors(self):
        lst = self._listener()
        for data, seg in ((b"\x03" * 16, 8), (b"\x03" * 17, 16), (b"\x03" * 60, 26)):
            assert lst.receive_burst(data, seg, self.ADDR, 1.0) == [(None, False, [])] * -(-len(data) // seg)
        assert lst.stats["garbage"] == 2 + 2 + 3 and not lst.sessions

    def test_protocol_error_in_data_closes_only_that_session(self):
        lst = self._listener()
        token = self._token(lst, 1.0)
        s, _, _ = lst.receive_datagram(padded_initial(7, 2, 42, token), self.ADDR, 1.0)
        bad = P.build(P.DATA, s.local_cid, 0, bytes([0x7E]))  # unknown frame, valid checksum
        assert lst.receive_datagram(bad, self.ADDR, 1.1)[0] is s
        assert s.closed and s.close_code == ErrorCode.PROTOCOL
        close = s.datagrams_to_send(1.2)  # two copies at once, in case one is lost
        assert len(close) == 2
        assert all(isinstance(P.parse_frames(P.parse(d).payload)[0], P.CloseFrame) for d in close)
        assert s.datagrams_to_send(1.3) == []


class TestSessionEdges:
    def _pair(self, cfg=None):
        cfg = cfg or UdpConfig()
        return UdpSession(1, 2, cfg, 0.0, chunk_receiver=False), UdpSession(2, 1, cfg, 0.0, chunk_receiver=True)

    def test_receive_overflow_halves_the_window_and_max_data_never_shrinks(self):
        from ftx.core.udp.session import MIN_FLOW_WINDOW

        def max_data(session, now):
            frames = P.parse_frames(P.parse(session.datagrams_to_send(now)[0]).payload)
            return next(f.value for f in frames if isinstance(f, P.MaxDataFrame))

        _, b = self._pair()
        b.receive_payload(0, memoryview(bytes([P.F_PING])), 0.0)  # something to acknowledge
        b._ack_now = True
        first = max_data(b, 0.0)
        assert first == 16 * 2**20 and b.flow_window == 16 * 2**20
        b.on_overflow(1.0)
        assert b.flow_window == 8 * 2**20 and b.stats["receive_overflows"] == 1
        b.on_overflow(1.001)  # the same episode (within an RTT): once only
        assert b.flow_window == 8 * 2**20
        for k in range(10):
            b.on_overflow(2.0 + k)
        assert b.flow_window == MIN_FLOW_WINDOW
        b._ack_now = True
        assert max_data(b, 20.0) == first  # the credit already given stands
        b._completed.append((1, 0, 0, bytearray(2**20)))  # a chunk handed over: the window regrows slowly
        b.take_chunks()
        assert b.flow_window == MIN_FLOW_WINDOW + 2**20 // 32

    def test_window_never_shrinks_below_two_chunks(self):
        """16 MiB chunks and a receiver whose socket overflowed at once: the shrunken window
        must still let the sender finish a chunk (it used to wait forever, mid-chunk)."""
        net = InMemoryNet(seed=1)
        net.handshake()
        blobs = _chunks(3, 16 * 1024 * 1024, seed=1)
        _send_all(net, blobs)
        net.lsession.on_overflow(net.now)
        net.run_until(_all_done(3, 3), max_seconds=30, max_iterations=400_000)
        _check_chunks(net, blobs)
        assert net.lsession.flow_window == 16 * 2**20  # two 16 MiB chunks, capped at the configured window

    def test_ack_for_a_packet_never_sent_is_a_protocol_error(self):
        a, _ = self._pair()
        with pytest.raises(RemoteProtocolError):
            a.receive_payload(0, memoryview(P.encode_ack(RangeSet([(0, 1)]), 0)), 0.1)

    def test_chunk_to_a_sender_is_a_protocol_error(self):
        a, _ = self._pair()
        with pytest.raises(RemoteProtocolError):
            a.receive_payload(0, memoryview(_chunk_frame()), 0.1)

    def test_chunk_checksum_mismatch_is_a_protocol_error(self):
        _, b = self._pair()
        data = b"a" * 100
        with pytest.raises(RemoteProtocolError, match="checksum"):
            b.receive_payload(0, memoryview(_chunk_frame(clen=100, data=data, csum=1)), 0.1)

    def test_duplicate_and_stale_packets_counted(self):
        _, b = self._pair()
        ping = memoryview(bytes([P.F_PING]))
        b.receive_payload(0, ping, 0.1)
        b.receive_payload(0, ping, 0.1)
        assert b.stats["duplicate_packets"] == 1 and b.stats["packets_received"] == 1

    def test_packets_below_the_forgotten_ranges_are_stale(self):
        from ftx.core.udp.intake import RECV_RANGES_KEPT

        _, b = self._pair()
        ping = memoryview(bytes([P.F_PING]))
        for pn in range(0, 2 * (RECV_RANGES_KEPT + 5), 2):  # every other packet: one range each
            b.receive_payload(pn, ping, 0.1)
        assert len(b._recv) == RECV_RANGES_KEPT
        received = b.stats["packets_received"]
        b.receive_payload(0, ping, 0.2)  # forgotten: cannot tell it from a duplicate
        b.receive_payload(1, ping, 0.2)  # in a forgotten gap: its ACK is long gone too
        assert b.stats["stale_packets"] == 2 and b.stats["packets_received"] == received
        lowest = next(iter(b._recv))[0]
        b.receive_payload(lowest + 1, ping, 0.2)  # a gap among the kept ranges: fine
        assert b.stats["stale_packets"] == 2 and lowest + 1 in b._recv

    def test_reordered_first_packet_is_processed(self):
        """pn 0 overtaken by pn 1 is not stale (it used to be dropped unacknowledged)."""
        _, b = self._pair()
        b.receive_payload(1, memoryview(P.encode_stream(5, b"world")), 0.1)
        b.receive_payload(0, memoryview(P.encode_stream(0, b"hello")), 0.1)
        assert b.stats["stale_packets"] == 0
        assert b.stream_readable == 10

    def test_stream_beyond_the_out_of_order_limit_is_not_acknowledged(self):
        """Out-of-order STREAM data beyond STREAM_OOO_LIMIT may be dropped, but then its packet must
        not be acknowledged, or the sender never resends it (it used to be: the stream stalled)."""
        from ftx.core.udp.session import STREAM_OOO_LIMIT

        _, b = self._pair()
        piece = 60_000
        total = STREAM_OOO_LIMIT + 4 * piece
        data = random.Random(0).randbytes(total)
        sent: dict[int, int] = {}  # pn -> stream offset, as a sender would remember
        b.receive_payload(0, memoryview(bytes([P.F_PING])), 0.1)
        pn = 1
        for off in range(1000, total, piece):  # [0, 1000) is lost; everything after it arrives
            b.receive_payload(pn, memoryview(P.encode_stream(off, data[off:off + piece])), 0.1)
            assert b._sin.ooo_bytes <= STREAM_OOO_LIMIT  # the buffer stays bounded
            sent[pn] = off
            pn += 1
        now = 0.2

        def unacked() -> list[int]:
            """Offsets of the packets the receiver's latest ACK leaves out (a sender resends those)."""
            nonlocal sent
            acks = [f for d in b.datagrams_to_send(now) for f in P.parse_frames(P.parse(d).payload)
                    if isinstance(f, P.AckFrame)]
            acked = acks[-1].acked if acks else RangeSet()
            done = {off for p, off in sent.items() if p in acked}
            sent = {p: off for p, off in sent.items() if p not in acked}
            return sorted(set(sent.values()) - done)
        pending = [0] + unacked()  # [0, 1000) was lost, so it is resent too
        received = bytearray()
        for _ in range(8):
            for off in pending:
                end = 1000 if off == 0 else off + piece
                b.receive_payload(pn, memoryview(P.encode_stream(off, data[off:end])), now)
                assert b._sin.ooo_bytes <= STREAM_OOO_LIMIT
                sent[pn] = off
                pn += 1
            now += 0.1
            while b.stream_readable:  # the application reads what is in order
                buf = bytearray(1 << 20)
                received += buf[: b.stream_read_into(memoryview(buf))]
            pending = unacked()
            if not pending:
                break
        assert received == data


# =====================================================================================
# path MTU discovery (RFC 8899)
# =====================================================================================
class TestPmtuSearch:
    def test_acked_probes_climb_and_three_losses_end_the_search(self):
        from ftx.core.udp.packets import MAX_MAX_DATAGRAM
        from ftx.core.udp.pmtu import MAX_PROBES, PmtuSearch

        s = PmtuSearch(1452, now=0.0, ceiling=MAX_MAX_DATAGRAM)  # --pmtud: search above the initial size
        assert s.next_timer() == 0.0
        size = s.probe_due(0.0)
        assert size == 2000 and s.probe_due(0.0) is None and s.next_timer() is None  # one at a time
        s.on_probe_acked(size)
        assert s.current == 2000
        size = s.probe_due(1.0)
        assert size == 4048
        for _ in range(MAX_PROBES - 1):
            s.on_probe_lost(size)
            assert s.searching and s.probe_due(1.0) == 4048
        s.on_probe_lost(size)
        assert not s.searching and s.current == 2000 and s.probe_due(2.0) is None and s.next_timer() is None

    def test_without_pmtud_nothing_is_probed_until_a_black_hole(self):
        from ftx.core.udp.pmtu import BASE_PLPMTU, PmtuSearch

        s = PmtuSearch(1452, now=0.0)
        assert s.base == BASE_PLPMTU == 1200 and not s.searching and s.probe_due(0.0) is None
        assert s.on_black_hole(1.0) and s.current == 1200
        probed = []  # the path carries 1400-byte datagrams: 1232 and 1372 do, 1444 does not
        while (size := s.probe_due(1.0)) is not None:
            probed.append(size)
            s.on_probe_acked(size) if size <= 1400 else s.on_probe_lost(size)
        assert probed == [1232, 1372, 1444, 1444, 1444] and s.current == 1372  # never above --mtu

    def test_black_hole_falls_back_to_the_base_then_searches_again_at_once(self):
        from ftx.core.udp.pmtu import PmtuSearch

        s = PmtuSearch(1452, now=0.0, ceiling=8952)
        for _ in range(10):
            size = s.probe_due(10.0)
            if size is None:
                break
            s.on_probe_acked(size)
        assert s.current == 8952 and not s.searching  # the ceiling stops it
        assert s.on_black_hole(20.0) and s.current == 1200 and s.black_holes == 1
        assert not s.on_black_hole(20.5)  # already at the base
        assert s.probe_due(19.0) is None and s.probe_due(20.0) == 1232


class TestPmtuTransfer:
    @pytest.mark.parametrize("path_mtu", [1500, 4100, 65535])
    def test_finds_the_largest_size_the_path_carries(self, path_mtu):
        cfg = UdpConfig(pmtud=True)
        net = InMemoryNet(seed=5, config=cfg, listener_config=UdpConfig(), fwd={"mtu": path_mtu - 28})
        net.handshake()
        blobs = _chunks(30, 64 * 1024, seed=5)
        _send_all(net, blobs)
        done = _all_done(3, 30)
        net.run_until(lambda n: done(n) and not n.dsession.pmtu.searching, max_seconds=20, max_iterations=50_000)
        _check_chunks(net, blobs)
        d = net.dsession
        expect = {1500: 1452, 4100: 4048, 65535: 65487}[path_mtu]
        assert d.max_datagram == expect and d.pmtu.current == expect and not d.pmtu.searching
        assert d.stats["pmtu_probes"] >= 1
        # a lost probe is neither a lost packet (nothing is sent again) nor a congestion signal
        # (RFC 8899 3, item 7): on this loss-free path nothing else is lost
        assert d.stats["lost_packets"] == 0 and d.stats["retransmitted_bytes"] == 0
        assert d.cc.loss_rate == 0.0 and d.cc._round_lost == 0
        assert net.lsession.stats["bytes_received"] > 0
        sizes = {len(data) for _, data, _ in net.fwd.log}
        assert max(s for s in sizes if s <= path_mtu - 28) == expect

    def test_a_congestion_drop_in_a_burst_is_not_a_black_hole(self):
        s = UdpSession(1, 2, UdpConfig(pmtud=True), 0.0, chunk_receiver=False)
        s.pmtu.probe_due(0.0)
        s.pmtu.on_probe_acked(8952)
        s._set_max_datagram(8952)
        for i in range(40):
            s.send_chunk(1, i, 0, bytes(1 << 20))
        t = 0.0
        while s._next_pn < 60 and t < 1:
            s.transmit(t, 256)
            t += 0.0005
        sent = s._next_pn
        s.receive_payload(0, memoryview(P.encode_ack(RangeSet([(0, 10), (30, sent)]), 0)), 0.05)  # 20 dropped
        assert s.stats["lost_packets"] >= 16
        assert s.max_datagram >= 8952 and s.pmtu.black_holes == 0

    def test_black_hole_after_the_size_was_raised(self):
        cfg = UdpConfig(pmtud=True)
        net = InMemoryNet(seed=6, config=cfg, listener_config=UdpConfig(), fwd={"mtu": 9000 - 28})
        net.handshake()
        blobs = _chunks(200, 64 * 1024, seed=6)
        _send_all(net, blobs)
        net.run_until(lambda n: n.dsession.max_datagram == 8952, max_seconds=10, max_iterations=20_000)
        assert len(net.chunks) < 100, "too late: most of the data is through"
        net.fwd.mtu = 1500 - 28  # the route changed: big datagrams vanish without a word
        net.run_until(_all_done(3, 200), max_seconds=60, max_iterations=200_000)
        _check_chunks(net, blobs)
        assert net.dsession.pmtu.black_holes == 1 and net.dsession.max_datagram == 1452


class TestSmallMtuPath:
    """Issue #11, item 2: a path that carries less than the initial 1452-byte datagrams
    (a 1420-byte WireGuard MTU, the 1280-byte IPv6 minimum) must work by default, found
    out in a second or two, not hang until (or beyond) the idle timeout."""

    @pytest.mark.parametrize("pmtud", [False, True], ids=["default", "pmtud"])
    @pytest.mark.parametrize("path", [1392, 1232])  # UDP payload bytes the path carries, both ways
    def test_falls_back_then_finds_what_the_path_carries(self, path, pmtud):
        net = InMemoryNet(seed=9, config=UdpConfig(pmtud=pmtud), listener_config=UdpConfig(),
                          fwd={"mtu": path}, rev={"mtu": path})
        net.handshake(max_seconds=1)  # INITIALs are padded to 1200 bytes only
        start = net.now
        blobs = _chunks(30, 64 * 1024, seed=9)
        _send_all(net, blobs)
        up = random.Random(3).randbytes(40_000)  # both control streams fill whole packets too
        down = random.Random(4).randbytes(40_000)
        net.dsession.stream_write(up)
        net.lsession.stream_write(down)
        net.run_until(_all_done(3, 30, up=up, down=down), max_seconds=2, max_iterations=50_000)
        _check_chunks(net, blobs)
        assert net.now - start < 2  # (simulated seconds) found at once, not at an idle timeout
        expect = {1392: 1372, 1232: 1232}[path]  # the largest candidate (MTU - 48) that fits
        for s in (net.dsession, net.lsession):
            assert s.stats["pmtu_fallbacks"] == 1 and s.pmtu.current == s.max_datagram
        net.run_until(lambda n: not n.dsession.pmtu.searching, max_seconds=5, max_iterations=50_000)
        assert net.dsession.max_datagram == expect and not net.dsession.closed

    @pytest.mark.parametrize("pmtud", [True, False], ids=["pmtud", "default"])
    def test_a_1500_byte_path_keeps_1452_and_loses_only_probes(self, pmtud):
        """The search (pmtud) tries 2000 bytes MAX_PROBES times and stops; nothing is
        lost, sent again or taken for congestion; without it nothing is probed at all."""
        net = InMemoryNet(seed=9, fwd={"mtu": 1472}, rev={"mtu": 1472}, config=UdpConfig(pmtud=pmtud))
        net.handshake()
        blobs = _chunks(30, 64 * 1024, seed=9)
        _send_all(net, blobs)
        net.run_until(_all_done(3, 30), max_seconds=5, max_iterations=50_000)
        d = net.dsession
        assert d.max_datagram == 1452 and d.stats["pmtu_fallbacks"] == 0
        assert d.stats["pmtu_probes"] == (3 if pmtud else 0) and not d.pmtu.searching
        assert d.stats["lost_packets"] == 0 and d.stats["retransmitted_bytes"] == 0 and d.cc.loss_rate == 0.0

    @pytest.mark.parametrize("pmtud", [True, False], ids=["pmtud", "default"])
    def test_random_loss_is_not_taken_for_a_small_path(self, pmtud):
        net = InMemoryNet(seed=4, fwd={"loss": 0.1}, rev={"loss": 0.1}, config=UdpConfig(pmtud=pmtud))
        net.handshake()
        blobs = _chunks(60, 64 * 1024, seed=4)
        _send_all(net, blobs)
        net.run_until(_all_done(3, 60), max_seconds=30, max_iterations=100_000)
        _check_chunks(net, blobs)
        assert net.dsession.stats["lost_packets"] > 20
        assert net.dsession.stats["pmtu_fallbacks"] == 0
        assert net.dsession.max_datagram > 1452 if pmtud else net.dsession.max_datagram == 1452

    def test_nothing_acknowledged_while_the_peer_answers_is_a_timeout_with_its_cause(self):
        """Were even base-sized datagrams dropped (a path changing under a session), the peer's
        PINGs would keep the idle timer from firing: the sender must still give up, and say why."""
        cfg = UdpConfig(idle_timeout=3.0, pmtud=False)
        net = InMemoryNet(seed=2, config=cfg, listener_config=cfg)
        net.handshake()
        net.fwd.mtu = 300  # only the smallest packets (ACKs, PINGs) still get through
        net.dsession.stream_write(random.Random(1).randbytes(20_000))
        net.run_until(lambda n: n.dsession.closed, max_seconds=10, max_iterations=50_000)
        d = net.dsession
        assert d.close_code == ErrorCode.TIMEOUT and "nothing sent was acknowledged" in d.close_reason
        assert "1200-byte" in d.close_reason and d.stats["pmtu_fallbacks"] == 1

    def test_probe_timeouts_with_only_small_packets_in_flight_say_nothing_about_the_size(self):
        """A peer whose partner went quiet (killed, unplugged) while only small packets were in
        flight must not blame the path's MTU for it."""
        net = InMemoryNet(seed=3)
        net.handshake()
        net.lsession.stream_write(b"RESULT" * 20)  # a small packet from the receiver
        net.dsession.stream_write(b"HELLO" * 20)
        net.run_until(lambda n: n.lsession.stream_all_acked and n.dsession.stream_all_acked, max_seconds=2)
        net.fwd.blackouts.append((net.now, net.now + 100))  # the sender vanishes
        net.rev.blackouts.append((net.now, net.now + 100))
        net.lsession.stream_write(b"RESULT" * 20)
        net.run_until(lambda n: n.lsession.recovery.pto_count >= 4, max_seconds=20, max_iterations=50_000)
        assert net.lsession.max_datagram == 1452 and net.lsession.stats["pmtu_fallbacks"] == 0


def test_acknowledged_stream_bytes_leave_the_buffer_in_batches():
    """The send buffer drops acknowledged bytes once they are half of it, not at each ACK
    (deleting the front of a bytearray at each ACK made each later append move all the rest);
    what is unacknowledged stays and is read from the right place, and stream_all_acked
    still says when all of it is acknowledged."""
    s = UdpSession(1, 2, UdpConfig(), 0.0, chunk_receiver=False)
    data = random.Random(3).randbytes(102_400)
    s.stream_write(data)

    def sent_from(offset: int) -> bytes:
        s._sout_next = offset
        frames, items = s._fill(1400, 0.0)
        (f,) = P.parse_frames(b"".join(bytes(f) for f in frames))
        assert items == [("s", offset, len(f.data))] and f.offset == offset
        return bytes(f.data)

    s._sout_acked.add(0, 1000)
    s._trim_stream()
    assert s._sout_base == 1000 and s._sout_phys == 0 and held(s) == 102_400  # not yet
    assert not s.stream_all_acked and (got := sent_from(1000)) == data[1000 : 1000 + len(got)] and len(got) > 1300
    s._sout_acked.add(1000, 60_000)
    s._trim_stream()
    assert s._sout_base == s._sout_phys == 60_000 and held(s) == 42_400
    s.stream_write(b"tail")
    assert (got := sent_from(60_000)) == data[60_000 : 60_000 + len(got)] and len(got) > 1300
    assert sent_from(101_500) == data[101_500:] + b"tail"
    s._sout_acked.add(60_000, 102_404)
    s._trim_stream()
    assert s.stream_all_acked and held(s) == 0
    assert len(s._sout) <= 2 * 102_404  # room for more, no more than doubling


def held(s: UdpSession) -> int:
    return s._sout_end - s._sout_phys


def test_a_big_send_buffer_is_let_go_once_acknowledged():
    from ftx.core.udp.settling import SOUT_KEPT

    s = UdpSession(1, 2, UdpConfig(), 0.0, chunk_receiver=False)
    for _ in range(3):
        s.stream_write(bytes(SOUT_KEPT))
    assert len(s._sout) >= 3 * SOUT_KEPT
    s._sout_acked.add(0, 3 * SOUT_KEPT)
    s._trim_stream()
    assert s.stream_all_acked and held(s) == 0 and len(s._sout) == 0
    s.stream_write(b"more")
    assert held(s) == 4 and s._sout[:4] == b"more"


def test_full_control_stream_packets_leave_in_one_burst():
    """A run of full STREAM packets (a tree of small files) is one GSO burst of equal
    datagrams, not a send each; a shorter packet may end a burst, and a path MTU probe is
    never joined to one (too big for the path, it would take the others with it)."""
    s = UdpSession(1, 2, UdpConfig(pmtud=True), 0.0, chunk_receiver=False)
    s.stream_write(random.Random(4).randbytes(30_000))
    out = []
    for k in range(40):  # as the pump calls it, paced
        out += s.transmit(k * 0.002, 64)
    sizes = [(len(buf), seg) for buf, seg in out]
    probes = [(n, seg) for n, seg in sizes if seg > s.max_datagram]
    assert probes and all(n == seg for n, seg in probes)  # alone
    assert max(-(-n // seg) for n, seg in sizes) >= 2 and all(seg == s.max_datagram for _, seg in sizes[1:-1])
    offsets = []
    for buf, seg in out:
        for d in P.segments(buf, seg):
            pkt = P.parse(bytes(d))
            offsets += [f.offset for f in P.parse_frames(pkt.payload) if isinstance(f, P.StreamFrame)]
    assert offsets == sorted(offsets) and offsets[0] == 0


class _OneAtATime(UdpSession):
    """The reference: every packet built by ``_fill`` + ``_packet``, none by ``_bulk_stream``."""

    def _bulk_stream_ready(self) -> bool:
        return False


def _all_datagrams(s: UdpSession) -> list[bytes]:
    out = []
    for k in range(50):  # far apart: pacing never holds anything back; the initial window does not fill
        out += [bytes(d) for buf, seg in s.transmit(k * 1.0, 64) for d in P.segments(buf, seg)]
    return out


@pytest.mark.parametrize("start", [0, 16_384 - 3 * 1390, 2**21 - 5_000])
def test_a_burst_of_stream_packets_is_the_packets_made_one_at_a_time(start):
    """``_bulk_stream`` (a tree of small files: SMALL_FILE frames fill the control stream)
    builds the same datagrams, byte for byte, as the one-packet-at-a-time path -- also where
    the stream offset's varint grows a byte (16 KiB, 2 MiB), and with a short last packet."""
    data = random.Random(start).randbytes(30_000)
    made = []
    for cls in (UdpSession, _OneAtATime):
        s = cls(1, 2, UdpConfig(pmtud=False), 0.0, chunk_receiver=False)  # (no probe among them)
        s._sout_next = s._sout_end = s._sout_base = s._sout_phys = start  # as if acknowledged up to there
        s.stream_write(data)
        made.append(_all_datagrams(s))
        assert s._sout_next == s._sout_end
    bulk, single = made
    assert bulk == single and len(bulk) > 20
    got = bytearray()
    for d in bulk:
        (f,) = P.parse_frames(P.parse(d).payload)
        assert f.offset == start + len(got)
        got += f.data
    assert got == data


def test_stream_bursts_are_acknowledged_and_lost_per_packet():
    """A burst of stream packets is recorded as one run: acknowledging part of it frees those
    bytes only, losing part of it sends exactly those bytes again."""
    net = InMemoryNet(seed=11, fwd=dict(loss=0.05, reorder=0.05, dup=0.02))
    net.handshake()
    up = random.Random(12).randbytes(600_000)
    net.dsession.stream_write(up)
    net.run_until(lambda n: bytes(n.lstream) == up and n.dsession.stream_all_acked)
    d = net.dsession
    assert d.stats["retransmitted_bytes"] > 0 and d._sout_base == len(up)
