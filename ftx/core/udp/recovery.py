"""RTT estimation, loss detection and probe timeouts, after RFC 9002.

Constants and rules (RFC 9002 sections cited inline):
* kPacketThreshold = 3, kTimeThreshold = 9/8, kGranularity = 1 ms (6.1.1, 6.1.2)
* kInitialRtt = 333 ms (6.2.2); PTO = srtt + max(4 * rttvar, kGranularity) + max_ack_delay,
  doubled for each consecutive PTO (6.2.1)
* smoothed RTT / RTT variance / min RTT update (5.3)
Also the delivery-rate sampling that the BBR controller needs
(draft-cheng-iccrg-delivery-rate-estimation): each sent packet remembers how
much had been delivered when it left.

Bookkeeping is per *run*: packets sent in one go (a GSO burst) share a send
time and a delivery state, so one ``SentPacket`` record stands for ``count``
consecutive packet numbers, and ACKs, losses and rate samples are worked out
per run and range, not per packet -- at 400k packets a second, per-packet work
in Python is what would limit the rate.  A single packet is a run of one.
Packet numbers are dense integers that only grow; every one is settled once,
as acknowledged or as lost, and results name the settled numbers as
``(run, first, stop)`` pieces.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..ranges import RangeSet

K_PACKET_THRESHOLD = 3
K_TIME_THRESHOLD = 9 / 8
# Adapting to reordering (RFC 9002 6.1.1 and 6.1.2 allow it): a packet declared lost and
# then acknowledged was only late, so the thresholds grow to what was seen, up to these.
MAX_PACKET_THRESHOLD = 256
MAX_TIME_THRESHOLD = 2.0
LOST_RANGES_KEPT = 64
K_GRANULARITY = 0.001
K_INITIAL_RTT = 0.333


class RttEstimator:
    def __init__(self, max_ack_delay: float) -> None:
        self.max_ack_delay = max_ack_delay
        self.latest = 0.0
        self.min = float("inf")
        self.smoothed = K_INITIAL_RTT
        self.var = K_INITIAL_RTT / 2
        self.has_sample = False

    def update(self, latest: float, ack_delay: float) -> None:
        self.latest = latest
        self.min = min(self.min, latest)
        if not self.has_sample:
            self.has_sample = True
            self.smoothed, self.var = latest, latest / 2
            return
        ack_delay = min(ack_delay, self.max_ack_delay)
        adjusted = latest - ack_delay if latest - ack_delay >= self.min else latest
        self.var = 0.75 * self.var + 0.25 * abs(self.smoothed - adjusted)
        self.smoothed = 0.875 * self.smoothed + 0.125 * adjusted

    def pto(self) -> float:
        return self.smoothed + max(4 * self.var, K_GRANULARITY) + self.max_ack_delay


@dataclass(eq=False, slots=True)
class SentPacket:
    """Packets ``pn .. pn + count - 1``, sent at ``time``: each ``size`` bytes, the last ``last_size``."""

    pn: int
    time: float
    size: int
    ack_eliciting: bool
    items: list  # what they carry, for the session: ("s", off, len) / ("c", key, off, len) / ("r", ...)
    count: int = 1
    last_size: int = 0  # 0: the same as size
    delivered: int = 0
    delivered_time: float = 0.0
    first_sent_time: float = 0.0
    app_limited: bool = False
    live: RangeSet | None = None  # numbers not yet settled; None: all of them

    @property
    def end(self) -> int:
        return self.pn + self.count

    def span_bytes(self, a: int, b: int) -> int:
        """Bytes of packets ``a .. b - 1`` of this run."""
        n = (b - a) * self.size
        if b == self.pn + self.count and self.last_size:
            n += self.last_size - self.size
        return n

    def live_in(self, a: int, b: int) -> list[tuple[int, int]]:
        """The unsettled numbers of [a, b), as ranges."""
        live = self.live
        if live is None:
            return [(max(a, self.pn), min(b, self.pn + self.count))]
        return [(max(a, s), min(b, e)) for s, e in live if s < b and e > a]

    def settle(self, a: int, b: int) -> None:
        if self.live is None:
            if a <= self.pn and b >= self.pn + self.count:  # the whole run at once (an ACK of a
                self.live = RangeSet()  # burst, the usual case): nothing to build and cut
                return
            self.live = RangeSet([(self.pn, self.pn + self.count)])
        self.live.subtract(a, b)

    @property
    def settled(self) -> bool:
        return self.live is not None and not self.live

    def first_live(self) -> int:
        return self.pn if self.live is None else next(iter(self.live))[0]


@dataclass
class RateSample:
    """What one ACK taught about the delivery rate (bytes per second)."""

    delivered: int = 0
    interval: float = 0.0
    rate: float = 0.0
    app_limited: bool = False
    prior_delivered: int = -1  # the delivery state of the newest packet acknowledged
    rtt: float = 0.0
    newly_acked: int = 0
    newly_lost: int = 0
    lost_count: int = 0  # packets
    acked: list = field(default_factory=list)  # (run, first, stop) pieces
    lost: list = field(default_factory=list)


class Recovery:
    """Tracks packets in flight; turns ACKs and timers into acked/lost packets."""

    def __init__(self, max_ack_delay: float = 0.025) -> None:
        self.rtt = RttEstimator(max_ack_delay)
        # runs in packet-number order; those before _head are settled and forgotten
        self._runs: list[SentPacket] = []
        self._starts: list[int] = []
        self._head = 0
        self.bytes_in_flight = 0
        self.largest_acked = -1
        self.pto_count = 0
        self.last_ack_eliciting_time = 0.0
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self.app_limited_until = 0  # 'delivered' value until which samples are app-limited
        self.lost_packets = 0
        self.lost_bytes = 0
        self.packet_threshold = K_PACKET_THRESHOLD
        self.time_threshold = K_TIME_THRESHOLD
        self.spurious_losses = 0  # packets declared lost that were acknowledged after all
        self._lost_recent = RangeSet()  # numbers declared lost lately (the newest ranges)

    # -- sending ------------------------------------------------------------------
    def on_sent(self, p: SentPacket) -> None:
        if self._head == len(self._runs):
            self.first_sent_time = self.delivered_time = p.time
        p.delivered, p.delivered_time, p.first_sent_time = self.delivered, self.delivered_time, self.first_sent_time
        p.app_limited = self.app_limited_until > 0
        self._runs.append(p)
        self._starts.append(p.pn)
        if p.ack_eliciting:
            self.bytes_in_flight += p.span_bytes(p.pn, p.pn + p.count)
            self.last_ack_eliciting_time = p.time

    def mark_app_limited(self) -> None:
        self.app_limited_until = max(self.delivered + self.bytes_in_flight, 1)

    def unsettled(self) -> list[int]:
        """Every packet number still in flight (for tests and debugging)."""
        out: list[int] = []
        for run in self._runs[self._head :]:
            for a, b in run.live_in(run.pn, run.end):
                out.extend(range(a, b))
        return out

    def _trim(self) -> None:
        lost = self._lost_recent
        while len(lost) > LOST_RANGES_KEPT:
            first = next(iter(lost))
            lost.subtract(first[0], first[1])
        runs, head = self._runs, self._head
        while head < len(runs) and runs[head].settled:
            head += 1
        if head > 64 and head * 2 > len(runs):
            del runs[:head], self._starts[:head]
            head = 0
        self._head = head

    # -- ACKs -----------------------------------------------------------------------
    def on_ack(self, acked: RangeSet, ack_delay: float, now: float) -> RateSample:
        rs = RateSample()
        if not acked:
            return rs
        largest = 0
        runs, starts, head = self._runs, self._starts, self._head
        pieces = rs.acked
        if self._lost_recent:
            self._check_spurious(acked)
        for start, stop in acked:
            largest = stop - 1
            i = max(bisect.bisect_right(starts, start, head) - 1, head)
            while i < len(runs) and runs[i].pn < stop:
                run = runs[i]
                i += 1
                if run.pn + run.count <= start or run.settled:
                    continue
                for a, b in run.live_in(start, stop):
                    if a < b:
                        pieces.append((run, a, b))
        if not pieces:
            return rs
        if largest > self.largest_acked:
            self.largest_acked = largest
        top, a, b = pieces[-1]
        if b - 1 == largest and top.ack_eliciting:
            rs.rtt = now - top.time
            self.rtt.update(rs.rtt, ack_delay)
        last_run = None
        for run, a, b in pieces:
            run.settle(a, b)
            nbytes = run.span_bytes(a, b)
            if run.ack_eliciting:
                self.bytes_in_flight -= nbytes
            self.delivered += nbytes
            rs.newly_acked += nbytes
            if run is not last_run and run.delivered >= rs.prior_delivered:
                last_run = run
                rs.prior_delivered = run.delivered
                rs.app_limited = run.app_limited
                rs.interval = max(run.time - run.first_sent_time, now - run.delivered_time)
                self.first_sent_time = run.time
        self.delivered_time = now
        if self.app_limited_until and self.delivered > self.app_limited_until:
            self.app_limited_until = 0
        rs.delivered = self.delivered - rs.prior_delivered
        if rs.interval >= max(self.rtt.min, K_GRANULARITY) * 0.5 and rs.interval > 0:
            rs.rate = rs.delivered / rs.interval
        self.pto_count = 0
        self._detect_lost(now, rs)
        self._trim()
        return rs

    def _check_spurious(self, acked: RangeSet) -> None:
        """Packets declared lost but acknowledged now were reordered, not lost: allow that
        much reordering from now on (RACK does the same with its reordering window)."""
        lost = self._lost_recent
        for start, stop in acked:
            for a, b in list(lost):
                if a >= stop:
                    break
                if b <= start:
                    continue
                lo, hi = max(a, start), min(b, stop)
                lost.subtract(lo, hi)
                self.spurious_losses += hi - lo
                # packet lo was declared lost once packet_threshold later ones were acked; it was
                # overtaken by everything up to the largest acknowledged so far
                self.packet_threshold = min(max(self.packet_threshold, self.largest_acked - lo + 1),
                                            MAX_PACKET_THRESHOLD)
                self.time_threshold = min(self.time_threshold + 1 / 8, MAX_TIME_THRESHOLD)

    def _loss_delay(self) -> float:
        return max(self.time_threshold * max(self.rtt.smoothed, self.rtt.latest), K_GRANULARITY)

    def _detect_lost(self, now: float, rs: RateSample) -> None:
        """Packets below the largest acknowledged one are lost once ``packet_threshold``
        later packets were acknowledged, or once they are a loss delay old (RFC 9002 6.1)."""
        largest = self.largest_acked
        by_number = largest - self.packet_threshold + 1  # numbers below this are lost
        delay = self._loss_delay()
        runs, i = self._runs, self._head
        while i < len(runs):
            run = runs[i]
            i += 1
            if run.pn >= largest:
                break
            below = min(run.pn + run.count, largest)
            upto = below if run.time + delay <= now else min(below, by_number)  # as loss_time() computes it
            if upto > run.pn:
                for a, b in run.live_in(run.pn, upto):
                    if a < b:
                        run.settle(a, b)
                        if not run.ack_eliciting and not run.items:
                            continue  # an ACK alone: never in flight, nothing to send again; forgotten
                        nbytes = run.span_bytes(a, b)
                        if run.ack_eliciting:
                            self.bytes_in_flight -= nbytes
                        self.lost_packets += b - a
                        self.lost_bytes += nbytes
                        rs.lost.append((run, a, b))
                        rs.newly_lost += nbytes
                        rs.lost_count += b - a
                        self._lost_recent.add(a, b)
            if upto < below and any(a < b for a, b in run.live_in(upto, below)):
                break  # later packets are newer in number and in time
            if below < run.pn + run.count:
                break

    # -- timers ---------------------------------------------------------------------
    def loss_time(self) -> float | None:
        """When the oldest unacked packet below the largest acked becomes lost by time."""
        if self._head < len(self._runs):
            run = self._runs[self._head]
            if run.first_live() < self.largest_acked:
                return run.time + self._loss_delay()
        return None

    def timer(self) -> float | None:
        t = self.loss_time()
        if t is not None:
            return t
        if not self.bytes_in_flight:
            return None
        return self.last_ack_eliciting_time + self.rtt.pto() * (2 ** min(self.pto_count, 8))

    def on_timer(self, now: float) -> tuple[RateSample, bool]:
        """Returns the packets found lost, and whether a probe (PTO) must be sent."""
        rs = RateSample()
        t = self.loss_time()
        if t is not None and now >= t:
            self._detect_lost(now, rs)
            self._trim()
            return rs, False
        self.pto_count += 1
        return rs, True
