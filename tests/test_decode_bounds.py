"""Every decoder bounds every integer it reads and ends in RemoteProtocolError, never a stray exception.

Issue #11 item 5: an OFFER size >= 2**63 reached posix_fallocate (OverflowError) and a
non-UTF-8 name in an error message raised UnicodeEncodeError while encoding it.
"""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given, settings, strategies as st

from ftx.core.config import Config
from ftx.core.frames import FrameType, encode_frame
from ftx.core.manifest import ENTRY, MAX_FILE_SIZE, FileEntry, Kind, decode_entry, encode_entry
from ftx.core.messages import (
    RESULT_RUN,
    ROLE_RECEIVER,
    ROLE_SENDER,
    Decision,
    ErrorMessage,
    FileEnd,
    FileNotice,
    Hello,
    Offer,
    Result,
    SmallFile,
    decode_result_run,
    wire_text,
)
from ftx.core.ranges import RangeSet, write_varint
from ftx.core.receiver import ReceiverConnection, unpack_small
from ftx.core.sender import SenderConnection
from ftx.core.udp import packets
from ftx.errors import ErrorCode, RemoteProtocolError

pytestmark = pytest.mark.timeout(60)
SMALL_PAYLOAD = 128 * 1024  # connections in the fuzz tests: small decoder buffers


def raw_entry(file_id=0, kind=1, mode=0o644, mtime=0, size=0, cs=1 << 20, path=b"f", target=b""):
    return ENTRY.pack(file_id, kind, 0, 0, mode, mtime, size, cs, len(path), len(target)) + path + target


# -- file entries ------------------------------------------------------------------
@pytest.mark.parametrize("size", [MAX_FILE_SIZE + 1, 2**63, 2**64 - 1])
def test_offer_size_beyond_a_signed_off_t_is_a_protocol_error(size):
    with pytest.raises(RemoteProtocolError, match="size"):
        Offer.decode(raw_entry(size=size))


def test_largest_allowed_size_decodes():
    assert Offer.decode(raw_entry(size=MAX_FILE_SIZE)).entry.size == MAX_FILE_SIZE


@pytest.mark.parametrize("mode", [0o10000, 0o100644, 2**32 - 1])
def test_mode_beyond_permission_bits_is_a_protocol_error(mode):
    with pytest.raises(RemoteProtocolError, match="mode"):
        Offer.decode(raw_entry(mode=mode))


@pytest.mark.parametrize("kind", [1, 2])
def test_target_only_on_symlinks(kind):
    with pytest.raises(RemoteProtocolError, match="target"):
        Offer.decode(raw_entry(kind=kind, target=b"x"))
    assert Offer.decode(raw_entry(kind=3, target=b"x")).entry.target == b"x"


@pytest.mark.parametrize("mtime", [-(2**63), 2**63 - 1, 0, -1])
def test_any_i64_mtime_decodes(mtime):
    assert Offer.decode(raw_entry(mtime=mtime)).entry.mtime_ns == mtime


# -- DECISION held sets --------------------------------------------------------------
def _decision_payload(held: bytes, fid=0) -> bytes:
    return Decision._S.pack(fid, 1, 0, 0, bytes(16), 0) + held + b"\x00\x00"


def test_decision_held_set_is_bounded_by_the_chunk_count_while_decoding():
    ok = Decision.decode(_decision_payload(RangeSet([(0, 2)]).encode()), lambda fid: 2)
    assert list(ok.held) == [(0, 2)]
    with pytest.raises(RemoteProtocolError, match="beyond the end"):
        Decision.decode(_decision_payload(RangeSet([(0, 3)]).encode()), lambda fid: 2)


def test_decision_with_a_huge_range_count_fails_fast():
    out = bytearray()
    write_varint(out, 2**63)  # count
    body = bytes(out) + b"\x01\x01" * 30000  # many small ranges, then the payload ends
    t0 = time.process_time()
    with pytest.raises(RemoteProtocolError):
        Decision.decode(_decision_payload(body), lambda fid: 10)
    assert time.process_time() - t0 < 2.0


def test_range_count_larger_than_the_bytes_left_is_refused_before_looping():
    out = bytearray()
    write_varint(out, 1000)
    with pytest.raises(RemoteProtocolError, match="count"):
        RangeSet.decode(bytes(out) + b"\x00\x01")


def test_sender_refuses_a_decision_for_an_unknown_file():
    s = SenderConnection(Config())
    s.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_RECEIVER, 1 << 22).encode()))
    s.next_event()
    with pytest.raises(RemoteProtocolError):
        s.receive_data(encode_frame(FrameType.DECISION, _decision_payload(b"\x00", fid=7)))


# -- texts ----------------------------------------------------------------------------
@given(st.text(alphabet=st.characters(codec=None), max_size=1500))
@settings(max_examples=300, deadline=None)
def test_wire_text_is_always_valid_utf8_within_the_limit(text):
    raw = wire_text(text)
    assert len(raw) <= 1024
    raw.decode("utf-8")  # never invalid, never a cut character


def test_wire_text_escapes_undecodable_file_name_bytes():
    import os

    assert wire_text(os.fsdecode(b"b\xff.bin exists")) == b"b\\xff.bin exists"
    assert wire_text("\ud800 lone") == b"\\ud800 lone"
    assert wire_text("é" * 600) == "é".encode() * 512  # 1024 bytes, no half character


@pytest.mark.parametrize("cls", [Result, FileNotice])
def test_messages_with_non_utf8_names_encode(cls):
    import os

    msg = os.fsdecode(b"a\xfe.bin exists and differs")
    obj = cls(3, ErrorCode.EXISTS, message=msg)
    assert cls.decode(obj.encode()).message == "a\\xfe.bin exists and differs"
    assert ErrorMessage.decode(ErrorMessage(ErrorCode.STORAGE, msg).encode()).message.startswith("a\\xfe")


# -- UDP frames ----------------------------------------------------------------------
def _chunk_frame(clen: int, coff: int = 0, data: bytes = b"x") -> bytes:
    return packets.CHUNK_HEADER.pack(packets.F_CHUNK, 0, 0, clen, coff, 0, len(data)) + data


@pytest.mark.parametrize("clen", [0, 16 * 1024 * 1024 + 1, 2**32 - 1])
def test_udp_chunk_length_is_bounded_when_parsed(clen):
    with pytest.raises(RemoteProtocolError, match="chunk length"):
        packets.parse_frames(memoryview(_chunk_frame(clen, data=b"")))


def test_udp_stream_beyond_2_62_is_refused():
    out = bytearray([packets.F_STREAM])
    write_varint(out, 2**62 - 1)
    write_varint(out, 2)
    with pytest.raises(RemoteProtocolError, match="stream offset"):
        packets.parse_frames(memoryview(bytes(out) + b"ab"))


def test_udp_ack_with_many_ranges_parses_in_linear_time():
    ranges = RangeSet((4 * i, 4 * i + 2) for i in range(30000))
    frame = packets.encode_ack(ranges, 0, max_ranges=30000)
    t0 = time.process_time()
    (ack,) = packets.parse_frames(memoryview(frame))
    assert time.process_time() - t0 < 1.0
    assert ack.acked == ranges


def test_udp_ack_range_count_larger_than_the_frame_is_refused():
    out = bytearray([packets.F_ACK])
    for v in (100, 0, 2**40, 0):
        write_varint(out, v)
    with pytest.raises(RemoteProtocolError, match="count"):
        packets.parse_frames(memoryview(bytes(out)))


# -- everything, fuzzed ------------------------------------------------------------------
DECODERS = [
    Hello.decode, Offer.decode, SmallFile.decode, FileEnd.decode, Result.decode, FileNotice.decode,
    ErrorMessage.decode, lambda p: Decision.decode(p, lambda fid: 1 << 40), lambda p: RangeSet.decode(p),
    lambda p: decode_entry(p), lambda p: packets.parse_frames(memoryview(p)),
    lambda p: packets.parse_initial(memoryview(p)), packets.parse, decode_result_run, unpack_small,
]
SEEDS = [
    Hello(ROLE_SENDER, 1 << 22).encode(), Offer(1, FileEntry(b"a/b", size=5)).encode(),
    SmallFile(2, FileEntry(b"s", size=3), bytes(16), b"abc").encode(),
    Decision(3, held=RangeSet([(0, 4), (9, 12)]), message="m").encode(),
    Result(4, ErrorCode.OK, message="ok").encode(), _chunk_frame(5, 1, b"ab"),
    packets.encode_ack(RangeSet([(0, 10), (12, 15)]), 250), packets.encode_stream(7, b"xyz"),
    packets.encode_close(0, "done"), RESULT_RUN.pack(6, 40), Hello(ROLE_SENDER, 1 << 22, result_run=True).encode(),
]


@given(st.sampled_from(range(len(DECODERS))), st.sampled_from(SEEDS), st.binary(max_size=64),
       st.integers(0, 200), st.integers(0, 8))
@settings(max_examples=1500, deadline=None)
def test_decoders_end_in_remote_protocol_error(which, seed, noise, at, cut):
    payload = bytearray(seed)
    payload[at:at + len(noise)] = noise
    payload = bytes(payload[: max(0, len(payload) - cut)])
    try:
        DECODERS[which](payload)
    except RemoteProtocolError:
        pass


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_receiver_connection_turns_any_offer_payload_into_an_event_or_protocol_error(payload):
    r = ReceiverConnection(Config(max_payload=SMALL_PAYLOAD))  # small buffers: fast
    r.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 1 << 22).encode()))
    try:
        r.receive_data(encode_frame(FrameType.OFFER, payload))
    except RemoteProtocolError:
        return
    while (ev := r.next_event()) is not None:
        if hasattr(ev, "entry"):
            e = ev.entry
            assert 0 <= e.size <= MAX_FILE_SIZE and 0 <= e.mode <= 0o7777
            assert e.kind == Kind.SYMLINK or not e.target


# -- chunks delivered outside the frame layer (UDP) ----------------------------------------
def _receiver_with_offer(chunk_size=1 << 20, max_payload=None):
    from ftx.core.frames import FrameDecoder

    r = ReceiverConnection(Config(**({"max_payload": max_payload} if max_payload else {})))
    r.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 1 << 22).encode()))
    r.receive_data(encode_frame(FrameType.OFFER, Offer(0, FileEntry(b"f", size=10, chunk_size=chunk_size)).encode()))
    r.data_to_send()
    dec = FrameDecoder(max_payload=1 << 22)
    return r, dec


def _sent_errors(r, dec):
    for b in r.data_to_send():
        dec.feed(b)
    out = []
    while (f := dec.next_frame()) is not None:
        if f.type == FrameType.ERROR:
            out.append(ErrorMessage.decode(f.payload))
    return out


def test_chunk_for_an_unknown_file_queues_an_error_frame():
    """protocol.md 14.8: the UDP receiver closed with CLOSE 0 "done" and sent no ERROR."""
    r, dec = _receiver_with_offer()
    with pytest.raises(RemoteProtocolError, match="unknown file"):
        r.receive_chunk(7, 0, 0, b"x" * 10)
    errors = _sent_errors(r, dec)
    assert [e.code for e in errors] == [ErrorCode.PROTOCOL] and "unknown file" in errors[0].message
    with pytest.raises(Exception):
        r.receive_chunk(0, 0, 0, b"x" * 10)  # the connection is dead now


def test_offer_whose_chunks_cannot_fit_a_data_frame_is_refused_at_once():
    """Unspecified before: chunk_size + 24 above the receiver's max_payload (protocol.md 5.3)."""
    from ftx.core.manifest import MIN_CHUNK_SIZE

    max_payload = 64 * 1024
    r = ReceiverConnection(Config(max_payload=max_payload))
    r.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 1 << 22).encode()))
    fits = max_payload - 24 - (max_payload - 24) % MIN_CHUNK_SIZE
    r.receive_data(encode_frame(FrameType.OFFER, Offer(0, FileEntry(b"a", size=10, chunk_size=fits)).encode()))
    with pytest.raises(RemoteProtocolError, match="max_payload"):
        r.receive_data(encode_frame(FrameType.OFFER, Offer(1, FileEntry(b"b", size=10, chunk_size=fits + 4096)).encode()))


FRAME_SEEDS = SEEDS + [
    FileEnd(1, bytes(16)).encode(), FileNotice(1, ErrorCode.EXISTS, "x").encode(),
    ErrorMessage(ErrorCode.PROTOCOL, "e").encode(), b"", bytes(40),
]


@given(st.sampled_from([int(t) for t in FrameType]), st.sampled_from(FRAME_SEEDS), st.binary(max_size=48),
       st.integers(0, 120), st.booleans())
@settings(max_examples=800, deadline=None)
def test_connections_turn_any_frame_into_events_or_a_protocol_error(ftype, seed, noise, at, to_sender):
    """After the handshake, any frame of any type with a mangled payload: events or RemoteProtocolError."""
    from ftx.core.checksum import chunk_checksum
    from ftx.core.frames import encode_data_header

    payload = bytearray(seed)
    payload[at:at + len(noise)] = noise
    if to_sender:
        conn = SenderConnection(Config(max_payload=SMALL_PAYLOAD))
        conn.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_RECEIVER, 1 << 22).encode()))
        conn.offer(FileEntry(b"big", size=3 * 4096, chunk_size=4096))  # file 0 awaits a decision
        conn.send_small_file(FileEntry(b"s", size=1), b"s", bytes(16))  # file 1 awaits a result
    else:
        conn = ReceiverConnection(Config(max_payload=SMALL_PAYLOAD))
        conn.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 1 << 22).encode()))
        conn.receive_data(encode_frame(FrameType.OFFER, Offer(0, FileEntry(b"big", size=3 * 4096, chunk_size=4096)).encode()))
        conn.decide(0)
    if ftype == FrameType.DATA:  # chunk index 0-4 (3 exist), right or wrong chunk checksum, any length
        body = bytes(payload)
        blob = encode_data_header(0, at % 5, chunk_checksum(body) if at % 2 else 0, len(body)) + body
    else:
        blob = encode_frame(FrameType(ftype), bytes(payload))
    try:
        conn.receive_data(blob)
    except RemoteProtocolError:
        return
    while conn.next_event() is not None:
        pass
