"""UDP on paths that carry less than 1452-byte datagrams (issue #11, item 2), end to end.

``ftx impair --both mtu=N`` drops every datagram whose UDP payload exceeds N bytes,
as a path with an MTU of N + 28 (IPv4) would: 1392 is a 1420-byte (WireGuard)
path, 1232 the 1280-byte IPv6 minimum.  The sender used to hang there without
a word; by default it must fall back to 1200-byte datagrams, find the largest
size the path carries, say so at -v, and deliver everything.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .helpers import FTX, Relay, tree_equal, write_random

pytestmark = pytest.mark.timeout(120)


def _send(*args: str, timeout: float = 60.0):
    proc = subprocess.run(FTX + ["send", *args, "--json", "--no-progress", "-v"], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


@pytest.mark.parametrize("pmtud", [False, True], ids=["default", "pmtud"])
@pytest.mark.parametrize("path", [1392, 1232])
def test_udp_small_mtu_path_works_without_options(tmp_path, receiver, path, pmtud):
    src = tmp_path / "src"
    write_random(src / "data.bin", 4_000_000, seed=path)
    for i in range(300):  # many small files: the control streams fill whole packets, both ways
        write_random(src / "small" / f"f{i:03d}", 700, seed=i)
    relay = Relay(receiver.port, "--both", f"mtu={path}")
    try:
        # a receipt: the receiver answers with a RESULT per file and signed RECEIPT entries, so its
        # packets are full-sized too (without one, a RESULT_RUN settles the 300 files in 8 bytes
        # and the receiver never sends a datagram the path drops)
        rc, report, err = _send(str(src), relay.dest, "--udp", "--receipt", str(tmp_path / "receipt"),
                                *(["--pmtud"] if pmtud else []))
    finally:
        counters = relay.stop()
    assert rc == 0, err
    assert tree_equal(src, receiver.dir / "src")
    assert counters["forward"]["too_big"] > 0  # the path did drop the first full-size datagrams
    expect = {1392: 1372, 1232: 1232}[path]  # the largest candidate (MTU - 48) that fits
    stats = report["transport_stats"]
    assert stats["max_datagram"] == expect and stats["pmtu_fallbacks"] == 1
    assert "1452-byte datagrams do not get through" in err and "sending 1200-byte datagrams" in err
    assert f"carries {expect}-byte datagrams" in err
    session = receiver.events_until("session")[-1]
    # The receiver's own packets (DECISIONs, RESULTs) fell back too.  It sends few, so its search
    # for a larger size may still be under way when the transfer ends (seen in CI under load):
    # at the end it sends somewhere between the base size and the largest that fits, never more.
    rstats = session["transport_stats"]
    assert session["ok"] and rstats["pmtu_fallbacks"] == 1
    assert 1200 <= rstats["max_datagram"] <= expect


@pytest.mark.parametrize("search", ["default", "--no-pmtud"])
def test_udp_1500_byte_path_keeps_full_size_datagrams(tmp_path, receiver, search):
    """On a 1500-byte path (the internet's usual MTU) the search (on by default) stays at 1452
    bytes and costs nothing but its probes: the next size (2000) is tried MAX_PROBES (3) times,
    only the probes are too big for the path, and nothing falls back.  (That a lost probe is not
    a lost packet nor a congestion signal, RFC 8899 3 item 7, is checked without the noise of a
    real relay in test_udp_core.py TestPmtuTransfer.)"""
    write_random(tmp_path / "f.bin", 3_000_000, seed=1)
    relay = Relay(receiver.port, "--both", "mtu=1472")
    try:
        rc, report, err = _send(str(tmp_path / "f.bin"), relay.dest, "--udp",
                                *([search] if search != "default" else []))
    finally:
        counters = relay.stop()
    assert rc == 0, err
    stats = report["transport_stats"]
    assert stats["max_datagram"] == 1452 and stats["pmtu_fallbacks"] == 0
    probes = 0 if search == "--no-pmtud" else 3  # 2000 bytes, three times, then the search is over
    assert stats["pmtu_probes"] == probes and counters["forward"]["too_big"] == probes
    assert "do not get through" not in err


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "plain"])
def test_udp_1280_byte_path_falls_back_with_pmtud(tmp_path, receiver_factory, sealed, host):
    """With the search on (--pmtud) every datagram has the don't-fragment bit
    (IP_PMTUDISC_PROBE), so on a path below 1500 bytes nothing is fragmented on the way any more:
    a 1452-byte datagram is simply dropped, as ``ftx impair mtu=1280`` drops it, and the
    black-hole fallback must find the size that gets through, sealed or not, IPv4 or IPv6."""
    insecure = () if sealed else ("--insecure",)
    receiver = receiver_factory(*insecure, host=host)
    src = tmp_path / "src"
    write_random(src / "data.bin", 2_000_000, seed=5)
    relay = Relay(receiver.port, "--both", "mtu=1280", host=host)
    try:
        rc, report, err = _send(str(src), relay.dest, "--udp", "--pmtud", *insecure)
    finally:
        counters = relay.stop()
    assert rc == 0, err
    assert tree_equal(src, receiver.dir / "src")
    assert counters["forward"]["too_big"] > 0
    stats = report["transport_stats"]
    # 1232 = 1280 - 48, the largest candidate that fits; the search above it found nothing larger
    assert stats["max_datagram"] == 1232 and stats["pmtu_fallbacks"] == 1 and stats["pmtu_probes"] >= 2
    assert "1452-byte datagrams do not get through" in err and "carries 1232-byte datagrams" in err


def test_udp_path_that_carries_no_initial_is_a_timeout_that_names_the_cause(tmp_path, receiver):
    """Below 1200 bytes not even the padded INITIAL gets through: the sender gives up after
    its idle timeout, and says what may be wrong, instead of hanging."""
    write_random(tmp_path / "f.bin", 1000, seed=1)
    relay = Relay(receiver.port, "--forward", "mtu=1100")
    try:
        rc, report, err = _send(str(tmp_path / "f.bin"), relay.dest, "--udp", "--idle-timeout", "2")
    finally:
        counters = relay.stop()
    assert rc == 3 and counters["forward"]["too_big"] > 0
    assert "no answer from" in err and "drops 1200-byte datagrams" in err
