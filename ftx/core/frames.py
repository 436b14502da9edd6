"""Binary frames over a byte stream, and an incremental zero-copy decoder.

Frame layout (protocol.md, "Frames"), all integers big-endian::

    0      1      2         4              8                       16
    +------+------+---------+--------------+------------------------+---------+
    | type | flags| reserved| payload len  | checksum (XXH3-64)     | payload |
    +------+------+---------+--------------+------------------------+---------+

The checksum covers the payload -- for DATA frames only the 24-byte data
header, whose chunk checksum in turn covers the chunk bytes -- seeded with the
first eight header bytes, so type, flags and length are covered too.

``FrameDecoder`` follows asyncio's BufferedProtocol: the driver asks for a
buffer (``get_buffer``), fills it (e.g. ``socket.recv_into``) and reports how
much it wrote (``buffer_updated``).  Large payloads land directly in their final
place, so chunk bytes are copied once from the kernel and never again.
Payloads handed out are memoryviews into that buffer, valid until the next
``get_buffer`` call (``Connection.get_buffer`` gives events still queued their own
copies before it asks for one).  ``feed(bytes)`` is the convenience, copying entry point.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from typing import NamedTuple

from ..errors import ChecksumMismatch, FrameTooLarge, RemoteProtocolError
from .checksum import chunk_checksum, frame_checksum

HEADER = struct.Struct(">BBHIQ")
HEADER_SIZE = HEADER.size  # 16
DATA_HEADER = struct.Struct(">IIQQ")  # file_id, reserved, chunk index, chunk checksum
DATA_HEADER_SIZE = DATA_HEADER.size  # 24
HANDSHAKE_MAX_PAYLOAD = 64 * 1024  # limit before HELLO negotiates a larger one
ABSOLUTE_MAX_PAYLOAD = 64 * 1024 * 1024
READAHEAD = 64 * 1024


class FrameType(enum.IntEnum):
    HELLO = 0x01
    OFFER = 0x02
    DECISION = 0x03
    DATA = 0x04
    FILE_END = 0x05
    RESULT = 0x06
    SMALL_FILE = 0x07
    SKIP = 0x08
    RESTART = 0x09
    ABORT_FILE = 0x0A
    DONE = 0x0B
    ERROR = 0x0C
    PING = 0x0D
    PONG = 0x0E
    # 0x10-0x1F are reserved for the authentication handshake (protocol.md).


FRAME_TYPES = frozenset(int(t) for t in FrameType)
FLAG_SEALED = 0x01  # reserved: payload is AEAD ciphertext + tag (future version)
KNOWN_FLAGS = 0x00  # flags a version-1 peer may set


class Frame(NamedTuple):
    type: FrameType
    flags: int
    payload: memoryview | bytes


def _header8(ftype: int, flags: int, length: int) -> int:
    return (ftype << 56) | (flags << 48) | length


def encode_frame(ftype: FrameType, payload: bytes = b"", flags: int = 0) -> bytes:
    length = len(payload)
    if length > ABSOLUTE_MAX_PAYLOAD:
        raise ValueError("payload too large")
    if ftype == FrameType.DATA:
        raise ValueError("use encode_data_header for DATA frames")
    csum = frame_checksum(_header8(ftype, flags, length), payload)
    return HEADER.pack(ftype, flags, 0, length, csum) + payload


def encode_data_header(file_id: int, index: int, checksum: int, data_len: int) -> bytes:
    """Frame header plus data header of a DATA frame; the chunk bytes follow it."""
    sub = DATA_HEADER.pack(file_id, 0, index, checksum)
    length = DATA_HEADER_SIZE + data_len
    csum = frame_checksum(_header8(FrameType.DATA, 0, length), sub)
    return HEADER.pack(FrameType.DATA, 0, 0, length, csum) + sub


def encode_data_frame(file_id: int, index: int, data) -> bytes:
    return encode_data_header(file_id, index, chunk_checksum(data), len(data)) + bytes(data)


def parse_data_payload(payload) -> tuple[int, int, int, memoryview]:
    file_id, _reserved, index, checksum = DATA_HEADER.unpack_from(payload, 0)
    return file_id, index, checksum, memoryview(payload)[DATA_HEADER_SIZE:]


class FrameDecoder:
    """Incremental decoder: bytes in any split in, checked frames out."""

    def __init__(self, max_payload: int = HANDSHAKE_MAX_PAYLOAD, copy_payloads: bool = False):
        self._max_payload = 0
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = 0  # first byte not yet consumed
        self._end = 0  # first byte not yet filled
        self._frame_len = -1  # total length of the frame at _start once its header is read
        self._frames: deque[Frame] = deque()
        self.copy_payloads = copy_payloads
        self.set_max_payload(max_payload)

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def buffer(self) -> bytearray:
        """The object payloads handed out are views of (``memoryview.obj``)."""
        return self._buf

    def set_max_payload(self, max_payload: int) -> None:
        if not 0 < max_payload <= ABSOLUTE_MAX_PAYLOAD:
            raise ValueError("max_payload out of range")
        self._max_payload = max_payload
        capacity = max(2 * (max_payload + HEADER_SIZE), 4 * READAHEAD)
        if capacity > len(self._buf):
            pending = self._view[self._start : self._end]
            new = bytearray(capacity)
            new[: len(pending)] = pending
            self._view.release()
            self._buf, self._view = new, memoryview(new)
            self._end -= self._start
            self._start = 0

    # -- BufferedProtocol-style input --------------------------------------
    def get_buffer(self) -> memoryview:
        """A writable region to fill; invalidates payloads handed out before."""
        start, end = self._start, self._end
        target = start + (self._frame_len if self._frame_len >= 0 else HEADER_SIZE)
        if target - end >= READAHEAD:
            if target > len(self._buf):
                self._compact()  # the frame now starts at 0
                return self._view[self._end : target - start]
            return self._view[end:target]
        if len(self._buf) - end < READAHEAD:
            self._compact()
            end = self._end
        return self._view[end : end + READAHEAD]

    def _compact(self) -> None:
        start, end = self._start, self._end
        if start:
            self._buf[: end - start] = self._view[start:end]
            self._start, self._end = 0, end - start

    def buffer_updated(self, nbytes: int) -> None:
        """Frames are parsed lazily by ``next_frame``, so that a HELLO can raise the
        size limit before the frame behind it, read in the same call, is checked."""
        self._end += nbytes

    def feed(self, data) -> None:
        """Copying convenience: accept any bytes-like object, whole or in part.  Frames it
        queues own their payloads (it reuses its buffer while they wait)."""
        data = memoryview(data)
        while data:
            buf = self.get_buffer()
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            data = data[n:]
            self.buffer_updated(n)
            while (frame := self._parse_one()) is not None:  # keep room: parse as we go
                # the next get_buffer() may move or overwrite the bytes under a queued view
                self._frames.append(frame if self.copy_payloads else frame._replace(payload=bytes(frame.payload)))

    def next_frame(self) -> Frame | None:
        if self._frames:
            return self._frames.popleft()
        return self._parse_one()

    def receive_eof(self) -> None:
        if self._end != self._start:
            raise RemoteProtocolError(
                f"connection closed in the middle of a frame ({self._end - self._start} bytes pending)"
            )

    @property
    def pending_bytes(self) -> int:
        return self._end - self._start

    # -- parsing -----------------------------------------------------------
    def _parse_one(self) -> Frame | None:
        view = self._view
        start, avail = self._start, self._end - self._start
        if self._frame_len < 0:
            if avail < HEADER_SIZE:
                return None
            ftype, flags, reserved, length, _ = HEADER.unpack_from(view, start)
            if length > self._max_payload:
                raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {self._max_payload}")
            self._frame_len = HEADER_SIZE + length
        if avail < self._frame_len:
            return None
        ftype, flags, reserved, length, csum = HEADER.unpack_from(view, start)
        payload = view[start + HEADER_SIZE : start + self._frame_len]
        self._check(ftype, flags, reserved, length, csum, payload)
        if self.copy_payloads:
            payload = bytes(payload)
        self._start += self._frame_len
        self._frame_len = -1
        if self._start == self._end:
            self._start = self._end = 0
        return Frame(FrameType(ftype), flags, payload)

    @staticmethod
    def _check(ftype, flags, reserved, length, csum, payload) -> None:
        header8 = _header8(ftype, flags, length) | (reserved << 32)
        if ftype == FrameType.DATA:
            if length < DATA_HEADER_SIZE:
                raise RemoteProtocolError("DATA frame shorter than its header")
            if frame_checksum(header8, payload[:DATA_HEADER_SIZE]) != csum:
                raise ChecksumMismatch("DATA frame header checksum mismatch")
            expected = DATA_HEADER.unpack_from(payload, 0)[3]
            if chunk_checksum(payload[DATA_HEADER_SIZE:]) != expected:
                raise ChecksumMismatch("chunk checksum mismatch")
        elif frame_checksum(header8, payload) != csum:
            raise ChecksumMismatch(f"frame checksum mismatch (type 0x{ftype:02x})")
        if ftype not in FRAME_TYPES:
            raise RemoteProtocolError(f"unknown frame type 0x{ftype:02x}")
        if reserved:
            raise RemoteProtocolError("reserved header bits set")
        if flags & ~KNOWN_FLAGS:
            raise RemoteProtocolError(f"unsupported frame flags 0x{flags:02x}")
