"""What a UDP receiver buffers for its peers, and the bounds on it.

Every byte a peer can make us hold is charged to its session and to one
``MemoryBudget`` shared by all sessions of a receiver:

* chunk reassembly (``ChunkAssembler``): a chunk's buffer is allocated as its
  pieces arrive, never for the ``chunk_len`` a CHUNK frame merely announces --
  it grows to cover the bytes received (at most twice them plus 64 KiB, so a
  lone piece near the end of a 16 MiB chunk allocates nothing: it is dropped
  and sent again later).  The limits count a chunk's whole length from its
  first piece on (a reservation, not an allocation), so a chunk once started
  can always finish; each incomplete chunk is also charged a fixed overhead
  and may hold at most ``SLOT_RANGES_LIMIT`` separate runs, so many tiny
  pieces cost entries, not just bytes;
* the control stream (``StreamAssembler``): out-of-order pieces are kept in a
  heap (no scan per in-order byte), counted as entries and bytes (the frames of
  one packet together); of two pieces at one offset the longer is kept, and
  pieces that overlap are cut where they reach the in-order bytes, so every
  byte acknowledged is delivered once, in order; empty pieces beyond a gap are
  ignored; bytes in order but not yet read are bounded too.

What does not fit is dropped *before* its packet is recorded, so it is not
acknowledged and the sender sends it again (protocol.md 14.7, 14.9).  The
session advertises a smaller MAX_DATA window when the shared budget is tight.
"""

from __future__ import annotations

import heapq
from collections import deque

import xxhash

from ...errors import ChecksumMismatch, RemoteProtocolError
from ..ranges import RangeSet

MAX_CHUNK = 16 * 1024 * 1024
GROW_MIN = 64 * 1024  # a chunk buffer's first allocation (or the chunk, if smaller)
SLOT_OVERHEAD = 512  # bytes charged per incomplete chunk on top of its buffer
SLOT_RANGES_LIMIT = 1024  # separate runs of bytes one incomplete chunk may hold
STREAM_OOO_LIMIT = 8 * 1024 * 1024  # out-of-order control stream bytes kept
STREAM_OOO_ENTRIES = 4096  # out-of-order control stream pieces kept
STREAM_IN_LIMIT = 8 * 1024 * 1024  # in-order control stream bytes not yet read by the application
SMALL_PIECE = 1024  # in-order stream pieces smaller than this are merged (StreamAssembler._push)
MERGED_PIECE = 64 * 1024  # ... into a bytearray of up to about this size
ENTRY_OVERHEAD = 128  # bytes charged per out-of-order stream piece on top of its data
SPARE_BYTES = 8 * 1024 * 1024  # chunk buffers a receiving session keeps for reuse
REFUSED = False  # ``ChunkAssembler.prepare``: no room, drop the packet unacknowledged


class MemoryBudget:
    """Bytes buffered by all sessions of one receiver (``Limits.max_memory`` bounds it).

    A session may take more while the total stays within ``total``; beyond it, only
    up to its fair share (``share``), so that sessions that hold a lot cannot starve
    one that holds little.  The total can therefore exceed ``total`` by at most the
    fair shares of the sessions below theirs."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.sessions = 0

    def share(self) -> int:
        return self.total // max(1, self.sessions)

    def allows(self, held: int, n: int) -> bool:
        return self.used + n <= self.total or held + n <= self.share()

    def allows_start(self, n: int) -> bool:
        """A session with no chunk in progress may start one while all hold under twice the total."""
        return self.used + n <= 2 * self.total


class Spares:
    """Chunk buffers kept for reuse.  A fresh 1 MiB bytearray costs a memset and, once
    malloc hands such sizes back to the kernel, 256 page faults: at hundreds of chunks
    a second that is a noticeable share of a core.  At most ``limit`` buffers of one
    size, and (``limit_bytes``) at most that many bytes in all."""

    def __init__(self, limit: int = 32, limit_bytes: int | None = None) -> None:
        self.limit = limit
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self._free: dict[int, list[bytearray]] = {}

    def get(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes with unspecified content."""
        free = self._free.get(size)
        if free:
            self.bytes -= size
            return free.pop()
        return bytearray(size)

    def take(self, size: int) -> bytearray | None:
        """A kept buffer of ``size`` bytes, or None (nothing is allocated)."""
        free = self._free.get(size)
        if not free:
            return None
        self.bytes -= size
        return free.pop()

    def put(self, buf: bytearray) -> bool:
        """Keep ``buf`` if there is room (buffers of other sizes make way); returns whether kept."""
        size = len(buf)
        free = self._free.setdefault(size, [])
        if len(free) >= self.limit:
            return False
        if self.limit_bytes is not None and self.bytes + size > self.limit_bytes:
            for other in [k for k in self._free if k != size]:
                self.bytes -= other * len(self._free.pop(other))
            if self.bytes + size > self.limit_bytes:
                return False
        free.append(buf)
        self.bytes += size
        return True

    def clear(self) -> int:
        n, self.bytes = self.bytes, 0
        self._free.clear()
        return n


class _Slot:
    """An incomplete chunk: ``buf`` covers its first ``len(buf)`` bytes, ``got`` says which arrived."""

    __slots__ = ("buf", "got", "checksum", "clen", "arrived")

    def __init__(self, buf: bytearray, checksum: int, clen: int) -> None:
        self.buf = buf
        self.got = RangeSet()
        self.checksum = checksum
        self.clen = clen
        self.arrived = 0  # bytes written (duplicates counted again: an upper bound)


class ChunkAssembler:
    """Chunks in reassembly and completed ones waiting to be taken, charged to ``charge``."""

    def __init__(self, session) -> None:
        self._s = session  # charge(n) / release(n) / may_hold(n) on the session
        self.slots: dict[tuple[int, int], _Slot] = {}
        self.done: dict[int, RangeSet] = {}  # file -> chunk indices handed over
        self.completed: deque = deque()
        self.buffered = 0  # bytes charged for slots and completed chunks
        self.completed_bytes = 0
        self.spares = Spares(limit_bytes=SPARE_BYTES)
        self.largest = 0  # largest chunk_len seen

    def prepare(self, file_id: int, index: int, clen: int, checksum: int, start: int, end: int):
        """Room for bytes ``[start, end)`` of chunk ``(file_id, index)``: its slot, with a buffer
        that covers them; None when the chunk was already handed over; ``REFUSED`` when it would
        take more memory than allowed (the caller drops the packet without acknowledging it).

        A new chunk reserves its whole length against the limits (so that every chunk started
        can finish: no two half-filled chunks can wait for each other's memory), but memory is
        allocated only as its bytes arrive.  A session with no chunk in progress may always
        start one while all sessions together reserve less than twice the budget."""
        key = (file_id, index)
        slot = self.slots.get(key)
        if slot is None:
            done = self.done.get(file_id)
            if done is not None and index in done:
                return None  # a late duplicate of a chunk already handed over
            if not 0 < clen <= MAX_CHUNK:
                raise RemoteProtocolError("chunk length out of range")
            size = min(clen, max(GROW_MIN, end))
            if end > 2 * (end - start) + GROW_MIN:
                return REFUSED  # far into a chunk none of which arrived: not before its start
            need = clen + SLOT_OVERHEAD
            if not (self._s.may_hold(need) or (not self.slots and self._s.may_start(need))):
                return REFUSED
            buf = self.spares.take(clen)
            if buf is not None:  # memory already held: its charge as a spare ends
                self._s.release(clen)
            else:
                buf = bytearray(size)
            self._charge(need)
            slot = self.slots[key] = _Slot(buf, checksum, clen)
            if clen > self.largest:
                self.largest = clen
        elif slot.clen != clen or checksum != slot.checksum:
            raise RemoteProtocolError("CHUNK frames disagree about their chunk")
        buf = slot.buf
        if end > len(buf):  # within the chunk's reservation: only the arrivals bound it
            allowed = 2 * (slot.arrived + end - start) + GROW_MIN  # twice what arrived, and a step
            if end > allowed:
                return REFUSED  # far beyond what arrived: not before the gap fills
            bigger = bytearray(min(slot.clen, max(end, min(2 * len(buf), allowed))))
            bigger[: len(buf)] = buf
            slot.buf = bigger
        if len(slot.got) >= SLOT_RANGES_LIMIT:
            got = slot.got
            n = len(got)
            got.add(start, end)
            if len(got) > n:  # a new separate run: one too many
                got.subtract(start, end)
                return REFUSED
        return slot

    def _charge(self, n: int) -> None:
        self.buffered += n
        self._s.charge(n)

    def filled(self, key: tuple[int, int], slot: _Slot, start: int, end: int) -> None:
        """Bytes ``[start, end)`` of ``slot``'s chunk are in its buffer; hand the chunk over once whole."""
        slot.arrived += end - start
        got = slot.got
        if end > start and not got.covers(start, end):  # new bytes of a chunk, however slow it is
            self._s.file_data_arrived(end - start)  # (the --stall-timeout)
        got.add(start, end)
        if not got.covers(0, slot.clen):
            return
        del self.slots[key]
        self._s.release(SLOT_OVERHEAD)  # the chunk's length stays charged until it is taken
        self.buffered -= SLOT_OVERHEAD
        buf = slot.buf
        # sealed (handshake done): every byte and the stated checksum came in datagrams whose tags
        # verified, so the chunk is taken as stated, as on sealed TCP (protocol.md 14.8, 20.2)
        if not self._s.chunks_authenticated and xxhash.xxh3_64_intdigest(buf) != slot.checksum:
            raise ChecksumMismatch("reassembled chunk fails its checksum")
        done = self.done.get(key[0])
        if done is None:
            done = self.done[key[0]] = RangeSet()
        done.add(key[1])
        self.completed_bytes += len(buf)
        self.completed.append((key[0], key[1], slot.checksum, buf))

    def take(self) -> list:
        """Completed chunks, handed over: their buffers no longer count against us."""
        out = list(self.completed)
        self.completed.clear()
        if self.completed_bytes:
            self.buffered -= self.completed_bytes
            self._s.release(self.completed_bytes)
            self.completed_bytes = 0
        return out

    def recycle(self, buf: bytearray) -> None:
        """A buffer from ``take`` that nothing refers to any more: kept for reuse if allowed."""
        before = self.spares.bytes
        if self._s.may_keep(len(buf)):  # (a spare never makes other spares give way)
            self.spares.put(buf)
        delta = self.spares.bytes - before  # negative when buffers of other sizes made way
        if delta > 0:
            self._s.charge(delta)
        elif delta < 0:
            self._s.release(-delta)

    def release_all(self) -> None:
        self.slots.clear()
        self.completed.clear()
        self._s.release(self.buffered + self.spares.clear())
        self.buffered = self.completed_bytes = 0


class StreamAssembler:
    """The incoming control stream: in-order bytes to read, out-of-order pieces in a heap."""

    def __init__(self, session) -> None:
        self._s = session
        self.next = 0  # stream offset of the first byte not yet in order
        # In order, not yet read: the pieces as they were added (a run of STREAM packets is one
        # piece), ``_skip`` bytes of the first already read.  One bytearray appended at the back
        # and cut at the front moved (and reallocated) every byte several times on its way to
        # the frame decoder; now each byte is copied once out of its packet and once into the
        # reader's buffer.
        self._in: deque = deque()
        self._skip = 0
        self.size = 0  # bytes in order, not yet read
        self._heap: list[int] = []  # offsets of the pieces, smallest first
        self._pieces: dict[int, bytes] = {}  # offset -> bytes (one piece per offset)
        self.ooo_bytes = 0

    def fits(self, offset: int, length: int, claim: list | None = None) -> bool:
        """Whether a STREAM frame's data can be kept: otherwise its packet must be dropped.
        ``claim``: for a packet of several frames, ``[bytes, entries, end]`` that its earlier
        frames take and where their in-order bytes end (updated when this one fits): the
        frames of one packet count together, or one datagram of thousands of tiny frames
        would pass the entry bound."""
        end = offset + length
        first = self.next
        if claim is None:
            more = entries = 0
        else:
            more, entries, ahead = claim
            if ahead > first:  # the packet's earlier frames extend the in-order bytes
                first = ahead
        if end <= first or not length:
            return True
        if offset <= first:  # extends the in-order bytes
            need = end - first
            ok = self.size + more + need <= STREAM_IN_LIMIT
            ahead = end
        else:
            held = self._pieces.get(offset)
            if held is None:
                need = length
                entries += 1
                ok = len(self._pieces) + entries <= STREAM_OOO_ENTRIES
            else:  # a longer piece takes the place of the one held there (``add``): its extra bytes
                need = length - len(held)
                if need <= 0:
                    return True
                ok = True
            ok = ok and self.ooo_bytes + more + need <= STREAM_OOO_LIMIT
        n = more + need + ENTRY_OVERHEAD * entries
        # bytes that extend the in-order stream are read at once and let go what waited behind them:
        # they may go past the budget as a new chunk may (up to twice it), or a gap's resend found no
        # room while the bytes after the gap held it
        if not (ok and (self._s.may_hold(n) or (offset <= first and self._s.may_start(n)))):
            return False
        if claim is not None:
            claim[:] = more + need, entries, ahead
        return True

    def add(self, offset: int, data) -> None:
        """A STREAM frame's data (``fits`` said yes)."""
        end = offset + len(data)
        if end <= self.next or not data:
            return
        if offset > self.next:
            held = self._pieces.get(offset)
            if held is None:
                self._pieces[offset] = bytes(data)
                heapq.heappush(self._heap, offset)
                self.ooo_bytes += len(data)
                self._s.charge(len(data) + ENTRY_OVERHEAD)
            elif len(data) > len(held):
                # Re-packed with more bytes (lost pieces sent again as one frame) or overlapping:
                # the longer one is kept.  Keeping the shorter lost the rest for good -- its
                # packet is acknowledged, so the sender never sends those bytes again.
                self._pieces[offset] = bytes(data)
                self.ooo_bytes += len(data) - len(held)
                self._s.charge(len(data) - len(held))
            return
        n = end - self.next
        # kept as it is if it is bytes (a run joined for us); a view of a reused buffer is copied
        self._push(data if offset == self.next else data[self.next - offset :])
        self.size += n
        self.next = end
        self._s.charge(n)
        heap, pieces = self._heap, self._pieces
        while heap and heap[0] <= self.next:
            off = heapq.heappop(heap)
            piece = pieces.pop(off)
            self.ooo_bytes -= len(piece)
            self._s.release(len(piece) + ENTRY_OVERHEAD)
            if off + len(piece) > self.next:
                tail = piece if off == self.next else piece[self.next - off :]
                self._push(tail)
                self.size += len(tail)
                self.next = off + len(piece)
                self._s.charge(len(tail))

    def _push(self, data) -> None:
        """Keep ``data`` in order: bytes as they are (a run joined for us), a view of a reused
        buffer copied; small pieces join a bytearray at the back, so a peer's tiny STREAM
        frames cost no object each (the pieces average over SMALL_PIECE / 2 bytes)."""
        pieces = self._in
        if len(data) < SMALL_PIECE:
            if pieces and type(last := pieces[-1]) is bytearray and len(last) < MERGED_PIECE:
                last += data
            else:
                pieces.append(bytearray(data))
        else:
            pieces.append(data if type(data) is bytes else bytes(data))

    def read_into(self, buf) -> int:
        n = min(len(buf), self.size)
        if not n:
            return 0
        pieces, at = self._in, 0
        while at < n:
            piece, skip = pieces[0], self._skip
            take = min(len(piece) - skip, n - at)
            if skip or take < len(piece):
                with memoryview(piece) as v:
                    buf[at : at + take] = v[skip : skip + take]
            else:
                buf[at : at + take] = piece
            at += take
            if skip + take == len(piece):
                pieces.popleft()
                self._skip = 0
            else:
                self._skip = skip + take
        self.size -= n
        self._s.release(n)
        return n

    @property
    def data(self) -> bytes:
        """The bytes in order, not yet read (for tests; the reader calls ``read_into``)."""
        return b"".join(self._in)[self._skip :]

    @property
    def entries(self) -> int:
        return len(self._pieces)

    def release_all(self) -> None:
        self._s.release(self.size + self.ooo_bytes + ENTRY_OVERHEAD * len(self._pieces))
        self._in.clear()
        self._skip = self.size = 0
        self._pieces.clear()
        self._heap.clear()
        self.ooo_bytes = 0
