"""Sealed packets in a UDP session (a mixin of ``UdpSession``, sans I/O; protocol.md 14.13).

The handshake runs on the control stream like any other bytes.  Then:

* ``install_keys``: from now on what this side sends is sealed
  (``secure/datagrams.py``), except packets carrying its own handshake bytes
  (stream offsets below ``_hs_end``), which the peer may need before it has keys;
* sealed packets that arrive before that are held (at most ``EARLY_LIMIT``) and
  opened at ``install_keys``;
* with keys, an unsealed packet may still carry the peer's handshake bytes, but
  its ACK and MAX_DATA frames are ignored and CHUNK frames drop it; its number is
  also noted apart (``_plain_recv``), so that a sealed packet with the same number
  is still taken (a forged plaintext packet cannot shadow it as a "duplicate");
* ``handshake_done``: the peer's handshake is consumed.  Unsealed stream bytes
  beyond it, or chunk data that arrived unsealed, mean someone else wrote them:
  ``AuthError``.  From now on unsealed DATA packets are dropped.
"""

from __future__ import annotations

from ...errors import ErrorCode, RemoteProtocolError
from ..ranges import RangeSet
from ..secure import AuthError, Established
from ..secure.datagrams import SEALED_OVERHEAD, PacketProtection
from ..secure.handshake import unauthenticated_reason
from . import burst
from .packets import (DATA, CHUNK_HEADER_SIZE, HEADER_SIZE, AckFrame, ChunkFrame, CloseFrame, MaxDataFrame, StreamFrame,
                      parse, parse_frames)

EARLY_LIMIT = 16  # sealed packets kept until we have keys ...
EARLY_BYTES = 64 * 1024  # ... and their bytes in all
PLAIN_RANGES_KEPT = 96  # ranges of numbers recorded from unsealed packets while we have keys
# Where a burst of sealed datagrams (one or more GRO reads, as the driver joins them) is
# opened: used within one call only (the session copies what it keeps), so one buffer serves
# every session; it grows to the largest burst a driver hands over (256 KiB: udp_socket.py).
_SCRATCH = bytearray(65536)


def _scratch(size: int) -> bytearray:
    global _SCRATCH
    if len(_SCRATCH) < size:
        _SCRATCH = bytearray(size)
    return _SCRATCH


class SealedPackets:
    protection: PacketProtection | None = None
    _hs_end = -1  # our stream offset at install_keys: bytes below it are sent unsealed
    _sealed_only = False  # handshake_done: unsealed DATA is dropped
    _plain_end = 0  # end of the highest stream bytes that arrived unsealed
    _early_bytes = 0
    _peer_hs_end = -1  # handshake_done: where the peer's handshake ends on its stream
    _hs_settled = False  # our handshake bytes count as delivered (the peer finished)

    @property
    def chunks_authenticated(self) -> bool:
        """Every chunk byte we take arrives sealed: the handshake is done (no chunk data came before
        it, ``handshake_done``) and unsealed CHUNK frames are dropped."""
        return self._sealed_only

    def install_keys(self, est: Established, limits: tuple[int, int, int] | None = None) -> None:
        """Our handshake bytes are all written: seal everything after them."""
        self.protection = PacketProtection(est, limits)
        self._hs_end = self._sout_end
        self._overhead = SEALED_OVERHEAD
        # every number received so far came unsealed (anyone could have sent it): a held or
        # later sealed packet with one of them is not a duplicate (_recv is bounded, so is this)
        self._plain_recv = RangeSet(self._recv)
        early, self._early = self._early, []
        self._early_bytes = 0
        for datagram in early:
            self.receive_sealed(datagram, self.last_recv_time)

    def handshake_done(self, leftover: int) -> None:
        """The peer's handshake is consumed: the ``leftover`` bytes last read from the stream
        are not part of it.  Raises ``AuthError`` if unsealed data lies beyond it."""
        boundary = self._sin.next - self._sin.size - leftover
        if self._plain_end > boundary:
            raise AuthError("unauthenticated control-stream bytes after the peer's handshake (an attacker on the path?)")
        if self._cin.slots or self._cin.completed or self._delivered:
            raise AuthError("chunk data arrived before the handshake finished (an attacker on the path?)")
        self._sealed_only = True
        self._peer_hs_end = boundary
        self._check_peer_finished()

    def _check_peer_finished(self) -> None:
        """The peer's own stream bytes beyond its handshake, which only a peer that finished
        sends (protocol.md 14.13) and which arrived sealed (we finished: only sealed bytes are
        taken), show that it consumed our handshake: those bytes count as delivered, and are
        never resent.  A finished peer discards DATA, so a resent copy (our first one declared
        lost, its late ACK then settling nothing) could never be acknowledged: our stream
        would stay stuck behind it for good."""
        if not self._hs_settled and self._sealed_only and self._sin.next > self._peer_hs_end:
            self._hs_settled = True
            if self._hs_end > 0:
                self._sout_acked.add(0, self._hs_end)
                self._sout_retx.subtract(0, self._hs_end)
                self._trim_stream()

    def _plain_room(self) -> bool:
        """Room to record one more unsealed packet's number (the peer sends a handful in the
        handshake; a forger's are not kept without bound)."""
        return len(self._plain_recv) < PLAIN_RANGES_KEPT

    def _unsealed_frames(self, payload) -> list:
        """With keys: what an unsealed packet may still do (nothing once the handshake is done)."""
        if self._sealed_only:
            self.stats["unsealed_dropped"] += 1
            return []
        out = []
        for f in parse_frames(payload):
            if isinstance(f, ChunkFrame):
                self.stats["unsealed_dropped"] += 1
                return []
            if isinstance(f, StreamFrame):
                self._plain_end = max(self._plain_end, f.offset + len(f.data))
            elif isinstance(f, (AckFrame, MaxDataFrame)):
                continue  # not authenticated: an attacker's ACK could make us forget data
            elif isinstance(f, CloseFrame):  # it ends the session (as a drop would), but its reason
                f = CloseFrame(f.code, unauthenticated_reason(f.reason or "peer closed"))  # is not the peer's word
            out.append(f)
        return out

    def receive_sealed(self, view, now: float) -> None:
        """A SEALED datagram addressed to us (type, version and length checked)."""
        if self.closed:
            return
        prot = self.protection
        if prot is None:
            if len(self._early) < EARLY_LIMIT and self._early_bytes + len(view) <= EARLY_BYTES:
                self._early.append(bytes(view))
                self._early_bytes += len(view)
            return
        try:
            payload = prot.open(view)
        except AuthError as exc:
            self.close(ErrorCode.AUTH, str(exc))
            return
        if payload is None:
            self.stats["forged"] += 1
            return
        self.receive_payload(int.from_bytes(view[10:HEADER_SIZE], "big"), payload, now, opened=True)

    def _receive_opened(self, scratch: memoryview, offsets: list[int], plain: int, now: float) -> None:
        """Opened datagrams of ``plain`` bytes at ``offsets`` of ``scratch`` that are not CHUNK
        runs.  New packets of one STREAM frame each, whose numbers and stream offsets follow
        on from each other (a burst of them: a tree of small files), are taken as one run:
        recorded, checked for room and added to the stream at once (``burst.scan_stream_runs``
        finds the runs and joins their bytes; in C, a loop in Python cost ~3 us a packet).
        The rest one by one."""
        runs = burst.scan_stream_runs(scratch, offsets, plain, self._largest_recv >= 0, max(self._largest_recv, 0))
        for i, count, pn, start, end, data in runs:
            if start < 0 or count == 1 or pn <= self._largest_recv or self.closed \
                    or not self._sin.fits(start, end - start):
                # one by one, as many as fit (what went before may have moved _largest_recv)
                for k in range(count):
                    off = offsets[i + k]
                    self.receive_payload(pn + k, scratch[off + HEADER_SIZE : off + plain - 8], now, opened=True)
                continue
            # (stats: every packet of the run counted at the first one's size; all are full datagrams)
            in_order = self._record(pn, plain - 8 - HEADER_SIZE, now, count)
            self._sin.add(start, data)
            self._on_eliciting(in_order, now, count)

    def receive_sealed_burst(self, view, seg: int, now: float) -> None:
        """SEALED datagrams of ``seg`` bytes laid end to end (a GRO read), addressed to us:
        opened into a scratch buffer as checksummed DATA packets, whose full CHUNK packets
        ``receive_chunk_burst`` takes a run at a time."""
        prot = self.protection
        if prot is None or self.closed or seg - SEALED_OVERHEAD - CHUNK_HEADER_SIZE <= 0 or not self.chunk_receiver:
            for off in range(0, len(view), seg):
                self.receive_sealed(view[off : off + seg], now)
            return
        scratch = _scratch(len(view))
        try:
            used, bad, unsealed = prot.open_burst(view, seg, self.local_cid.to_bytes(8, "big"), scratch)
        except AuthError as exc:
            self.close(ErrorCode.AUTH, str(exc))
            return
        self.stats["forged"] += bad
        plain = seg - 8
        scratch = memoryview(scratch)
        others, _ = self.receive_chunk_burst(scratch[:used], plain, now, opened=True)
        if others:
            self._receive_opened(scratch, others, plain, now)
        for off in unsealed:  # e.g. our peer's handshake bytes, sent again: checksummed
            try:
                pkt = parse(view[off : off + seg])
            except RemoteProtocolError:
                continue
            if pkt.ptype == DATA and pkt.dcid == self.local_cid:
                self.receive_payload(pkt.pn, pkt.payload, now)
