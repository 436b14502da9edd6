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

from ..errors import ChecksumMismatch, ErrorCode, FrameTooLarge, FtxError, RemoteProtocolError
from .checksum import chunk_checksum, frame_checksum
from xxhash import xxh3_64_intdigest as _xxh64  # (small_run: frame_checksum without its call)

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
    RECEIPT = 0x0F  # R->S, only to a sender that asked (HELLO flag RECEIPT)
    # 0x10-0x1F are reserved for the authentication handshake (protocol.md).
    CHECK_DIR = 0x20  # S->R, only to a receiver whose HELLO has QUICK_CHECK (protocol.md 5.11)
    DIR_STATE = 0x21  # R->S, the answer to CHECK_DIR
    RESULT_RUN = 0x22  # R->S, only to a sender whose HELLO has RESULT_RUN: files a..b are OK (protocol.md 5.13)


FRAME_TYPES = frozenset(int(t) for t in FrameType)
_FRAME_TYPE = {int(t): t for t in FrameType}  # a dict lookup: FrameType(n) costs an Enum call per frame
FLAG_SEALED = 0x01  # reserved: payload is AEAD ciphertext + tag (future version)
KNOWN_FLAGS = 0x00  # flags a version-1 peer may set
FILE_FRAMES = frozenset({int(FrameType.DATA), int(FrameType.SMALL_FILE)})  # frames that carry file bytes


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


class BufferBudget:
    """Bytes of frame buffers that all connections together may hold (``--max-memory``).

    Decoders ``take`` capacity before they grow and ``give`` it back when they
    shrink or close.  A receiver also charges what it keeps per unsettled item, and a
    small file's bytes from the moment they are decoded until its RESULT; those are
    taken with ``settling=True``: ``settling`` counts the bytes that storage work
    already under way will give back without more input, so that a connection the
    budget refuses may wait for them (``refusal``: ``BufferWait``) instead of failing.
    Taken on the event loop's thread; given back from worker threads too (a storage
    worker settles files): a give is queued (a deque's append is atomic) and counted
    at the next look at the figures, on the loop's thread.

    ``host_share``: what the connections of one host may hold together (default: all of
    it).  A connection draws through ``for_host(key)`` (``key``: ``ftx.core.hosts.host_key``
    of its peer), so that one host's many connections, each holding a large frame that
    never ends, cannot take the buffers other hosts' senders need.
    """

    def __init__(self, limit: int, host_share: int | None = None) -> None:
        self.limit = limit
        self._used = 0
        self.peak = 0
        self._settling = 0
        self._given: deque = deque()  # (nbytes, settling, host key or None) given back, not counted yet
        self.host_share = limit if host_share is None else min(host_share, limit)
        self.hosts: dict[str, int] = {}  # host key -> bytes its connections hold (entries > 0 only)
        self.hosts_settling: dict[str, int] = {}  # host key -> of those, settling (entries > 0 only)

    def take(self, nbytes: int, settling: bool = False) -> bool:
        if self._given:
            self._count_given()
        if self._used + nbytes > self.limit:
            return False
        self._used += nbytes
        if settling:
            self._settling += nbytes
        if self._used > self.peak:
            self.peak = self._used
        return True

    def give(self, nbytes: int, settling: bool = False, host: str | None = None) -> None:
        self._given.append((nbytes, settling, host))

    def _count_given(self) -> None:
        given = self._given
        while given:
            nbytes, settling, host = given.popleft()
            if host is not None:
                nbytes = min(nbytes, self.hosts.get(host, 0))
                _less(self.hosts, host, nbytes)
                if settling:
                    _less(self.hosts_settling, host, nbytes)
            self._used = max(0, self._used - nbytes)
            if settling:
                self._settling = max(0, self._settling - nbytes)

    @property
    def used(self) -> int:
        if self._given:
            self._count_given()
        return self._used

    @property
    def settling(self) -> int:
        """Of ``used``: small files decoded and not settled yet (their state and bytes)."""
        if self._given:
            self._count_given()
        return self._settling

    @property
    def room(self) -> int:
        """Bytes that may still be taken."""
        return self.limit - self.used

    def refusal(self, what: str = "buffer memory") -> BufferLimit:
        """The error for a refused ``take``: ``BufferWait`` while small files being settled will
        give bytes back (the caller waits and tries again), else ``BufferLimit`` (the sender is told)."""
        kind = BufferWait if self.settling else BufferLimit
        return kind(f"receiver out of {what} ({self.used >> 20} of {self.limit >> 20} MiB in use; its "
                    "--max-memory); try again later")

    def for_host(self, key: str) -> "HostBudget":
        """The budget one connection of host ``key`` draws on: the total and the host's share."""
        return HostBudget(self, key)


def _less(counts: dict[str, int], key: str, nbytes: int) -> None:
    left = counts.get(key, 0) - nbytes
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class HostBudget:
    """One host's part of a ``BufferBudget``: what it takes counts in the total and in the
    host's own account, which may not pass ``host_share``.  One per connection (they are
    views: a host's connections share its account in the total's ``hosts``).  The same
    interface as ``BufferBudget``; gives may come from worker threads (queued by the total)."""

    def __init__(self, total: BufferBudget, key: str) -> None:
        self.total = total
        self.key = key

    @property
    def used(self) -> int:
        """Bytes this host's connections hold together."""
        self.total.used  # (counts what was given back)
        return self.total.hosts.get(self.key, 0)

    @property
    def limit(self) -> int:
        return self.total.host_share

    @property
    def peak(self) -> int:
        return self.total.peak

    @property
    def room(self) -> int:
        return min(self.total.host_share - self.used, self.total.room)

    @property
    def _share_binds(self) -> bool:
        """Whether the host's share, not the total, is what is spent."""
        return self.total.host_share - self.used < self.total.room

    @property
    def settling(self) -> int:
        """Bytes that storage work under way will give back to what binds: the host's own, or all."""
        if self._share_binds:
            return self.total.hosts_settling.get(self.key, 0)
        return self.total.settling

    def take(self, nbytes: int, settling: bool = False) -> bool:
        total = self.total
        if self.used + nbytes > total.host_share or not total.take(nbytes, settling):
            return False
        # read again: total.take counted gives queued since (a worker thread's), which a figure read
        # before it would overwrite
        total.hosts[self.key] = total.hosts.get(self.key, 0) + nbytes
        if settling:
            total.hosts_settling[self.key] = total.hosts_settling.get(self.key, 0) + nbytes
        return True

    def give(self, nbytes: int, settling: bool = False) -> None:
        self.total.give(nbytes, settling, self.key)

    def refusal(self, what: str = "buffer memory") -> BufferLimit:
        if not self._share_binds:  # the total is what is spent
            return self.total.refusal(what)
        kind = BufferWait if self.settling else BufferLimit
        return kind(f"receiver out of {what} for {self.key} ({self.used >> 20} of {self.limit >> 20} MiB in use by "
                    "that host's connections: one host's share of its --max-memory); try again later")


class BufferLimit(FtxError):
    """Growing a frame buffer would exceed the receiver's memory limit."""

    code = ErrorCode.BUSY


class BufferWait(BufferLimit):
    """Not now: the budget is spent, but small files being stored will give bytes back soon.
    Nothing was read or changed; the driver handles its events, waits a little, and reads again."""


class PauseInput(Exception):
    """(Raised by a receiver's frame handler before it changes anything) the budget cannot take
    this frame's item now: the frame goes back into the input buffer and decoding pauses."""


ITEM_COST = 2048  # bytes a receiver keeps per unsettled item besides its path (measured 1.5-2 KB)
MIN_BUFFER = 4096  # first allocation, for headers and small frames


class FrameDecoder:
    """Incremental decoder: bytes in any split in, checked frames out.

    The buffer grows with what actually arrives, never with what a header
    announces: a large frame is read straight into its final place, in regions
    that at most double the bytes already there.  ``trim`` (called by the
    driver when the peer is quiet) gives the memory back.
    """

    def __init__(self, max_payload: int = HANDSHAKE_MAX_PAYLOAD, copy_payloads: bool = False,
                 budget: BufferBudget | HostBudget | None = None):
        self._max_payload = 0
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = 0  # first byte not yet consumed
        self._end = 0  # first byte not yet filled
        self._frame_len = -1  # total length of the frame at _start once its header is read
        self._offered = 0  # length of the region get_buffer gave last
        self._ahead = 0  # room to offer next for headers and small frames (0: as usual)
        self._frames: deque[Frame] = deque()
        self._undo = -1  # where the SMALL_FILE frame last parsed began (unread)
        # bytes of DATA and SMALL_FILE frames that arrived, whole or in part (a frame still on its
        # way counts as its bytes come): the receiver's measure of file data moving (--stall-timeout)
        self.file_bytes = 0
        self._counted = 0  # bytes of the file frame at _start counted so far (0: none on its way)
        self.copy_payloads = copy_payloads
        # False once the input is sealed (protocol.md 20.2): the AEAD tag has proved the chunk bytes
        # and their checksum are the authenticated peer's, so DATA chunks are not hashed again here
        self.verify_chunks = True
        self.budget = budget
        self.set_max_payload(max_payload)

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def capacity(self) -> int:
        """Bytes of buffer held now."""
        return len(self._buf)

    @property
    def buffer(self) -> bytearray:
        """The object payloads handed out are views of (``memoryview.obj``)."""
        return self._buf

    def set_max_payload(self, max_payload: int) -> None:
        """The largest payload accepted from now on.  Allocates nothing."""
        if not 0 < max_payload <= ABSOLUTE_MAX_PAYLOAD:
            raise ValueError("max_payload out of range")
        self._max_payload = max_payload

    # -- BufferedProtocol-style input --------------------------------------
    def get_buffer(self, want: int = 0) -> memoryview:
        """A writable region to fill; invalidates payloads handed out before.

        ``want``: the driver has that many bytes ready to place at once (a sealed record of many
        small files' frames, up to 512 KiB): while headers and small frames are read, the region
        is made at least that large if the budget allows (else as usual), so the record is placed
        in one piece and its frames are decoded as one run.

        Raises ``BufferLimit`` when the buffer must grow and the budget is spent.
        """
        start, end = self._start, self._end
        pending = end - start
        need = self._frame_len if self._frame_len >= 0 else HEADER_SIZE
        if need - pending >= READAHEAD:  # a large frame: read into its final place
            if start + need > len(self._buf):
                self._compact()
                cap = len(self._buf)
                if cap < need and cap - pending < READAHEAD:  # full: grow by at most what arrived
                    self._resize(min(need, max(2 * cap, pending + READAHEAD)))
            start = self._start
            return self._view[self._end : start + min(need, len(self._buf) - start)]
        # headers and small frames: read ahead, up to READAHEAD at once (or the ``want`` ready)
        if want > READAHEAD:
            if len(self._buf) - end < want:
                self._compact()
                if len(self._buf) - self._end < want:
                    try:
                        self._resize(self._end + want)
                    except BufferLimit:
                        want = 0
            if want:
                end = self._end
                region = self._view[end : end + want]
                self._offered = len(region)
                return region
        want = max(need - pending, MIN_BUFFER)
        # the last read filled what it was offered and the frame ahead is small (or its header not
        # read yet): offer twice as much (a larger frame is read as before, to its end)
        ahead = self._ahead if need <= MIN_BUFFER else 0
        if len(self._buf) - end < max(want, ahead):
            self._compact()
            cap = len(self._buf)
            if cap - pending < want:
                self._resize(max(pending + want, min(max(2 * cap, MIN_BUFFER), pending + READAHEAD)))
            elif cap - pending < ahead:  # only to read more at once (a run of small frames): not if over budget
                try:
                    self._resize(pending + ahead)
                except BufferLimit:
                    pass
        end = self._end
        region = self._view[end : min(len(self._buf), end + READAHEAD)]
        self._offered = len(region)
        return region

    def trim(self) -> None:
        """Give back what the bytes held now do not need (the peer is quiet)."""
        pending = self._end - self._start
        keep = 0 if not pending else max(pending, MIN_BUFFER)
        if len(self._buf) > keep:
            self._resize(keep)

    def release(self) -> None:
        """The connection is over: free the buffer and return it to the budget."""
        self._start = self._end = 0
        self._frame_len = -1
        self._counted = 0
        self._resize(0)

    def _compact(self) -> None:
        start, end = self._start, self._end
        if start:
            self._buf[: end - start] = self._view[start:end]
            self._start, self._end = 0, end - start

    def _resize(self, capacity: int) -> None:
        """A new buffer of ``capacity`` bytes holding the pending bytes at its start.

        A new object, not a resize in place: payloads handed out may still
        reference the old one.
        """
        old = len(self._buf)
        if capacity > old and self.budget is not None and not self.budget.take(capacity - old):
            raise self.budget.refusal()
        pending = self._view[self._start : self._end]
        new = bytearray(capacity)
        new[: len(pending)] = pending
        self._end -= self._start
        self._start = 0
        pending.release()
        self._view.release()
        self._buf, self._view = new, memoryview(new)
        if capacity < old and self.budget is not None:
            self.budget.give(old - capacity)

    def buffer_updated(self, nbytes: int) -> None:
        """Frames are parsed lazily by ``next_frame``, so that a HELLO can raise the
        size limit before the frame behind it, read in the same call, is checked."""
        self._end += nbytes
        if self._counted:  # more of a file frame on its way
            add = min(nbytes, self._frame_len - self._counted)
            self._counted += add
            self.file_bytes += add
        # a read that filled the region offered (more was waiting, e.g. many small frames): the next
        # region of headers and small frames is twice as large, up to READAHEAD, so that a run of
        # small files comes in few reads (and is handled as one); a read that did not: back to normal
        self._ahead = min(2 * nbytes, READAHEAD) if nbytes >= self._offered > 0 else 0

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
            while (frame := self._parse_one(copy=True)) is not None:  # keep room: parse as we go
                self._frames.append(frame)  # copies: the next get_buffer may move the bytes

    def next_frame(self) -> Frame | None:
        if self._frames:
            self._undo = -1
            return self._frames.popleft()
        return self._parse_one()

    def unread(self, frame: Frame) -> None:
        """Put back the ``frame`` that ``next_frame`` just returned (nothing else since): it is the
        next frame again.  (The receiver cannot take its item into its budget yet.)"""
        if self._undo < 0:
            self._frames.appendleft(frame)
            return
        if self._end == 0:  # it was the last byte there: the offsets went back to 0, its bytes stay
            self._end = self._undo + HEADER_SIZE + len(frame.payload)
        if frame.type in FILE_FRAMES:  # counted again when it is decoded again (--stall-timeout)
            self.file_bytes -= HEADER_SIZE + len(frame.payload)
        self._start = self._undo
        self._undo = -1

    def receive_eof(self) -> None:
        if self._end != self._start:
            raise RemoteProtocolError(
                f"connection closed in the middle of a frame ({self._end - self._start} bytes pending)"
            )

    @property
    def pending_bytes(self) -> int:
        return self._end - self._start

    @property
    def in_file_frame(self) -> bool:
        """A DATA or SMALL_FILE frame has begun to arrive and is not complete yet."""
        return self._counted > 0

    # -- parsing -----------------------------------------------------------
    def _parse_one(self, copy: bool = False) -> Frame | None:
        """The next complete frame, or None.  Only DATA payloads are views into the buffer
        (the zero-copy path); control payloads are small and copied, so that an event
        that holds one (SMALL_FILE content) survives a later ``get_buffer``."""
        view = self._view
        start, avail = self._start, self._end - self._start
        if self._frame_len < 0:
            if avail < HEADER_SIZE:
                return None
            ftype, flags, reserved, length, csum = HEADER.unpack_from(view, start)
            if length > self._max_payload:
                raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {self._max_payload}")
            self._frame_len = HEADER_SIZE + length
            if avail < self._frame_len:
                if ftype in FILE_FRAMES:  # its bytes so far; buffer_updated counts the rest as it comes
                    self._counted = avail
                    self.file_bytes += avail
                return None
        elif avail < self._frame_len:
            return None
        else:  # the header was read when the frame began to arrive
            ftype, flags, reserved, length, csum = HEADER.unpack_from(view, start)
        payload = view[start + HEADER_SIZE : start + self._frame_len]
        self._check(ftype, flags, reserved, length, csum, payload, self.verify_chunks)
        if copy or self.copy_payloads or ftype != FrameType.DATA:
            payload = bytes(payload)
        self._undo = start  # where it began, should it be put back (unread)
        if ftype in FILE_FRAMES:
            self.file_bytes += self._frame_len - self._counted
            self._counted = 0
        self._start += self._frame_len
        self._frame_len = -1
        if self._start == self._end:
            self._start = self._end = 0
        return Frame(_FRAME_TYPE[ftype], flags, payload)  # _check refused unknown types

    def small_run(self, limit: int, room: int = -1) -> list:
        """The payloads (bytes) of the SMALL_FILE frames complete at the head of the buffer, at most
        ``limit``, taken in one loop: the whole run of small files a read brought.  It stops before
        anything else -- another type, flags or reserved bits set, a length beyond the limit, a
        checksum that does not match, a frame not complete -- which ``next_frame`` then handles
        (and refuses) as ever.  Nothing when frames are queued (``feed``) or one is half read.
        ``room`` (>= 0): stop before the payloads taken, each with ``ITEM_COST`` bytes more, would
        pass it (the receiver's budget left for them)."""
        if self._frames or self._frame_len >= 0:
            return []
        out = []
        view, start, end, most = self._view, self._start, self._end, self._max_payload
        unpack, digest = HEADER.unpack_from, _xxh64
        while len(out) < limit and end - start >= HEADER_SIZE:
            ftype, flags, reserved, length, csum = unpack(view, start)
            stop = start + HEADER_SIZE + length
            if ftype != 7 or flags or reserved or length > most or stop > end:  # 7: FrameType.SMALL_FILE
                break
            if room >= 0:
                room -= ITEM_COST + length
                if room < 0:
                    break
            payload = view[start + HEADER_SIZE : stop]
            if digest(payload, seed=0x0700000000000000 | length) != csum:  # _check's frame checksum
                break
            out.append(payload.tobytes())  # (the event owns its bytes, as _parse_one copies them)
            start = stop
        self.file_bytes += start - self._start
        if start == end:
            start = self._end = 0
        self._start = start
        return out

    @staticmethod
    def _check(ftype, flags, reserved, length, csum, payload, verify_chunks: bool = True) -> None:
        header8 = (ftype << 56) | (flags << 48) | (reserved << 32) | length  # _header8, inline (per frame)
        if ftype == FrameType.DATA:
            if length < DATA_HEADER_SIZE:
                raise RemoteProtocolError("DATA frame shorter than its header")
            if frame_checksum(header8, payload[:DATA_HEADER_SIZE]) != csum:
                raise ChecksumMismatch("DATA frame header checksum mismatch")
            if verify_chunks and chunk_checksum(payload[DATA_HEADER_SIZE:]) != DATA_HEADER.unpack_from(payload, 0)[3]:
                raise ChecksumMismatch("chunk checksum mismatch")
        elif frame_checksum(header8, payload) != csum:
            raise ChecksumMismatch(f"frame checksum mismatch (type 0x{ftype:02x})")
        if ftype not in FRAME_TYPES:
            raise RemoteProtocolError(f"unknown frame type 0x{ftype:02x}")
        if reserved:
            raise RemoteProtocolError("reserved header bits set")
        if flags & ~KNOWN_FLAGS:
            raise RemoteProtocolError(f"unsupported frame flags 0x{flags:02x}")
