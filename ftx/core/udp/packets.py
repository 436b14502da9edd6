"""Datagram layout of the reliable UDP transport (protocol.md, "UDP transport").

Every datagram is one packet::

    0      1        2                10               18            n-8      n
    +------+--------+----------------+----------------+-------------+--------+
    | type | version| dest conn ID   | packet number  | payload     | XXH3-64|
    +------+--------+----------------+----------------+-------------+--------+

The trailing checksum is XXH3-64 (seed 0) over every byte before it.  The
payload of an INITIAL starts with the source connection ID and a token; the
payload of DATA packets (and the rest of an INITIAL) is a sequence of frames.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash

from ...errors import RemoteProtocolError
from ..messages import wire_text
from ..ranges import RangeSet, read_varint, write_varint

VERSION = 1
HEADER = struct.Struct(">BBQQ")
HEADER_SIZE = HEADER.size  # 18
TRAILER_SIZE = 8
OVERHEAD = HEADER_SIZE + TRAILER_SIZE
MIN_INITIAL_SIZE = 1200  # INITIALs are padded to this, so a RETRY is never an amplifier
DEFAULT_MAX_DATAGRAM = 1452  # 1500-byte path: minus 40 (IPv6) and 8 (UDP)
MIN_MAX_DATAGRAM = 1200
MAX_MAX_DATAGRAM = 65507 - 1  # leaves room under the IPv4 UDP limit

# packet types
INITIAL = 0x01
RETRY = 0x02
DATA = 0x03
PACKET_TYPES = (INITIAL, RETRY, DATA)

# frame types
F_PADDING = 0x00
F_PING = 0x01
F_ACK = 0x02
F_STREAM = 0x03
F_CHUNK = 0x04
F_MAX_DATA = 0x05
F_CLOSE = 0x06

MAX_CHUNK_LEN = 16 * 1024 * 1024  # = manifest.MAX_CHUNK_SIZE
MAX_STREAM_OFFSET = 2**62 - 1  # as QUIC: stream offsets stay far from any integer limit

# type, file_id, chunk index, chunk length, offset in chunk, chunk checksum, data length
CHUNK_HEADER = struct.Struct(">BIQIIQH")
CHUNK_HEADER_SIZE = CHUNK_HEADER.size  # 31
INITIAL_FIELDS = struct.Struct(">QH")  # source connection ID, token length


def seal(buf: bytearray | memoryview, end: int) -> int:
    """Write the checksum after ``buf[:end]``; return the datagram length."""
    struct.pack_into(">Q", buf, end, xxhash.xxh3_64_intdigest(memoryview(buf)[:end]))
    return end + TRAILER_SIZE


def segments(data, seg: int) -> list:
    """The datagrams of a burst: ``seg`` bytes each, laid end to end, the last maybe shorter."""
    if len(data) <= seg:
        return [data]
    view = memoryview(data)
    return [view[off : off + seg] for off in range(0, len(data), seg)]


def build(ptype: int, dcid: int, pn: int, payload: bytes) -> bytes:
    out = bytearray(HEADER.pack(ptype, VERSION, dcid, pn) + payload + bytes(TRAILER_SIZE))
    seal(out, len(out) - TRAILER_SIZE)
    return bytes(out)


class Packet(NamedTuple):
    ptype: int
    dcid: int
    pn: int
    payload: memoryview


def parse(datagram) -> Packet:
    """Check length, version and checksum; raise RemoteProtocolError on anything off."""
    view = memoryview(datagram)
    if len(view) < OVERHEAD:
        raise RemoteProtocolError("datagram too short")
    end = len(view) - TRAILER_SIZE
    (csum,) = struct.unpack_from(">Q", view, end)
    if xxhash.xxh3_64_intdigest(view[:end]) != csum:
        raise RemoteProtocolError("datagram checksum mismatch")
    ptype, version, dcid, pn = HEADER.unpack_from(view, 0)
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported version {version}")
    if ptype not in PACKET_TYPES:
        raise RemoteProtocolError(f"unknown packet type {ptype}")
    return Packet(ptype, dcid, pn, view[HEADER_SIZE:end])


def initial_payload(scid: int, token: bytes) -> bytes:
    return INITIAL_FIELDS.pack(scid, len(token)) + token


def parse_initial(payload: memoryview) -> tuple[int, bytes, memoryview]:
    if len(payload) < INITIAL_FIELDS.size:
        raise RemoteProtocolError("INITIAL too short")
    scid, tlen = INITIAL_FIELDS.unpack_from(payload, 0)
    end = INITIAL_FIELDS.size + tlen
    if len(payload) < end:
        raise RemoteProtocolError("INITIAL token truncated")
    return scid, bytes(payload[INITIAL_FIELDS.size : end]), payload[end:]


# -- frames ----------------------------------------------------------------------
def encode_ack(acked: RangeSet, ack_delay_us: int, max_ranges: int = 64) -> bytes:
    """ACK: largest, delay (us), count of extra ranges, first range length - 1, then (gap - 1, length - 1).

    As in QUIC (RFC 9000 19.3) the ranges go downward from the largest packet number.
    """
    ranges = list(acked)[::-1][:max_ranges]
    out = bytearray([F_ACK])
    largest = ranges[0][1] - 1
    write_varint(out, largest)
    write_varint(out, ack_delay_us)
    write_varint(out, len(ranges) - 1)
    write_varint(out, ranges[0][1] - ranges[0][0] - 1)
    low = ranges[0][0]
    for start, stop in ranges[1:]:
        write_varint(out, low - stop - 1)  # unacknowledged packets between the ranges, minus one
        write_varint(out, stop - start - 1)
        low = start
    return bytes(out)


def decode_ack(view, off: int) -> tuple[RangeSet, int, int]:
    """Parse an ACK body at ``off``; return (acked ranges, ack delay us, offset after)."""
    largest, off = read_varint(view, off)
    delay, off = read_varint(view, off)
    count, off = read_varint(view, off)
    first, off = read_varint(view, off)
    if count > (len(view) - off) // 2:  # every pair takes at least two bytes
        raise RemoteProtocolError(f"ACK range count {count} exceeds the frame")
    if first > largest:
        raise RemoteProtocolError("ACK range below zero")
    high = largest + 1
    low = high - first - 1
    ranges = [(low, high)]  # descending; built into a RangeSet at the end (linear time)
    for _ in range(count):
        gap, off = read_varint(view, off)
        length, off = read_varint(view, off)
        high = low - gap - 1
        low = high - length - 1
        if low < 0:
            raise RemoteProtocolError("ACK range below zero")
        ranges.append((low, high))
    return RangeSet(reversed(ranges)), delay, off


def encode_stream(offset: int, data) -> bytes:
    out = bytearray([F_STREAM])
    write_varint(out, offset)
    write_varint(out, len(data))
    return bytes(out) + bytes(data)


def encode_varint_frame(ftype: int, value: int) -> bytes:
    out = bytearray([ftype])
    write_varint(out, value)
    return bytes(out)


def encode_close(code: int, reason: str) -> bytes:
    raw = wire_text(reason, 200)
    return struct.pack(">BHH", F_CLOSE, code, len(raw)) + raw


class ChunkFrame(NamedTuple):
    file_id: int
    index: int
    chunk_len: int
    offset: int
    checksum: int
    data: memoryview


class StreamFrame(NamedTuple):
    offset: int
    data: memoryview


class AckFrame(NamedTuple):
    acked: RangeSet
    delay_us: int


class CloseFrame(NamedTuple):
    code: int
    reason: str


class MaxDataFrame(NamedTuple):
    value: int


PING = object()


def parse_frames(payload: memoryview) -> list:
    """All frames of a packet payload, in order (PADDING dropped)."""
    out: list = []
    off, n = 0, len(payload)
    while off < n:
        ftype = payload[off]
        if ftype == F_PADDING:
            off += 1
        elif ftype == F_CHUNK:
            if n - off < CHUNK_HEADER_SIZE:
                raise RemoteProtocolError("CHUNK frame truncated")
            _, fid, index, clen, coff, csum, length = CHUNK_HEADER.unpack_from(payload, off)
            off += CHUNK_HEADER_SIZE
            if n - off < length:
                raise RemoteProtocolError("CHUNK data truncated")
            if coff + length > clen:
                raise RemoteProtocolError("CHUNK data beyond the end of its chunk")
            if not 0 < clen <= MAX_CHUNK_LEN:
                raise RemoteProtocolError(f"CHUNK chunk length {clen} out of range")
            out.append(ChunkFrame(fid, index, clen, coff, csum, payload[off : off + length]))
            off += length
        elif ftype == F_ACK:
            acked, delay, off = decode_ack(payload, off + 1)
            out.append(AckFrame(acked, delay))
        elif ftype == F_STREAM:
            soff, off = read_varint(payload, off + 1)
            length, off = read_varint(payload, off)
            if n - off < length:
                raise RemoteProtocolError("STREAM data truncated")
            if not length:  # never sent (a STREAM frame carries at least one byte): a flood of
                raise RemoteProtocolError("empty STREAM frame")  # them would cost CPU for nothing
            if soff + length > MAX_STREAM_OFFSET:
                raise RemoteProtocolError("STREAM data beyond stream offset 2**62 - 1")
            out.append(StreamFrame(soff, payload[off : off + length]))
            off += length
        elif ftype == F_PING:
            out.append(PING)
            off += 1
        elif ftype == F_MAX_DATA:
            value, off = read_varint(payload, off + 1)
            out.append(MaxDataFrame(value))
        elif ftype == F_CLOSE:
            if n - off < 5:
                raise RemoteProtocolError("CLOSE truncated")
            _, code, rlen = struct.unpack_from(">BHH", payload, off)
            off += 5
            if n - off < rlen:
                raise RemoteProtocolError("CLOSE reason truncated")
            reason = bytes(payload[off : off + rlen]).decode("utf-8", "replace")
            off += rlen
            out.append(CloseFrame(code, reason))
        else:
            raise RemoteProtocolError(f"unknown frame type 0x{ftype:02x}")
    return out
