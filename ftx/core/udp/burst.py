"""The per-datagram loops of bulk transfer: build a burst of CHUNK packets, scan a
received burst of them; the same for full STREAM packets (a tree of small files).  Pure functions over buffers (sans I/O).

A *burst* is what one UDP GSO send carries and one UDP GRO read returns:
datagrams of ``seg`` bytes laid end to end.  In bulk transfer nearly every
datagram is one full CHUNK packet (protocol.md 14.6), so these two loops are
where the CPU goes.  Written in Python, each datagram costs about 0.7 us on each
side whatever the style (fused loop, ``struct.iter_unpack`` over the whole
burst, ``map`` over pre-built slices were all measured: object creation
dominates), which caps a transfer with 1452-byte datagrams near 550 MB/s on a
2-core VM.  ``_burst.c`` does the same loops in C when it could be built at
install time; these Python versions are the reference, used otherwise (and
with ``FTX_PURE_PYTHON=1``, see ``use``).  The tests run both and compare them.
"""

from __future__ import annotations

import itertools
import struct
from typing import Callable

from ..ranges import write_varint
from .packets import CHUNK_HEADER, DATA, F_CHUNK, F_STREAM, HEADER, HEADER_SIZE, MAX_STREAM_OFFSET, TRAILER_SIZE, VERSION

BULK_HEADER = struct.Struct(HEADER.format + CHUNK_HEADER.format.lstrip(">"))  # packet + CHUNK header
BULK_HEADER_SIZE = BULK_HEADER.size  # 49
_pack_q = struct.Struct(">Q").pack_into
_FULL_FORMATS: dict[int, struct.Struct] = {}  # datagram size -> layout of a full CHUNK packet


def burst_size(nbytes: int, mss: int) -> int:
    """Bytes of the burst that carries ``nbytes`` of chunk data in datagrams of ``mss``."""
    room = mss - BULK_HEADER_SIZE - TRAILER_SIZE
    n = -(-nbytes // room)
    return (n - 1) * mss + BULK_HEADER_SIZE + nbytes - (n - 1) * room + TRAILER_SIZE


def py_build_chunk_burst(out, mss: int, dcid: int, pn: int, fid: int, index: int, clen: int, csum: int,
                         data, off: int, nbytes: int, hasher: Callable) -> None:
    """Fill ``out`` (``burst_size(nbytes, mss)`` bytes) with CHUNK packets ``pn, pn + 1, ...``
    carrying ``data[off:off + nbytes]`` (bytes ``off...`` of chunk ``index`` of file ``fid``),
    each but the last full, each sealed with ``hasher`` (XXH3-64) -- or with a zero trailer
    if ``hasher`` is None (a burst sealed next, whose trailers are dropped unread)."""
    room = mss - BULK_HEADER_SIZE - TRAILER_SIZE
    if room <= 0 or nbytes <= 0 or off < 0 or off + nbytes > len(data) or off + nbytes > clen:
        raise ValueError("build_chunk_burst: arguments out of range")
    n = -(-nbytes // room)
    last = nbytes - (n - 1) * room
    size = len(out)
    if size != (n - 1) * mss + BULK_HEADER_SIZE + last + TRAILER_SIZE:
        raise ValueError("build_chunk_burst: buffer size does not match")
    view = memoryview(out)
    src = memoryview(data)
    pack = BULK_HEADER.pack_into
    pos, o = 0, off
    for i in range(n - 1):
        pack(view, pos, DATA, VERSION, dcid, pn + i, F_CHUNK, fid, index, clen, o, csum, room)
        view[pos + BULK_HEADER_SIZE : pos + BULK_HEADER_SIZE + room] = src[o : o + room]
        pos += mss
        o += room
    pack(view, pos, DATA, VERSION, dcid, pn + n - 1, F_CHUNK, fid, index, clen, o, csum, last)
    view[pos + BULK_HEADER_SIZE : pos + BULK_HEADER_SIZE + last] = src[o : o + last]
    if hasher is None:
        return  # the trailers stay zero
    full = range(0, (n - 1) * mss, mss)
    for p, digest in zip(full, map(hasher, [view[p : p + mss - TRAILER_SIZE] for p in full])):
        _pack_q(view, p + mss - TRAILER_SIZE, digest)
    _pack_q(view, size - TRAILER_SIZE, hasher(view[pos : size - TRAILER_SIZE]))


def py_scan_chunk_burst(view, seg: int, cid: int, hasher: Callable) -> tuple[list, list, int]:
    """Check a burst of ``seg``-byte datagrams (``len(view)`` a multiple of ``seg``) as full
    CHUNK packets for connection ``cid``.

    Returns ``(runs, others, garbage)``: ``runs`` lists ``(offset of the first datagram,
    count, first packet number, file id, chunk index, chunk length, chunk checksum,
    first offset in the chunk)`` for each longest stretch of valid full CHUNK packets whose
    packet numbers follow one another and whose data follows on in one chunk; ``others``
    the offsets of datagrams with a valid checksum that are anything else; ``garbage`` the
    number whose checksum failed.  ``hasher`` None: the checksum of every datagram is 0
    (datagrams opened by ``secure/datagrams.py open_burst``: the AEAD checked them, and
    one that did not open has a trailer of ones)."""
    room = seg - BULK_HEADER_SIZE - TRAILER_SIZE
    if room <= 0 or len(view) % seg:
        raise ValueError("scan_chunk_burst: not whole segments of a CHUNK packet's size")
    fmt = _FULL_FORMATS.get(seg)
    if fmt is None:
        fmt = _FULL_FORMATS[seg] = struct.Struct(BULK_HEADER.format + f"{room}xQ")
    view = memoryview(view)
    if hasher is None:
        sums = itertools.repeat(0)
    else:
        sums = map(hasher, [view[o : o + seg - TRAILER_SIZE] for o in range(0, len(view), seg)])
    runs: list = []
    others: list = []
    garbage = 0
    run = None  # [first, count, pn, fid, index, clen, csum, off]
    at = -seg
    for (ptype, version, dcid, pn, ftype, fid, index, clen, coff, csum, dlen, trailer), check in \
            zip(fmt.iter_unpack(view), sums):
        at += seg
        if check != trailer:
            garbage += 1
        elif ptype != DATA or version != VERSION or dcid != cid or ftype != F_CHUNK or dlen != room:
            others.append(at)
        elif (run is not None and pn == run[2] + run[1] and fid == run[3] and index == run[4]
              and clen == run[5] and csum == run[6] and coff == run[7] + run[1] * room):
            run[1] += 1
            continue
        else:
            if run is not None:
                runs.append(tuple(run))
            run = [at, 1, pn, fid, index, clen, csum, coff]
            continue
        if run is not None:
            runs.append(tuple(run))
            run = None
    if run is not None:
        runs.append(tuple(run))
    return runs, others, garbage


def py_gather(view, seg: int, first: int, count: int, dest, dest_off: int) -> None:
    """Copy the data of ``count`` full CHUNK packets, starting with the one at ``first``,
    to ``dest[dest_off:]``, one after another."""
    room = seg - BULK_HEADER_SIZE - TRAILER_SIZE
    if (room <= 0 or first < 0 or count < 0 or first + count * seg > len(view) or dest_off < 0
            or dest_off + count * room > len(dest)):
        raise ValueError("gather: arguments out of range")
    src = memoryview(view)
    dst = memoryview(dest)
    at = first + BULK_HEADER_SIZE
    for o in range(dest_off, dest_off + count * room, room):
        dst[o : o + room] = src[at : at + room]
        at += seg


def py_build_stream_burst(out, seg: int, dcid: int, pn: int, first: int, step: int, n: int, data, rel: int,
                          hasher: Callable | None) -> None:
    """Fill ``out`` (``n * seg`` bytes) with DATA packets ``pn, pn + 1, ...`` of ``seg`` bytes,
    each one STREAM frame that fills it: packet ``k`` carries stream bytes ``first + k * step``
    on (``step`` of them), read from ``data[rel + k * step:]``; the trailer is ``hasher``'s
    XXH3-64 of the rest, or 0 with ``hasher`` None (a burst sealed next).  The offset's
    varint must have one size for the whole burst (``seg`` says how big the frame is)."""
    head = bytearray((F_STREAM,))
    write_varint(head, first)
    vo = len(head) - 1
    length = bytearray()
    write_varint(length, step)
    last = bytearray()
    write_varint(last, first + (n - 1) * step)
    if (n <= 0 or step <= 0 or rel < 0 or first > 1 << 62 or rel + n * step > len(data) or len(last) != vo
            or seg != HEADER_SIZE + 1 + vo + len(length) + step + TRAILER_SIZE or len(out) != n * seg):
        raise ValueError("build_stream_burst: arguments out of range")
    dst, src = memoryview(out), memoryview(data)
    for k in range(n):
        p = k * seg
        HEADER.pack_into(out, p, DATA, VERSION, dcid, pn + k)
        head = bytearray((F_STREAM,))
        write_varint(head, first + k * step)
        head += length
        d = p + HEADER_SIZE + len(head)
        dst[p + HEADER_SIZE : d] = head
        dst[d : d + step] = src[rel + k * step : rel + (k + 1) * step]
        _pack_q(out, d + step, 0 if hasher is None else hasher(dst[p : d + step]))


def py_stream_frame(payload) -> tuple[int, int, int] | None:
    """``(stream offset, data start, length)`` if ``payload`` is one STREAM frame and nothing
    else (the form of a full STREAM packet), else None."""
    if len(payload) <= 4 or payload[0] != F_STREAM:
        return None
    try:
        soff = shift = 0
        p = 1
        while (b := payload[p]) & 0x80 and p < 10:
            soff |= (b & 0x7F) << shift
            shift += 7
            p += 1
        soff |= b << shift
        p += 1
        length = payload[p]
        if length & 0x80:
            length = (length & 0x7F) | payload[p + 1] << 7
            p += 1
        p += 1
    except IndexError:  # truncated
        return None
    if b & 0x80 or length & 0x4000 or p + length != len(payload) or not length or soff + length > MAX_STREAM_OFFSET:
        return None
    return soff, p, length


def py_scan_stream_runs(view, offsets: list, plain: int, any_recv: bool, largest: int) -> list:
    """Sort opened datagrams of ``plain`` bytes at ``offsets`` of ``view`` into runs of full
    STREAM packets: each item ``(i, count, first packet number, start, end, data)``.  A run is
    the packets ``offsets[i:i + count]``, one STREAM frame each, numbered on from each other
    and above ``largest`` (if ``any_recv``), their frames following on from stream offset
    ``start`` to ``end``; ``data`` is their bytes joined (None for a run of one).  Any other
    packet is an item of its own with ``start`` and ``end`` -1 and ``data`` None."""
    view = memoryview(view)
    out: list = []
    i, count = 0, len(offsets)
    while i < count:
        at = offsets[i]
        pn = int.from_bytes(view[at + 10 : at + HEADER_SIZE], "big")
        f = py_stream_frame(view[at + HEADER_SIZE : at + plain - TRAILER_SIZE])
        if f is None or (any_recv and pn <= largest):
            out.append((i, 1, pn, -1, -1, None))
            i += 1
            continue
        soff, _, length = f
        pieces = [(at, f)]
        end = soff + length
        j = i + 1
        while j < count:
            a2 = offsets[j]
            f2 = py_stream_frame(view[a2 + HEADER_SIZE : a2 + plain - TRAILER_SIZE])
            if int.from_bytes(view[a2 + 10 : a2 + HEADER_SIZE], "big") != pn + j - i or f2 is None or f2[0] != end:
                break
            pieces.append((a2, f2))
            end += f2[2]
            j += 1
        data = None
        if j - i > 1:
            data = b"".join([view[a + HEADER_SIZE + p : a + HEADER_SIZE + p + n] for a, (_, p, n) in pieces])
        out.append((i, j - i, pn, soff, end, data))
        i = j
    return out


try:
    from . import _burst
except ImportError:  # no compiler at install time: the Python loops serve
    _burst = None
if _burst is not None and getattr(_burst, "VERSION", 1) < 2:
    _burst = None  # built from an older _burst.c (no hasher None): the Python loops until it is rebuilt

build_chunk_burst, scan_chunk_burst, gather = py_build_chunk_burst, py_scan_chunk_burst, py_gather
build_stream_burst, scan_stream_runs = py_build_stream_burst, py_scan_stream_runs
ACCELERATED = False


def use(accelerated: bool) -> bool:
    """Choose the C loops (when built) or the Python ones; returns whether C is in use.
    (The driver honours FTX_PURE_PYTHON=1 through this; tests run both.)"""
    global build_chunk_burst, scan_chunk_burst, gather, build_stream_burst, scan_stream_runs, ACCELERATED
    build_stream_burst, scan_stream_runs = py_build_stream_burst, py_scan_stream_runs
    if accelerated and _burst is not None:
        build_chunk_burst, scan_chunk_burst, gather = _burst.build_chunk_burst, _burst.scan_chunk_burst, _burst.gather
        if getattr(_burst, "VERSION", 2) >= 3:  # a build from before the STREAM loops keeps the Python ones
            build_stream_burst, scan_stream_runs = _burst.build_stream_burst, _burst.scan_stream_runs
        ACCELERATED = True
    else:
        build_chunk_burst, scan_chunk_burst, gather = py_build_chunk_burst, py_scan_chunk_burst, py_gather
        ACCELERATED = False
    return ACCELERATED


use(True)
