"""One ftx connection over UDP, sans I/O: both directions, either role.

Carries two things reliably:

* the control stream -- the same frames as on TCP (HELLO, OFFER, DECISION, ...)
  as an ordered byte stream in STREAM frames, retransmitted until acknowledged;
* chunk data (sender to receiver only) in CHUNK frames that name the file,
  chunk and offset they fill, so nothing waits behind a lost packet: the
  receiver reassembles each chunk, checks its XXH3-64 and hands it over whole.

Every packet gets a new packet number; lost content is sent again in new
packets (RFC 9002).  ACK frames carry ranges.  A BBR-style controller paces
the sender; the receiver's MAX_DATA bounds the chunk bytes it must buffer.

Driver contract (as aioquic's): feed ``receive_payload(pn, payload, now)``,
send ``datagrams_to_send(now)``, wake at ``next_timer()`` and call
``handle_timer(now)``.  No socket, no clock.

Its parts, mixins of ``UdpSession``: intake.py (what a received packet does),
settling.py (what an ACK settles and a loss sends again), assembly.py (the
packets it sends), protection.py (sealed packets).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ...errors import ErrorCode
from ..ranges import RangeSet
from .congestion import Bbr
from .packets import F_PING, OVERHEAD, MAX_MAX_DATAGRAM, encode_close, segments
from .assembly import BURST_BYTES, BURST_DATAGRAMS, PacketAssembly
from .intake import PacketIntake
from .protection import SealedPackets
from .pmtu import PmtuSearch
from .reassembly import MAX_CHUNK, STREAM_OOO_LIMIT, ChunkAssembler, MemoryBudget, Spares, StreamAssembler
from .recovery import Recovery
from .settling import Settling

INITIAL_MAX_DATA = 16 * 1024 * 1024  # credit every peer may assume before the first MAX_DATA (protocol.md)
# Pacing credit a sender may bank: more than a driver's nap between bursts plus timer slop
# (drivers nap up to 2 ms), or every nap would forfeit part of the rate.
PACING_BURST = 0.005
__all__ = ["BURST_BYTES", "BURST_DATAGRAMS", "MAX_CHUNK", "STREAM_OOO_LIMIT", "UdpConfig", "UdpSession"]
MIN_FLOW_WINDOW = 2 * 1024 * 1024
# What one session may make its receiver buffer: a full credit of chunk data, a chunk
# beyond it, the control stream in both directions of its buffer, and spare chunk buffers.
SESSION_BUFFER_LIMIT = 48 * 1024 * 1024
PENDING_BUFFER_LIMIT = 1024 * 1024  # the same before the handshake is finished (``established``)


@dataclass
class UdpConfig:
    max_datagram: int = 1452
    """Largest UDP payload sent (1500-byte path: 1452)."""

    idle_timeout: float = 15.0
    """Close when nothing at all arrived for this long; PING at a third of it."""

    max_ack_delay: float = 0.005
    """How long a receiver may hold back an ACK (the sender's PTO allows 25 ms)."""

    ack_every: int = 10
    """Acknowledge at least every this many ack-eliciting packets."""

    flow_window: int = 16 * 1024 * 1024
    """Chunk bytes a receiver will buffer beyond what it has handed over (MAX_DATA)."""

    max_rate: float | None = None
    """Cap on the pacing rate, bytes per second."""

    retain_limit: int = 16 * 1024 * 1024
    """Sender: unacknowledged chunk bytes kept for retransmission before send_chunk blocks."""

    pmtud: bool = False
    """Sender: also probe for datagrams larger than max_datagram (RFC 8899, pmtu.py; the
    driver then sets the don't-fragment bit on every datagram).  Without it a peer still
    falls back to 1200-byte datagrams when larger ones do not get through, and then searches
    up to max_datagram again.  A receiver never searches above max_datagram."""

    handshake_timeout: float | None = None
    """Receiver: close a session whose application has not called ``established`` this long
    after it was created (the ftx HELLO did not arrive); None: no limit."""

    stall_timeout: float | None = None
    """Receiver: close a session that hands its application no stream bytes and no chunk for
    this long (PINGs and ACKs keep a session alive, but not this); None: no limit."""


PEER_MAX_ACK_DELAY = 0.025  # assumed for the peer in PTO computations (RFC 9000 default)


@dataclass
class ChunkOut:
    data: bytearray
    checksum: int
    next_off: int
    unacked: RangeSet


class UdpSession(PacketIntake, Settling, PacketAssembly, SealedPackets):
    def __init__(self, local_cid: int, peer_cid: int, config: UdpConfig, now: float, chunk_receiver: bool,
                 budget: MemoryBudget | None = None) -> None:
        self.local_cid = local_cid
        self.peer_cid = peer_cid
        self.config = config
        self.chunk_receiver = chunk_receiver
        mss = self.max_datagram = config.max_datagram
        self.pmtu = PmtuSearch(mss, now, ceiling=None if chunk_receiver or not config.pmtud else MAX_MAX_DATAGRAM)
        self._big_lost = 0  # datagrams above the base size lost since one was last acknowledged
        self._big_acked_at = now
        self._big_confirmed = mss <= self.pmtu.base  # a datagram above the base size was acknowledged
        self._big_sent_at = float("-inf")  # when one (not a probe) was last sent
        self._size_pn = 0  # packets from this number on were sent at the current size
        self._acked_at = now  # when something we sent was last acknowledged (or nothing was in flight)
        self.recovery = Recovery(PEER_MAX_ACK_DELAY)
        self.cc = Bbr(mss, config.max_rate, 3 * config.ack_every)
        self._next_pn = 0
        self._overhead = OVERHEAD  # header and trailer (or tag, once sealed: protection.py)
        self._early: list[bytes] = []  # sealed packets that came before our keys
        # receiving
        self._recv = RangeSet()
        # numbers recorded from unsealed packets while we have keys (protection.py): a sealed
        # packet with one of them is not a duplicate (a forger must not shadow it)
        self._plain_recv = RangeSet()
        self._recv_floor = -1  # packet numbers up to here were forgotten (only the last 64 ranges are kept)
        self._largest_recv = -1
        self._largest_recv_time = 0.0
        self._unacked_eliciting = 0
        self._ack_now = False
        self._ack_deadline: float | None = None
        self.last_recv_time = now
        self._last_eliciting_sent = now
        # control stream, out and in
        # our stream bytes from offset _sout_phys on, in the first _sout_end - _sout_phys bytes of
        # _sout (the rest is room for more: the buffer is not resized at every write and trim) ...
        self._sout = bytearray()
        self._bulk_scratch = bytearray()  # where _bulk_stream builds a burst before sealing it
        self._sout_phys = 0
        self._sout_base = 0  # ... of which those below _sout_base are acknowledged
        self._sout_end = 0
        self._sout_next = 0
        self._sout_retx = RangeSet()
        self._sout_acked = RangeSet()
        # what the peer makes us buffer (chunks, stream) is charged here and to ``budget``
        self.budget = budget if budget is not None else MemoryBudget(1 << 62)
        self.held = 0
        self._sin = StreamAssembler(self)
        self._handshake_deadline = (now + config.handshake_timeout
                                    if chunk_receiver and config.handshake_timeout is not None else None)
        self._stall = config.stall_timeout if chunk_receiver else None
        self._progress_at = now  # when the application last got stream bytes, or chunk bytes arrived
        self.chunk_bytes_in = 0  # new chunk bytes that arrived (file_data_arrived)
        self.on_established = None  # called once by established() (the receiver's Admission)
        # chunks out (sender)
        self._cout: dict[tuple[int, int], ChunkOut] = {}
        self._cout_new: deque[tuple[int, int]] = deque()
        self._cout_retx: deque[tuple[tuple[int, int], int, int]] = deque()
        self.retained_bytes = 0
        self._file_chunks: dict[int, int] = {}
        self._peer_max_data = INITIAL_MAX_DATA
        self._new_chunk_bytes = 0
        # chunks in (receiver)
        self._spares = Spares()  # sender: buffers of chunks sent
        self._cin = ChunkAssembler(self)
        self._completed = self._cin.completed
        self._delivered = 0
        self._max_data_sent = INITIAL_MAX_DATA
        self.flow_window = config.flow_window  # shrinks when our socket buffer overflows (on_overflow)
        self._window_floor = MIN_FLOW_WINDOW  # never below: two of the largest chunks seen
        self._overflow_at = float("-inf")
        # pacing, probes, close
        self._pace_next = now
        self.pacing_limited = False  # the last datagrams_to_send stopped for pacing
        self._blocked_probe_at = now
        self._probes = 0
        self._probe_old = 0  # 2: a probe may carry the oldest stream bytes, 1: the oldest chunk bytes
        self._ping = False
        self.closed = False
        self.close_code: int = 0
        self.close_reason = ""
        self._close_sends = 0
        self.stats = {"packets_sent": 0, "packets_received": 0, "bytes_sent": 0, "bytes_received": 0,
                      "retransmitted_bytes": 0, "lost_packets": 0, "duplicate_packets": 0, "stale_packets": 0,
                      "dropped_no_buffer": 0, "probes": 0, "receive_overflows": 0, "pmtu_probes": 0,
                      "pmtu_fallbacks": 0, "forged": 0, "unsealed_dropped": 0,
                      "cwnd_limited": 0, "pacing_limited": 0, "app_limited": 0}

    # == what the peer makes us buffer =============================================
    def may_hold(self, n: int) -> bool:
        """Whether ``n`` more buffered bytes of the peer's data are allowed, for this session and in
        all; chunk buffers kept for reuse give way to them (else spares filling a small budget
        dropped every packet, and the transfer hung)."""
        if self.may_keep(n):
            return True
        if self._cin.spares.bytes:
            self.release(self._cin.spares.clear())
            return self.may_keep(n)
        return False

    def may_keep(self, n: int) -> bool:
        """``may_hold`` without making way: whether ``n`` more bytes fit as things are."""
        limit = SESSION_BUFFER_LIMIT if self._handshake_deadline is None else PENDING_BUFFER_LIMIT
        return self.held + n <= limit and self.budget.allows(self.held, n)

    def may_start(self, n: int) -> bool:
        """Whether a session without a chunk in progress may reserve ``n`` bytes for one."""
        limit = SESSION_BUFFER_LIMIT if self._handshake_deadline is None else PENDING_BUFFER_LIMIT
        return self.held + n <= limit and self.budget.allows_start(n)

    def charge(self, n: int) -> None:
        self.held += n
        self.budget.used += n

    def release(self, n: int) -> None:
        self.held -= n
        self.budget.used -= n

    def release_buffers(self) -> None:
        """The session is over: what it buffered no longer counts (the driver drops it)."""
        self._cin.release_all()
        self._sin.release_all()

    def _window(self) -> int:
        """The MAX_DATA window: the configured one, smaller when our socket overflowed or
        when the memory shared by all sessions is tight (never below a chunk and a step,
        or a sender could stop mid-chunk waiting for credit only that chunk can bring)."""
        largest = self._cin.largest
        if 2 * largest > self._window_floor:
            # the credit must cover a whole chunk or two, or a sender stopped by it in the
            # middle of a chunk would wait for a delivery that cannot happen
            self._window_floor = min(2 * largest, self.config.flow_window)
            self.flow_window = max(self.flow_window, self._window_floor)
        share = self.budget.share() - (self.held - self._cin.buffered)  # minus stream and spares
        return min(self.flow_window, max(share, largest + 64 * 1024, 256 * 1024))

    def established(self) -> None:
        """The application has the peer's HELLO: the handshake timeout no longer applies."""
        self._handshake_deadline = None
        if self.on_established is not None:
            callback, self.on_established = self.on_established, None
            callback()

    def application_busy(self, now: float) -> None:
        """The application is busy with work of its own (hashing, fsync) and reads nothing
        meanwhile: that is not the peer's stall."""
        self._progress_at = max(self._progress_at, now)

    def file_data_arrived(self, n: int) -> None:
        """``n`` new bytes of a chunk arrived (reassembly.py): progress, though it is not whole."""
        self._progress_at = self.last_recv_time
        self.chunk_bytes_in += n

    # == application side =========================================================
    def stream_write(self, data) -> None:
        if type(data) is memoryview and (data.itemsize != 1 or not data.c_contiguous):
            data = data.tobytes()
        n = len(data)
        at = self._sout_end - self._sout_phys
        if at + n > len(self._sout):  # grows by what it needs (bytearray keeps spare room itself):
            self._sout[at:] = data  # doubling made 5 MB unacknowledged a 16 MB buffer
        else:
            self._sout[at : at + n] = data
        self._sout_end += n

    def stream_read_into(self, buf: memoryview) -> int:
        n = self._sin.read_into(buf)
        if n:
            self._progress_at = self.last_recv_time
        return n

    @property
    def stream_readable(self) -> int:
        return self._sin.size

    @property
    def stream_buffered(self) -> int:
        """Control-stream bytes written and not yet acknowledged (sent or not)."""
        return self._sout_end - self._sout_base

    @property
    def stream_all_acked(self) -> bool:
        return self._sout_base == self._sout_end

    def spare_buffer(self, size: int) -> bytearray:
        """A buffer to read a chunk into and hand to ``send_chunk(..., owned=True)``."""
        return self._spares.get(size)

    def send_chunk(self, file_id: int, index: int, checksum: int, data, owned: bool = False) -> None:
        """Queue a chunk; the session keeps it until acknowledged.  ``owned``: ``data`` is a
        bytearray the caller gives up (from ``spare_buffer``), kept without a copy."""
        key = (file_id, index)
        if key in self._cout:
            return
        if owned:
            buf = data
        else:
            buf = self._spares.get(len(data))
            buf[:] = data
        self._cout[key] = ChunkOut(buf, checksum, 0, RangeSet([(0, len(data))]))
        self._cout_new.append(key)
        self.retained_bytes += len(data)
        self._file_chunks[file_id] = self._file_chunks.get(file_id, 0) + 1

    def file_acked(self, file_id: int) -> bool:
        return file_id not in self._file_chunks

    def take_chunks(self) -> list:
        out = self._cin.take()
        if out:
            self._progress_at = self.last_recv_time
        for _, _, _, buf in out:
            self._delivered += len(buf)
            if self.flow_window < self.config.flow_window:  # regrow slowly: 1/32 of what is delivered
                self.flow_window = min(self.config.flow_window, self.flow_window + len(buf) // 32)
        return out

    def on_overflow(self, now: float) -> None:
        """The driver saw datagrams dropped because our socket buffer was full: we take
        them in slower than the sender sends (BBR cannot tell that from a path that is
        merely bursty).  Halve the flow-control window -- at most once a round trip, down
        to MIN_FLOW_WINDOW or two of the largest chunks -- so that no more new data is in
        flight than the buffer holds."""
        if now - self._overflow_at >= max(self.recovery.rtt.smoothed, 0.01):
            self._overflow_at = now
            self.flow_window = max(self.flow_window // 2, self._window_floor)
            self.stats["receive_overflows"] += 1

    def recycle(self, buf: bytearray) -> None:
        """A chunk buffer from ``take_chunks`` that nothing refers to any more."""
        if not self.closed:
            self._cin.recycle(buf)

    def close(self, code: int = 0, reason: str = "") -> None:
        if not self.closed:
            self.closed, self.close_code, self.close_reason = True, code, reason
            self._close_sends = 2

    # == output ===================================================================
    def _has_data(self) -> bool:
        return bool(
            self._sout_retx or self._sout_next < self._sout_end or self._cout_retx
            or (self._cout_new and self._new_chunk_bytes < self._peer_max_data)
        )

    def _credit_starved(self, now: float) -> bool:
        return bool(self._cout_new) and self._new_chunk_bytes >= self._peer_max_data \
            and not self.recovery.bytes_in_flight and now >= self._blocked_probe_at

    def _want_ack(self, now: float) -> bool:
        if not self._unacked_eliciting and not self._ack_now:
            return False
        return self._ack_now or (self._ack_deadline is not None and now >= self._ack_deadline)

    def _max_data_due(self) -> bool:
        if not self.chunk_receiver:
            return False
        window = self._window()
        return self._delivered + window - self._max_data_sent >= window // 4

    def datagrams_to_send(self, now: float, limit: int = 64) -> list[bytes]:
        """What to send now, one datagram each (drivers that can send bursts use ``transmit``)."""
        return [bytes(d) for buf, seg in self.transmit(now, limit) for d in segments(buf, seg)]

    def transmit(self, now: float, limit: int = 64) -> list[tuple[bytearray, int]]:
        """What to send now, at most ``limit`` datagrams, as ``(buffer, size)`` bursts: a
        buffer holds datagrams of ``size`` bytes laid end to end, the last one possibly
        shorter -- one UDP GSO send each (a driver without GSO sends the slices)."""
        out: list[tuple[bytearray, int]] = []
        if not self._hs_settled and self._sealed_only:
            self._check_peer_finished()
        if self.closed:
            while self._close_sends:  # two copies, back to back: one may be lost
                self._close_sends -= 1
                self._emit(out, self._packet([encode_close(self.close_code, self.close_reason)], now, [], False))
            return out
        count = 0
        if self.protection is not None:
            self.protection.maybe_update()  # keys near their limits: the next ones
        if self._want_ack(now) or self._max_data_due():
            self._emit(out, self._packet(self._control_frames(now), now, [], False))
            count += 1
        self.pacing_limited = False
        size = self.pmtu.probe_due(now)
        if size is not None:  # a padded PING: no content, acknowledged or not
            self._emit(out, self._packet([bytes([F_PING]), bytes(size - self._overhead - 1)], now, [("p", size)], True))
            self.stats["pmtu_probes"] += 1
            count += 1
        mss = self.max_datagram
        cwnd = self.cc.cwnd
        rate = self.cc.pacing_rate
        credit = max(PACING_BURST, 10 * mss / rate)  # pacing credit that may be banked
        while count < limit:
            probe = self._probes > 0
            if not probe:
                if self.recovery.bytes_in_flight + mss > cwnd:
                    self.stats["cwnd_limited"] += 1
                    break
                if now < self._pace_next:
                    self.pacing_limited = True
                    self.stats["pacing_limited"] += 1
                    break
                if not self._has_data():
                    if self._credit_starved(now):
                        # out of credit with nothing in flight: a PING draws an ACK, and the
                        # ACK carries the receiver's current MAX_DATA (its last one may be lost)
                        self._ping = True
                        self._blocked_probe_at = now + self.recovery.rtt.pto()
                    if self._ping:
                        self._ping = False
                        self._emit(out, self._packet([bytes([F_PING])], now, [], True))
                        count += 1
                    else:
                        self.recovery.mark_app_limited()
                        self.stats["app_limited"] += 1
                    break
            if not probe and self._bulk_stream_ready():
                made = self._bulk_stream(out, now, limit - count, cwnd, rate, credit)
                if not made:
                    break
                count += made
                continue
            if not probe and self._bulk_ready():
                made = self._bulk_chunks(out, now, limit - count, cwnd, rate, credit)
                if not made:
                    break
                count += made
                continue
            if probe and not self._sout_retx and self._sout_base < self._hs_end and not self._sealed_only:
                # our handshake flight is unacknowledged and the peer's is not done: a keyless
                # peer's ACKs are not believed (protection.py), so only resending it recovers it
                self._sout_retx.add(self._sout_base, min(self._hs_end, self._sout_next))
            frames = None
            while probe and self._probe_old and not frames:  # the oldest data first (assembly.py)
                frames, items = self._oldest(mss - self._overhead, self._probe_old == 2)
                self._probe_old -= 1
            if not frames:
                frames, items = self._fill(mss - self._overhead, now)
            if not frames:
                if probe:  # nothing to resend: a PING still elicits an ACK
                    frames = [bytes([F_PING])]
                else:
                    break
            if probe:
                self._probes -= 1
                self.stats["probes"] += 1
            pkt = self._packet(frames, now, items, True)
            self._emit(out, pkt)
            count += 1
            self._pace_next = max(self._pace_next, now - credit) + len(pkt) / rate
        return out


    # == timers =====================================================================
    def next_timer(self) -> float | None:
        if self.closed:
            return None
        times = [self.last_recv_time + self.config.idle_timeout]
        if self.recovery.bytes_in_flight:
            times.append(self._acked_at + self.config.idle_timeout)
        if self._handshake_deadline is not None:
            times.append(self._handshake_deadline)
        if self._stall is not None:
            times.append(self._progress_at + self._stall)
        if self._ack_deadline is not None:
            times.append(self._ack_deadline)
        t = self.recovery.timer()
        if t is not None:
            times.append(t)
        if (t := self.pmtu.next_timer()) is not None:
            times.append(t)
        if self._has_data() and self.recovery.bytes_in_flight + self.max_datagram <= self.cc.cwnd:
            times.append(self._pace_next)
        if not self.recovery.bytes_in_flight:
            times.append(self._last_eliciting_sent + self.config.idle_timeout / 3)
            if self._cout_new and self._new_chunk_bytes >= self._peer_max_data:
                times.append(self._blocked_probe_at)
        return min(times)

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        timeout = self.config.idle_timeout
        if now >= self.last_recv_time + timeout:
            self.closed, self.close_code = True, ErrorCode.TIMEOUT
            self.close_reason = f"peer silent for {timeout:g} s"
            return
        if self.recovery.bytes_in_flight and now >= self._acked_at + timeout:
            # the peer is there (its packets arrive) but nothing of ours gets through to it
            self.closed, self.close_code = True, ErrorCode.TIMEOUT
            self.close_reason = (f"nothing sent was acknowledged for {timeout:g} s although the peer answers "
                                 f"(does the path drop even {self.max_datagram}-byte datagrams?)")
            return
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self.close(ErrorCode.TIMEOUT, f"handshake not finished within {self.config.handshake_timeout:g} s")
            return
        if self._stall is not None and now >= self._progress_at + self._stall:
            self.close(ErrorCode.TIMEOUT, f"no data for {self._stall:g} s")
            return
        t = self.recovery.timer()
        if t is not None and now >= t:
            rs, probe = self.recovery.on_timer(now)
            self._on_lost(rs, now)
            if probe:
                # two probes: the oldest unacknowledged stream and chunk bytes, or new data
                self._probes = self._probe_old = 2
                # two probe timeouts in a row with datagrams above the base size unacknowledged:
                # a size never confirmed, or raised by probing, is the likeliest reason (a size
                # that worked before: rather the path is down; only small ones: not the size)
                if (self.recovery.pto_count >= 2 and self._big_sent_at > self._big_acked_at
                        and (not self._big_confirmed or self.max_datagram > self.pmtu.initial)):
                    self._black_hole(now)
        if not self.recovery.bytes_in_flight and now >= self._last_eliciting_sent + self.config.idle_timeout / 3:
            self._ping = True
            self._pace_next = min(self._pace_next, now)
