"""RTT estimation, loss detection and probe timeouts, after RFC 9002.

Constants and rules (RFC 9002 sections cited inline):
* kPacketThreshold = 3, kTimeThreshold = 9/8, kGranularity = 1 ms (6.1.1, 6.1.2)
* kInitialRtt = 333 ms (6.2.2); PTO = srtt + max(4 * rttvar, kGranularity) + max_ack_delay,
  doubled for each consecutive PTO (6.2.1)
* smoothed RTT / RTT variance / min RTT update (5.3)
Also the delivery-rate sampling that the BBR controller needs
(draft-cheng-iccrg-delivery-rate-estimation): each sent packet remembers how
much had been delivered when it left.

Packet numbers are dense integers that only grow; every packet number is
settled once, as acknowledged or as lost (``_settled`` keeps that as ranges,
so an ACK repeating old ranges costs nothing).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..ranges import RangeSet

K_PACKET_THRESHOLD = 3
K_TIME_THRESHOLD = 9 / 8
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
    pn: int
    time: float
    size: int
    ack_eliciting: bool
    items: list  # what to resend if lost: ("s", offset, length) / ("c", key, offset, length)
    delivered: int = 0
    delivered_time: float = 0.0
    first_sent_time: float = 0.0
    app_limited: bool = False


@dataclass
class RateSample:
    """What one ACK taught about the delivery rate (bytes per second)."""

    delivered: int = 0
    interval: float = 0.0
    rate: float = 0.0
    app_limited: bool = False
    prior_delivered: int = -1
    rtt: float = 0.0
    newly_acked: int = 0
    newly_lost: int = 0
    acked: list = field(default_factory=list)
    lost: list = field(default_factory=list)


class Recovery:
    """Tracks packets in flight; turns ACKs and timers into acked/lost packets."""

    def __init__(self, max_ack_delay: float = 0.025) -> None:
        self.rtt = RttEstimator(max_ack_delay)
        self.sent: OrderedDict[int, SentPacket] = OrderedDict()  # O(1) at both ends
        self._settled = RangeSet()
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

    # -- sending ------------------------------------------------------------------
    def on_sent(self, p: SentPacket) -> None:
        if not self.sent:
            self.first_sent_time = self.delivered_time = p.time
        p.delivered, p.delivered_time, p.first_sent_time = self.delivered, self.delivered_time, self.first_sent_time
        p.app_limited = self.app_limited_until > 0
        self.sent[p.pn] = p
        if p.ack_eliciting:
            self.bytes_in_flight += p.size
            self.last_ack_eliciting_time = p.time

    def mark_app_limited(self) -> None:
        self.app_limited_until = max(self.delivered + self.bytes_in_flight, 1)

    # -- ACKs -----------------------------------------------------------------------
    def on_ack(self, acked: RangeSet, ack_delay: float, now: float) -> RateSample:
        rs = RateSample()
        if not acked:
            return rs
        largest = list(acked)[-1][1] - 1
        newly: list[SentPacket] = []
        for start, stop in acked:
            for a, b in self._settled.complement(start, stop):
                for pn in range(a, b):
                    p = self.sent.pop(pn, None)
                    if p is not None:
                        newly.append(p)
            self._settled.add(start, stop)
        if not newly:
            return rs
        if largest > self.largest_acked:
            self.largest_acked = largest
        top = newly[-1]
        if top.pn == largest and top.ack_eliciting:
            rs.rtt = now - top.time
            self.rtt.update(rs.rtt, ack_delay)
        for p in newly:
            if p.ack_eliciting:
                self.bytes_in_flight -= p.size
            self.delivered += p.size
            self.delivered_time = now
            if p.delivered >= rs.prior_delivered:
                rs.prior_delivered = p.delivered
                rs.app_limited = p.app_limited
                send_elapsed = p.time - p.first_sent_time
                ack_elapsed = now - p.delivered_time
                rs.interval = max(send_elapsed, ack_elapsed)
                self.first_sent_time = p.time
            rs.newly_acked += p.size
        if self.app_limited_until and self.delivered > self.app_limited_until:
            self.app_limited_until = 0
        rs.delivered = self.delivered - rs.prior_delivered
        if rs.interval >= max(self.rtt.min, K_GRANULARITY) * 0.5 and rs.interval > 0:
            rs.rate = rs.delivered / rs.interval
        rs.acked = newly
        self.pto_count = 0
        self._detect_lost(now, rs)
        return rs

    def _loss_delay(self) -> float:
        return max(K_TIME_THRESHOLD * max(self.rtt.smoothed, self.rtt.latest), K_GRANULARITY)

    def _detect_lost(self, now: float, rs: RateSample) -> None:
        delay = self._loss_delay()
        sent = self.sent
        while sent:
            pn = next(iter(sent))
            p = sent[pn]
            if pn > self.largest_acked:
                break
            if pn <= self.largest_acked - K_PACKET_THRESHOLD or p.time <= now - delay:
                del sent[pn]
                self._settled.add(pn)
                if p.ack_eliciting:
                    self.bytes_in_flight -= p.size
                self.lost_packets += 1
                self.lost_bytes += p.size
                rs.lost.append(p)
                rs.newly_lost += p.size
            else:
                break  # later packets are newer in number and in time

    # -- timers ---------------------------------------------------------------------
    def loss_time(self) -> float | None:
        """When the oldest unacked packet below the largest acked becomes lost by time."""
        for pn, p in self.sent.items():
            if pn < self.largest_acked:
                return p.time + self._loss_delay()
            break
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
            return rs, False
        self.pto_count += 1
        return rs, True

    def oldest_unacked(self) -> SentPacket | None:
        for p in self.sent.values():
            if p.ack_eliciting:
                return p
        return None
