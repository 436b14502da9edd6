"""Unit tests of the frame layer: encode_frame, encode_data_*, FrameDecoder."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.core.checksum import chunk_checksum, frame_checksum
from ftx.core.frames import (
    ABSOLUTE_MAX_PAYLOAD,
    DATA_HEADER,
    DATA_HEADER_SIZE,
    HANDSHAKE_MAX_PAYLOAD,
    HEADER,
    HEADER_SIZE,
    READAHEAD,
    FrameDecoder,
    FrameType,
    encode_data_frame,
    encode_data_header,
    encode_frame,
    parse_data_payload,
)
from ftx.errors import ChecksumMismatch, FrameTooLarge, RemoteProtocolError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONTROL_TYPES = [t for t in FrameType if t != FrameType.DATA]
MIB = 1024 * 1024


# -- helpers -------------------------------------------------------------------
def raw_frame(ftype: int, payload: bytes = b"", flags: int = 0, reserved: int = 0, length: int | None = None) -> bytes:
    """A frame with a *valid* checksum but arbitrary type/flags/reserved bits."""
    length = len(payload) if length is None else length
    header8 = (ftype << 56) | (flags << 48) | (reserved << 32) | length
    return HEADER.pack(ftype, flags, reserved, length, frame_checksum(header8, payload)) + payload


def control(ftype: FrameType, payload: bytes) -> tuple[bytes, tuple]:
    return encode_frame(ftype, payload), (ftype, payload)


def data(file_id: int, index: int, chunk: bytes) -> tuple[bytes, tuple]:
    return encode_data_frame(file_id, index, chunk), (FrameType.DATA, DATA_HEADER.pack(file_id, 0, index, chunk_checksum(chunk)) + chunk)


def sample_stream() -> tuple[bytes, list[tuple]]:
    """One frame of every type (DATA several times), as one byte string."""
    parts = []
    rnd = random.Random(7)
    for i, t in enumerate(CONTROL_TYPES):
        parts.append(control(t, rnd.randbytes(i * 13)))
    parts.append(control(FrameType.PING, b""))
    parts.append(data(1, 0, b""))
    parts.append(data(2, 5, rnd.randbytes(1)))
    parts.append(data(0xFFFFFFFF, 2**64 - 1, rnd.randbytes(3000)))
    parts.append(control(FrameType.DONE, b""))
    blob = b"".join(p[0] for p in parts)
    return blob, [p[1] for p in parts]


def drain(dec: FrameDecoder) -> list[tuple]:
    """Pop all decoded frames, copying the payloads (views die at next get_buffer)."""
    out = []
    while (f := dec.next_frame()) is not None:
        assert isinstance(f.type, FrameType)
        assert f.flags == 0
        out.append((f.type, bytes(f.payload)))
    return out


def feed_pieces(dec: FrameDecoder, blob: bytes, cuts) -> list[tuple]:
    points = sorted({c for c in cuts if 0 < c < len(blob)})
    got = []
    prev = 0
    for p in [*points, len(blob)]:
        dec.feed(blob[prev:p])
        got += drain(dec)
        prev = p
    return got


def feed_zero_copy(dec: FrameDecoder, blob: bytes, sizes) -> list[tuple]:
    """Fill get_buffer() regions with at most sizes[i % len] bytes each time."""
    got = []
    pos = 0
    i = 0
    while pos < len(blob):
        buf = dec.get_buffer()
        assert len(buf) > 0
        n = min(len(buf), len(blob) - pos, sizes[i % len(sizes)])
        i += 1
        buf[:n] = blob[pos : pos + n]
        pos += n
        dec.buffer_updated(n)
        got += drain(dec)
    return got


# -- encoding --------------------------------------------------------------------
def test_header_layout():
    f = encode_frame(FrameType.OFFER, b"abc")
    ftype, flags, reserved, length, csum = HEADER.unpack_from(f)
    assert (ftype, flags, reserved, length) == (0x02, 0, 0, 3)
    assert HEADER_SIZE == 16 and DATA_HEADER_SIZE == 24
    assert csum == frame_checksum((0x02 << 56) | 3, b"abc")
    assert f[16:] == b"abc"


def test_data_frame_layout():
    chunk = b"hello world"
    f = encode_data_frame(7, 9, chunk)
    ftype, flags, reserved, length, csum = HEADER.unpack_from(f)
    assert (ftype, flags, reserved, length) == (FrameType.DATA, 0, 0, 24 + len(chunk))
    assert DATA_HEADER.unpack_from(f, 16) == (7, 0, 9, chunk_checksum(chunk))
    assert f[40:] == chunk
    assert f == encode_data_header(7, 9, chunk_checksum(chunk), len(chunk)) + chunk
    fid, index, checksum, payload = parse_data_payload(f[16:])
    assert (fid, index, checksum, bytes(payload)) == (7, 9, chunk_checksum(chunk), chunk)


def test_encode_frame_refuses_data_and_oversize():
    with pytest.raises(ValueError):
        encode_frame(FrameType.DATA, b"x" * 30)
    with pytest.raises(ValueError):
        encode_frame(FrameType.OFFER, bytes(ABSOLUTE_MAX_PAYLOAD + 1))


def test_set_max_payload_range():
    with pytest.raises(ValueError):
        FrameDecoder(0)
    with pytest.raises(ValueError):
        FrameDecoder(ABSOLUTE_MAX_PAYLOAD + 1)
    d = FrameDecoder()
    assert d.max_payload == HANDSHAKE_MAX_PAYLOAD
    d.set_max_payload(ABSOLUTE_MAX_PAYLOAD)
    assert d.max_payload == ABSOLUTE_MAX_PAYLOAD


# -- round trips -----------------------------------------------------------------
@pytest.mark.parametrize("ftype", CONTROL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, HANDSHAKE_MAX_PAYLOAD])
def test_control_round_trip(ftype, size):
    payload = random.Random(size).randbytes(size)
    d = FrameDecoder()
    d.feed(encode_frame(ftype, payload))
    assert drain(d) == [(ftype, payload)]
    assert d.pending_bytes == 0
    d.receive_eof()  # nothing pending: no error


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 65536 - 24])
def test_data_round_trip(size):
    chunk = random.Random(size).randbytes(size)
    d = FrameDecoder()
    d.feed(encode_data_frame(3, 11, chunk))
    f = d.next_frame()
    assert f.type == FrameType.DATA
    fid, index, checksum, payload = parse_data_payload(f.payload)
    assert (fid, index, checksum, bytes(payload)) == (3, 11, chunk_checksum(chunk), chunk)
    assert d.next_frame() is None


def test_whole_stream_at_once():
    blob, frames = sample_stream()
    d = FrameDecoder(copy_payloads=True)
    d.feed(blob)
    assert drain(d) == frames


def test_copy_payloads_gives_bytes_that_survive():
    blob, frames = sample_stream()
    d = FrameDecoder(copy_payloads=True)
    d.feed(blob)
    got = []
    while (f := d.next_frame()) is not None:
        assert isinstance(f.payload, bytes)
        got.append(f)
    d.feed(blob)  # reuse the buffer: copies must not change
    assert [(f.type, f.payload) for f in got] == frames


def test_one_byte_at_a_time():
    blob, frames = sample_stream()
    d = FrameDecoder()
    got = []
    for i in range(len(blob)):
        d.feed(blob[i : i + 1])
        got += drain(d)
    assert got == frames
    assert d.pending_bytes == 0


@SETTINGS
@given(cuts=st.lists(st.integers(0, 20000), max_size=40))
def test_arbitrary_splits(cuts):
    blob, frames = sample_stream()
    assert len(blob) < 20000
    assert feed_pieces(FrameDecoder(), blob, cuts) == frames


@SETTINGS
@given(sizes=st.lists(st.integers(1, 70000), min_size=1, max_size=20))
def test_zero_copy_partial_fills(sizes):
    blob, frames = sample_stream()
    assert feed_zero_copy(FrameDecoder(), blob, sizes) == frames


def test_zero_copy_payload_views_are_valid_until_next_get_buffer():
    d = FrameDecoder()
    f1 = encode_data_frame(1, 0, b"A" * 100)
    f2 = encode_data_frame(1, 1, b"B" * 50)
    buf = d.get_buffer()
    buf[: len(f1) + len(f2)] = f1 + f2
    d.buffer_updated(len(f1) + len(f2))
    a, b = d.next_frame(), d.next_frame()
    assert isinstance(a.payload, memoryview)
    assert bytes(parse_data_payload(a.payload)[3]) == b"A" * 100
    assert bytes(parse_data_payload(b.payload)[3]) == b"B" * 50


def test_control_payloads_survive_later_get_buffer_calls():
    """Only DATA is zero-copy: a SMALL_FILE held in an event must not change when the
    buffer is compacted or regrown under it (issue 11, item 1's class of bug)."""
    d = FrameDecoder(max_payload=200_000)
    frames = [encode_frame(FrameType.SMALL_FILE, bytes([i]) * 3000) for i in range(40)]
    held = []
    for f in frames:
        buf = d.get_buffer()
        buf[: len(f)] = f
        d.buffer_updated(len(f))
        held.append(d.next_frame())
    assert [bytes(h.payload) for h in held] == [bytes([i]) * 3000 for i in range(40)]


def test_frame_of_exactly_max_payload_is_accepted():
    d = FrameDecoder(max_payload=1000)
    d.feed(encode_frame(FrameType.OFFER, bytes(1000)))
    assert drain(d) == [(FrameType.OFFER, bytes(1000))]


def test_raising_max_payload_with_a_partial_frame_pending():
    big = random.Random(1).randbytes(300_000)
    small = encode_frame(FrameType.HELLO, b"hi")
    frame = encode_frame(FrameType.OFFER, big)
    d = FrameDecoder()
    d.feed(small + frame[:10])  # a header fragment is pending
    assert drain(d) == [(FrameType.HELLO, b"hi")]
    d.set_max_payload(1_000_000)
    d.feed(frame[10:])
    assert drain(d) == [(FrameType.OFFER, big)]


# -- corruption ------------------------------------------------------------------
def _corrupt_and_decode(blob: bytes, pos: int, xor: int, originals) -> None:
    bad = bytearray(blob)
    bad[pos] ^= xor
    d = FrameDecoder(max_payload=100_000)
    with pytest.raises(RemoteProtocolError):
        try:
            d.feed(bad)
        finally:
            # frames that came out before the error must be intact ones
            for f in drain(d):
                assert f in originals
        d.receive_eof()  # a grown length field leaves the decoder waiting


SINGLE_FRAMES = {
    "control": encode_frame(FrameType.OFFER, random.Random(2).randbytes(77)),
    "empty-control": encode_frame(FrameType.DONE),
    "data": encode_data_frame(9, 4, random.Random(3).randbytes(500)),
    "empty-data": encode_data_frame(9, 4, b""),
}


@pytest.mark.parametrize("name", list(SINGLE_FRAMES))
@SETTINGS
@given(pos=st.integers(0, 10**6), xor=st.integers(1, 255))
def test_any_single_byte_flip_is_detected(name, pos, xor):
    blob = SINGLE_FRAMES[name]
    _corrupt_and_decode(blob, pos % len(blob), xor, [])


@pytest.mark.parametrize("name", list(SINGLE_FRAMES))
def test_every_position_single_bit_flip(name):
    blob = SINGLE_FRAMES[name]
    for pos in range(len(blob)):
        for xor in (0x01, 0x80):
            _corrupt_and_decode(blob, pos, xor, [])


@SETTINGS
@given(pos=st.integers(0, 10**6), xor=st.integers(1, 255))
def test_byte_flip_inside_a_stream(pos, xor):
    blob, frames = sample_stream()
    _corrupt_and_decode(blob, pos % len(blob), xor, frames)


def test_flipped_data_byte_is_a_chunk_checksum_mismatch():
    f = bytearray(encode_data_frame(1, 0, b"x" * 100))
    f[-1] ^= 0x20
    with pytest.raises(ChecksumMismatch, match="chunk"):
        FrameDecoder().feed(f)


def test_flipped_control_payload_is_a_checksum_mismatch():
    f = bytearray(encode_frame(FrameType.OFFER, b"x" * 100))
    f[50] ^= 1
    with pytest.raises(ChecksumMismatch):
        FrameDecoder().feed(f)


@pytest.mark.parametrize("name", list(SINGLE_FRAMES))
def test_truncation_then_eof(name):
    blob = SINGLE_FRAMES[name]
    for cut in range(1, len(blob)):
        d = FrameDecoder()
        d.feed(blob[:cut])
        assert d.next_frame() is None
        assert d.pending_bytes == cut
        with pytest.raises(RemoteProtocolError, match="middle of a frame"):
            d.receive_eof()


def test_eof_between_frames_is_fine():
    blob, frames = sample_stream()
    d = FrameDecoder()
    d.feed(blob)
    assert len(drain(d)) == len(frames)
    d.receive_eof()


@pytest.mark.parametrize("ftype", [FrameType.OFFER, FrameType.DATA])
def test_too_large_is_raised_at_the_header(ftype):
    d = FrameDecoder(max_payload=1000)
    header = raw_frame(ftype, b"", length=1001)[:HEADER_SIZE]
    with pytest.raises(FrameTooLarge):
        d.feed(header)  # nothing of the payload has arrived yet


def test_too_large_control_frame_from_encoder():
    d = FrameDecoder()  # handshake limit, 64 KiB
    with pytest.raises(FrameTooLarge):
        d.feed(encode_frame(FrameType.OFFER, bytes(HANDSHAKE_MAX_PAYLOAD + 1))[:HEADER_SIZE])


@pytest.mark.parametrize("ftype", [0x00, 0x10, 0x1F, 0x23, 0xFF])  # 0x0F is RECEIPT, 0x20-0x22 CHECK_DIR, DIR_STATE, RESULT_RUN
def test_unknown_frame_type(ftype):
    d = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="unknown frame type") as exc:
        d.feed(raw_frame(ftype, b"abc"))
    assert type(exc.value) is RemoteProtocolError


@pytest.mark.parametrize("reserved", [1, 0x8000, 0xFFFF])
@pytest.mark.parametrize("ftype", [FrameType.OFFER, FrameType.DONE])
def test_reserved_bits(ftype, reserved):
    with pytest.raises(RemoteProtocolError, match="reserved") as exc:
        FrameDecoder().feed(raw_frame(ftype, b"abc", reserved=reserved))
    assert type(exc.value) is RemoteProtocolError


@pytest.mark.parametrize("flags", [0x01, 0x02, 0x80, 0xFF])
def test_unknown_flags(flags):
    with pytest.raises(RemoteProtocolError, match="flags") as exc:
        FrameDecoder().feed(raw_frame(FrameType.OFFER, b"abc", flags=flags))
    assert type(exc.value) is RemoteProtocolError


def test_unknown_flags_via_encode_frame():
    with pytest.raises(RemoteProtocolError, match="flags"):
        FrameDecoder().feed(encode_frame(FrameType.PING, b"", flags=1))


def test_data_frame_shorter_than_its_header():
    with pytest.raises(RemoteProtocolError, match="shorter"):
        FrameDecoder().feed(raw_frame(FrameType.DATA, bytes(23)))


def test_data_frame_reserved_field_is_covered():
    f = bytearray(encode_data_frame(1, 2, b"abc"))
    f[HEADER_SIZE + 4] ^= 1  # the data header's reserved word
    with pytest.raises(ChecksumMismatch):
        FrameDecoder().feed(f)


def test_valid_frames_before_a_bad_one_are_delivered():
    good = encode_frame(FrameType.PING, b"12345678")
    bad = bytearray(encode_frame(FrameType.OFFER, b"zz"))
    bad[-1] ^= 1
    d = FrameDecoder()
    with pytest.raises(ChecksumMismatch):
        d.feed(good + bad)
    frame = d.next_frame()
    assert (frame.type, bytes(frame.payload)) == (FrameType.PING, b"12345678")
    with pytest.raises(ChecksumMismatch):  # the bad frame stays bad: the decoder does not skip it
        d.next_frame()


# -- large DATA frames ---------------------------------------------------------------
def _big_stream(n: int, chunk_size: int = MIB):
    rnd = random.Random(n)
    chunks = [rnd.randbytes(chunk_size) for _ in range(4)]
    frames = []
    parts = []
    for i in range(n):
        c = chunks[i % 4]
        if i % 5 == 4:
            c = c[: chunk_size - 12345]  # a shorter (last) chunk now and then
        parts.append(encode_data_frame(i % 3, i, c))
        frames.append((i % 3, i, c))
        if i % 4 == 1:
            parts.append(encode_frame(FrameType.PING, i.to_bytes(8, "big")))
            frames.append(("ping", i))
    return b"".join(parts), frames


def _check_big(got, frames):
    assert len(got) == len(frames)
    for (ftype, payload), want in zip(got, frames):
        if want[0] == "ping":
            assert (ftype, payload) == (FrameType.PING, want[1].to_bytes(8, "big"))
            continue
        assert ftype == FrameType.DATA
        fid, index, checksum, body = parse_data_payload(payload)
        assert (fid, index) == want[:2]
        assert checksum == chunk_checksum(want[2])
        assert bytes(body) == want[2]


@pytest.mark.parametrize(
    "sizes",
    [[65536], [200_000], [1], [4096, 1448, 7], [99_991, 131_071, 2**20 + 3], [3 * MIB], [65536, 1, 200_000, 17]],
    ids=lambda s: "-".join(map(str, s)),
)
def test_large_data_frames_zero_copy(sizes):
    n = 12 if sizes != [1] else 2  # one byte at a time is slow in Python: keep it short
    blob, frames = _big_stream(n)
    d = FrameDecoder(max_payload=MIB + 64 * 1024)
    if sizes == [1]:
        sizes = [1] * 50 + [65536]  # mostly single bytes around the headers
    got = feed_zero_copy(d, blob, sizes)
    _check_big(got, frames)
    assert d.pending_bytes == 0
    d.receive_eof()


def test_large_frame_body_lands_in_one_region():
    chunk = random.Random(5).randbytes(MIB)
    frame = encode_data_frame(1, 0, chunk)
    d = FrameDecoder(max_payload=MIB + 64 * 1024)
    d.feed(frame)  # the first frame grows the buffer as it arrives
    assert bytes(parse_data_payload(d.next_frame().payload)[3]) == chunk
    d.feed(frame[:READAHEAD])
    buf = d.get_buffer()
    # from then on the rest of a frame fits in one buffer handed out: one recv_into, no copying later
    assert len(buf) == len(frame) - READAHEAD
    buf[:] = frame[READAHEAD:]
    d.buffer_updated(len(buf))
    f = d.next_frame()
    assert bytes(parse_data_payload(f.payload)[3]) == chunk


def _fill(d: FrameDecoder, data: bytes) -> None:
    """Zero-copy input the way the TCP driver does it, region by region."""
    view = memoryview(data)
    while view:
        buf = d.get_buffer()
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        d.buffer_updated(n)
        view = view[n:]


def test_a_header_announcing_4_mib_allocates_nothing_for_it():
    d = FrameDecoder(max_payload=4 * MIB + 64 * 1024)
    assert d.capacity == 0  # nothing before the first byte
    _fill(d, encode_data_header(1, 0, 0, 4 * MIB))
    assert d.capacity <= 2 * READAHEAD
    for arrived in (100_000, 500_000, 2 * MIB):
        _fill(d, bytes(arrived - (d.pending_bytes - HEADER_SIZE - DATA_HEADER_SIZE)))
        assert d.capacity <= 2 * d.pending_bytes + 2 * READAHEAD, (arrived, d.capacity)


def test_trim_gives_the_buffer_back_and_release_returns_the_budget():
    from ftx.core.frames import BufferBudget

    budget = BufferBudget(64 * MIB)
    d = FrameDecoder(max_payload=MIB + 64 * 1024, budget=budget)
    chunk = bytes(MIB)
    _fill(d, encode_data_frame(1, 0, chunk))
    assert d.next_frame() is not None
    assert budget.used == d.capacity >= MIB
    d.trim()
    assert d.capacity == 0 and budget.used == 0
    _fill(d, encode_data_frame(1, 0, chunk)[:100_000])
    d.trim()  # keeps what is pending, nothing more
    assert 100_000 <= d.capacity < 110_000 and budget.used == d.capacity
    d.release()
    assert budget.used == 0


def test_growing_past_the_budget_is_a_busy_error():
    from ftx.core.frames import BufferBudget, BufferLimit
    from ftx.errors import ErrorCode

    d = FrameDecoder(max_payload=4 * MIB + 64 * 1024, budget=BufferBudget(MIB))
    with pytest.raises(BufferLimit) as info:
        _fill(d, encode_data_frame(1, 0, bytes(2 * MIB)))
    assert info.value.code == ErrorCode.BUSY and "--max-memory" in str(info.value)


def test_large_frames_feed_in_random_pieces():
    blob, frames = _big_stream(6)
    rnd = random.Random(11)
    cuts = [rnd.randrange(len(blob)) for _ in range(200)]
    _check_big(feed_pieces(FrameDecoder(max_payload=MIB + 64 * 1024), blob, cuts), frames)


def test_large_corrupt_chunk_detected():
    blob, frames = _big_stream(3)
    bad = bytearray(blob)
    bad[HEADER_SIZE + DATA_HEADER_SIZE + MIB // 2] ^= 0x40  # inside the first chunk
    d = FrameDecoder(max_payload=MIB + 64 * 1024)
    with pytest.raises(ChecksumMismatch):
        feed_zero_copy(d, bytes(bad), [65536])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(512, MIB), min_size=1, max_size=12), trims=st.lists(st.booleans(), max_size=12))
def test_growth_and_trim_in_any_rhythm_keep_frames_and_bound_capacity(sizes, trims):
    """Whatever the read sizes and idle trims: the same frames, and never much more
    buffer than the bytes pending (a header alone does not allocate its payload)."""
    blob, frames = _big_stream(5, chunk_size=256 * 1024)
    d = FrameDecoder(max_payload=256 * 1024 + 64 * 1024)
    view, got, i = memoryview(blob), [], 0
    while view:
        buf = d.get_buffer()
        n = min(len(buf), len(view), sizes[i % len(sizes)])
        buf[:n] = view[:n]
        view = view[n:]
        d.buffer_updated(n)
        assert d.capacity <= 2 * d.pending_bytes + 2 * READAHEAD + 4096 or d.capacity <= 256 * 1024 + 64 + READAHEAD
        while (f := d.next_frame()) is not None:
            got.append((f.type, bytes(f.payload)))
        if trims and trims[i % len(trims)]:
            d.trim()
            assert d.capacity <= max(d.pending_bytes, 4096 if d.pending_bytes else 0)
        i += 1
    _check_big(got, frames)


@pytest.mark.parametrize("tail", [b"", encode_frame(FrameType.PING, b"p" * 8)[:10]])
def test_a_frame_put_back_is_the_next_frame_again(tail):
    """``unread`` (a receiver whose budget cannot take the frame's item yet): the frame just taken
    is decoded again, whole, whether bytes followed it or it emptied the buffer, and after a trim."""
    from ftx.core.frames import FrameDecoder

    frames = [encode_frame(FrameType.SMALL_FILE, bytes([i]) * (100 + i)) for i in range(3)]
    d = FrameDecoder()
    buf = d.get_buffer()
    stream = b"".join(frames) + tail
    buf[: len(stream)] = stream
    del buf
    d.buffer_updated(len(stream))
    assert bytes(d.next_frame().payload) == bytes([0]) * 100
    for i in (1, 2):
        frame = d.next_frame()
        d.unread(frame)
        d.trim()
        again = d.next_frame()
        assert again.type == FrameType.SMALL_FILE and bytes(again.payload) == bytes([i]) * (100 + i)
    assert d.next_frame() is None and d.pending_bytes == len(tail)


def test_budget_gives_from_other_threads_are_all_counted():
    """Storage workers give small files' bytes back while the loop takes: nothing is lost."""
    import threading

    from ftx.core.frames import BufferBudget

    b = BufferBudget(1 << 30)
    assert b.take(4 * 100_000, settling=True)
    workers = [threading.Thread(target=lambda: [b.give(1, settling=True) for _ in range(100_000)]) for _ in range(4)]
    for w in workers:
        w.start()
    for _ in range(100_000):
        assert b.take(1)
        b.give(1)
    for w in workers:
        w.join(30)
    assert b.used == 0 and b.settling == 0 and b.room == 1 << 30
