"""The impairment emulator: ``Impairment.parse`` and the sans-I/O ``LinkEmulator``.

Everything here is seeded and runs on explicit clocks (no sockets, no sleeps).
Statistical checks use a tolerance of 5 standard deviations of the binomial
count (sqrt(n p (1-p))): a correct emulator fails one of them with probability
below 1e-6 for *any* seed, and the seeds are fixed anyway, while an emulator
off by a percentage point or more over 20 000 datagrams fails it.
"""

from __future__ import annotations

import math
import random

import pytest

from ftx.netsim import Impairment, LinkEmulator

pytestmark = pytest.mark.timeout(60)

START = 1000.0


def _tol(n: int, p: float) -> float:
    return 5 * math.sqrt(n * p * (1 - p))


def _datagrams(n: int, seed: int = 0, size: int = 100) -> list[bytes]:
    r = random.Random(seed)
    return [i.to_bytes(4, "big") + r.randbytes(size - 4) for i in range(n)]


def _run(em: LinkEmulator, data: list[bytes], spacing: float = 0.001) -> list[list[tuple[float, bytes]]]:
    return [em.process(d, START + i * spacing) for i, d in enumerate(data)]


# =====================================================================================
# Impairment.parse
# =====================================================================================
class TestParse:
    def test_defaults(self):
        imp = Impairment.parse("")
        assert imp == Impairment()
        assert (imp.loss, imp.duplicate, imp.reorder, imp.corrupt, imp.delay, imp.jitter, imp.rate) == (0,) * 7
        assert imp.reorder_delay == 0.005 and imp.queue == 0.05 and imp.blackouts == []

    def test_every_key(self):
        imp = Impairment.parse("loss=0.1,dup=0.01,reorder=0.05,reorder_delay=7ms,corrupt=0.001,delay=15ms,"
                               "jitter=1ms,rate=200Mbit,queue=40ms,blackout=2-4;10-11.5")
        assert imp.loss == 0.1
        assert imp.duplicate == 0.01
        assert imp.reorder == 0.05
        assert imp.reorder_delay == pytest.approx(0.007)
        assert imp.corrupt == 0.001
        assert imp.delay == pytest.approx(0.015)
        assert imp.jitter == pytest.approx(0.001)
        assert imp.rate == pytest.approx(25e6)
        assert imp.queue == pytest.approx(0.04)
        assert imp.blackouts == [(2.0, 4.0), (10.0, 11.5)]

    def test_duplicate_long_name_and_percentages(self):
        imp = Impairment.parse("duplicate=2%,loss=10%,reorder=0.5%,corrupt=100%")
        assert imp.duplicate == pytest.approx(0.02)
        assert imp.loss == pytest.approx(0.1)
        assert imp.reorder == pytest.approx(0.005)
        assert imp.corrupt == 1.0

    def test_whitespace_case_and_empty_parts(self):
        imp = Impairment.parse(" LOSS = 0.25 ,, Delay=2S , ")
        assert imp.loss == 0.25 and imp.delay == 2.0

    @pytest.mark.parametrize("text,seconds", [
        ("15ms", 0.015), ("0.5ms", 0.0005), ("2s", 2.0), ("2", 2.0), ("0.25", 0.25), ("1.5S", 1.5), ("100MS", 0.1),
    ])
    def test_durations(self, text, seconds):
        for key, attr in (("delay", "delay"), ("jitter", "jitter"), ("queue", "queue"),
                          ("reorder_delay", "reorder_delay")):
            assert getattr(Impairment.parse(f"{key}={text}"), attr) == pytest.approx(seconds)

    @pytest.mark.parametrize("text,rate", [
        ("200Mbit", 25e6), ("1Gbit", 125e6), ("8kbit", 1000.0), ("800bit", 100.0), ("1.5mbit", 187500.0),
        ("10MBIT", 1.25e6),
        ("1M", 1 << 20), ("2.5M", 2.5 * (1 << 20)), ("64K", 65536.0), ("1G", float(1 << 30)), ("3k", 3072.0),
        ("12345", 12345.0), ("0", 0.0),
    ])
    def test_rates(self, text, rate):
        assert Impairment.parse(f"rate={text}").rate == pytest.approx(rate)

    def test_blackouts(self):
        assert Impairment.parse("blackout=1-2").blackouts == [(1.0, 2.0)]
        assert Impairment.parse("blackout=0.5-0.75;3-4;10-20").blackouts == [(0.5, 0.75), (3.0, 4.0), (10.0, 20.0)]
        assert Impairment.parse("blackout=1-2,blackout=5-6").blackouts == [(1.0, 2.0), (5.0, 6.0)]
        # instances do not share the default list
        assert Impairment.parse("").blackouts == [] and Impairment().blackouts == []

    def test_replay_and_rebind(self):
        if not hasattr(Impairment(), "replay"):
            pytest.skip("no replay/rebind in this version")
        imp = Impairment.parse("replay=0.02,rebind=2;5.5")
        assert imp.replay == 0.02 and imp.rebind == [2.0, 5.5]
        with pytest.raises(ValueError):
            Impairment.parse("replay=2")

    @pytest.mark.parametrize("spec", ["bogus=1", "lose=0.1", "delay_ms=5", "blackouts=1-2", "loss"])
    def test_unknown_keys_rejected(self, spec):
        with pytest.raises(ValueError):
            Impairment.parse(spec)

    @pytest.mark.parametrize("key", ["loss", "dup", "duplicate", "reorder", "corrupt"])
    @pytest.mark.parametrize("value", ["1.01", "-0.1", "150%", "-1%", "nan", "inf", "2"])
    def test_out_of_range_probabilities_rejected(self, key, value):
        with pytest.raises(ValueError):
            Impairment.parse(f"{key}={value}")

    @pytest.mark.parametrize("key", ["loss", "dup", "reorder", "corrupt"])
    def test_probability_bounds_accepted(self, key):
        assert Impairment.parse(f"{key}=0") is not None
        assert Impairment.parse(f"{key}=1") is not None
        assert Impairment.parse(f"{key}=100%") is not None

    @pytest.mark.parametrize("spec", ["delay=abc", "rate=fast", "blackout=2", "blackout=a-b", "jitter=", "queue=5us"])
    def test_malformed_values_rejected(self, spec):
        with pytest.raises(ValueError):
            Impairment.parse(spec)

    @pytest.mark.parametrize("spec", ["delay=-5ms", "jitter=-1ms", "rate=-1M", "queue=-1", "blackout=4-2"])
    def test_nonsense_values_rejected(self, spec):
        with pytest.raises(ValueError):
            Impairment.parse(spec)


# =====================================================================================
# LinkEmulator
# =====================================================================================
ALL = "loss=0.1,dup=0.05,reorder=0.1,reorder_delay=3ms,corrupt=0.05,delay=10ms,jitter=2ms,rate=10M,queue=20ms"


class TestDeterminism:
    def test_same_seed_same_output(self):
        data = _datagrams(3000, size=700)
        a = _run(LinkEmulator(Impairment.parse(ALL), 42, START), data, spacing=0.00005)
        b = _run(LinkEmulator(Impairment.parse(ALL), 42, START), data, spacing=0.00005)
        assert a == b
        c = _run(LinkEmulator(Impairment.parse(ALL), 43, START), data, spacing=0.00005)
        assert a != c

    def test_same_seed_same_stats(self):
        data = _datagrams(2000, size=700)
        e1, e2 = LinkEmulator(Impairment.parse(ALL), 5, START), LinkEmulator(Impairment.parse(ALL), 5, START)
        _run(e1, data, 0.00005)  # 14 MB/s offered to a 10 MiB/s bottleneck
        _run(e2, data, 0.00005)
        assert e1.stats == e2.stats
        s = e1.stats
        assert s["in"] == 2000 and s["bytes_in"] == 2000 * 700
        for k in ("dropped", "duplicated", "reordered", "corrupted", "queue_dropped"):
            assert s[k] > 0, k

    def test_one_setting_does_not_shift_the_others(self):
        """Every datagram draws the same random numbers, so the datagrams lost with loss=0.1
        alone are the ones lost with loss=0.1 plus duplication, reordering and corruption."""
        data = _datagrams(5000)

        def lost(spec):
            outs = _run(LinkEmulator(Impairment.parse(spec), 9, START), data)
            return [i for i, o in enumerate(outs) if not o]
        base = lost("loss=0.1")
        assert base == lost("loss=0.1,dup=0.3,reorder=0.2,corrupt=0.2,jitter=5ms")
        assert 400 < len(base) < 600


class TestLoss:
    @pytest.mark.parametrize("seed", [1, 2])
    @pytest.mark.parametrize("p", [0.01, 0.1, 0.5])
    def test_loss_rate(self, seed, p):
        n = 20_000
        em = LinkEmulator(Impairment(loss=p), seed, START)
        outs = _run(em, _datagrams(n, seed))
        dropped = sum(1 for o in outs if not o)
        assert dropped == em.stats["dropped"]
        assert abs(dropped - n * p) <= _tol(n, p), (dropped, n * p)
        assert em.stats["out"] == n - dropped
        # survivors are delivered unchanged, once, at once
        for (i, o), d in zip(enumerate(outs), _datagrams(n, seed)):
            if o:
                assert o == [(START + i * 0.001, d)]

    def test_no_loss_and_total_loss(self):
        data = _datagrams(1000)
        assert all(len(o) == 1 for o in _run(LinkEmulator(Impairment(), 1, START), data))
        em = LinkEmulator(Impairment(loss=1.0), 1, START)
        assert all(o == [] for o in _run(em, data)) and em.stats["dropped"] == 1000


class TestDuplicationCorruptionReordering:
    def test_duplicates_counted(self):
        n, p = 20_000, 0.05
        em = LinkEmulator(Impairment(duplicate=p), 3, START)
        data = _datagrams(n)
        outs = _run(em, data)
        dups = [i for i, o in enumerate(outs) if len(o) == 2]
        assert len(dups) == em.stats["duplicated"]
        assert abs(len(dups) - n * p) <= _tol(n, p)
        assert em.stats["out"] == n + len(dups)
        for i in dups:
            (t1, d1), (t2, d2) = outs[i]
            assert d1 == d2 == data[i] and t2 > t1

    def test_corruption_flips_one_bit_and_is_counted(self):
        n, p = 20_000, 0.02
        em = LinkEmulator(Impairment(corrupt=p), 4, START)
        data = _datagrams(n)
        outs = _run(em, data)
        changed = 0
        for (o,), d in zip(outs, data):
            _, got = o
            assert len(got) == len(d)
            if got != d:
                changed += 1
                diff = int.from_bytes(got, "big") ^ int.from_bytes(d, "big")
                assert bin(diff).count("1") == 1  # exactly one bit flipped
        assert changed == em.stats["corrupted"]
        assert abs(changed - n * p) <= _tol(n, p)

    def test_corrupted_duplicates_are_identical_copies(self):
        em = LinkEmulator(Impairment(corrupt=1.0, duplicate=1.0), 4, START)
        for (t1, a), (t2, b) in _run(em, _datagrams(200)):
            assert a == b

    def test_empty_datagram_survives_corruption(self):
        em = LinkEmulator(Impairment(corrupt=1.0), 1, START)
        assert em.process(b"", START) == [(START, b"")]

    def test_reordering_delays_by_reorder_delay(self):
        n, p = 20_000, 0.1
        em = LinkEmulator(Impairment(reorder=p, reorder_delay=0.003, delay=0.01), 6, START)
        outs = _run(em, _datagrams(n))
        late = 0
        for i, ((t, _),) in enumerate(outs):
            sent = START + i * 0.001
            assert t == pytest.approx(sent + 0.01) or t == pytest.approx(sent + 0.013)
            late += t > sent + 0.0115
        assert late == em.stats["reordered"]
        assert abs(late - n * p) <= _tol(n, p)
        # held back 3 ms while datagrams leave every 1 ms: they really do arrive out of order
        order = [i for _, i in sorted((o[0][0], i) for i, o in enumerate(outs))]
        assert order != sorted(order)

    def test_delay_and_jitter(self):
        em = LinkEmulator(Impairment(delay=0.02, jitter=0.005), 7, START)
        extra = [o[0][0] - (START + i * 0.001) - 0.02 for i, o in enumerate(_run(em, _datagrams(5000)))]
        assert min(extra) >= 0 and max(extra) < 0.005
        assert max(extra) > 0.0049 and min(extra) < 0.0001  # spread over the whole interval
        assert abs(sum(extra) / len(extra) - 0.0025) < 0.0002  # uniform: mean jitter/2


def test_the_default_path_is_a_1500_byte_ipv4_path_and_mtu_0_any():
    """Like an internet path, the emulator drops a datagram whose UDP payload exceeds 1472 bytes
    (1500 - 28) unless told otherwise; ``mtu=0`` lets any size through (as loopback does)."""
    em = LinkEmulator(Impairment(), 1, START)
    assert em.process(bytes(1472), START) and not em.process(bytes(1473), START)
    assert LinkEmulator(Impairment.parse("mtu=0"), 1, START).process(bytes(65000), START)


class TestRateLimit:
    def test_release_times_spaced_by_len_over_rate(self):
        rate = 1_000_000.0  # bytes/s: a 1000-byte datagram takes 1 ms
        em = LinkEmulator(Impairment(rate=rate, queue=1.0, delay=0.005, mtu=0), 1, START)
        sizes = [1000, 500, 1500, 200, 1000, 64]
        out = [em.process(bytes(s), START) for s in sizes]  # a burst, all at once
        times = [o[0][0] for o in out]
        expect, t = [], START
        for s in sizes:
            t += s / rate
            expect.append(t + 0.005)
        assert times == pytest.approx(expect)
        # an idle link serves at once again
        later = START + 10
        ((t, _),) = em.process(bytes(1000), later)
        assert t == pytest.approx(later + 0.001 + 0.005)

    def test_drop_tail_beyond_the_queue(self):
        rate, size, queue = 1_000_000.0, 1000, 0.05
        em = LinkEmulator(Impairment(rate=rate, queue=queue), 1, START)
        outs = [em.process(bytes(size), START) for _ in range(200)]
        accepted = [o for o in outs if o]
        # accepted while the backlog is <= 50 ms of data: 50 or 51 datagrams of 1 ms
        assert len(accepted) in (50, 51)
        assert all(o for o in outs[: len(accepted)]) and not any(outs[len(accepted):])
        assert em.stats["queue_dropped"] == 200 - len(accepted)
        assert em.stats["out"] == len(accepted)
        # the queue drains at the rate: 20 ms later there is room for about 20 more
        outs = [em.process(bytes(size), START + 0.02) for _ in range(40)]
        assert 19 <= sum(1 for o in outs if o) <= 21

    def test_rate_limited_throughput(self):
        rate = 125_000.0  # 1 Mbit/s
        em = LinkEmulator(Impairment.parse("rate=1Mbit,queue=100ms"), 1, START)
        released = []
        for i in range(2000):  # offered 2 x the rate: 1250 B every 5 ms
            released += em.process(bytes(1250), START + i * 0.005)
        span = released[-1][0] - released[0][0]
        assert sum(len(d) for _, d in released[1:]) / span == pytest.approx(rate, rel=0.01)
        assert em.stats["queue_dropped"] == pytest.approx(1000, abs=60)


class TestBlackout:
    def test_blackout_windows_drop_everything_inside(self):
        em = LinkEmulator(Impairment.parse("blackout=1-2;3-3.5"), 1, START)
        dropped = []
        n = 5000
        for i in range(n):
            t = i * 0.001
            if not em.process(b"x" * 10, START + t):
                dropped.append(round(t, 6))
        inside = [round(i * 0.001, 6) for i in range(n) if 1 <= i * 0.001 < 2 or 3 <= i * 0.001 < 3.5]
        assert dropped == inside
        assert em.stats["blackout_dropped"] == len(inside) and em.stats["dropped"] == 0

    def test_blackout_boundaries_and_start_offset(self):
        em = LinkEmulator(Impairment(blackouts=[(1.0, 2.0)]), 1, START)
        assert em.process(b"a", START + 0.999999) != []
        assert em.process(b"a", START + 1.0) == []  # start inclusive
        assert em.process(b"a", START + 1.999999) == []
        assert em.process(b"a", START + 2.0) != []  # end exclusive

    def test_blackout_beats_everything_else(self):
        em = LinkEmulator(Impairment(blackouts=[(0.0, 1.0)], duplicate=1.0), 1, START)
        assert all(em.process(b"y", START + i * 0.01) == [] for i in range(100))
        assert em.stats["duplicated"] == 0 and em.stats["out"] == 0


class TestReplay:
    def test_replay_sends_old_datagrams_late_and_shifts_nothing(self):
        if not hasattr(Impairment(), "replay"):
            pytest.skip("no replay in this version")
        data = _datagrams(3000)
        plain = _run(LinkEmulator(Impairment(loss=0.1, duplicate=0.05), 2, START), data)
        em = LinkEmulator(Impairment(loss=0.1, duplicate=0.05, replay=0.1), 2, START)
        replayed = _run(em, data)
        extra = 0
        seen: set[bytes] = set()
        for i, (a, b) in enumerate(zip(plain, replayed)):
            rest = [x for x in b if x not in a]
            assert [x for x in b if x in a] == a  # the normal output is unchanged
            for t, d in rest:
                assert d in seen and t == pytest.approx(START + i * 0.001 + 0.05)
            extra += len(rest)
            seen.add(data[i])
        assert extra == em.stats["replayed"] and abs(extra - 300) <= _tol(3000, 0.1)
