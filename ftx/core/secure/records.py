"""Sealed TCP: the byte stream after the handshake as a sequence of AEAD records.

Record layout (protocol.md, "Sealed TCP records"), integers big-endian::

    0                4                     4 + L             4 + L + 16
    +----------------+---------------------+-----------------+
    | P | length L   | ciphertext (L bytes)| tag (16 bytes)  |
    +----------------+---------------------+-----------------+

* ``P`` (bit 31 of the header word) is the key phase: the low bit of the number
  of key updates of this direction; ``L`` (bits 0-30) is the plaintext length,
  1 <= L <= ``MAX_RECORD``.  Anything else is an authentication failure.
* AAD = the 4-byte header; nonce = IV XOR n (``keys.Direction``) where n counts
  the records of this direction, from 0, across key updates (a new key does not
  restart it: records dropped just before an update are noticed too).  The
  number is implicit: a dropped, replayed, duplicated or reordered record opens
  under the wrong nonce and fails.
* Key update: the sealer moves to ``Direction.next()`` before the key reaches
  its usage limits and flips P; the opener follows when P flips.

Plaintext is the ordinary ftx frame stream.  The record layer does not protect
the end of the stream: a cut at a record boundary is seen by the ftx session
(no DONE), a cut inside a record is an ``AuthError``.

``RecordSealer`` packs buffers into records (small buffers are coalesced, large
ones are split at ``MAX_RECORD`` so that a record never straddles a chunk, and
end in a ``TAIL``-byte record: see below) and seals them into one reused output
buffer.  ``RecordOpener`` is fed received bytes BufferedProtocol-style
(``get_buffer``/``buffer_updated``) and opens each complete record into a
buffer the caller gives (``open_into``), so chunk bytes go from the ciphertext
buffer to their final place in one AEAD pass.  Its buffer grows with what
arrives, never with what a header announces beyond one record; on a receiver
it counts in the --max-memory budget (``use_budget``), since a record that
does not go direct (below) is held whole before it opens.

A large record (``DIRECT_MIN`` bytes or more) can skip the opener's buffer: once
its header is checked (``direct_size``), the driver gives the place where its
plaintext goes with 16 bytes of room behind it (the frame decoder's buffer),
``begin_direct`` moves there what already arrived of it, the driver reads the
rest of the record straight after that, and ``finish_direct`` opens it in
place.  The record's bytes are then written once by the kernel and once by the
AEAD, in one buffer.  The room for the tag is why the sealer ends a large
buffer with a small record: the record before it leaves ``TAIL`` bytes of the
frame behind it for the tag, and the small one goes through the opener's
buffer as any small record.  While records come direct the opener's buffer
stays at ``2 * MIN_READ`` (it shrinks back to that after holding a whole one).
"""

from __future__ import annotations

import struct

from ..frames import BufferBudget, BufferLimit
from . import AuthError, Established
from .keys import TAG_SIZE, Direction

HEADER = struct.Struct(">I")
HEADER_SIZE = 4
OVERHEAD = HEADER_SIZE + TAG_SIZE  # 20 bytes per record
MAX_RECORD = 512 * 1024  # largest plaintext of one record (2^19): a default 1 MiB chunk is two AEAD calls
# (a whole record is held before it opens, counted in the receiver's --max-memory: larger records would cost
# every connection more of it).  Measured (bench_secure.py --ciphers aes-256-gcm,aes-256-gcm/262144,...,
# 1 GiB, 5 interleaved runs): 256 and 128 KiB records cost the receiver 0.3-0.4 CPU s/GB more than 512 KiB
# (a wake-up and a read per record); 1 MiB records saved it ~0.07 s/GB with no gain in MB/s, and would
# need the wire limit raised.
PHASE_BIT = 0x8000_0000
LENGTH_MASK = 0x7FFF_FFFF
COALESCE = 16 * 1024  # buffers below this are copied together into one record
READ_AHEAD = 64 * 1024  # room beyond one whole record: the small records around a chunk's record
OUT_CAP = 2 * (MAX_RECORD + OVERHEAD) + READ_AHEAD  # the sealer's output buffer at most (a 1 MiB chunk: one write)
MIN_READ = 16 * 1024  # the opener's first buffer, and the least room it offers to a read
IN_CAP = MAX_RECORD + OVERHEAD + READ_AHEAD  # the opener's buffer at most
DIRECT_MIN = 64 * 1024  # records this large may be read and opened in their final place (direct)
TAIL = 4096  # a large buffer ends in a record this small, so that the one before it is followed by room for its tag


def _direction(keys: Direction | Established, send: bool) -> Direction:
    if isinstance(keys, Established):
        return Direction(keys.cipher, keys.send_secret if send else keys.recv_secret)
    return keys


class RecordSealer:
    """Turns plaintext buffers into sealed records, in order.

    ``update_after`` (tests) forces a key update after that many records under one
    key; otherwise the key is updated when ``Direction.should_update`` says so.
    """

    def __init__(self, keys: Direction | Established, max_record: int = MAX_RECORD,
                 update_after: int | None = None) -> None:
        if not 0 < max_record <= MAX_RECORD:
            raise ValueError("max_record out of range")
        self.dir = _direction(keys, send=True)
        self.max_record = max_record
        self.update_after = update_after
        self.number = 0  # of the next record in this direction (the nonce)
        self._out = bytearray()

    @property
    def phase(self) -> int:
        return self.dir.phase

    def sealed_size(self, nbytes: int) -> int:
        """Wire bytes of ``nbytes`` plaintext sealed as one buffer."""
        if nbytes <= 0:
            return 0
        return nbytes + OVERHEAD * len(self.pieces(nbytes))

    def seal_record_into(self, plaintext, out) -> int:
        """Seal ``plaintext`` (1..max_record bytes) as the next record into ``out``; the bytes written."""
        n = len(plaintext)
        if not 0 < n <= self.max_record:
            raise ValueError("record plaintext must be 1..max_record bytes")
        d = self.dir
        if d.should_update() or (self.update_after is not None and d.sealed >= self.update_after):
            d = self.dir = d.next()
        header = ((d.phase & 1) << 31) | n
        HEADER.pack_into(out, 0, header)
        d.seal_into(self.number, plaintext, out[:HEADER_SIZE], out[HEADER_SIZE : HEADER_SIZE + n + TAG_SIZE])
        self.number += 1
        return n + OVERHEAD

    def seal(self, data) -> bytes:
        """Copying convenience: ``data`` (any length) as records."""
        return b"".join(bytes(v) for v in self.seal_buffers([data]))

    def seal_buffers(self, bufs):
        """Seal ``bufs`` (in order) and yield views of the output buffer to write, in order.

        Each view is valid until the generator is resumed (the buffer is reused):
        write it out before asking for the next one.  Buffers below ``COALESCE``
        bytes are gathered into shared records; larger ones become records of
        their own, split at ``max_record``.
        """
        # small buffers gathered into one record; per call, so that a send cut short (cancelled)
        # leaves nothing behind to reappear in the next one
        stage = bytearray()
        pending = 0  # bytes of self._out filled
        for b in bufs:
            n = len(b)
            if not n:
                continue
            if n < COALESCE and n <= self.max_record:
                if len(stage) + n > self.max_record:
                    pending = yield from self._flush_stage(stage, pending)
                stage += b
                continue
            if stage:
                pending = yield from self._flush_stage(stage, pending)
            view = memoryview(b).cast("B")
            for i, j in self.pieces(n):
                pending = yield from self._room(pending, j - i + OVERHEAD)
                pending += self.seal_record_into(view[i:j], memoryview(self._out)[pending:])
        if stage:
            pending = yield from self._flush_stage(stage, pending)
        if pending:
            yield memoryview(self._out)[:pending]

    def pieces(self, n: int) -> list[tuple[int, int]]:
        """Record boundaries for a buffer of ``n`` bytes that has records of its own: ``max_record``
        bytes each; when that leaves a record of ``DIRECT_MIN`` bytes or more last, its last ``TAIL``
        bytes become a record of their own (the receiver opens the large one in place, in front of them)."""
        step = self.max_record
        bounds = [(i, min(i + step, n)) for i in range(0, n, step)]
        i, j = bounds[-1]
        if j - i >= DIRECT_MIN:
            bounds[-1:] = [(i, j - TAIL), (j - TAIL, j)]
        return bounds

    def _flush_stage(self, stage: bytearray, pending: int):
        pending = yield from self._room(pending, len(stage) + OVERHEAD)
        pending += self.seal_record_into(stage, memoryview(self._out)[pending:])
        del stage[:]
        return pending

    def _room(self, pending: int, need: int):
        """Make ``need`` bytes of room behind ``pending``: grow, or hand out what is filled."""
        if pending + need <= len(self._out):
            return pending
        if pending and pending + need > OUT_CAP:
            yield memoryview(self._out)[:pending]
            pending = 0
        if pending + need > len(self._out):
            grown = bytearray(min(OUT_CAP, max(pending + need, 2 * len(self._out))))
            grown[:pending] = self._out[:pending]
            self._out = grown
        return pending

    def trim(self) -> None:
        """Give back the output buffer (idle)."""
        self._out = bytearray()


class RecordOpener:
    """Turns received bytes into plaintext, record by record; ``AuthError`` for anything else.

    Driver loop::

        buf = opener.get_buffer(); n = recv_into(buf); opener.buffer_updated(n)
        while (size := opener.next_size()) is not None:
            opener.open_into(target[:size])        # or: data = opener.open()

    After an error every call raises ``AuthError`` again.
    """

    def __init__(self, keys: Direction | Established, max_record: int = MAX_RECORD,
                 budget: BufferBudget | None = None) -> None:
        if not 0 < max_record <= MAX_RECORD:
            raise ValueError("max_record out of range")
        self.budget = budget  # the receiver's --max-memory: a whole record is held before it opens
        self.dir = _direction(keys, send=False)
        self.max_record = max_record
        self.number = 0  # of the next record in this direction (the nonce)
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._size = -1  # plaintext size of the record at _start once its header is checked
        self._offered = 0  # room the last get_buffer offered
        self._full = False  # ... and the read after it filled it all
        self._direct = b""  # header of the record being read straight into the caller's buffer (begin_direct)
        self._streaming = False  # the last large record opened direct: read little ahead of a header
        self._error: AuthError | None = None

    @property
    def phase(self) -> int:
        return self.dir.phase

    @property
    def pending_bytes(self) -> int:
        return self._end - self._start

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def missing(self) -> int:
        """Bytes still to arrive before the next record is complete (at least 1 when none is)."""
        if self._direct:
            raise ValueError("missing: a record is being read direct (the driver counts its bytes)")
        have = self._end - self._start
        need = self._size + OVERHEAD if self._size >= 0 else HEADER_SIZE
        return max(need - have, 0) if need > have else 0

    # -- input ----------------------------------------------------------------
    def get_buffer(self) -> memoryview:
        """Where received bytes go next: room for at least the rest of the current record.

        The buffer grows only to hold the current record whole (a checked header
        asks for one record at most), and beyond that, up to ``IN_CAP``, only by
        doubling after a read filled all the room to the buffer's end (bytes that
        did arrive, not promised).  Pending bytes move to the front only when the
        record would not fit behind them or little room is left, so a peer that
        trickles bytes costs no repeated copying; and when no whole record would
        fit behind the current one, the room offered ends with it, so that the
        buffer empties and starts again at 0 instead of moving a partial record.
        """
        self._check()
        if self._direct:
            raise ValueError("get_buffer: a record is being read direct")
        cap = len(self._buf)
        if self._full and cap < IN_CAP:
            self._resize(min(IN_CAP, 2 * cap))
            cap = len(self._buf)
        self._full = False
        start, end = self._start, self._end
        pending = end - start
        need = (self._size + OVERHEAD) if self._size >= 0 else HEADER_SIZE
        if need > cap:  # the record does not fit at all: grow, with some room to read ahead
            self._resize(max(need, min(pending + MIN_READ, self.max_record + OVERHEAD)))
        elif start and (start + need > cap or cap - end < MIN_READ // 4):
            self._buf[:pending] = self._view[start:end]
            self._start, self._end = 0, pending
        stop = len(self._buf)
        self._offered = 0  # a read that fills a room cut short is no reason to grow
        if self._size >= 0:  # no room for a whole record behind this one: read up to its end only,
            record_end = self._start + need  # so that the buffer empties and restarts at 0, no copy
            if stop - record_end < self.max_record + OVERHEAD and record_end > self._end:
                stop = record_end
        elif self._streaming:  # large records go direct: read their header and a little more only
            stop = min(stop, self._end + MIN_READ)
        if stop == len(self._buf):
            self._offered = stop - self._end
        return self._view[self._end : stop]

    def use_budget(self, budget: BufferBudget) -> None:
        """Count this opener's buffer, from now on, in ``budget`` (``BufferLimit`` when it is spent)."""
        if self.budget is None:
            if not budget.take(len(self._buf)):
                raise self._limit(budget)
            self.budget = budget

    def release(self) -> None:
        """The connection is over: free the buffer and give it back to the budget."""
        self._start = self._end = 0
        self._size = -1
        self._resize(0)

    @staticmethod
    def _limit(budget: BufferBudget) -> BufferLimit:
        return BufferLimit(budget.refusal())

    def _resize(self, capacity: int) -> None:
        old = len(self._buf)
        if capacity > old and self.budget is not None and not self.budget.take(capacity - old):
            raise self._limit(self.budget)
        if capacity < old and self.budget is not None:
            self.budget.give(old - capacity)
        new = bytearray(capacity)
        pending = self._end - self._start
        new[:pending] = self._view[self._start : self._end]
        self._view.release()
        self._buf, self._view = new, memoryview(new)
        self._start, self._end = 0, pending

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self._full = nbytes >= self._offered > 0

    def feed(self, data) -> bytes:
        """Copying convenience: take ``data``, return the plaintext of every record completed."""
        out = []
        data = memoryview(data).cast("B")
        while True:
            while self.next_size() is not None:
                out.append(self.open())
            if not data:
                break
            buf = self.get_buffer()
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            data = data[n:]
            self.buffer_updated(n)
        return b"".join(out)

    def peek(self, nbytes: int) -> bytes:
        """Up to ``nbytes`` of the bytes received and not yet consumed (no checks)."""
        return bytes(self._view[self._start : min(self._end, self._start + nbytes)])

    def skip(self, nbytes: int) -> None:
        """Drop ``nbytes`` received bytes that are not a record (a plaintext refusal before the
        first record; see ftx/transport/tcp.py)."""
        if self._size >= 0 or self.number or nbytes > self._end - self._start:
            raise ValueError("skip: only unparsed bytes before the first record")
        self._start += nbytes
        if self._start == self._end:
            self._start = self._end = 0

    def receive_eof(self) -> None:
        """The stream ended: an error if it cut a record."""
        self._check()
        if self._direct:
            self._fail("connection closed in the middle of a sealed record (read direct)")
        if self._end != self._start:
            self._fail(f"connection closed in the middle of a sealed record ({self._end - self._start} bytes)")

    def trim(self) -> None:
        """Give back the memory the pending bytes do not need (the peer is quiet)."""
        pending = self._end - self._start
        if len(self._buf) > max(pending, MIN_READ) or not pending:
            self._resize(pending)

    # -- records --------------------------------------------------------------
    def next_size(self) -> int | None:
        """Plaintext size of the next record if it has arrived whole, else None.  Checks its header."""
        if self._error is not None:
            raise self._error
        avail = self._end - self._start
        if self._size < 0:
            if avail < HEADER_SIZE:
                return None
            word = HEADER.unpack_from(self._view, self._start)[0]
            size = word & LENGTH_MASK
            if size == 0:
                self._fail("empty sealed record")
            if size > self.max_record:
                self._fail(f"sealed record of {size} bytes exceeds the limit of {self.max_record}")
            self._size = size
        if avail < self._size + OVERHEAD:
            return None
        return self._size

    def next_record(self) -> int:
        """``next_size`` and ``direct_size`` in one call (a driver's loop asks per record): the
        plaintext size of the next record when it has arrived whole; minus its size when it may be
        read direct; 0 when more bytes must come first (into ``get_buffer``)."""
        size = self.next_size()
        if size is not None:
            return size
        size = self._size
        return -size if size >= DIRECT_MIN and not self._direct else 0

    def open_into(self, out) -> None:
        """Open the next record (``next_size`` said it is complete) into ``out`` (exactly its size)."""
        size = self._size
        if size < 0 or self._end - self._start < size + OVERHEAD or len(out) != size:
            raise ValueError("open_into: no complete record of that size")
        start = self._start
        self._open(bytes(self._view[start : start + HEADER_SIZE]),
                   self._view[start + HEADER_SIZE : start + OVERHEAD + size], out)
        self._start += size + OVERHEAD
        if self._start == self._end:
            self._start = self._end = 0
        if size >= DIRECT_MIN:  # a large record that did not go direct: read ahead as usual
            self._streaming = False

    def _open(self, header: bytes, body, out) -> None:
        """Open record ``self.number`` (ciphertext and tag ``body``) into ``out`` (may be ``body``'s start)."""
        d = self.dir
        if (header[0] >> 7) != (d.phase & 1):  # the peer updated its key
            d = d.next()
        if not d.open_into(self.number, body, header, out):
            self.dir.forged = d.forged
            self._fail("a sealed record did not open (forged, replayed, reordered, dropped or cut)")
        self.dir = d
        self.number += 1
        self._size = -1

    # -- large records, read and opened in their final place ----------------------
    def direct_size(self) -> int:
        """Plaintext size of the record being received when it may be read direct: its header is
        checked, it has ``DIRECT_MIN`` bytes or more and has not arrived whole.  Else 0."""
        self._check()
        size = self._size
        if size < DIRECT_MIN or self._direct or self._end - self._start >= size + OVERHEAD:
            return 0
        return size

    def begin_direct(self, target) -> int:
        """Read the current record (``direct_size``) into ``target``: exactly its ciphertext and tag
        (size + 16 bytes), where its plaintext is to be.  Moves the part that already arrived there
        and returns its length; the caller reads the rest into ``target[returned:]`` (no further:
        the next record's bytes are not for ``target``), then calls ``finish_direct(target)``."""
        size = self.direct_size()
        if not size or len(target) != size + TAG_SIZE:
            raise ValueError("begin_direct: no large record pending, or target is not its size + 16")
        start, end = self._start + HEADER_SIZE, self._end
        target[: end - start] = self._view[start:end]
        self._direct = bytes(self._view[self._start : start])
        self._start = self._end = 0
        return end - start

    def direct_room(self) -> memoryview:
        """While a record is read direct: where bytes after it may go in the same read (a scattered
        read: the record's rest into its target, then up to ``MIN_READ`` bytes here); count them
        with ``buffer_updated``."""
        if not self._direct:
            raise ValueError("direct_room: no record being read direct")
        self._offered = 0
        return self._view[self._end : min(len(self._buf), self._end + MIN_READ)]

    def finish_direct(self, target) -> None:
        """The record's bytes are all in ``target`` (as given to ``begin_direct``): open it in place,
        its plaintext in ``target[:size]``.  ``AuthError`` when it does not open."""
        self._check()
        header, size = self._direct, self._size
        if not header or len(target) != size + TAG_SIZE:
            raise ValueError("finish_direct: no record being read direct, or another target")
        self._open(header, target, target[:size])
        self._direct = b""
        self._streaming = True
        if len(self._buf) > 2 * MIN_READ:  # it held a whole record before (the first chunk of a
            self._resize(2 * MIN_READ)  # connection, say): large ones come direct now, give it back

    def open_in_place(self) -> memoryview:
        """Open the next complete record where it lies in this opener's buffer: its plaintext, a
        view valid until the next ``get_buffer`` (copy it out before: a record larger than the
        region the frame decoder offers, such as one of many small files' frames)."""
        size = self._size
        if size < 0 or self._end - self._start < size + OVERHEAD:
            raise ValueError("open_in_place: no complete record")
        start = self._start
        body = self._view[start + HEADER_SIZE : start + OVERHEAD + size]
        self._open(bytes(self._view[start : start + HEADER_SIZE]), body, body[:size])
        self._start += size + OVERHEAD
        if self._start == self._end:
            self._start = self._end = 0
        if size >= DIRECT_MIN:
            self._streaming = False
        return body[:size]

    def open(self) -> bytes:
        """Copying: the next complete record's plaintext."""
        out = bytearray(self._size)
        self.open_into(out)
        return bytes(out)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, why: str) -> None:
        self._error = AuthError(why)
        raise self._error
