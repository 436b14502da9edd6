"""Per-host fairness: what one host counts as (an IPv6 /64), and what one host may hold.

Issue #11's review: every per-host limit counted per address, so one IPv6 host
(which picks its source addresses in a whole /64) got 2^64 shares of each; and the
frame-buffer budget of ``--max-memory`` had no per-host share, so one host's
connections could hold it all and other hosts' senders were refused.  Each limit
is attacked through a real receiver where one can be, from real addresses: other
IPv4 hosts are 127.0.0.2 and up (loopback covers 127/8), other IPv6 addresses of
one /64 are added to ``lo`` for the test (as root; skipped without IPv6).
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from ftx.core.frames import FrameDecoder, FrameType, encode_data_header, encode_frame
from ftx.core.hosts import host_key
from ftx.core.messages import ROLE_SENDER, ErrorMessage, Hello
from ftx.errors import ErrorCode
from ftx.limits import Admission, Limits

from .helpers import SealedSocket, run_send, wait_for, write_random

pytestmark = pytest.mark.timeout(90)
MIB = 1 << 20
PREFIX = "fd00:f7a:6f57:1"  # a /64 of unique-local addresses, added to lo for the test
HELLO = encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 4 * MIB + 64 * 1024).encode())


# -- host_key ----------------------------------------------------------------------------------
@pytest.mark.parametrize("address,key", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # what a dual-stack socket reports for an IPv4 peer
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
    ("fe80::1%lo", "fe80::/64"),
    ("::1", "::/64"),
    ("2001:db8:1:2::/64", "2001:db8:1:2::/64"),  # a key is its own key
    (("2001:db8:1:2::9", 7431, 0, 0), "2001:db8:1:2::/64"),  # a socket address
    (None, "?"),
    ("", "?"),
])
def test_host_key_is_an_ipv4_address_or_an_ipv6_64(address, key):
    assert host_key(address) == key


def test_addresses_in_another_64_are_another_host():
    assert host_key("2001:db8:1:2::1") != host_key("2001:db8:1:3::1")
    assert host_key("192.0.2.7") != host_key("192.0.2.8")


def test_ipv4_peers_translated_into_the_nat64_prefix_are_each_their_own_host():
    """Behind a stateless translator (SIIT, RFC 7915; SIIT-DC, RFC 7755) an IPv6-only receiver sees
    every IPv4 sender as ``64:ff9b::a.b.c.d`` (RFC 6052's well-known prefix): one /64 for all of
    them would make every IPv4 sender one host, so that one of them could take the share and the
    per-host places of all the others.  Each counts as its IPv4 address, as ``::ffff:a.b.c.d`` does."""
    assert host_key("64:ff9b::192.0.2.7") == "192.0.2.7"
    assert host_key("64:ff9b::c000:208") == "192.0.2.8"
    assert host_key(("64:ff9b::198.51.100.1", 7431, 0, 0)) == "198.51.100.1"
    assert host_key("64:ff9b:1::192.0.2.7") == "64:ff9b:1::/64"  # (the local-use prefix: a network's own)


# -- every per-host count uses it ------------------------------------------------------------------
def test_max_per_host_counts_an_ipv6_64_as_one_host():
    admission = Admission(Limits(max_per_host=2))
    assert admission.admit("2001:db8:1:2::1") is None
    assert admission.admit("2001:db8:1:2::2") is None
    why = admission.admit("2001:db8:1:2::3")
    assert why is not None and "2001:db8:1:2::/64" in why and "--max-per-host 2" in why
    assert admission.admit("2001:db8:1:3::1") is None  # another /64
    admission.release("2001:db8:1:2::2")
    assert admission.admit("2001:db8:1:2::4") is None
    assert admission.admit("::ffff:192.0.2.7") is None and admission.admit("192.0.2.7") is None
    assert admission.admit("192.0.2.7") is not None  # one IPv4 host, however it is written


def test_failed_authentications_ban_the_whole_64():
    from ftx.security_setup import Throttle

    now = [0.0]
    throttle = Throttle(limit=5, clock=lambda: now[0])
    for k in range(5):  # five addresses of one /64, one failure each
        now[0] += 1
        throttle.failed(f"2001:db8:1:2::{k + 1}")
    assert throttle.refused("2001:db8:1:2::99") > 0
    assert throttle.refused("2001:db8:1:3::1") == 0


def test_udp_sessions_and_initials_count_per_64():
    from ftx.core.udp.endpoint import Dialer, Listener, padded_initial
    from ftx.core.udp import packets as P
    from ftx.core.udp.session import UdpConfig

    def open_from(lst, addr, scid, now):
        _, _, replies = lst.receive_datagram(padded_initial(7, 1, scid, b""), addr, now)
        token = P.parse_initial(P.parse(replies[0]).payload)[1]
        return lst.receive_datagram(padded_initial(7, 2, scid, token), addr, now)

    admission = Admission(Limits(max_per_host=1))
    cids = iter(range(1, 1 << 20))
    lst = Listener(b"s" * 32, UdpConfig(handshake_timeout=10.0), lambda: next(cids), admission=admission)
    session, new, _ = open_from(lst, ("2001:db8:1:2::1", 5000), 100, 10.0)
    assert new
    session.established()
    dialer = Dialer(UdpConfig(), 101, 7, 10.0)
    _, new, replies = open_from(lst, ("2001:db8:1:2::2", 5000), 101, 10.1)  # another address, same /64
    assert not new
    for r in replies:
        dialer.receive_datagram(r, 10.1)
    assert dialer.session.closed and dialer.session.close_code == ErrorCode.BUSY
    assert "2001:db8:1:2::/64" in dialer.session.close_reason
    _, new, _ = open_from(lst, ("2001:db8:1:3::1", 5000), 102, 10.2)  # another /64
    assert new
    # INITIALs: a flood spread over the addresses of one /64 is one busy host
    now = 20.0
    for k in range(200):
        now += 0.005
        lst.receive_datagram(padded_initial(7, 1, 1000 + k, b""), (f"2001:db8:9:9::{k + 1:x}", 1), now)
    assert lst.busy_hosts(now, 10) == ["2001:db8:9:9::/64"]


# -- through a real receiver, over IPv6 -------------------------------------------------------------
@pytest.fixture
def one_64():
    """Three addresses of one /64 on lo (root, IPv6); removed afterwards."""
    if not socket.has_ipv6 or os.geteuid() != 0:
        pytest.skip("needs IPv6 and root (to add addresses to lo)")
    addrs = [f"{PREFIX}::{k}" for k in (0xa, 0xb, 0xc)]
    added = []
    try:
        for a in addrs:
            r = subprocess.run(["ip", "-6", "addr", "add", f"{a}/64", "dev", "lo", "nodad"], capture_output=True)
            if r.returncode != 0 and b"exists" not in r.stderr:
                pytest.skip(f"cannot add {a} to lo: {r.stderr.decode().strip()}")
            added.append(a)
        yield addrs
    finally:
        for a in added:
            subprocess.run(["ip", "-6", "addr", "del", f"{a}/64", "dev", "lo"], capture_output=True)


class Held:
    """An authenticated connection from ``source`` that sent HELLO and is served (PONG seen)."""

    def __init__(self, port: int, host: str, source: str) -> None:
        self.sock = SealedSocket(port, host, source=source)
        self.decoder = FrameDecoder(copy_payloads=True)
        self.decoder.set_max_payload(4 * MIB + 64 * 1024)

    def frame(self, timeout: float = 10.0):
        self.sock.settimeout(timeout)
        while (fr := self.decoder.next_frame()) is None:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.feed(data)
        return fr

    def until(self, ftype: FrameType, timeout: float = 10.0):
        while (fr := self.frame(timeout)) is not None:
            if fr.type == ftype:
                return fr
        return None

    def close(self) -> None:
        self.sock.close()


def test_max_per_host_counts_a_64_through_a_real_receiver(tmp_path, receiver_factory, one_64):
    r = receiver_factory("--max-per-host", "2", host="::")
    a, b, c = one_64
    held = []
    try:
        for src in (a, b):
            h = Held(r.port, a, src)
            h.sock.sendall(HELLO + encode_frame(FrameType.PING, bytes(8)))
            assert h.until(FrameType.PONG) is not None
            held.append(h)
        # a third address of the same /64: refused, with the /64 named
        third = socket.create_connection((a, r.port), timeout=10, source_address=(c, 0))
        try:
            dec = FrameDecoder(copy_payloads=True)
            third.settimeout(10)
            while (fr := dec.next_frame()) is None:
                data = third.recv(65536)
                assert data, "closed without a reason"
                dec.feed(data)
            err = ErrorMessage.decode(fr.payload)
            assert fr.type == FrameType.ERROR and err.code == ErrorCode.BUSY
            assert f"{PREFIX}::/64" in err.message and "--max-per-host 2" in err.message
        finally:
            third.close()
        # what a user meets: ftx send from that /64 (loopback picks the destination as source)
        write_random(tmp_path / "f.bin", 1000)
        rc, _report, stderr = run_send(str(tmp_path / "f.bin"), f"[{c}]:{r.port}", timeout=30)
        assert rc == 3 and "--max-per-host 2" in stderr, stderr
        # over UDP too (TCP and UDP count together): the Listener keys the INITIAL's source alike
        rc, _report, stderr = run_send(str(tmp_path / "f.bin"), f"[{c}]:{r.port}", "--udp", timeout=30)
        assert rc == 3 and f"{PREFIX}::/64" in stderr and "--max-per-host 2" in stderr, stderr
        # another host (IPv4 here) is not counted with them
        rc, _report, stderr = run_send(str(tmp_path / "f.bin"), f"127.0.0.1:{r.port}", timeout=30)
        assert rc == 0, stderr
    finally:
        for h in held:
            h.close()


# -- the frame-buffer budget: one host's share -------------------------------------------------------
def _rx_queue(local_port: int, remote: tuple[str, int]) -> int | None:
    """Bytes waiting unread in the receiver's socket of the connection from ``remote`` (None: gone),
    from /proc/net/tcp: how we know the receiver has read (and so buffered) what was sent."""
    want_local = f"0100007F:{local_port:04X}"
    a = socket.inet_aton(remote[0])
    want_remote = f"{a[::-1].hex().upper()}:{remote[1]:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1] == want_local and parts[2] == want_remote and parts[3] == "01":  # ESTABLISHED
                return int(parts[4].split(":")[1], 16)
    return None


def _hold_partial_frame(port: int, source: str, size: int) -> Held | None:
    """An authenticated connection from ``source`` that sends a DATA frame announcing ``size`` bytes
    and all of it but 16 bytes, then waits: the receiver holds those bytes until the stall timeout.
    None if the receiver refused it on the way."""
    h = Held(port, "127.0.0.1", source)
    h.sock.sendall(HELLO + encode_frame(FrameType.PING, bytes(8)))
    if h.until(FrameType.PONG) is None:
        h.close()
        return None
    try:
        h.sock.sendall(encode_data_header(1, 0, 0, size) + os.urandom(size - 16))
    except OSError:
        h.close()
        return None
    return h


def test_one_host_cannot_take_the_frame_buffers_of_the_others(tmp_path, receiver_factory):
    """One host (127.0.0.2) opens 16 connections, each holding most of a big DATA frame (4 MiB,
    1 MiB, 256 KiB: what fills a budget best); a sender from another host (127.0.0.1) still gets
    its frames buffered and its file delivered.  --max-memory 96M: 18 MiB of frame buffers, of
    which one host may hold 8 MiB."""
    r = receiver_factory("--max-memory", "96M", "--stall-timeout", "60")
    held = []
    try:
        for size in [4 * MIB] * 6 + [MIB] * 6 + [256 * 1024] * 4:
            h = _hold_partial_frame(r.port, "127.0.0.2", size)
            if h is not None:
                held.append(h)
        # the attack has landed: every connection it kept has been read to the last byte (or closed)
        for h in held:
            me = h.sock.sock.getsockname()
            wait_for(lambda: not _rx_queue(r.port, me), timeout=20, interval=0.01,
                     what="the receiver to read what the attacker sent")
        assert held, "the receiver refused every connection of the host"
        write_random(tmp_path / "src" / "legit.bin", 24 * MIB, seed=5)
        rc, report, stderr = run_send(str(tmp_path / "src" / "legit.bin"), r.dest, timeout=60)
        assert rc == 0, stderr
        assert (r.dir / "legit.bin").stat().st_size == 24 * MIB
        # and the host was told why its connections beyond its share were refused
        refused = [h for h in held if _rx_queue(r.port, h.sock.sock.getsockname()) is None]
        assert refused, "the host kept every connection"
        err = ErrorMessage.decode(refused[0].until(FrameType.ERROR).payload)
        assert err.code == ErrorCode.BUSY, err
        assert "for 127.0.0.2" in err.message and "one host's share of its --max-memory" in err.message
    finally:
        for h in held:
            h.close()


def test_a_hosts_share_counts_all_its_connections_and_leaves_the_rest_to_others():
    from ftx.core.frames import BufferBudget

    total = BufferBudget(100, host_share=40)
    a1, a2, b = total.for_host("192.0.2.1"), total.for_host("192.0.2.1"), total.for_host("192.0.2.2")
    assert a1.take(30) and not a2.take(11) and a2.take(10)  # the host's 40, over two connections
    assert a1.room == 0 and "for 192.0.2.1" in str(a2.refusal()) and "one host's share" in str(a2.refusal())
    assert b.take(40) and b.room == 0
    c = total.for_host("192.0.2.3")
    assert c.room == 20 and c.take(20) and not c.take(1)  # the total is spent: its own message
    assert "for 192.0.2.3" not in str(c.refusal()) and "(100 of" not in str(c.refusal())  # (MiB: 0 of 0)
    a1.give(30)
    a2.give(10)
    assert total.used == 60 and "192.0.2.1" not in total.hosts  # an idle host leaves no entry (gives counted on a look)


def test_the_host_share_is_a_quarter_of_the_frame_buffers_and_at_least_8_mib():
    assert Limits().frame_buffer_bytes == 78 * MIB
    assert Limits().host_frame_buffer_bytes == 78 * MIB // 4  # 19.5 MiB by default
    small = Limits(max_memory=96 * MIB)  # 18 MiB of frame buffers: a quarter would not fit a 4 MiB chunk twice
    assert small.host_frame_buffer_bytes == 8 * MIB
    tiny = Limits(max_memory=24 * MIB)  # 4.5 MiB in all: one host may have all of it
    assert tiny.host_frame_buffer_bytes == tiny.frame_buffer_bytes


def test_a_hosts_settling_small_files_make_it_wait_not_fail_and_gives_from_threads_count():
    """Small files being stored (taken ``settling``) give bytes back without more input: a connection
    of the host whose share they fill waits (BufferWait); another host, with nothing settling, whose
    share is spent is refused (BufferLimit).  Gives from worker threads are counted on the next look."""
    import threading

    from ftx.core.frames import BufferBudget, BufferLimit, BufferWait

    total = BufferBudget(100, host_share=40)
    a, b = total.for_host("192.0.2.1"), total.for_host("192.0.2.2")
    assert a.take(40, settling=True) and not a.take(1)
    assert type(a.refusal()) is BufferWait and a.settling == 40
    assert b.take(40) and not b.take(1) and type(b.refusal()) is BufferLimit and b.settling == 0
    threads = [threading.Thread(target=a.give, args=(10, True)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.used == 0 and a.settling == 0 and total.settling == 0 and total.used == 40
    assert "192.0.2.1" not in total.hosts and "192.0.2.1" not in total.hosts_settling


def test_a_hosts_account_loses_no_give_from_a_worker_thread_while_it_takes():
    """A worker thread's give queued while the loop thread is inside ``HostBudget.take`` (after it read
    the host's account, before the total counted the queue) is not overwritten: after every take is
    given back, the host holds nothing (a lost give would shrink its share for good)."""
    import sys
    import threading
    import time

    from ftx.core.frames import BufferBudget

    total = BufferBudget(1 << 30, host_share=1 << 29)
    host = total.for_host("192.0.2.1")
    n = 20_000
    assert host.take(n, settling=True)

    def worker() -> None:
        for _ in range(n):
            host.give(1, True)
            time.sleep(0)  # the loop thread runs again, and is switched out anywhere in take

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        while thread.is_alive():
            assert host.take(1)
            host.give(1)
        thread.join(60)
    finally:
        sys.setswitchinterval(old)
    assert total.used == 0 and total.settling == 0 and host.used == 0 and total.hosts == {}
