"""The reliable UDP transport end to end: real CLI processes, the seeded relay between them."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from .helpers import (
    Relay,
    interrupt_receiver_half_way,
    journal_records,
    resend_to_new_receiver,
    run_send,
    start_send,
    tree_equal,
    wait_for,
    write_random,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def relays():
    started: list[Relay] = []

    def start(port: int, *args: str) -> Relay:
        r = Relay(port, *args)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.stop()


def _payload(tmp_path, size=3_000_000):
    data = write_random(tmp_path / "src" / "data.bin", size, seed=size)
    write_random(tmp_path / "src" / "sub" / "small.txt", 777, seed=1)
    (tmp_path / "src" / "empty").mkdir()
    return tmp_path / "src"


def test_udp_plain_loopback(tmp_path, receiver):
    src = _payload(tmp_path)
    rc, report, err = run_send(str(src), receiver.dest, "--udp")
    assert rc == 0, err
    assert report["transport"] == "udp"
    assert tree_equal(src, receiver.dir / "src")
    stats = report["transport_stats"]
    assert stats["packets_sent"] > 40 and stats["lost_packets"] == 0  # (3 MB in datagrams of up to 64 KiB)
    # nothing lost, so nothing resent -- but what a probe timeout (a late ACK on a busy machine) resends
    # as its probe: the oldest unacknowledged bytes, at most a datagram per probe (protocol.md 14.6)
    assert stats["retransmitted_bytes"] <= stats["probes"] * stats["max_datagram"], stats


IMPAIRMENTS = {
    "loss10": "loss=0.1",
    "reorder5": "reorder=0.05",
    "dup1": "dup=0.01",
    "corrupt0.1": "corrupt=0.001",
    "all": "loss=0.1,reorder=0.05,dup=0.01,corrupt=0.001",
}


@pytest.mark.parametrize("name", list(IMPAIRMENTS))
def test_udp_through_impairments(tmp_path, receiver, relays, name):
    src = _payload(tmp_path)
    relay = relays(receiver.port, "--both", IMPAIRMENTS[name], "--seed", "7")
    rc, report, err = run_send(str(src), relay.dest, "--udp")
    counters = relay.stop()
    assert rc == 0, err
    assert tree_equal(src, receiver.dir / "src")
    fwd = counters["forward"]
    if "loss" in IMPAIRMENTS[name]:
        assert fwd["dropped"] > 100
        assert report["transport_stats"]["retransmitted_bytes"] > 0  # --json reports retransmissions
        assert report["transport_stats"]["lost_packets"] > 0
    if "corrupt" in IMPAIRMENTS[name]:
        assert fwd["corrupted"] + counters["reverse"]["corrupted"] > 0
    if "dup" in IMPAIRMENTS[name]:
        assert fwd["duplicated"] > 0


def test_udp_pure_python_loops_through_impairments(tmp_path, receiver_factory, relays, monkeypatch):
    """FTX_PURE_PYTHON=1: both ends use the reference bulk loops (no C accelerator)."""
    monkeypatch.setenv("FTX_PURE_PYTHON", "1")
    receiver = receiver_factory()
    src = _payload(tmp_path)
    rc, report, err = run_send(str(src), receiver.dest, "--udp")
    assert rc == 0, err
    assert tree_equal(src, receiver.dir / "src")
    other = tmp_path / "other"
    write_random(other / "big.bin", 2_000_000, seed=9)
    relay = relays(receiver.port, "--both", IMPAIRMENTS["all"], "--seed", "3")
    rc, report, err = run_send(str(other), relay.dest, "--udp")
    relay.stop()
    assert rc == 0, err
    assert tree_equal(other, receiver.dir / "other")
    assert report["transport_stats"]["retransmitted_bytes"] > 0


def test_udp_return_path_blackout_then_recovery(tmp_path, receiver, relays):
    data = write_random(tmp_path / "f.bin", 6_000_000, seed=3)
    # every ACK is lost from 0.3 s to 2.3 s after the relay starts
    relay = relays(receiver.port, "--reverse", "blackout=0.3-2.3", "--forward", "rate=3M")
    t0 = time.monotonic()
    rc, report, err = run_send(str(tmp_path / "f.bin"), relay.dest, "--udp")
    counters = relay.stop()
    assert rc == 0, err
    assert counters["reverse"]["blackout_dropped"] > 0
    assert (receiver.dir / "f.bin").read_bytes() == data
    assert time.monotonic() - t0 > 2.0


def test_udp_vanished_receiver_is_a_clear_error(tmp_path, receiver):
    write_random(tmp_path / "f.bin", 30_000_000)
    receiver.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        rc, report, err = run_send(str(tmp_path / "f.bin"), receiver.dest, "--udp", "--idle-timeout", "2")
    finally:
        receiver.proc.send_signal(signal.SIGCONT)
    assert rc == 3, err
    assert time.monotonic() - t0 < 15


SIZE = 24 * 1024 * 1024 + 999
CHUNKS = 25


def test_udp_sender_killed_resumes(tmp_path, receiver):
    data = write_random(tmp_path / "big.bin", SIZE, seed=11)
    proc = start_send(str(tmp_path / "big.bin"), receiver.dest, "--udp", "--max-rate", "16M")
    wait_for(lambda: journal_records(receiver.dir, "big.bin") >= CHUNKS // 2, what="half the chunks")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not (receiver.dir / "big.bin").exists()
    rc, report, err = run_send(str(tmp_path / "big.bin"), receiver.dest, "--udp")
    assert rc == 0, err
    assert report["bytes_sent"] <= 0.55 * SIZE
    assert (receiver.dir / "big.bin").read_bytes() == data


def test_udp_receiver_killed_resumes_and_tcp_udp_mix(tmp_path, receiver_factory):
    data = write_random(tmp_path / "big.bin", SIZE, seed=12)
    dst = tmp_path / "dst"
    rc = interrupt_receiver_half_way(receiver_factory, dst, tmp_path / "big.bin", CHUNKS, lambda r: r.kill(),
                                     "--udp", "--max-rate", "16M", "--idle-timeout", "3")
    assert rc == 3
    # the journal belongs to the core: a transfer started over UDP resumes over TCP
    report = resend_to_new_receiver(receiver_factory, dst, tmp_path / "big.bin")
    assert report["bytes_sent"] <= 0.55 * SIZE
    assert (dst / "big.bin").read_bytes() == data


def test_garbage_and_replayed_datagrams_have_no_effect(tmp_path, receiver, relays):
    """Random garbage and copies of earlier datagrams aimed at the receiver during a transfer."""
    data = write_random(tmp_path / "big.bin", 8_000_000, seed=13)
    relay = relays(receiver.port, "--forward", "rate=8M")
    proc = start_send(str(tmp_path / "big.bin"), relay.dest, "--udp")
    # capture nothing ourselves: replay = resend real traffic shapes; we spray garbage and
    # well-formed-looking packets with random connection IDs and stale packet numbers
    from ftx.core.udp.packets import DATA, INITIAL, build

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    deadline = time.monotonic() + 20
    sent = 0
    while proc.poll() is None and time.monotonic() < deadline and sent < 3000:
        sock.sendto(os.urandom(1 + sent % 1400), ("127.0.0.1", receiver.port))
        sock.sendto(build(DATA, int.from_bytes(os.urandom(8), "big"), sent, b"\x01"), ("127.0.0.1", receiver.port))
        sock.sendto(build(INITIAL, 1, 1, b"\x00" * 1300), ("127.0.0.1", receiver.port))
        sent += 1
        time.sleep(0.001)
    out, err = proc.communicate(timeout=60)
    sock.close()
    relay.stop()
    assert proc.returncode == 0, err
    assert (receiver.dir / "big.bin").read_bytes() == data
    assert sent > 10


def test_udp_survives_a_source_port_change(tmp_path, receiver, relays):
    """NAT rebinding: mid-transfer the sender's datagrams start arriving from a new port."""
    data = write_random(tmp_path / "f.bin", 6_000_000, seed=21)
    relay = relays(receiver.port, "--forward", "rate=4M,rebind=0.6")
    rc, report, err = run_send(str(tmp_path / "f.bin"), relay.dest, "--udp")
    counters = relay.stop()
    assert rc == 0, err
    assert counters["forward"].get("rebinds") == 1
    assert (receiver.dir / "f.bin").read_bytes() == data


def test_udp_replayed_datagrams_have_no_effect(tmp_path, receiver, relays):
    """Real datagrams of this very transfer, replayed 50 ms late in both directions."""
    src = _payload(tmp_path, 4_000_000)
    relay = relays(receiver.port, "--both", "replay=0.05", "--seed", "3")
    rc, report, err = run_send(str(src), relay.dest, "--udp")
    counters = relay.stop()
    assert rc == 0, err
    assert counters["forward"]["replayed"] > 50 and counters["reverse"]["replayed"] > 0
    assert tree_equal(src, receiver.dir / "src")


def test_udp_one_port_serves_many_senders_at_once(tmp_path, receiver):
    procs = []
    for i in range(4):
        write_random(tmp_path / f"s{i}" / "data.bin", 3_000_000, seed=30 + i)
        procs.append(start_send(str(tmp_path / f"s{i}"), receiver.dest, "--udp"))
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for i in range(4):
        assert tree_equal(tmp_path / f"s{i}", receiver.dir / f"s{i}")


def test_udp_no_congestion_collapse_behind_a_narrow_bottleneck(tmp_path, receiver, relays):
    """A 4 MB/s bottleneck with a short queue: the sender must find the rate, not flood it."""
    data = write_random(tmp_path / "f.bin", 10_000_000, seed=41)
    relay = relays(receiver.port, "--forward", "rate=4M,queue=20ms", "--both", "delay=5ms")
    rc, report, err = run_send(str(tmp_path / "f.bin"), relay.dest, "--udp")
    counters = relay.stop()
    assert rc == 0, err
    assert (receiver.dir / "f.bin").read_bytes() == data
    retx = report["transport_stats"]["retransmitted_bytes"] / len(data)
    assert retx < 0.10, f"{retx:.1%} retransmitted: the sender overran the bottleneck"
    assert counters["forward"]["queue_dropped"] < 0.10 * counters["forward"]["in"]


def test_udp_content_change_restarts_and_mid_transfer_change_aborts(tmp_path, receiver):
    """RESTART must reach the receiver before new chunks; ABORT_FILE after the chunks sent."""
    src = tmp_path / "big.bin"
    write_random(src, SIZE, seed=51)
    st = os.stat(src)
    proc = start_send(str(src), receiver.dest, "--udp", "--max-rate", "16M")
    wait_for(lambda: journal_records(receiver.dir, "big.bin") >= CHUNKS // 2, what="half the chunks")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    new = bytearray(src.read_bytes())
    new[10] ^= 0xFF  # same size, same mtime, other content
    src.write_bytes(new)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, report, err = run_send(str(src), receiver.dest, "--udp")
    assert rc == 0, err
    assert report["bytes_resumed"] == 0
    assert (receiver.dir / "big.bin").read_bytes() == bytes(new)
    # now change the source while it is being sent
    (receiver.dir / "big.bin").unlink()
    proc = start_send(str(src), receiver.dest, "--udp", "--max-rate", "16M")
    wait_for(lambda: journal_records(receiver.dir, "big.bin") >= 3, what="a few chunks")
    with open(src, "r+b") as f:
        f.write(b"changed" * 1000)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err  # that file failed; the session itself stayed healthy
    assert "changed" in err and "protocol" not in err.lower()
    assert not (receiver.dir / "big.bin").exists()


def test_udp_larger_mtu(tmp_path, receiver):
    """--mtu raises the datagram size (loopback carries 9000-byte datagrams)."""
    src = _payload(tmp_path, 5_000_000)
    rc, report, err = run_send(str(src), receiver.dest, "--udp", "--mtu", "9000")
    assert rc == 0, err
    assert tree_equal(src, receiver.dir / "src")
    stats = report["transport_stats"]
    assert stats["bytes_sent"] / stats["packets_sent"] > 5000  # far above a 1452-byte datagram


def test_udp_pmtud_finds_what_the_path_carries(tmp_path, receiver, relays):
    src = _payload(tmp_path, size=6_000_000)
    # a 4100-byte path MTU (less IPv4 and UDP headers), slow enough for the search to finish
    relay = relays(receiver.port, "--forward", "mtu=4072,rate=100Mbit,delay=5ms")
    rc, report, err = run_send(str(src), relay.dest, "--udp", "--pmtud")
    counters = relay.stop()
    assert rc == 0, err
    assert tree_equal(src, receiver.dir / "src")
    stats = report["transport_stats"]
    assert stats["max_datagram"] == 4048 and stats["pmtu_probes"] >= 2  # 4096 - 48; 8144 did not get through
    assert counters["forward"]["too_big"] >= 1


@pytest.mark.parametrize("on", [(), ("--pmtud",)], ids=["default", "pmtud"])
def test_udp_pmtud_on_loopback_by_default_and_off_with_no_pmtud(tmp_path, receiver, on):
    """The search above the initial size is on by default (pmtu.py says why, with figures);
    --pmtud names the default; --no-pmtud turns it off (also after a --pmtud on the line)."""
    src = _payload(tmp_path)
    rc, report, err = run_send(str(src), receiver.dest, "--udp", *on)
    assert rc == 0, err
    assert report["transport_stats"]["max_datagram"] > 9000  # loopback's MTU is 64 KiB
    (receiver.dir / "src" / "data.bin").unlink()
    rc, report, err = run_send(str(src), receiver.dest, "--udp", *on, "--no-pmtud")
    assert rc == 0, err
    assert report["transport_stats"]["max_datagram"] == 1452 and report["transport_stats"]["pmtu_probes"] == 0
