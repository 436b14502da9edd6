"""The per-datagram loops of bulk transfer: build a burst of CHUNK packets, scan a
received burst of them.  Pure functions over buffers (sans I/O).

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

from .packets import CHUNK_HEADER, DATA, F_CHUNK, HEADER, TRAILER_SIZE, VERSION

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


try:
    from . import _burst
except ImportError:  # no compiler at install time: the Python loops serve
    _burst = None
if _burst is not None and getattr(_burst, "VERSION", 1) < 2:
    _burst = None  # built from an older _burst.c (no hasher None): the Python loops until it is rebuilt

build_chunk_burst, scan_chunk_burst, gather = py_build_chunk_burst, py_scan_chunk_burst, py_gather
ACCELERATED = False


def use(accelerated: bool) -> bool:
    """Choose the C loops (when built) or the Python ones; returns whether C is in use.
    (The driver honours FTX_PURE_PYTHON=1 through this; tests run both.)"""
    global build_chunk_burst, scan_chunk_burst, gather, ACCELERATED
    if accelerated and _burst is not None:
        build_chunk_burst, scan_chunk_burst, gather = _burst.build_chunk_burst, _burst.scan_chunk_burst, _burst.gather
        ACCELERATED = True
    else:
        build_chunk_burst, scan_chunk_burst, gather = py_build_chunk_burst, py_scan_chunk_burst, py_gather
        ACCELERATED = False
    return ACCELERATED


use(True)
