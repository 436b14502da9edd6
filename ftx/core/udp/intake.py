"""What happens to a packet a UDP session receives (a mixin of ``UdpSession``, sans I/O).

``receive_payload`` takes one packet addressed to us, already length- and
checksum-checked (or opened, protection.py): duplicates and packets older than
the numbers still tracked are dropped; the data of its STREAM and CHUNK frames
must fit the receiver's bounds (reassembly.py) *before* the packet is recorded,
or it is dropped unacknowledged and the sender sends it again; then its number
is recorded for the ACKs we owe (``_record``, the newest ``RECV_RANGES_KEPT``
ranges), the data go to the stream and chunk assemblers, and ACK frames go to
settling (settling.py).  Packets that are one CHUNK or one STREAM frame -- nearly
all of a transfer's -- take a fast path; ``receive_chunk_burst`` takes a whole
GRO read of full CHUNK packets a run at a time.
"""

from __future__ import annotations

import xxhash

from ...errors import RemoteProtocolError
from ..ranges import read_varint
from ..secure.handshake import printable
from . import burst
from .packets import (
    CHUNK_HEADER,
    CHUNK_HEADER_SIZE,
    F_CHUNK,
    F_STREAM,
    HEADER_SIZE,
    MAX_STREAM_OFFSET,
    OVERHEAD,
    PING,
    TRAILER_SIZE,
    AckFrame,
    ChunkFrame,
    CloseFrame,
    MaxDataFrame,
    StreamFrame,
    parse_frames,
)
from .reassembly import REFUSED

_xxh64 = xxhash.xxh3_64_intdigest
RECV_RANGES_KEPT = 64  # packet number ranges remembered for ACKs (older ones are forgotten)


class PacketIntake:
    def receive_payload(self, pn: int, payload, now: float, opened: bool = False) -> None:
        """A packet addressed to us, already length- and checksum-checked (``opened``: a
        sealed one, opened)."""
        if self.closed:
            return
        frames = None
        unsealed = self.protection is not None and not opened
        if unsealed:
            frames = self._unsealed_frames(payload)  # protection.py: what it may still carry
            if not frames:
                return
        if pn in self._recv:
            if not (opened and self._plain_recv and pn in self._plain_recv):
                self.stats["duplicate_packets"] += 1
                return
            # an unsealed packet (anyone's) had this number: the sealed one is the peer's own
            self._plain_recv.subtract(pn, pn + 1)
        elif unsealed and not self._plain_room():
            self.stats["unsealed_dropped"] += 1
            return
        if pn <= self._recv_floor:  # older than anything we still track: its ACK is long gone
            self.stats["stale_packets"] += 1
            return
        if frames is None and payload and payload[0] == F_CHUNK and self.chunk_receiver \
                and len(payload) >= CHUNK_HEADER_SIZE:
            # fast path: a packet that is one CHUNK frame (nearly all of a transfer's packets)
            _, fid, index, clen, coff, csum, length = CHUNK_HEADER.unpack_from(payload, 0)
            if len(payload) == CHUNK_HEADER_SIZE + length and coff + length <= clen:
                slot = self._cin.prepare(fid, index, clen, csum, coff, coff + length)
                if slot is REFUSED:
                    self.stats["dropped_no_buffer"] += 1
                    return  # not recorded, so not acknowledged: the sender will send it again
                in_order = self._record(pn, len(payload), now)
                if slot is not None:
                    slot.buf[coff : coff + length] = payload[CHUNK_HEADER_SIZE:]
                    self._cin.filled((fid, index), slot, coff, coff + length)
                self._on_eliciting(in_order, now)
                return
        if frames is None and payload and payload[0] == F_STREAM:
            # fast path: a packet that is one STREAM frame (a tree of small files: most packets)
            soff, p = read_varint(payload, 1)
            length, p = read_varint(payload, p)
            if p + length == len(payload) and length and soff + length <= MAX_STREAM_OFFSET:
                if not self._sin.fits(soff, length):
                    self.stats["dropped_no_buffer"] += 1
                    return  # not recorded, so not acknowledged: the sender will send it again
                in_order = self._record(pn, len(payload), now)
                self._sin.add(soff, payload[p:])
                if not opened:  # (checked at handshake_done, protection.py)
                    self._plain_end = max(self._plain_end, soff + length)
                self._on_eliciting(in_order, now)
                return
        if frames is None:
            frames = parse_frames(payload)  # RemoteProtocolError: the driver closes the session
        if not self._frames_fit(frames):
            self.stats["dropped_no_buffer"] += 1
            # not recorded, so not acknowledged: the sender will send it again.  Pieces of chunks in
            # progress are kept all the same (a resend repeats them harmlessly): the chunk a piece
            # completes makes the room that the packet's other frames wait for
            for f in frames:
                if isinstance(f, ChunkFrame) and (f.file_id, f.index) in self._cin.slots:
                    self._on_chunk(f)
            return
        in_order = self._record(pn, len(payload), now)
        if unsealed:
            self._plain_recv.add(pn, pn + 1)
        eliciting = False
        for f in frames:
            if isinstance(f, ChunkFrame):
                eliciting = True
                self._on_chunk(f)
            elif isinstance(f, AckFrame):
                self._on_ack(f, now)
            elif isinstance(f, StreamFrame):
                eliciting = True
                self._sin.add(f.offset, f.data)
                if not opened:  # (checked at handshake_done, protection.py)
                    self._plain_end = max(self._plain_end, f.offset + len(f.data))
            elif f is PING:
                eliciting = True
            elif isinstance(f, CloseFrame):  # the peer's text, for a terminal: escaped, capped (an
                # unsealed one with keys was already escaped and marked by protection.py)
                reason = f.reason if unsealed else printable(f.reason or "peer closed")
                self.closed, self.close_code, self.close_reason = True, f.code, reason or "peer closed"
                return
            elif isinstance(f, MaxDataFrame):
                self._peer_max_data = max(self._peer_max_data, f.value)
        if eliciting:
            self._on_eliciting(in_order, now)

    def _record(self, pn: int, size: int, now: float, count: int = 1) -> bool:
        """Note packets ``pn .. pn + count - 1`` of ``size`` payload bytes each as received
        (for ACKs); returns whether they came in order."""
        self.stats["packets_received"] += count
        self.stats["bytes_received"] += count * (size + OVERHEAD)
        self.last_recv_time = now
        in_order = pn == self._largest_recv + 1
        self._recv_add(pn, pn + count)
        if pn + count - 1 > self._largest_recv:
            self._largest_recv, self._largest_recv_time = pn + count - 1, now
        return in_order

    def _recv_add(self, start: int, stop: int) -> None:
        """Packet numbers received; only the newest RECV_RANGES_KEPT ranges are remembered."""
        self._recv.add(start, stop)
        if len(self._recv) > RECV_RANGES_KEPT:
            first = next(iter(self._recv))
            self._recv.subtract(first[0], first[1])
            self._recv_floor = first[1] - 1

    def _on_eliciting(self, in_order: bool, now: float, count: int = 1) -> None:
        self._unacked_eliciting += count
        if not in_order:
            self._ack_now = True  # a gap or reordering: tell the sender at once
        if self._unacked_eliciting >= self.config.ack_every:
            self._ack_now = True
        elif self._ack_deadline is None:
            self._ack_deadline = now + self.config.max_ack_delay

    def _frames_fit(self, frames: list) -> bool:
        """Whether the data of every STREAM and CHUNK frame can be kept (buffers are bounded);
        makes room for the chunk pieces."""
        claim = [0, 0, 0]  # what the packet's STREAM frames take together (StreamAssembler.fits)
        for f in frames:
            if isinstance(f, StreamFrame):
                if not self._sin.fits(f.offset, len(f.data), claim):
                    return False
            elif isinstance(f, ChunkFrame):
                if not self.chunk_receiver:
                    raise RemoteProtocolError("CHUNK frame sent to a sender")
                if self._cin.prepare(f.file_id, f.index, f.chunk_len, f.checksum, f.offset,
                                     f.offset + len(f.data)) is REFUSED:
                    return False
        return True

    def _on_chunk(self, f: ChunkFrame) -> None:
        end = f.offset + len(f.data)
        slot = self._cin.prepare(f.file_id, f.index, f.chunk_len, f.checksum, f.offset, end)
        if slot:  # None: handed over already; REFUSED cannot happen after _frames_fit but is safe
            slot.buf[f.offset : end] = f.data
            self._cin.filled((f.file_id, f.index), slot, f.offset, end)

    def receive_chunk_burst(self, view: memoryview, seg: int, now: float, opened: bool = False) -> tuple[list[int], int]:
        """Many datagrams of ``seg`` bytes each, laid end to end (what UDP GRO delivers),
        addressed to us.  Those that are full CHUNK packets -- nearly all of a transfer's --
        are checked and taken here a run at a time (``burst.scan_chunk_burst``): packet
        numbers are recorded per run and each run's data copied in one call.

        Returns the offsets of the datagrams not taken (any other kind: the caller feeds
        them one by one) and the number that failed their checksum (dropped).  ``opened``:
        sealed datagrams opened by ``receive_sealed_burst`` (the AEAD checked them)."""
        room = seg - OVERHEAD - CHUNK_HEADER_SIZE
        if room <= 0 or self.closed or not self.chunk_receiver or (self.protection is not None and not opened):
            return ([] if self.closed else list(range(0, len(view), seg))), 0  # (with keys: each alone)
        runs, others, garbage = burst.scan_chunk_burst(view, seg, self.local_cid, None if opened else _xxh64)
        taken = 0
        in_order = True
        for first, count, pn, fid, index, clen, csum, coff in runs:
            if pn <= self._largest_recv:  # old numbers among them: late, duplicate or stale
                for k in range(count):
                    at = first + k * seg
                    self.receive_payload(pn + k, view[at + HEADER_SIZE : at + seg - TRAILER_SIZE], now, opened)
                continue
            end = coff + count * room
            if end > clen:
                raise RemoteProtocolError("CHUNK data beyond the end of its chunk")
            slot = self._cin.prepare(fid, index, clen, csum, coff, end)
            if slot is REFUSED:
                self.stats["dropped_no_buffer"] += count
                continue  # not recorded, so not acknowledged: sent again later
            in_order &= self._record(pn, seg - OVERHEAD, now, count)  # a gap: tell the sender at once
            taken += count
            if slot is None:
                continue  # a chunk already handed over
            burst.gather(view, seg, first, count, slot.buf, coff)
            self._cin.filled((fid, index), slot, coff, end)
        if taken:
            self._on_eliciting(in_order, now, taken)
        return others, garbage
