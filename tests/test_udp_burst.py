"""The bulk loops of the UDP transport (ftx.core.udp.burst): the Python reference and the
optional C accelerator must build the same bytes and read bursts the same way."""

from __future__ import annotations

import random

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.core.udp import burst as B
from ftx.core.udp import packets as P

xxh = xxhash.xxh3_64_intdigest
needs_c = pytest.mark.skipif(B._burst is None, reason="the C accelerator was not built (no compiler at install)")
IMPLS = [pytest.param("py", id="python"), pytest.param("c", id="c", marks=needs_c)]


def impl(name: str):
    if name == "py":
        return B.py_build_chunk_burst, B.py_scan_chunk_burst, B.py_gather
    return B._burst.build_chunk_burst, B._burst.scan_chunk_burst, B._burst.gather


def built(name, mss, cid=77, pn=1000, fid=3, index=9, clen=1 << 20, csum=0xDEAD, data=None, off=0, nbytes=None):
    data = data if data is not None else random.Random(mss).randbytes(clen)
    nbytes = nbytes if nbytes is not None else clen - off
    out = bytearray(B.burst_size(nbytes, mss))
    impl(name)[0](out, mss, cid, pn, fid, index, clen, csum, data, off, nbytes, xxh)
    return bytes(out)


@pytest.mark.parametrize("name", IMPLS)
def test_a_built_burst_is_ordinary_chunk_packets(name):
    mss, room = 1452, 1452 - 57
    data = random.Random(1).randbytes(10_000)
    b = built(name, mss, data=data, clen=10_000, off=1000, nbytes=5000)
    datagrams = P.segments(b, mss)
    assert len(datagrams) == 4 and [len(d) for d in datagrams] == [mss] * 3 + [57 + 5000 - 3 * room]
    for k, d in enumerate(datagrams):
        pkt = P.parse(d)  # checksum, version, type
        assert (pkt.ptype, pkt.dcid, pkt.pn) == (P.DATA, 77, 1000 + k)
        (f,) = P.parse_frames(pkt.payload)
        assert (f.file_id, f.index, f.chunk_len, f.checksum) == (3, 9, 10_000, 0xDEAD)
        assert f.offset == 1000 + k * room and bytes(f.data) == data[f.offset : f.offset + len(f.data)]


@needs_c
@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(58, 9000), st.integers(1, 40_000), st.integers(0, 5000), st.integers(0, 2**64 - 1))
def test_c_and_python_build_the_same_bytes(mss, nbytes, off, pn):
    clen = off + nbytes + 7
    data = random.Random(nbytes).randbytes(clen)
    args = dict(pn=min(pn, 2**64 - 1 - 64), data=data, clen=clen, off=off, nbytes=nbytes, csum=pn, cid=pn ^ 0xFF)
    if -(-nbytes // (mss - 57)) > 64:
        nbytes = 64 * (mss - 57)
        args.update(nbytes=min(nbytes, clen - off))
    assert built("py", mss, **args) == built("c", mss, **args)


@pytest.mark.parametrize("name", IMPLS)
def test_build_rejects_bad_arguments(name):
    build = impl(name)[0]
    data = bytes(100)
    with pytest.raises(ValueError):
        build(bytearray(10), 1452, 1, 1, 1, 1, 100, 1, data, 0, 100, xxh)  # wrong buffer size
    with pytest.raises(ValueError):
        build(bytearray(B.burst_size(100, 1452)), 1452, 1, 1, 1, 1, 100, 1, data, 50, 100, xxh)  # past the data
    with pytest.raises(ValueError):
        build(bytearray(100), 50, 1, 1, 1, 1, 100, 1, data, 0, 10, xxh)  # no room for data
    with pytest.raises(ValueError):
        build(bytearray(B.burst_size(100, 1452)), 1452, 1, 1, 1, 1, 99, 1, data, 0, 100, xxh)  # past the chunk


def _mixed_burst(seed: int, mss: int = 600):
    """A burst of full CHUNK packets with trouble mixed in, and what a reader must make of it."""
    r = random.Random(seed)
    room = mss - 57
    segs = P.segments(built("py", mss, pn=50, clen=room * 40, nbytes=room * 40), mss)
    segs = [bytes(s) for s in segs]
    kinds = []
    out = []
    for s in segs:
        x = r.random()
        if x < 0.1:  # corrupted
            b = bytearray(s)
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
            out.append(bytes(b))
        elif x < 0.15:  # another kind of packet of the same size (valid checksum)
            out.append(P.build(P.DATA, 77, r.randrange(10**6), bytes([P.F_PING]) + bytes(mss - 27)))
        elif x < 0.2:  # addressed to another connection
            b = bytearray(s)
            b[2:10] = (78).to_bytes(8, "big")
            P.seal(b, len(b) - 8)
            out.append(bytes(b))
        elif x < 0.3:
            out.append(s)
            out.append(s)  # duplicated
        elif x < 0.35 and out:
            out.insert(len(out) - 1, s)  # reordered
        else:
            out.append(s)
        kinds.append(x)
    return b"".join(out), mss


def _model(view: bytes, seg: int, cid: int):
    """What scan_chunk_burst must return, worked out one datagram at a time with packets.parse."""
    room = seg - 57
    runs, others, garbage = [], [], 0
    for at in range(0, len(view), seg):
        try:
            pkt = P.parse(view[at : at + seg])
        except Exception:
            garbage += 1
            runs.append(None)
            continue
        frames = P.parse_frames(pkt.payload) if pkt.ptype == P.DATA else []
        f = frames[0] if len(frames) == 1 and isinstance(frames[0], P.ChunkFrame) else None
        if pkt.ptype != P.DATA or pkt.dcid != cid or f is None or len(f.data) != room:
            others.append(at)
            runs.append(None)
            continue
        last = runs[-1] if runs else None
        if (last is not None and pkt.pn == last[2] + last[1] and (f.file_id, f.index, f.chunk_len, f.checksum)
                == last[3:7] and f.offset == last[7] + last[1] * room):
            runs[-1] = (last[0], last[1] + 1) + last[2:]
        else:
            runs.append((at, 1, pkt.pn, f.file_id, f.index, f.chunk_len, f.checksum, f.offset))
    return [r for r in runs if r is not None], others, garbage


@pytest.mark.parametrize("name", IMPLS)
@pytest.mark.parametrize("seed", range(12))
def test_scan_finds_runs_others_and_garbage(name, seed):
    data, seg = _mixed_burst(seed)
    runs, others, garbage = impl(name)[1](memoryview(data), seg, 77, xxh)
    assert (runs, others, garbage) == _model(data, seg, 77)
    if seed == 0:
        assert len(runs) > 1 and others and garbage


@pytest.mark.parametrize("name", IMPLS)
def test_scan_and_gather_rebuild_the_data(name):
    mss = 1452
    room = mss - 57
    data = random.Random(5).randbytes(room * 44)
    b = built(name, mss, data=data, clen=len(data), nbytes=len(data))
    _, scan, gather = impl(name)
    runs, others, garbage = scan(b, mss, 77, xxh)
    assert runs == [(0, 44, 1000, 3, 9, len(data), 0xDEAD, 0)] and others == [] and garbage == 0
    dest = bytearray(len(data) + 10)
    gather(b, mss, 0, 44, dest, 10)
    assert bytes(dest[10:]) == data
    with pytest.raises(ValueError):
        gather(b, mss, mss, 44, dest, 0)  # past the end of the burst
    with pytest.raises(ValueError):
        gather(b, mss, 0, 44, dest, 11)  # past the end of dest
    with pytest.raises(ValueError):
        scan(b[:-1], mss, 77, xxh)  # not whole segments


@pytest.mark.parametrize("name", IMPLS)
def test_gather_refuses_sizes_whose_products_overflow(name):
    gather = impl(name)[2]
    with pytest.raises(ValueError):
        gather(bytearray(4096), 1 << 33, 0, 1 << 31, bytearray(4096), 0)  # count * seg == 2**64
    with pytest.raises(ValueError):
        gather(bytearray(4096), 1452, 0, 1, bytearray(4096), (1 << 63) - 1)


@pytest.mark.parametrize("name", IMPLS)
def test_a_run_never_wraps_past_the_largest_packet_number(name):
    mss, room = 1452, 1452 - 57
    data = bytes(2 * room)
    last = built("py", mss, pn=2**64 - 1, data=data, clen=2 * room, nbytes=room)
    first = built("py", mss, pn=0, data=data, clen=2 * room, off=room, nbytes=room)
    runs, _, _ = impl(name)[1](last + first, mss, 77, xxh)
    assert [(r[1], r[2]) for r in runs] == [(1, 2**64 - 1), (1, 0)]


@pytest.mark.parametrize("name", IMPLS)
def test_without_a_hasher_trailers_are_zero_and_scan_wants_zero(name):
    """hasher None: a burst that is sealed next is built with zero trailers (no call per
    datagram), and a burst of opened datagrams is scanned taking a zero trailer as valid and
    any other (an open that failed is marked with ones) as garbage."""
    mss = 1452
    room = mss - 57
    data = random.Random(6).randbytes(room * 5)
    build, scan, _ = impl(name)
    out = bytearray(B.burst_size(len(data), mss))
    build(out, mss, 77, 1000, 3, 9, len(data), 0xDEAD, data, 0, len(data), None)
    with_sums = built(name, mss, data=data, clen=len(data), nbytes=len(data))
    for k in range(5):  # the same packets, the trailer aside
        d = slice(k * mss, (k + 1) * mss - 8)
        assert out[d] == with_sums[d] and out[(k + 1) * mss - 8 : (k + 1) * mss] == bytes(8)
    out[2 * mss - 8 : 2 * mss] = b"\xff" * 8  # the second did not open
    runs, others, garbage = scan(out, mss, 77, None)
    assert [(r[0], r[1], r[2]) for r in runs] == [(0, 1, 1000), (2 * mss, 3, 1002)] and others == [] and garbage == 1
    assert scan(with_sums, mss, 77, None)[2] == 5  # real checksums are not zero


# =====================================================================================
# full STREAM packets (a tree of small files): build_stream_burst, scan_stream_runs
# =====================================================================================
def stream_impl(name: str):
    if name == "py":
        return B.py_build_stream_burst, B.py_scan_stream_runs
    if getattr(B._burst, "VERSION", 2) < 3:
        pytest.skip("the C accelerator was built from an older _burst.c")
    return B._burst.build_stream_burst, B._burst.scan_stream_runs


def _stream_seg(first: int, step: int) -> int:
    return P.HEADER_SIZE + len(P.encode_stream(first, bytes(step))) + P.TRAILER_SIZE


def stream_built(name, first, step, n, data, rel=0, pn=500, cid=77, hasher=xxh) -> bytes:
    seg = _stream_seg(first, step)
    out = bytearray(n * seg)
    stream_impl(name)[0](out, seg, cid, pn, first, step, n, data, rel, hasher)
    return bytes(out)


@pytest.mark.parametrize("name", IMPLS)
def test_a_stream_burst_is_ordinary_stream_packets(name):
    """Each datagram is what UdpSession builds one at a time: one STREAM frame filling it."""
    data = random.Random(7).randbytes(20_000)
    first, step = 300, 1400
    b = stream_built(name, first, step, 5, data, rel=100)
    seg = _stream_seg(first, step)
    for k, d in enumerate(P.segments(b, seg)):
        pkt = P.parse(d)  # checksum, version, type
        assert (pkt.ptype, pkt.dcid, pkt.pn) == (P.DATA, 77, 500 + k)
        (f,) = P.parse_frames(pkt.payload)
        assert f.offset == first + k * step and bytes(f.data) == data[100 + k * step : 100 + (k + 1) * step]
        assert bytes(pkt.payload) == P.encode_stream(f.offset, f.data)


@needs_c
@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, 2**62 - 1), st.integers(1, 9000), st.integers(1, 64), st.integers(0, 2**64 - 65),
       st.booleans())
def test_c_and_python_build_the_same_stream_bytes(first, step, n, pn, hashed):
    n = min(n, max(1, (2**62 - first) // step))
    while n > 1 and len(P.encode_stream(first + (n - 1) * step, b"x")) != len(P.encode_stream(first, b"x")):
        n -= 1  # a burst has one offset size
    data = random.Random(step).randbytes(step * n + 5)
    h = xxh if hashed else None
    assert stream_built("py", first, step, n, data, 5, pn, pn ^ 1, h) == stream_built("c", first, step, n, data, 5,
                                                                                         pn, pn ^ 1, h)


@pytest.mark.parametrize("name", IMPLS)
def test_stream_build_rejects_bad_arguments(name):
    build = stream_impl(name)[0]
    data = bytes(10_000)
    seg = _stream_seg(0, 1000)
    with pytest.raises(ValueError):
        build(bytearray(seg * 2 - 1), seg, 1, 1, 0, 1000, 2, data, 0, None)  # wrong buffer size
    with pytest.raises(ValueError):
        build(bytearray(seg * 11), seg, 1, 1, 0, 1000, 11, data, 0, None)  # past the data
    with pytest.raises(ValueError):
        build(bytearray(seg * 2), seg, 1, 1, 0, 1000, 2, data, 9000, None)  # past the data, from rel
    with pytest.raises(ValueError):
        build(bytearray(seg), seg + 1, 1, 1, 0, 1000, 1, data, 0, None)  # frame does not fill the packet
    seg = _stream_seg(120, 20)
    with pytest.raises(ValueError):  # the offset's varint grows within the burst (127 to 128)
        build(bytearray(seg * 2), seg, 1, 1, 120, 20, 2, data, 0, None)
    with pytest.raises(ValueError):
        build(bytearray(seg), seg, 1, 1, 0, 0, 1, data, 0, None)  # no data


def _opened(payloads: list, pns: list, plain: int) -> tuple[bytes, list]:
    """Datagrams as open_burst leaves them in its scratch buffer: header, payload, trailer."""
    out, offsets = bytearray(), []
    for pn, payload in zip(pns, payloads):
        offsets.append(len(out))
        d = bytearray(P.HEADER.pack(P.DATA, 1, 77, pn)) + payload
        d += bytes(plain - len(d))
        out += d
    return bytes(out), offsets


def _stream_payloads(seed: int, plain: int) -> tuple[list, list]:
    """Full STREAM packets in runs, broken by gaps, other frames, old numbers and hostile
    varints (overlong, too big, truncated, a second frame after the first)."""
    rng = random.Random(seed)
    room = plain - P.HEADER_SIZE - P.TRAILER_SIZE
    payloads, pns, off, pn = [], [], rng.choice([0, 100, 2**14 - 200, 2**62 - 10**6]), 1000
    while len(payloads) < 40:
        kind = rng.random()
        if kind < 0.6:  # the next full STREAM packet
            head = len(P.encode_stream(off, bytes(200))) - 200  # (a 2-byte length)
            data = rng.randbytes(room - head)
            payloads.append(P.encode_stream(off, data))
            off += len(data)
        elif kind < 0.65:
            off += 1  # a gap in the stream
            continue
        elif kind < 0.7:
            pn += 1  # a gap in the numbers
            continue
        elif kind < 0.75:
            payloads.append(P.encode_ack(__import__("ftx.core.ranges", fromlist=["RangeSet"]).RangeSet([(0, 5)]), 0)
                            .ljust(room, b"\0"))
        elif kind < 0.8:  # shorter than the packet: a frame that does not fill it
            payloads.append(P.encode_stream(off, rng.randbytes(rng.randint(1, room // 2))))
        elif kind < 0.85:  # overlong or huge offset varints
            payloads.append(bytes([P.F_STREAM]) + b"\xff" * rng.randint(8, 11) + rng.randbytes(room))
        elif kind < 0.9:  # ten offset bytes, the last zero (accepted by the reference)
            body = rng.randbytes(room - 13)
            payloads.append(bytes([P.F_STREAM]) + b"\x80" * 9 + b"\x00" + bytes([(len(body) & 0x7F) | 0x80,
                                                                               len(body) >> 7]) + body)
        elif kind < 0.95:
            payloads.append(rng.randbytes(room))
        else:
            pn -= rng.randint(1, 5)  # old numbers
            continue
        pns.append(pn)
        pn += 1
    return [bytes(p[:room]).ljust(room, b"\0") if len(p) > room else p for p in payloads], pns


@needs_c
@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("largest", [(False, 0), (True, 1010), (True, 0)])
def test_c_and_python_find_the_same_stream_runs(seed, largest):
    plain = 600 + seed * 37
    payloads, pns = _stream_payloads(seed, plain)
    view, offsets = _opened(payloads, pns, plain)
    py, c = stream_impl("py")[1], stream_impl("c")[1]
    expect = py(view, offsets, plain, *largest)
    assert c(view, offsets, plain, *largest) == expect
    assert sum(r[1] for r in expect) == len(offsets)


@pytest.mark.parametrize("name", IMPLS)
def test_stream_runs_join_what_the_frames_carry(name):
    plain = 1452 - 16 + 8
    payloads, pns = _stream_payloads(3, plain)
    view, offsets = _opened(payloads, pns, plain)
    for i, count, pn, start, end, data in stream_impl(name)[1](view, offsets, plain, False, 0):
        if start < 0:
            continue
        frames = [P.parse_frames(payloads[k])[0] for k in range(i, i + count)]
        assert [f.offset for f in frames][0] == start and pn == pns[i]
        assert pns[i : i + count] == list(range(pn, pn + count))
        joined = b"".join(bytes(f.data) for f in frames)
        assert len(joined) == end - start and (data is None) == (count == 1)
        if data is not None:
            assert data == joined


@pytest.mark.parametrize("name", IMPLS)
def test_stream_runs_refuse_offsets_outside_the_buffer(name):
    view, offsets = _opened([P.encode_stream(0, bytes(570))], [1], 600)  # fills the 574 bytes
    scan = stream_impl(name)[1]
    if name == "c":
        with pytest.raises(ValueError):
            scan(view, [len(view)], 600, False, 0)
        with pytest.raises(ValueError):
            scan(view, [-1], 600, False, 0)
    assert scan(view, offsets, 600, False, 0) == [(0, 1, 1, 0, 570, None)]


@needs_c
@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 3), st.binary(min_size=0, max_size=40)), min_size=1, max_size=12),
       st.integers(0, 2**64 - 1), st.booleans())
def test_c_and_python_agree_on_arbitrary_opened_payloads(items, largest, any_recv):
    """Whatever an authenticated peer puts in its packets: the same runs, or the same refusal."""
    plain = 18 + 48 + 8
    payloads, pns = [], []
    off = int.from_bytes(items[0][1][:8].ljust(8, b"\0"), "big") >> items[0][0] * 20
    for k, (kind, body) in enumerate(items):
        if kind >= 2:  # a frame that fills the packet (or, with a byte of body, nearly), following on or not
            n = 48 - (len(P.encode_stream(off, b"x")) - 1)  # (a one-byte length)
            frame = P.encode_stream(off, body[:1] * n)
            off += n
            payload = frame[: 48 - len(body[:1])] + body[:1] if kind == 3 else frame
        else:
            payload = (bytes([P.F_STREAM]) * kind + body)[:48]
        payloads.append(payload)
        pns.append((largest + k - (kind == 1)) % 2**64)
    view, offsets = _opened(payloads, pns, plain)
    assert stream_impl("c")[1](view, offsets, plain, any_recv, largest) == \
        stream_impl("py")[1](view, offsets, plain, any_recv, largest)


@pytest.mark.parametrize("name", IMPLS)
def test_a_stream_run_never_wraps_past_the_largest_packet_number(name):
    # packet 2^64 - 1 then packet 0, their frames following on: not one run (the C loop's
    # pn + 1 wrapped to 0 and joined them, so the session recorded packet number 2^64)
    plain = 600
    room = plain - P.HEADER_SIZE - P.TRAILER_SIZE
    head = len(P.encode_stream(200, bytes(200))) - 200  # (2-byte offset and length varints)
    a, b = P.encode_stream(200, bytes(room - head)), P.encode_stream(200 + room - head, bytes(room - head))
    assert len(a) == len(b) == room
    view, offsets = _opened([a, b], [2**64 - 1, 0], plain)
    runs = stream_impl(name)[1](view, offsets, plain, False, 0)
    assert [(r[1], r[2]) for r in runs] == [(1, 2**64 - 1), (1, 0)]
