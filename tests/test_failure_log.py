"""ftx/failure_log.py: one line per address per interval about failed handshakes (explicit clock)."""

from __future__ import annotations

from ftx.failure_log import FailureLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(**kw):
    lines: list[str] = []
    clock = Clock()
    return FailureLog(lines.append, 10.0, clock=clock, **kw), lines, clock


def test_first_failure_prints_at_once_then_one_summary_per_interval():
    log, lines, clock = make()
    log.failed("192.0.2.7", "192.0.2.7:5000", "authentication failed: key X is not authorized")
    assert lines == ["192.0.2.7:5000: authentication failed: key X is not authorized"]
    for k in range(312):
        clock.now = k * 0.01
        log.failed("192.0.2.7", f"192.0.2.7:{6000 + k}", f"garbage {k}")
    assert len(lines) == 1  # counted, not printed
    clock.now = 10.0
    log.flush()
    assert lines[1] == "192.0.2.7: 312 failed handshakes in the last 10 s (last: garbage 311)"
    clock.now = 15.0
    log.failed("192.0.2.7", "192.0.2.7:1", "again")  # the flood goes on: counted in the next interval
    clock.now = 20.0
    log.flush()
    assert lines[2:] == ["192.0.2.7: 1 failed handshake in the last 10 s (last: again)"]
    clock.now = 30.0
    log.flush()  # a quiet interval: no line, and the address is forgotten ...
    assert len(lines) == 3
    log.failed("192.0.2.7", "192.0.2.7:2", "later")  # ... so its next failure prints at once
    assert lines[3] == "192.0.2.7:2: later"


def test_addresses_are_apart_and_a_many_address_flood_shares_one_line():
    log, lines, clock = make(max_first=3, max_hosts=100)
    for k in range(50):
        log.failed(f"10.0.0.{k}", f"10.0.0.{k}:9", "timeout")
    assert lines == [f"10.0.0.{k}:9: timeout" for k in range(3)]
    log.flush(final=True)  # at exit nothing counted is lost
    assert lines[3:] == ["47 failed handshakes from other addresses in the last 1 s (last: 10.0.0.49:9: timeout)"]


def test_final_flush_reports_what_is_pending():
    log, lines, clock = make()
    log.failed("h", "h:1", "a")
    log.failed("h", "h:2", "b")
    clock.now = 3.0
    log.flush()
    assert len(lines) == 1
    log.flush(final=True)
    assert lines[1] == "h: 1 failed handshake in the last 3 s (last: b)"


def test_suppressed_failures_are_summed_up_per_interval_for_machine_readers():
    """``failed`` says whether the failure got its own line; each flush that held some back reports
    how many and from how many addresses, once (the --json summary)."""
    summaries = []
    log, lines, clock = make(max_first=2, max_hosts=3)
    log.on_suppressed = lambda n, hosts, seconds: summaries.append((n, hosts, seconds))
    assert log.failed("a", "a:1", "x") and log.failed("b", "b:1", "x")
    assert not log.failed("a", "a:2", "x")  # a's second within the interval
    for k in range(10):  # beyond max_first: the shared bucket, each address still counted
        assert not log.failed(f"c{k % 5}", f"c{k % 5}:1", "x")
    clock.now = 4.0
    log.flush()
    assert summaries == []  # the interval is not over
    clock.now = 10.0
    log.flush()
    assert summaries == [(11, 6, 10)]  # a once, c0..c4 twice each: 6 addresses
    clock.now = 25.0
    log.flush()
    assert summaries == [(11, 6, 10)]  # nothing held back since


def test_many_addresses_are_counted_up_to_a_bound():
    summaries = []
    log, lines, clock = make(max_first=0, max_hosts=4, max_counted=64)
    log.on_suppressed = lambda n, hosts, seconds: summaries.append((n, hosts, seconds))
    for k in range(100):
        log.failed(f"10.0.{k}.1", "x", "x")
    log.flush(final=True)
    assert summaries == [(100, 64, 1)]  # addresses beyond the bound are not remembered (memory): "at least"
