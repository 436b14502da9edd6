"""``ftx receive --metrics``: a real receiver scraped during and after real transfers.

The metrics and the --json lines come from the same events, so the test checks
the scraped values against what the JSON lines said.
"""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import journal_records, run_send, start_send, wait_for, write_random

pytestmark = pytest.mark.timeout(90)


def scrape(url: str) -> dict:
    """{(sample name, ((label, value), ...)): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def scrape_until(url: str, pred, what: str, timeout: float = 20.0) -> dict:
    def once():
        samples = scrape(url)
        return samples if pred(samples) else None

    return wait_for(once, timeout=timeout, interval=0.05, what=what)


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_scraped_during_and_after_a_transfer(tmp_path, receiver_factory):
    r = receiver_factory("--metrics", "127.0.0.1:0", "--max-per-host", "1")
    url = r.listening["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    before = scrape(url)
    assert value(before, "ftx_sessions_active", transport="tcp") == 0
    assert value(before, "ftx_received_bytes_total") == 0

    data = write_random(tmp_path / "src" / "slow.bin", 3 << 20)
    slow = start_send(str(tmp_path / "src" / "slow.bin"), r.dest, "--max-rate", "1M", "--chunk-size", "256K")
    wait_for(lambda: journal_records(r.dir, "slow.bin") >= 2, what="the transfer under way")
    during = scrape_until(url, lambda s: value(s, "ftx_receiving_bytes") > 0 and value(s, "ftx_partial_bytes") > 0,
                          "bytes in progress (the partial scan is reused for 2 s)")
    assert value(during, "ftx_sessions_active", transport="tcp") == 1
    assert value(during, "ftx_files_in_progress") == 1
    assert 0 < value(during, "ftx_receiving_bytes") < len(data)
    # a second sender from the same address is refused by --max-per-host 1
    write_random(tmp_path / "src2" / "other.bin", 1000)
    rc, _, err = run_send(str(tmp_path / "src2" / "other.bin"), r.dest)
    assert rc != 0 and "max-per-host" in err
    _out, err = slow.communicate(timeout=60)
    assert slow.returncode == 0, err
    events = r.events_until("session")
    files = [e for e in events if e["event"] == "file"]

    after = scrape_until(url, lambda s: value(s, "ftx_partial_bytes") == 0, "the partial gone from the scan")
    assert value(after, "ftx_sessions_active", transport="tcp") == 0
    assert value(after, "ftx_files_in_progress") == 0 and value(after, "ftx_receiving_bytes") == 0
    assert value(after, "ftx_sessions_total", transport="tcp", outcome="ok") == 1
    assert value(after, "ftx_files_total", status="ok") == 1
    assert value(after, "ftx_received_bytes_total") == sum(f["bytes_received"] for f in files) == len(data)
    assert value(after, "ftx_refusals_total", reason="max_per_host") == 1
    assert value(after, "ftx_refusals_total", reason="max_connections") == 0

    # an unknown sender: one authentication failure, no session of its own
    write_random(tmp_path / "src3" / "x.bin", 1000)
    rc, _, err = run_send(str(tmp_path / "src3" / "x.bin"), r.dest, env={"XDG_CONFIG_HOME": str(tmp_path / "s")})
    assert rc == 4, err
    r.events_until("session")
    s = scrape(url)
    assert value(s, "ftx_auth_failures_total") == 1
    assert value(s, "ftx_sessions_total", transport="tcp", outcome="auth_failed") == 1
    assert value(s, "ftx_sessions_total", transport="tcp", outcome="ok") == 1


def test_udp_counts_and_resumed_bytes_match_the_json(tmp_path, receiver_factory):
    r = receiver_factory("--metrics", "127.0.0.1:0")
    url = r.listening["metrics"]
    write_random(tmp_path / "src" / "u.bin", 2 << 20)
    rc, _report, err = run_send(str(tmp_path / "src"), r.dest, "--udp")
    assert rc == 0, err
    session = r.events_until("session")[-1]
    s = scrape(url)
    assert value(s, "ftx_sessions_total", transport="udp", outcome="ok") == 1
    assert value(s, "ftx_udp_retransmitted_bytes_total") == session["transport_stats"]["retransmitted_bytes"]
    assert value(s, "ftx_udp_lost_packets_total") == session["transport_stats"]["lost_packets"]
    assert value(s, "ftx_received_bytes_total") == 2 << 20
    assert value(s, "ftx_resumed_bytes_total") == 0


def test_a_handshake_that_times_out_counts_as_a_refusal_by_its_limit(receiver_factory):
    import socket

    r = receiver_factory("--metrics", "127.0.0.1:0", "--handshake-timeout", "0.5s")
    with socket.create_connection(("127.0.0.1", r.port), timeout=10):  # connects, says nothing
        ev = r.events_until("session")[-1]
    assert "did not finish" in ev["error"], ev
    s = scrape(r.listening["metrics"])
    assert value(s, "ftx_refusals_total", reason="handshake_timeout") == 1
    assert value(s, "ftx_auth_failures_total") == 1


def test_idle_scrapers_are_bounded_and_do_not_stop_the_receiver(tmp_path, receiver_factory):
    import socket
    import urllib.error

    from ftx.metrics import MAX_SCRAPERS

    r = receiver_factory("--metrics", "127.0.0.1:0")
    url = r.listening["metrics"]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=10)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MAX_SCRAPERS)]
    try:
        wait_for(lambda: _refused(port), what="a scraper beyond the bound closed at once")
        write_random(tmp_path / "a.bin", 10_000)
        rc, _, err = run_send(str(tmp_path / "a.bin"), r.dest)  # the receiver serves on
        assert rc == 0, err
    finally:
        for s in idle:
            s.close()
    after = scrape_until(url, lambda s: True, "a scrape once the idle ones left")
    assert value(after, "ftx_files_total", status="ok") == 1


def _refused(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(100) == b""  # closed without an answer
        except ConnectionResetError:  # closed with our request unread
            return True


def test_a_bad_metrics_address_is_a_usage_error(tmp_path):
    import subprocess

    from .helpers import FTX

    proc = subprocess.run(FTX + ["receive", "--mkdir", "--dir", str(tmp_path), "--metrics", "localhost"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "--metrics" in proc.stderr
