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
