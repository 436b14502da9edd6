"""Building the packets a UDP session sends (a mixin of ``UdpSession``, sans I/O).

``_fill`` chooses the content of one packet (control stream first, then chunk
data), ``_packet`` numbers, records and closes it -- with the XXH3-64 trailer,
or sealed (``secure/datagrams.py``) once the session has keys -- and
``_bulk_chunks`` builds a whole burst of full CHUNK packets at once
(``burst.py``), sealing it in one pass when the session has keys.

Once keys are installed, a packet that carries control-stream bytes below
``_hs_end`` (this side's own handshake, protocol.md 14.13) is sent unsealed, as
the peer may not have keys yet; such a packet carries nothing else of the
stream and no chunk data.
"""

from __future__ import annotations

import struct

import xxhash

from . import burst
from .packets import CHUNK_HEADER, CHUNK_HEADER_SIZE, DATA, F_CHUNK, F_MAX_DATA, HEADER, TRAILER_SIZE, VERSION, \
    encode_ack, encode_stream, encode_varint_frame
from .recovery import SentPacket
from ..secure.keys import TAG_SIZE

# The most datagrams one burst holds: what one UDP GSO send takes (64 segments, 64 KiB).
BURST_DATAGRAMS = 64
BURST_BYTES = 65000
# The most full STREAM packets ``_bulk_stream`` builds, seals and records in one go (one run in
# the recovery), handed over as GSO-sized slices of one buffer: per 64 KiB burst the Python work
# around it (building, recording, settling each ACK's share) was a fifth of the sender's CPU on
# a tree of small files.  Pacing, the congestion window and the caller's ``limit`` bound it too.
BULK_DATAGRAMS = 256
_TRAILER_ZERO = bytes(TRAILER_SIZE)
_TAG_ZERO = bytes(TAG_SIZE)
_pack_q = struct.Struct(">Q").pack_into
_xxh64 = xxhash.xxh3_64_intdigest


def _varint_size(value: int) -> int:
    """Bytes of ``value`` as a varint (ranges.write_varint: 7 bits a byte)."""
    return max(1, -(-value.bit_length() // 7))


class PacketAssembly:
    def _emit(self, out: list, pkt: bytearray) -> None:
        """Queue one packet: appended to the burst before it when that burst is whole
        datagrams of at least its size (and of no more than ``max_datagram``: never with a
        path MTU probe), so that a run of full control-stream packets -- a tree of small
        files -- leaves in one GSO send and arrives in one GRO read, not a system call each
        on both sides."""
        if out:
            buf, seg = out[-1]
            n = len(buf)
            if (len(pkt) <= seg <= self.max_datagram and not n % seg and n + len(pkt) <= BURST_BYTES
                    and n // seg < BURST_DATAGRAMS):
                if isinstance(buf, bytearray):
                    buf += pkt
                else:
                    out[-1] = (bytes(buf) + pkt, seg)
                return
        out.append((pkt, len(pkt)))

    def _bulk_ready(self) -> bool:
        """Only new chunk bytes to send: the common case, served by ``_bulk_chunks``."""
        return (not self._unacked_eliciting and not self._sout_retx and not self._cout_retx
                and self._sout_next == self._sout_end
                and bool(self._cout_new) and self._new_chunk_bytes < self._peer_max_data)

    def _bulk_chunks(self, out: list, now: float, limit: int, cwnd: int, rate: float, credit: float) -> int:
        """One burst of full CHUNK packets of the first chunk in line: the same bytes as
        ``_fill`` + ``_packet`` would produce one by one, built in one buffer with a
        fraction of the per-packet Python work, and recorded as one run.  Returns the
        number of datagrams made."""
        key = self._cout_new[0]
        c = self._cout[key]
        mss = self.max_datagram
        room = mss - self._overhead - CHUNK_HEADER_SIZE
        rec = self.recovery
        pace = max(self._pace_next, now - credit)
        off = c.next_off
        clen = len(c.data)
        avail = min(clen - off, self._peer_max_data - self._new_chunk_bytes)
        n = min(-(-avail // room), limit, BURST_DATAGRAMS, max(1, BURST_BYTES // mss), (cwnd - rec.bytes_in_flight) // mss,
                int((now - pace) * rate / mss) + 1)
        if n <= 0 or avail <= 0:
            if pace > now:
                self.pacing_limited = True
            return 0
        nbytes = min(avail, n * room)
        prot = self.protection
        pn = self._next_pn
        if prot is not None and prot.seals_chunk_bursts:  # built and sealed in one pass
            buf = prot.seal_chunk_burst(mss, self.peer_cid, pn, key[0], key[1], clen, c.checksum, c.data, off, nbytes)
        else:
            seg = mss if prot is None else mss - (TAG_SIZE - TRAILER_SIZE)  # sealed: built with 8-byte trailers
            size = burst.burst_size(nbytes, seg)
            buf = bytearray(size)
            burst.build_chunk_burst(buf, seg, self.peer_cid, pn, key[0], key[1], clen, c.checksum, c.data, off,
                                    nbytes, _xxh64 if prot is None else None)  # (sealed: zero trailers, dropped unread)
            if prot is not None:
                buf = prot.seal_burst(buf, seg, size, mss, pn)
        size = len(buf)
        out.append((buf, mss))
        self._burst_numbered(rec, now, pn, n, mss)
        c.next_off = off + nbytes
        self._new_chunk_bytes += nbytes
        if c.next_off >= clen:
            self._cout_new.popleft()
        rec.on_sent(SentPacket(pn, now, mss, True, [("r", key, off, room, off + nbytes)], n, size - (n - 1) * mss))
        self._last_eliciting_sent = now
        self._pace_next = pace + size / rate
        self.stats["packets_sent"] += n
        self.stats["bytes_sent"] += size
        return n

    def _burst_numbered(self, rec, now: float, pn: int, n: int, mss: int) -> None:
        """A burst of ``n`` packets from ``pn`` on was built: the next number, and the times
        the recovery and PMTU search read."""
        self._next_pn = pn + n
        if not rec.bytes_in_flight:
            self._acked_at = now
        if mss > self.pmtu.base:
            self._big_sent_at = now

    def _bulk_stream_ready(self) -> bool:
        """New control-stream bytes for at least one full packet, nothing else waiting (a
        tree of small files: their SMALL_FILE frames are most of a transfer's bytes)."""
        return (not self._unacked_eliciting and not self._sout_retx and not self._cout_retx
                and self._sout_next >= self._hs_end and self._sout_end - self._sout_next >= self.max_datagram)

    def _bulk_stream(self, out: list, now: float, limit: int, cwnd: int, rate: float, credit: float) -> int:
        """A burst of full STREAM packets of new control-stream bytes: the same bytes as
        ``_fill`` + ``_packet`` make one at a time (one STREAM frame filling each packet),
        built in one buffer, sealed in one call and recorded as one run, as ``_bulk_chunks``
        does for chunk data.  Returns the number of datagrams made (0: none fit now)."""
        mss = self.max_datagram
        room = mss - self._overhead
        first = self._sout_next
        vo, vl = _varint_size(first), _varint_size(room)
        step = room - 1 - vo - vl  # data bytes per packet (as _fill: the frame fills the room)
        if _varint_size(step) != vl:
            return 0
        rec = self.recovery
        pace = max(self._pace_next, now - credit)
        # a run of packets has one step: it ends where the offset's varint grows a byte
        n = min((self._sout_end - first) // step, -(-((1 << (7 * vo)) - first) // step), limit, BULK_DATAGRAMS,
                (cwnd - rec.bytes_in_flight) // mss, int((now - pace) * rate / mss) + 1)
        if n <= 0:
            if pace > now:
                self.pacing_limited = True
            return 0
        prot = self.protection
        seg = mss if prot is None else mss - (TAG_SIZE - TRAILER_SIZE)  # sealed: built with 8-byte trailers
        pn = self._next_pn
        # one GSO send takes this many datagrams: the run goes to the socket in buffers of that size
        # (below malloc's mmap threshold: a 370 KiB buffer a burst came from fresh pages each time)
        per = min(BURST_DATAGRAMS, max(1, BURST_BYTES // mss))
        sout, rel = self._sout, first - self._sout_phys
        if prot is None:  # built straight into the buffers the socket sends
            for i in range(0, n, per):
                m = min(per, n - i)
                buf = bytearray(m * seg)
                burst.build_stream_burst(buf, seg, self.peer_cid, pn + i, first + i * step, step, m, sout,
                                         rel + i * step, _xxh64)
                out.append((buf, mss))
        else:  # built in one go where the last run was (sealing copies it out), sealed a GSO send at a time
            scratch = self._bulk_scratch
            if len(scratch) < n * seg:
                scratch = self._bulk_scratch = bytearray(n * seg)
            with memoryview(scratch) as view:
                burst.build_stream_burst(view[: n * seg], seg, self.peer_cid, pn, first, step, n, sout, rel, None)
                for i in range(0, n, per):
                    m = min(per, n - i)
                    out.append((prot.seal_burst(view[i * seg : (i + m) * seg], seg, m * seg, mss, pn + i), mss))
        self._burst_numbered(rec, now, pn, n, mss)
        stop = first + n * step
        self._sout_next = stop
        rec.on_sent(SentPacket(pn, now, mss, True, [("t", first, step, stop)], n))
        self._last_eliciting_sent = now
        self._pace_next = pace + n * mss / rate
        self.stats["packets_sent"] += n
        self.stats["bytes_sent"] += n * mss
        return n

    def _control_frames(self, now: float) -> list[bytes]:
        frames = []
        if self._recv:
            delay = int(max(0.0, now - self._largest_recv_time) * 1e6)
            frames.append(encode_ack(self._recv, delay))
        self._unacked_eliciting = 0
        self._ack_now = False
        self._ack_deadline = None
        if self.chunk_receiver:
            self._max_data_sent = max(self._max_data_sent, self._delivered + self._window())
            frames.append(encode_varint_frame(F_MAX_DATA, self._max_data_sent))
        return frames

    def _fill(self, room: int, now: float) -> tuple[list[bytes], list]:
        """Frames of retransmittable content for one packet: stream first, then chunks."""
        frames: list = []
        items: list = []
        if self._unacked_eliciting and room > 200:  # piggyback a pending ACK
            for f in self._control_frames(now):
                frames.append(f)
                room -= len(f)
        # control stream: retransmissions, then new bytes
        hs_end = self._hs_end  # with keys: bytes below go unsealed, alone (-1: no keys)
        while room > 24:
            if self._sout_retx:
                start, stop = next(iter(self._sout_retx))
                start = max(start, self._sout_base)
                if start >= stop:
                    self._sout_retx.subtract(*next(iter(self._sout_retx)))
                    continue
                retx = True
            elif self._sout_next < self._sout_end:
                start, stop = self._sout_next, self._sout_end
                retx = False
            else:
                break
            handshake = start < hs_end
            if handshake:
                if frames and items:  # not in a packet that will be sealed
                    break
                stop = min(stop, hs_end)
            # as much as fills the room exactly (type, offset and length varints, data): full
            # packets are then all of one size and go out as one burst (_emit)
            n = min(stop - start, room - 1 - _varint_size(start) - _varint_size(room))
            rel = start - self._sout_phys
            frames.append(encode_stream(start, self._sout[rel : rel + n]))
            items.append(("s", start, n))
            room -= len(frames[-1])
            if retx:
                self._sout_retx.subtract(start, start + n)
                self.stats["retransmitted_bytes"] += n
            else:
                self._sout_next = start + n
            if handshake:
                return frames, items
        # chunk data: retransmissions, then new bytes within the peer's credit
        while room > CHUNK_HEADER_SIZE + 64:
            if self._cout_retx:
                key, off, length = self._cout_retx[0]
                c = self._cout.get(key)
                if c is None:
                    self._cout_retx.popleft()
                    continue
                n = min(length, room - CHUNK_HEADER_SIZE)
                if n == length:
                    self._cout_retx.popleft()
                else:
                    self._cout_retx[0] = (key, off + n, length - n)
                self.stats["retransmitted_bytes"] += n
            elif self._cout_new and self._new_chunk_bytes < self._peer_max_data:
                key = self._cout_new[0]
                c = self._cout[key]
                off = c.next_off
                n = min(len(c.data) - off, room - CHUNK_HEADER_SIZE, self._peer_max_data - self._new_chunk_bytes)
                c.next_off += n
                self._new_chunk_bytes += n
                if c.next_off >= len(c.data):
                    self._cout_new.popleft()
            else:
                break
            frames.append(CHUNK_HEADER.pack(F_CHUNK, key[0], key[1], len(c.data), off, c.checksum, n))
            frames.append(memoryview(c.data)[off : off + n])
            items.append(("c", key, off, n))
            room -= CHUNK_HEADER_SIZE + n
        return frames, items

    def _oldest(self, room: int, stream: bool) -> tuple[list, list]:
        """A probe's content (RFC 9002 6.2.4 lets it be data sent before): the oldest
        unacknowledged bytes sent of the control stream (``stream``) or of the chunks, as much
        as one packet holds; nothing when there are none.  A receiver short of memory drops
        packets unacknowledged, and then drops new data far into a chunk whose start it dropped
        (reassembly.py) -- while the oldest bytes are what it takes as soon as it has room: in
        the stream, where its in-order bytes end; in a chunk, where the acknowledged bytes end.
        With nothing acknowledged no loss is declared, so only a probe sends them again."""
        if stream:
            start, stop = self._sout_base, self._sout_next
            if start >= stop or start < self._hs_end:  # (our handshake bytes: transmit resends them)
                return [], []
            for a, _ in self._sout_acked:  # up to the next bytes acknowledged
                if a > start:
                    stop = min(stop, a)
                    break
            n = min(stop - start, room - 1 - _varint_size(start) - _varint_size(room))
            rel = start - self._sout_phys
            self.stats["retransmitted_bytes"] += n
            return [encode_stream(start, self._sout[rel : rel + n])], [("s", start, n)]
        for key, c in self._cout.items():  # in the order sent: the first is the oldest
            a, b = next(iter(c.unacked))
            b = min(b, c.next_off, a + room - CHUNK_HEADER_SIZE)
            if a >= b:  # its first bytes unacknowledged were never sent: no old chunk data
                break
            self.stats["retransmitted_bytes"] += b - a
            header = CHUNK_HEADER.pack(F_CHUNK, key[0], key[1], len(c.data), a, c.checksum, b - a)
            return [header, memoryview(c.data)[a:b]], [("c", key, a, b - a)]
        return [], []

    def _packet(self, frames: list, now: float, items: list, eliciting: bool) -> bytes:
        pn = self._next_pn
        self._next_pn += 1
        out = bytearray(HEADER.pack(DATA, VERSION, self.peer_cid, pn))
        for f in frames:
            out += f
        prot = self.protection
        if prot is not None and not (items and items[0][0] == "s" and items[0][1] < self._hs_end):
            out += _TAG_ZERO
            prot.seal(out, pn)
        else:  # no keys, or our own handshake bytes: checksummed
            end = len(out)
            out += _TRAILER_ZERO
            with memoryview(out) as mv:
                _pack_q(out, end, _xxh64(mv[:end]))
        size = len(out)
        self.stats["packets_sent"] += 1
        self.stats["bytes_sent"] += size
        if eliciting:
            self._last_eliciting_sent = now
            if not self.recovery.bytes_in_flight:
                self._acked_at = now  # the wait for an acknowledgement starts
            if size > self.pmtu.base and not (items and items[0][0] == "p"):
                self._big_sent_at = now
        self.recovery.on_sent(SentPacket(pn, now, size, eliciting, items))
        return out
