"""A BBR-style congestion controller: pace at the measured bottleneck rate.

Loss-based controllers (NewReno, CUBIC) shrink their window on every loss, so
on a path with random loss they collapse: the Mathis bound gives NewReno about
MSS/RTT * 1.22/sqrt(p), a few Mbit/s at 1% loss and 30 ms.  BBR instead models
the path (draft-cardwell-iccrg-bbr-congestion-control, BBR v1):

* BtlBw: the maximum delivery rate seen over the last 10 round trips;
* RTprop: the minimum RTT seen over the last 10 seconds;
* STARTUP paces at 2/ln 2 (2.885) x BtlBw -- never below 2.885 x the initial window
  per smoothed RTT -- until BtlBw grows less than 25% for three rounds, DRAIN paces at
  1/2.885 until the queue it built is gone, then PROBE_BW cycles its pacing gain through
  5/4, 3/4, 1, 1, 1, 1, 1, 1, one phase per RTprop;
* cwnd = cwnd_gain (2, or 2.885 in STARTUP) x BtlBw x RTprop, at least 4 packets --
  and at least enough for the receiver's ACK batching (3 x its ack_every), or a
  tiny path would wait for delayed ACKs and measure their delay as bandwidth.

Random loss does not lower the model, so goodput stays near the bottleneck;
a narrower bottleneck lowers the measured delivery rate, so the sender slows
to it instead of flooding it.  ``max_rate`` caps the pacing rate (the user's
--max-rate).
"""

from __future__ import annotations

from .recovery import RateSample

STARTUP_GAIN = 2.885
PROBE_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BW_WINDOW_ROUNDS = 10
MIN_RTT_WINDOW = 10.0
INITIAL_CWND_PACKETS = 32
# A round trip, for this controller's clocks, lasts at least this long. On loopback the
# real RTT (~0.1 ms) is far below what an event loop can pace (~1 ms timers): rounds that
# short measure the scheduler, not the path, and a cwnd of 2 x BtlBw x 0.1 ms caps the
# rate at what fits in one scheduler tick -- a state PROBE_BW could not leave.
ROUND_FLOOR = 0.002
# Random loss p makes every delivery-rate sample (1 - p) times the sending rate, so BBR v1's
# probe (x1.25) stops finding more bandwidth once p reaches 20% and the estimate decays.
# While the RTT shows no queue (the losses are not ours), the pacing rate is raised by
# 1 / (1 - p), p up to this much.
MAX_COMPENSATED_LOSS = 0.3


class Bbr:
    def __init__(self, mss: int, max_rate: float | None = None, min_cwnd_packets: int = 4) -> None:
        self.mss = mss
        self.max_rate = max_rate
        self.min_cwnd = max(4, min_cwnd_packets) * mss
        self.state = "startup"
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self._bw_samples: list[tuple[int, float]] = []  # (round, rate)
        self.btl_bw = 0.0
        self.min_rtt = float("inf")
        self._min_rtt_stamp = 0.0
        self.round_count = 0
        self._round_stamp = float("-inf")
        self._next_round_delivered = 0
        self._round_start = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self._srtt_hint = 0.1
        self._ack_epoch_start = 0.0
        self._ack_epoch_acked = 0
        self._extra_acked: list[tuple[int, int]] = []  # (round, bytes) maxima
        self.extra_acked = 0
        self._round_lost = 0
        self._round_lost_packets = 0
        self._round_acked = 0
        self.loss_rate = 0.0  # moving average of the share of bytes lost per round
        self._latest_rtt = 0.0

    def set_mss(self, mss: int) -> None:
        """The datagram size changed (path MTU discovery)."""
        self.min_cwnd = self.min_cwnd // self.mss * mss
        self.mss = mss

    # -- outputs --------------------------------------------------------------------
    @property
    def cwnd(self) -> int:
        if not self.btl_bw or self.min_rtt == float("inf"):
            return max(INITIAL_CWND_PACKETS * self.mss, self.min_cwnd)
        bdp = self.btl_bw * max(self.min_rtt, ROUND_FLOOR)  # see ROUND_FLOOR
        return max(int(self.cwnd_gain * bdp) + self.extra_acked + 3 * self.mss, self.min_cwnd)

    @property
    def pacing_rate(self) -> float:
        # STARTUP never paces below the initial rate (as Linux BBR, which never lowers the rate
        # before the pipe is full): the first samples, the handshake's few app-limited bytes,
        # put BtlBw at ~0.3 MB/s, and pacing at that throttled the first data and its samples
        initial = STARTUP_GAIN * INITIAL_CWND_PACKETS * self.mss / max(self._srtt_hint, 0.001)
        if self.btl_bw:
            rate = self.pacing_gain * self.btl_bw * self._loss_boost()
            if self.state == "startup":
                rate = max(rate, initial)
        else:
            rate = initial
        if self.max_rate:
            rate = min(rate, self.max_rate)
        return rate

    # -- inputs ---------------------------------------------------------------------
    def on_ack(self, rs: RateSample, now: float, delivered: int, bytes_in_flight: int, srtt: float) -> None:
        self._srtt_hint = srtt
        self._round_start = False  # an ACK that acknowledges nothing new starts no round
        if rs.acked:  # prior_delivered: the delivery state of the newest packet acknowledged
            self._round_start = (rs.prior_delivered >= self._next_round_delivered
                                 and now - self._round_stamp >= ROUND_FLOOR)
            if self._round_start:
                self._next_round_delivered = delivered
                self._round_stamp = now
                self.round_count += 1
                self._check_startup_loss()
                total = self._round_acked + self._round_lost
                if total >= 10 * self.mss:
                    self.loss_rate = 0.8 * self.loss_rate + 0.2 * self._round_lost / total
                self._round_lost = self._round_lost_packets = self._round_acked = 0
        self._round_acked += rs.newly_acked
        if rs.rtt:
            self._latest_rtt = rs.rtt
        if rs.rtt and (rs.rtt <= self.min_rtt or now - self._min_rtt_stamp > MIN_RTT_WINDOW):
            self.min_rtt = rs.rtt
            self._min_rtt_stamp = now
        if rs.rate and (not rs.app_limited or rs.rate >= self.btl_bw):
            self._bw_samples.append((self.round_count, rs.rate))
        horizon = self.round_count - BW_WINDOW_ROUNDS
        while self._bw_samples and self._bw_samples[0][0] <= horizon:
            self._bw_samples.pop(0)
        if len(self._bw_samples) > 64:  # keep the filter small: the best per round is enough
            best: dict[int, float] = {}
            for r, v in self._bw_samples:
                best[r] = max(v, best.get(r, 0.0))
            self._bw_samples = sorted(best.items())
        self.btl_bw = max((v for _, v in self._bw_samples), default=self.btl_bw)
        self._update_ack_aggregation(rs.newly_acked, now)
        self._advance_state(now, bytes_in_flight, rs.app_limited)

    def _loss_boost(self) -> float:
        """1 / (1 - loss rate) while cruising or probing with no queue in sight, else 1."""
        if self.state != "probe_bw" or self.loss_rate < 0.01 or self.pacing_gain < 1.0:
            return 1.0
        if self._latest_rtt > 1.25 * self.min_rtt + ROUND_FLOOR:  # a queue: losses may be our own
            return 1.0
        return 1.0 / (1.0 - min(self.loss_rate, MAX_COMPENSATED_LOSS))

    def _update_ack_aggregation(self, acked: int, now: float) -> None:
        """Bytes ACKed beyond what BtlBw explains since an epoch began (BBR draft, 4.5.8:
        ACKs that arrive in bursts -- delayed ACKs, batched receive, a busy receiver --
        need that much more cwnd, or the sender idles between bursts)."""
        if not acked or not self.btl_bw:
            return
        expected = self.btl_bw * (now - self._ack_epoch_start)
        if self._ack_epoch_acked <= expected:
            self._ack_epoch_start, self._ack_epoch_acked = now, 0
            expected = 0.0
        self._ack_epoch_acked += acked
        extra = int(min(self._ack_epoch_acked - expected, self.btl_bw * 0.1))
        if self._extra_acked and self._extra_acked[-1][0] == self.round_count:
            if extra > self._extra_acked[-1][1]:
                self._extra_acked[-1] = (self.round_count, extra)
        else:
            self._extra_acked.append((self.round_count, extra))
        while self._extra_acked and self._extra_acked[0][0] <= self.round_count - BW_WINDOW_ROUNDS:
            self._extra_acked.pop(0)
        self.extra_acked = max(v for _, v in self._extra_acked)

    def _advance_state(self, now: float, bytes_in_flight: int, app_limited: bool) -> None:
        if self.state == "startup" and self._round_start and not app_limited:
            if self.btl_bw >= self._full_bw * 1.25:
                self._full_bw, self._full_bw_count = self.btl_bw, 0
            else:
                self._full_bw_count += 1
            if self._full_bw_count >= 3:
                self.state, self.pacing_gain, self.cwnd_gain = "drain", 1 / STARTUP_GAIN, STARTUP_GAIN
        if self.state == "drain" and bytes_in_flight <= self.btl_bw * self.min_rtt:
            self._enter_probe_bw(now)
        if self.state == "probe_bw" and now - self._cycle_stamp > max(self.min_rtt, ROUND_FLOOR):
            self._cycle_index = (self._cycle_index + 1) % len(PROBE_GAINS)
            self._cycle_stamp = now
            self.pacing_gain = PROBE_GAINS[self._cycle_index]

    def _enter_probe_bw(self, now: float) -> None:
        self.state = "probe_bw"
        self.cwnd_gain = 2.0
        self._cycle_index = 2  # start in a cruising phase
        self._cycle_stamp = now
        self.pacing_gain = PROBE_GAINS[self._cycle_index]

    def _check_startup_loss(self) -> None:
        """Leave STARTUP when a round lost more than 2% in at least 8 packets (as BBR v2 does):
        a shallow bottleneck queue overflows long before the bandwidth plateau shows."""
        if self.state != "startup" or not self.btl_bw:
            return
        total = self._round_acked + self._round_lost
        if self._round_lost_packets >= 8 and total and self._round_lost / total > 0.02:
            self.state, self.pacing_gain, self.cwnd_gain = "drain", 1 / STARTUP_GAIN, STARTUP_GAIN

    def on_loss(self, rs: RateSample, now: float) -> None:
        """Random loss must not shrink the model (BBR v1); it only counts towards the STARTUP exit."""
        self._round_lost += rs.newly_lost
        self._round_lost_packets += rs.lost_count
