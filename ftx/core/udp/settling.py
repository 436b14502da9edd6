"""What an ACK settles, and what a loss sends again (a mixin of ``UdpSession``, sans I/O).

``_on_ack`` hands the peer's ACK to recovery (recovery.py), which says which
packets it newly acknowledges and which are now lost; ``_settle`` then does what
each packet carried: acknowledged control-stream bytes leave the send buffer
(``_trim_stream``), acknowledged chunk pieces free their chunk once all of it is
acknowledged, lost ones are queued to go again; a path MTU probe raises or
lowers the datagram size (pmtu.py).  Losses also feed the congestion controller
and the black-hole detection of RFC 8899 4.3 (``_on_lost``, ``_black_hole``):
datagrams above the base size that keep being lost make the session fall back
to it.
"""

from __future__ import annotations

from ...errors import RemoteProtocolError
from .congestion import Bbr
from .packets import AckFrame
from .recovery import SentPacket

# Path MTU black hole (RFC 8899 4.3): this many datagrams larger than the base size lost,
# and none acknowledged for three round trips, while smaller ones still get through (a
# congestion drop of part of a burst loses many at once, but the rest keep being acked).
BLACK_HOLE_LOSSES = 16
# Until one datagram above the base size has been acknowledged, the size is a guess: this
# many of them lost while later, smaller ones are acknowledged, and it was a wrong guess.
UNCONFIRMED_LOSSES = 3
SOUT_KEPT = 4 * 1024 * 1024  # a send buffer this big is let go once all of it is acknowledged


class Settling:
    def _on_ack(self, f: AckFrame, now: float) -> None:
        if f.acked and f.acked.last() >= self._next_pn:
            raise RemoteProtocolError("ACK for a packet never sent")
        rs = self.recovery.on_ack(f.acked, f.delay_us / 1e6, now)
        if rs.acked:
            self._acked_at = now
        base = self.pmtu.base
        for run, a, b in rs.acked:
            self._settle(run, a, b, acked=True)
            if run.size > base:  # datagrams above the base size get through
                self._big_lost, self._big_acked_at, self._big_confirmed = 0, now, True
        self.cc.on_ack(rs, now, self.recovery.delivered, self.recovery.bytes_in_flight, self.recovery.rtt.smoothed)
        self._on_lost(rs, now)

    def _set_max_datagram(self, size: int) -> None:
        if size != self.max_datagram:
            self.max_datagram = size
            self.cc.set_mss(size)
            self._size_pn = self._next_pn

    def _black_hole(self, now: float) -> None:
        """Datagrams of our size do not get through (RFC 8899 4.3): fall back to the base
        size; what was lost goes again, smaller, and the search for a larger size restarts."""
        if self.pmtu.on_black_hole(now):
            if not self._big_confirmed:  # nothing got through yet: the path model learnt nothing
                self.cc = Bbr(self.pmtu.current, self.config.max_rate, 3 * self.config.ack_every)
            self._set_max_datagram(self.pmtu.current)
            self._big_lost = 0
            self.stats["pmtu_fallbacks"] += 1

    def _on_lost(self, rs, now: float) -> None:
        base = self.pmtu.base
        for run, a, b in rs.lost:
            if run.items and run.items[0][0] == "p":  # a lost probe says nothing about congestion
                rs.newly_lost -= run.span_bytes(a, b)
                rs.lost_count -= b - a
            elif run.size > base and run.pn >= self._size_pn:  # (not what went before a size change)
                self._big_lost += b - a
        # Losses found by an ACK: later packets got through.  A size never confirmed is given
        # up after a few; a confirmed one only when none got through for three round trips.
        if self._big_confirmed:
            if self._big_lost >= BLACK_HOLE_LOSSES and now - self._big_acked_at > 3 * self.recovery.rtt.smoothed:
                self._black_hole(now)
        elif self._big_lost >= UNCONFIRMED_LOSSES:
            self._black_hole(now)
        for run, a, b in rs.lost:  # too big for the path, not a sign of congestion (RFC 8899 3)
            if run.size > self.max_datagram and not (run.items and run.items[0][0] == "p"):
                rs.newly_lost -= run.span_bytes(a, b)
                rs.lost_count -= b - a
                self.stats["lost_packets"] += b - a
        if rs.lost:
            self.stats["lost_packets"] += rs.lost_count
            for run, a, b in rs.lost:
                self._settle(run, a, b, acked=False)
            self.cc.on_loss(rs, now)

    def _settle(self, run: SentPacket, a: int, b: int, acked: bool) -> None:
        """Packets ``a .. b - 1`` of ``run`` were acknowledged, or lost: their content is
        done with, or must go again."""
        for item in run.items:
            kind = item[0]
            if kind == "p":  # a path MTU probe
                if acked:
                    self.pmtu.on_probe_acked(item[1])
                    self._set_max_datagram(self.pmtu.current)
                else:
                    self.pmtu.on_probe_lost(item[1])
                continue
            if kind == "s" or kind == "t":
                if kind == "s":
                    _, off, length = item
                    end = off + length
                else:  # a burst of control-stream bytes, ``step`` bytes a packet
                    _, first, step, stop = item
                    off = first + (a - run.pn) * step
                    end = min(first + (b - run.pn) * step, stop)
                if acked:
                    self._sout_acked.add(off, end)
                    self._trim_stream()
                elif end > self._sout_base:  # (not what already counts as delivered)
                    self._sout_retx.add(max(off, self._sout_base), end)
                continue
            if kind == "r":  # a burst of one chunk's bytes, ``step`` bytes a packet
                _, key, first, step, stop = item
                off = first + (a - run.pn) * step
                length = min(first + (b - run.pn) * step, stop) - off
            else:
                _, key, off, length = item
            c = self._cout.get(key)
            if c is None:
                continue
            if acked:
                c.unacked.subtract(off, off + length)
                if not c.unacked:
                    del self._cout[key]
                    self._spares.put(c.data)
                    self.retained_bytes -= len(c.data)
                    self._file_chunks[key[0]] -= 1
                    if not self._file_chunks[key[0]]:
                        del self._file_chunks[key[0]]
            else:
                self._cout_retx.append((key, off, length))

    def _trim_stream(self) -> None:
        end = self._sout_acked.prefix_end() if self._sout_acked else 0
        if end > self._sout_base:
            self._sout_base = end
            # Acknowledged bytes leave the buffer once they are half of what it holds: deleting the
            # front of a bytearray at each ACK made each later append move all the rest (MBs per
            # call while a tree of small files streams).  The rest moves to the front in place
            # (no longer than the gap: the copies do not overlap), each byte about once; a
            # bytearray cut at the front and grown at the back by 1/8 at a time was reallocated
            # and copied whole again and again (~50 ms of sender CPU per 64 MB of small files).
            dead = end - self._sout_phys
            live = self._sout_end - end
            if dead >= live:
                if live:
                    with memoryview(self._sout) as v:
                        v[:live] = v[dead : dead + live]
                elif len(self._sout) > SOUT_KEPT:
                    self._sout = bytearray()  # all acknowledged: a big buffer goes back
                self._sout_phys = end
