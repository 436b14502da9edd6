"""Sealed UDP packets (protocol.md 14.13): packet protection, the session rules around the
handshake, key update, replays and forgeries -- in memory with explicit clocks, then over
real sockets through the impairing relay.

The real handshakes live elsewhere (``ftx/core/secure/sigma.py`` ...); here a fixed-secret
double (``FixedHandshake``) stands in: two 40-byte messages on the control stream, then
traffic secrets derived from a shared secret and both messages.  It implements the
``Handshake`` interface, so the links are driven exactly as ``ftx/securing.py`` drives them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.core.secure import AuthError, Established, PeerIdentity
from ftx.core.secure import datagrams as D
from ftx.core.secure.keys import AES_256_GCM, CHACHA20_POLY1305
from ftx.core.udp import burst
from ftx.core.udp import packets as P
from ftx.core.udp.session import UdpConfig, UdpSession
from ftx.errors import RemoteProtocolError

from .test_udp_core import DELIVERY, InMemoryNet, _check_chunks, _chunks, _send_all, loops  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)
MSG = 40


class FixedHandshake:
    """A stand-in ``Handshake``: the client sends 40 bytes, the server answers 40 bytes; both
    derive the traffic secrets from ``psk`` and the two messages.  A wrong psk gives keys
    that open nothing (as a failed real handshake would never give keys at all)."""

    def __init__(self, client: bool, psk: bytes = b"test secret", cipher: str = AES_256_GCM) -> None:
        self.client, self.psk, self.cipher = client, psk, cipher
        self.mine = (b"FAKEHS-C" if client else b"FAKEHS-S") + os.urandom(MSG - 8)
        self.theirs = b""
        self._out = self.mine if client else b""
        self._sent = False  # our one message was returned by data_to_send
        self.result: Established | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def keys_ready(self) -> bool:
        return self.result is not None and self._sent

    def receive(self, data: bytes, now: float) -> int:
        used = min(MSG - len(self.theirs), len(data))
        self.theirs += bytes(data[:used])
        if len(self.theirs) == MSG:
            if not self.client:
                self._out = self.mine
            c, s = (self.mine, self.theirs) if self.client else (self.theirs, self.mine)
            c2s = hashlib.sha256(self.psk + b"c2s" + c + s).digest()
            s2c = hashlib.sha256(self.psk + b"s2c" + c + s).digest()
            send, recv = (c2s, s2c) if self.client else (s2c, c2s)
            self.result = Established(self.cipher, send, recv, PeerIdentity("code", name="test"))
        return used

    def data_to_send(self) -> bytes:
        out, self._out = self._out, b""
        self._sent = self._sent or bool(out)
        return out


async def run_handshake(link, hs: FixedHandshake, timeout: float = 10.0) -> Established:
    """The driver loop of the ``Handshake`` docstring (what ftx/securing.py does)."""
    installed = False
    pending = b""
    while True:
        out = hs.data_to_send()
        if out:
            await link.send([out])
        if hs.keys_ready and not installed:
            link.install_keys(hs.result)
            installed = True
        if hs.done:
            break
        data = await asyncio.wait_for(link.recv_raw(), timeout)
        if not data:
            raise ConnectionError("stream ended during the handshake")
        pending += data
        pending = pending[hs.receive(pending, 0.0):]
    link.handshake_done(pending)
    return hs.result


# =====================================================================================
# packet protection
# =====================================================================================
def _pair(cipher=AES_256_GCM, limits=None):
    a, b = FixedHandshake(True, cipher=cipher), FixedHandshake(False, cipher=cipher)
    b.receive(a.data_to_send(), 0)
    a.receive(b.data_to_send(), 0)
    return D.PacketProtection(a.result, limits), D.PacketProtection(b.result, limits)


def _packet(pn: int, payload: bytes, dcid: int = 7) -> bytearray:
    return bytearray(P.HEADER.pack(P.DATA, P.VERSION, dcid, pn) + payload + bytes(16))


@pytest.mark.parametrize("cipher", [AES_256_GCM, CHACHA20_POLY1305])
def test_seal_open_round_trip_and_tampering(cipher):
    a, b = _pair(cipher)
    payload = bytes([P.F_PING]) + os.urandom(300)
    pkt = a.seal(_packet(5, payload), 5)
    assert pkt[0] == D.SEALED and len(pkt) == 18 + len(payload) + 16
    assert payload[1:50] not in pkt
    assert bytes(b.open(bytes(pkt))) == payload
    for pos in (0, 3, 12, 17, 18, len(pkt) - 1):  # header (AAD), ciphertext, tag
        bad = bytearray(pkt)
        bad[pos] ^= 0x40
        if bad[0] not in D.SEALED_TYPES:
            continue
        assert b.open(bytes(bad)) is None
    assert b.forged >= 5
    assert a.open(bytes(pkt)) is None  # our own direction's key does not open it


def test_seal_burst_matches_packet_by_packet():
    a, b = _pair()
    mss, room = 1452, 1452 - 34 - P.CHUNK_HEADER_SIZE
    data = os.urandom(room * 5 + 100)
    seg = mss - 8
    size = burst.burst_size(len(data), seg)
    buf = bytearray(size)
    burst.build_chunk_burst(buf, seg, 9, 100, 3, 4, len(data), 77, data, 0, len(data), len)
    sealed = a.seal_burst(buf, seg, size, mss, 100)
    datagrams = P.segments(sealed, mss)
    assert len(datagrams) == 6 and len(sealed) == size + 6 * 8
    got = b""
    for k, d in enumerate(datagrams):
        d = bytes(d)
        assert d[0] == D.SEALED and int.from_bytes(d[10:18], "big") == 100 + k
        frames = P.parse_frames(b.open(d))
        got += bytes(frames[0].data)
    assert got == data


def test_key_update_both_ways_with_late_packets():
    """Tiny limits: the sender updates after 4 packets, once the peer answered in the phase;
    the receiver follows and keeps the previous key for late packets."""
    a, b = _pair(limits=(4, 2**40, 2**36))
    late = []
    opened_late = False
    pn_a = pn_b = 0
    for rnd in range(6):
        for _ in range(5):
            a.maybe_update()
            pkt = bytes(a.seal(_packet(pn_a, b"\x01" * 20), pn_a))
            pn_a += 1
            if rnd == 2 and not late:
                late.append(pkt)  # delivered after the next update
                continue
            assert b.open(pkt) is not None
        b.maybe_update()
        assert a.open(bytes(b.seal(_packet(pn_b, b"\x01" * 20), pn_b))) is not None  # the peer answers
        pn_b += 1
        if late and late[0][0] != D.SEALED | (b.recv.phase & 1) and not opened_late:
            assert b.open(late[0]) is not None  # the previous key still opens a late packet
            opened_late = True
    assert opened_late
    assert a.updates >= 3 and b.send.phase == a.send.phase == b.recv.phase
    assert b.forged == 0 and a.forged == 0


def test_forgeries_past_the_limit_raise_auth_error():
    a, b = _pair(limits=(2**20, 2**40, 3))
    pkt = bytearray(a.seal(_packet(1, b"\x01" * 30), 1))
    pkt[-1] ^= 1
    assert b.open(bytes(pkt)) is None
    assert b.open(bytes(pkt)) is None
    with pytest.raises(AuthError):
        b.open(bytes(pkt))


# =====================================================================================
# two sessions in memory
# =====================================================================================
def secure(net: InMemoryNet, cipher=AES_256_GCM, limits=None, psk_server=b"test secret") -> None:
    """Connect, then run the handshake double over the control streams."""
    net.handshake()
    c, s = FixedHandshake(True, cipher=cipher), FixedHandshake(False, cipher=cipher, psk=psk_server)
    net.dsession.stream_write(c.data_to_send())
    net.run_until(lambda n: len(n.lstream) >= MSG)
    used = s.receive(bytes(net.lstream), net.now)
    leftover = net.lstream[used:]
    del net.lstream[:]
    net.lsession.stream_write(s.data_to_send())
    net.lsession.install_keys(s.result, limits)
    net.lsession.handshake_done(len(leftover))
    net.run_until(lambda n: len(n.dstream) >= MSG)
    used = c.receive(bytes(net.dstream), net.now)
    leftover = net.dstream[used:]
    del net.dstream[:]
    c.data_to_send()
    net.dsession.install_keys(c.result, limits)
    net.dsession.handshake_done(len(leftover))
    net.sealed_from = (len(net.fwd.log), len(net.rev.log))


def _wire_types(net: InMemoryNet):
    fwd = [d[0] for _, d, _ in net.fwd.log[net.sealed_from[0]:]]
    rev = [d[0] for _, d, _ in net.rev.log[net.sealed_from[1]:]]
    return fwd, rev


def _wire_bytes(net: InMemoryNet) -> bytes:
    return b"".join(d for _, d, _ in net.fwd.log + net.rev.log)


@pytest.mark.parametrize("gro", DELIVERY)
def test_sealed_transfer_over_a_lossy_reordering_link(gro, loops):
    if gro:
        loops(gro == "c")
    imp = dict(loss=0.03, reorder=0.05, dup=0.02)
    net = InMemoryNet(seed=3, fwd=imp, rev=imp, gro=bool(gro))
    secure(net)
    blobs = _chunks(40, 64 * 1024, seed=1)
    _send_all(net, blobs)
    net.dsession.stream_write(b"sender says hello" * 100)
    net.lsession.stream_write(b"receiver answers" * 100)
    net.run_until(lambda n: len(n.chunks) == len(blobs) and len(n.lstream) == 1700 and len(n.dstream) == 1600)
    _check_chunks(net, blobs)
    assert bytes(net.lstream) == b"sender says hello" * 100
    fwd, rev = _wire_types(net)
    assert set(fwd) <= set(D.SEALED_TYPES) and set(rev) <= set(D.SEALED_TYPES) | {P.DATA}
    wire = _wire_bytes(net)
    for b in blobs[::7]:
        assert b[1000:1032] not in wire
    assert b"sender says hello" not in wire and b"receiver answers" not in wire
    assert net.lsession.stats["forged"] == 0


def test_corrupted_datagrams_are_forgeries_that_change_nothing():
    net = InMemoryNet(seed=5, fwd=dict(corrupt=0.05), rev=dict(corrupt=0.05))
    secure(net)
    blobs = _chunks(20, 32 * 1024, seed=2)
    _send_all(net, blobs)
    net.run_until(lambda n: len(n.chunks) == len(blobs))
    _check_chunks(net, blobs)
    assert net.lsession.stats["forged"] > 0 and not net.lsession.closed


def test_replays_are_dropped_even_long_after():
    net = InMemoryNet(seed=7)
    secure(net)
    first = _chunks(4, 16 * 1024, seed=3)
    _send_all(net, first)
    net.run_until(lambda n: len(n.chunks) == 4)
    captured = [d for _, d, _ in net.fwd.log[net.sealed_from[0]:] if d[0] in D.SEALED_TYPES]
    ls = net.lsession
    # far more ranges than the receiver tracks: every gap a new range, as heavy loss makes them
    for k in range(200):
        net.dsession._next_pn += 1  # a packet number never sent: a gap
        net.dsession.stream_write(b"x")
        net.run_until(lambda n, k=k: len(n.lstream) == k + 1)
    assert ls._recv_floor > int.from_bytes(captured[0][10:18], "big")
    got = len(net.chunks)
    before = dict(ls.stats)
    for d in captured:  # replayed, long after: each opens, and is dropped as stale
        net.listener.receive_datagram(d, net.addr, net.now)
    assert ls.stats["stale_packets"] + ls.stats["duplicate_packets"] \
        == before["stale_packets"] + before["duplicate_packets"] + len(captured)
    assert ls.stats["packets_received"] == before["packets_received"] and len(net.chunks) == got


def test_unsealed_data_after_the_handshake_is_dropped():
    net = InMemoryNet(seed=9)
    secure(net)
    ls = net.lsession
    forged = P.build(P.DATA, ls.local_cid, 10_000, P.encode_stream(MSG, b"OFFER of a file I chose"))
    net.listener.receive_datagram(forged, net.addr, net.now)
    net.run_until(lambda n: True)
    assert ls.stats["unsealed_dropped"] == 1 and not net.lstream and 10_000 not in ls._recv


def test_unsealed_stream_bytes_beyond_the_handshake_fail_it():
    """Injected before the handshake ends, they would be taken for the peer's first sealed
    bytes; handshake_done sees them and refuses."""
    net = InMemoryNet(seed=11)
    net.handshake()
    s = FixedHandshake(False)
    c = FixedHandshake(True)
    net.dsession.stream_write(c.data_to_send())
    ls = net.lsession
    fake = P.build(P.DATA, ls.local_cid, 500, P.encode_stream(MSG, b"\x00" * 16))
    net.listener.receive_datagram(fake, net.addr, net.now)
    net.run_until(lambda n: len(n.lstream) >= MSG + 16)
    used = s.receive(bytes(net.lstream), net.now)
    ls.stream_write(s.data_to_send())
    ls.install_keys(s.result)
    with pytest.raises(AuthError, match="after the peer's handshake"):
        ls.handshake_done(len(net.lstream) - used)


def test_unsealed_chunks_are_refused_with_keys():
    net = InMemoryNet(seed=13)
    net.handshake()
    ls = net.lsession
    s = FixedHandshake(False)
    s.receive(FixedHandshake(True).data_to_send(), 0)
    ls.install_keys(s.result)
    chunk = struct.pack(">BIQIIQH", P.F_CHUNK, 1, 0, 5, 0, 0, 5) + b"hello"
    net.listener.receive_datagram(P.build(P.DATA, ls.local_cid, 3, chunk), net.addr, net.now)
    assert ls.stats["unsealed_dropped"] == 1 and not ls._cin.slots and not ls._cin.completed


def test_key_updates_in_a_transfer_with_reordering():
    imp = dict(reorder=0.1, loss=0.01)
    net = InMemoryNet(seed=15, fwd=imp, rev=imp, gro=True)
    secure(net, cipher=CHACHA20_POLY1305, limits=(200, 2**40, 2**36))
    blobs = _chunks(30, 64 * 1024, seed=4)
    _send_all(net, blobs)
    net.run_until(lambda n: len(n.chunks) == len(blobs))
    _check_chunks(net, blobs)
    dp, lp = net.dsession.protection, net.lsession.protection
    assert dp.updates >= 3 and lp.updates >= 3 and lp.forged == 0
    assert {d[0] for _, d, _ in net.fwd.log[net.sealed_from[0]:]} == set(D.SEALED_TYPES)


def test_forgeries_past_the_limit_end_the_connection():
    net = InMemoryNet(seed=17)
    secure(net, limits=(2**20, 2**40, 4))
    ls = net.lsession
    for k in range(4):
        junk = P.HEADER.pack(D.SEALED, P.VERSION, ls.local_cid, 50 + k) + os.urandom(60)
        net.listener.receive_datagram(junk, net.addr, net.now)
    assert ls.closed and ls.close_code == 30 and "failed authentication" in ls.close_reason


def test_sealed_packets_before_our_keys_are_held():
    net = InMemoryNet(seed=19)
    net.handshake()
    c, s = FixedHandshake(True), FixedHandshake(False)
    s.receive(c.data_to_send(), 0)
    c.receive(s.data_to_send(), 0)
    ls, ds = net.lsession, net.dsession
    ds.install_keys(c.result)
    ds.stream_write(b"early")  # the client's first sealed bytes, before the server has keys
    for d in ds.datagrams_to_send(net.now):
        net.listener.receive_datagram(d, net.addr, net.now)
    assert len(ls._early) == 1 and not ls.stream_readable
    ls.install_keys(s.result)
    assert ls.stream_readable == 5


def test_a_wrong_secret_opens_nothing():
    net = InMemoryNet(seed=21)
    with pytest.raises(Exception):
        secure(net, psk_server=b"another secret")
        blobs = _chunks(2, 1024, seed=5)
        _send_all(net, blobs)
        net.run_until(lambda n: len(n.chunks) == 2, max_seconds=5)
    assert not net.chunks and net.lsession.stats["forged"] > 0


# =====================================================================================
# real sockets, through the impairing relay
# =====================================================================================
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mss", [None, 8952], ids=["default", "8952"])  # 8952: cryptography's AEAD (BULK_AEAD_FROM)
def test_sealed_files_over_real_sockets_through_a_hostile_relay(tmp_path, mss):
    from ftx.netsim import Impairment, Relay
    from ftx.receiving import receive_over
    from ftx.sending import send_paths
    from ftx.storage import Destination
    from ftx.transport import udp

    src = tmp_path / "secret-name-q7x.bin"
    content = random.Random(1).randbytes(3 * 1024 * 1024 + 12345)
    src.write_bytes(content)
    dest = tmp_path / "dst"
    dest.mkdir()
    captured: list[bytes] = []

    class Capture(Relay):
        def _schedule(self, when, data, dsock, addr):
            captured.append(data)
            super()._schedule(when, data, dsock, addr)

    imp = "loss=0.02,dup=0.02,reorder=0.05,corrupt=0.01,replay=0.02,delay=2ms,mtu=0"  # mtu=0: any size (8952)

    async def run():
        results = []

        async def handle(link):
            await run_handshake(link, FixedHandshake(False))
            results.append(await receive_over(link, Destination(str(dest)), idle_timeout=20))

        server = await udp.serve("127.0.0.1", 0, handle)
        port = server.dsock.sock.getsockname()[1]
        relay = Capture(("127.0.0.1", port), Impairment.parse(imp), Impairment.parse(imp), seed=4)
        rport = await relay.start()
        try:
            link = await udp.connect("127.0.0.1", rport, UdpConfig(max_datagram=mss) if mss else None)
            await run_handshake(link, FixedHandshake(True))
            report = await asyncio.wait_for(send_paths(link, [str(src)]), 90)
            forged = link.session.stats["forged"]
            for _ in range(200):
                if results:
                    break
                await asyncio.sleep(0.05)
        finally:
            relay.close()
            server.close()
        return report, results, forged

    report, results, _ = asyncio.run(run())
    assert report.ok, report.error
    assert (dest / src.name).read_bytes() == content
    wire = b"".join(captured)
    assert len(wire) > len(content)
    assert sum(d[0] in D.SEALED_TYPES for d in captured) > 0.9 * len(captured)
    assert src.name.encode() not in wire
    assert max(map(len, captured)) == (mss or 1452)
    for k in range(0, len(content) - 64, len(content) // 50):
        assert content[k : k + 32] not in wire


def test_the_protocol_document_vector():
    """protocol.md 14.12, SEALED: the bytes the document gives, and they open."""
    secret = bytes(range(32))
    est = Established(AES_256_GCM, secret, bytes(32), PeerIdentity("code"))
    prot = D.PacketProtection(est)
    pkt = prot.seal(_packet(3, P.encode_stream(0, b"hello"), dcid=0x99AABBCCDDEEFF00), 3)
    assert bytes(pkt).hex() == ("040199aabbccddeeff000000000000000003f626804112e0d71f0c48239e6a2e"
                                "7596a7433a3a39f5ca38")
    assert prot.send.key.hex() == "1600993184391656a3a2b4b714ee420c3c95b79c39b76dd5b92c137698a9ac09"
    nxt = prot.send.next()
    assert (nxt.key.hex(), nxt.iv.hex()) == ("84eaa44481a8d9b99a73e4e22957307e64b196aa037f96ea005b6016b7becc5f",
                                             "72ad50167a3c2703a5e8d34f")
    opener = D.PacketProtection(Established(AES_256_GCM, bytes(32), secret, PeerIdentity("code")))
    assert bytes(opener.open(bytes(pkt))) == P.encode_stream(0, b"hello")


SEAL_LOOPS = [pytest.param(False, id="python"),
              pytest.param(True, id="c", marks=pytest.mark.skipif(D._seal is None, reason="_seal was not built"))]


@pytest.fixture
def seal_loops():
    yield D.use
    D.use(True)


@pytest.mark.skipif(D._seal is None, reason="_seal was not built")
@pytest.mark.parametrize("cipher", [AES_256_GCM, CHACHA20_POLY1305])
@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(100, 9000), st.integers(1, 30_000), st.integers(0, 3000), st.integers(0, 2**62), st.booleans())
def test_the_one_pass_chunk_burst_is_the_built_and_sealed_one(cipher, mss, nbytes, off, pn, update):
    """seal_chunk_burst (C, one pass from the chunk data) gives the bytes of build_chunk_burst
    + seal_burst, in either key phase, and they open to the chunk data."""
    a, b = _pair(cipher)
    if update:
        a.send = a.send.next()
    room = mss - 18 - 31 - 16
    nbytes = min(nbytes, 64 * room)
    clen = off + nbytes + 5
    data = random.Random(nbytes).randbytes(clen)
    one_pass = a.seal_chunk_burst(mss, 9, pn, 3, 4, clen, 77, data, off, nbytes)
    seg = mss - 8
    size = burst.burst_size(nbytes, seg)
    built = bytearray(size)
    burst.py_build_chunk_burst(built, seg, 9, pn, 3, 4, clen, 77, data, off, nbytes, None)
    assert isinstance(one_pass, bytearray) and bytes(one_pass) == bytes(a.seal_burst(built, seg, size, mss, pn))
    if update:
        b.recv, b.recv_next = b.recv_next, b.recv_next.next()
    got = b""
    for k, d in enumerate(P.segments(one_pass, mss)):
        assert int.from_bytes(d[10:18], "big") == pn + k
        (f,) = P.parse_frames(b.open(d))
        assert (f.file_id, f.index, f.chunk_len, f.checksum, f.offset) == (3, 4, clen, 77, off + len(got))
        got += bytes(f.data)
    assert got == data[off : off + nbytes]


def test_the_one_pass_chunk_burst_refuses_bad_arguments():
    if D._seal is None:
        pytest.skip("_seal was not built")
    a, _ = _pair()
    data = bytes(100)
    for args in [(1452, 9, 0, 3, 4, 100, 7, data, 50, 51),  # past the data
                 (1452, 9, 0, 3, 4, 60, 7, data, 0, 100),  # past the chunk
                 (65, 9, 0, 3, 4, 100, 7, data, 0, 10),  # no room for data
                 (1452, 9, 0, 3, 4, 100, 7, data, 0, 0),  # nothing
                 (1452, 9, 0, 2**32, 4, 100, 7, data, 0, 10)]:  # file id too large
        with pytest.raises((ValueError, OverflowError)):
            a.seal_chunk_burst(*args)


@pytest.mark.parametrize("cipher", [AES_256_GCM, CHACHA20_POLY1305])
def test_c_and_python_burst_loops_agree(cipher, seal_loops):
    """Same sealed bytes from both loops; both open each other's bursts, report the same
    failures, and leave datagrams of another phase, connection or type to the caller."""
    a, b = _pair(cipher)
    mss = 1452
    seg = mss - 8
    data = os.urandom((seg - 57) * 7 - 10)
    size = burst.burst_size(len(data), seg)
    buf = bytearray(size)
    burst.build_chunk_burst(buf, seg, 9, 40, 3, 4, len(data), 77, data, 0, len(data), len)
    sealed = {}
    for accel in (False, True):
        if seal_loops(accel) != accel:
            pytest.skip("_seal was not built")
        sealed[accel] = bytes(a.seal_burst(buf, seg, size, mss, 40))
    assert sealed[False] == sealed[True]
    full = bytearray(sealed[True][: 6 * mss])  # whole datagrams only, as a GRO read
    full[2 * mss + 30] ^= 1  # a forgery
    full[3 * mss + 2] ^= 1  # another connection's ID
    plain = P.build(P.DATA, 9, 1000, bytes([P.F_PING]) + bytes(mss - 27))  # unsealed, same size
    full[4 * mss : 5 * mss] = plain
    results = {}
    for accel in (False, True):
        seal_loops(accel)
        b2 = D.PacketProtection.__new__(D.PacketProtection)
        b2.__dict__.update(b.__dict__)
        scratch = bytearray(65536)
        used, bad, left = b2.open_burst(bytes(full), mss, (9).to_bytes(8, "big"), scratch)
        results[accel] = (used, bad, left, bytes(scratch[:used]))
    assert results[False] == results[True]
    used, bad, left, out = results[True]
    assert used == 6 * seg and bad == 2 and left == [4 * mss]
    runs, others, garbage = burst.scan_chunk_burst(out, seg, 9, None)
    assert garbage == 3 and [r[1] for r in runs] == [2, 1]


def test_an_unsealed_packet_does_not_move_the_connection():
    """Migration (protocol.md 15.1) follows the highest packet number: after the handshake only
    a packet that opened counts, so a forged plaintext one cannot redirect the receiver."""
    net = InMemoryNet(seed=23)
    secure(net)
    ls = net.lsession
    elsewhere = ("203.0.113.9", 5555)
    forged = P.build(P.DATA, ls.local_cid, 2**40, bytes([P.F_PING]))
    net.listener.receive_datagram(forged, elsewhere, net.now)
    assert net.listener.addresses[ls.local_cid] == net.addr
    net.dsession.stream_write(b"moved")
    (genuine,) = net.dsession.datagrams_to_send(net.now)
    assert genuine[0] in D.SEALED_TYPES
    net.listener.receive_datagram(genuine, elsewhere, net.now)  # a genuine packet: NAT rebinding
    assert net.listener.addresses[ls.local_cid] == elsewhere


def test_sealed_packets_held_before_keys_are_bounded():
    net = InMemoryNet(seed=25)
    net.handshake()
    ls = net.lsession
    for k in range(40):
        junk = P.HEADER.pack(D.SEALED, P.VERSION, ls.local_cid, k) + bytes(8000)
        net.listener.receive_datagram(junk, net.addr, net.now)
    assert len(ls._early) <= 16 and sum(map(len, ls._early)) <= 64 * 1024


@given(st.lists(st.binary(min_size=0, max_size=200), max_size=8), st.booleans())
@settings(max_examples=300, deadline=None, derandomize=True)
def test_random_datagrams_to_a_sealed_session_change_nothing(datagrams, burst_read):
    """Whatever arrives -- SEALED or DATA types, any header, any length -- a keyed session
    after the handshake raises nothing, keeps its stream and chunks, and only counts."""
    net = _KEYED.setdefault("net", None) or _keyed_net()
    ls = net.lsession
    before = (ls._sin.next, len(ls._cin.slots), ls.closed)
    for d in datagrams:
        d = bytearray(d)
        if len(d) >= 10 and d[0] % 2:  # half of them addressed to the session, as a forger on the path can
            d[0] = D.SEALED | (d[0] & 1) if d[1] % 2 else P.DATA
            d[1] = P.VERSION
            d[2:10] = ls.local_cid.to_bytes(8, "big")
        if burst_read and len(d) >= 34:
            net.listener.receive_burst(bytes(d) * 3, len(d), net.addr, net.now)
        else:
            net.listener.receive_datagram(bytes(d), net.addr, net.now)
    assert (ls._sin.next, len(ls._cin.slots), ls.closed) == before


_KEYED: dict = {}


def _keyed_net() -> InMemoryNet:
    net = InMemoryNet(seed=27)
    secure(net)
    _KEYED["net"] = net
    return net


def _up_to_message_3(net: InMemoryNet):
    """A three-message handshake (as SIGMA-I) up to the client's last message: message 1
    from the client, message 2 from the server, which then has keys; returns the client's
    handshake (which has read message 2) and both sessions."""
    net.handshake()
    c, s = FixedHandshake(True), FixedHandshake(False)
    ds, ls = net.dsession, net.lsession
    ds.stream_write(c.data_to_send())  # message 1
    net.run_until(lambda n: len(n.lstream) >= MSG)
    s.receive(bytes(net.lstream), net.now)
    del net.lstream[:]
    ls.stream_write(s.data_to_send())  # message 2
    ls.install_keys(s.result)
    net.run_until(lambda n: len(n.dstream) >= MSG)
    c.receive(bytes(net.dstream), net.now)
    return c, ds, ls


def test_sealed_bytes_read_past_the_handshake_are_leftover_not_an_attack():
    """A three-message handshake (as SIGMA-I): the client's last message goes unsealed, its
    first bytes after it sealed, and the server reads both at once.  Its boundary is the end
    of that last message: sealed bytes beyond it are the leftover, unsealed ones would not be."""
    net = InMemoryNet(seed=29)
    c, ds, ls = _up_to_message_3(net)
    ds.stream_write(b"3" * MSG)  # message 3, the client's last: still unsealed
    ds.install_keys(c.result)
    ds.handshake_done(0)
    ds.stream_write(b"after")  # sealed
    net.run_until(lambda n: len(n.lstream) >= MSG + 5)
    assert bytes(net.lstream) == b"3" * MSG + b"after"
    types = {d[0] for _, d, _ in net.fwd.log}
    assert P.DATA in types and D.SEALED in types
    with pytest.raises(AuthError):  # one byte too few taken as the handshake: unsealed bytes beyond it
        ls.handshake_done(6)  # (a refusal changes nothing)
    ls.handshake_done(5)  # the boundary is right after message 3: no complaint


def test_a_handshake_flight_resent_after_the_peer_finished_still_settles():
    """The client's last handshake message (unsealed DATA) is delayed on the path: its sealed
    packets after it are acknowledged first, so the client declares it lost and resends it; the
    delayed copy then arrives, the server finishes, and discards the resent DATA (as it must,
    finished) unacknowledged, while the late ACK of the first copy settles nothing (declared
    lost).  Before the fix the client's stream never got past those bytes: its control data
    piled up unacknowledged and a tree of small files over UDP through loss stalled for good
    once it passed the send buffer.  Now the server's sealed bytes beyond its handshake show
    that it finished, so the client's handshake bytes count as delivered."""
    net = InMemoryNet(seed=31)
    c, ds, ls = _up_to_message_3(net)
    del net.dstream[:]
    held: list = []
    send = net.fwd.send

    def hold_data(data, now, addr):  # the client's DATA packets (message 3 and its resends) wait
        if data[0] == P.DATA and not held_done:
            held.append((bytes(data), addr))
            return
        send(data, now, addr)

    held_done = False
    net.fwd.send = hold_data
    ds.stream_write(b"3" * MSG)  # message 3, the client's last: unsealed
    ds.install_keys(c.result)
    ds.handshake_done(0)
    for k in range(6):  # sealed bytes after it, acknowledged while message 3 is missing
        ds.stream_write(b"x" * 100)
        net.run_until(lambda n: n.dsession.recovery.lost_packets > 0 or len(held) > 1, max_seconds=5.0)
    net.run_until(lambda n: len(held) > 1, max_seconds=5.0)  # declared lost and resent
    held_done = True
    net.listener.receive_datagram(held[0][0], held[0][1], net.now)  # the delayed first copy
    net.run_until(lambda n: len(n.lstream) >= MSG + 600)
    ls.handshake_done(len(net.lstream) - MSG)  # finished: from now on it discards DATA
    del net.lstream[:MSG]
    ls.stream_write(b"hello from the server")  # sealed, after its handshake
    ds.stream_write(b"files" * 1000)
    net.run_until(lambda n: ds.stream_all_acked and len(n.lstream) == 5600 and len(n.dstream) == 21, max_seconds=30.0)
    assert ds.stream_buffered == 0 and not ds.closed and not ls.closed


def test_an_unsealed_close_with_keys_is_marked_not_authenticated():
    """Between our keys and the end of the peer's handshake an unsealed packet may still come
    from the peer (its refusal); its CLOSE ends the session, but its reason is shown as what it
    is -- anyone on the path could have sent it -- on one line, with no escape sequences."""
    net = InMemoryNet(seed=27)
    net.handshake()
    ls = net.lsession
    s = FixedHandshake(False)
    s.receive(FixedHandshake(True).data_to_send(), 0)
    ls.install_keys(s.result)
    close = P.encode_close(5, "receiver moved to 10.66.66.66\n\x1b[2Jftx: done")
    net.listener.receive_datagram(P.build(P.DATA, ls.local_cid, 3, close), net.addr, net.now)
    assert ls.closed
    assert "not authenticated" in ls.close_reason and "10.66.66.66" in ls.close_reason
    assert ls.close_reason.isprintable(), repr(ls.close_reason)


def test_an_unsealed_packet_never_shadows_a_sealed_one_with_its_number():
    """Between our keys and the end of the peer's handshake an unsealed packet is still taken
    (it may carry the peer's last handshake bytes).  One forged with the number the peer's
    next sealed packet will carry must not make that sealed packet a 'duplicate' -- dropped,
    yet acknowledged, so never sent again: the transfer would stall."""
    net = InMemoryNet(seed=31)
    net.handshake()
    c, s = FixedHandshake(True), FixedHandshake(False)
    ds, ls = net.dsession, net.lsession
    ds.stream_write(c.data_to_send())  # message 1
    net.run_until(lambda n: len(n.lstream) >= MSG)
    s.receive(bytes(net.lstream), net.now)
    del net.lstream[:]
    ls.stream_write(s.data_to_send())  # message 2
    ls.install_keys(s.result)
    net.run_until(lambda n: len(n.dstream) >= MSG)
    c.receive(bytes(net.dstream), net.now)
    ds.stream_write(b"3" * MSG)  # message 3, the client's last: unsealed
    net.run_until(lambda n: len(n.lstream) >= MSG)
    ds.install_keys(c.result)
    ds.handshake_done(0)
    pn = ds._next_pn  # what the first sealed packet will carry
    forged = P.build(P.DATA, ls.local_cid, pn, bytes([P.F_PING]))
    net.listener.receive_datagram(forged, net.addr, net.now)
    ds.stream_write(b"after")  # sealed
    net.run_until(lambda n: len(n.lstream) >= MSG + 5, max_seconds=5)
    assert bytes(net.lstream) == b"3" * MSG + b"after"
    net.listener.receive_datagram(forged, net.addr, net.now)  # the unsealed one again: a duplicate
    assert bytes(net.lstream) == b"3" * MSG + b"after" and not ls.closed


def test_peer_close_reasons_are_printable_before_keys_and_sealed():
    """A CLOSE's reason reaches a terminal: escaped and capped, whether it came before any
    keys (a refusal) or sealed from the authenticated peer."""
    evil = "bye\n\x1b[2Jftx: ok \u202e" + "A" * 5000
    net = InMemoryNet(seed=33)
    net.handshake()
    ls = net.lsession
    net.listener.receive_datagram(P.build(P.DATA, ls.local_cid, 3, P.encode_close(5, evil)), net.addr, net.now)
    assert ls.closed and ls.close_reason.isprintable() and "\\x1b[2J" in ls.close_reason, repr(ls.close_reason)
    assert len(ls.close_reason) <= 310
    net = InMemoryNet(seed=35)
    secure(net)
    net.dsession.close(5, evil)
    net.run_until(lambda n: n.lsession.closed, max_seconds=5)
    reason = net.lsession.close_reason
    assert reason.isprintable() and "\\u202e" in reason and len(reason) <= 310, repr(reason)


def test_an_unsealed_packet_before_our_keys_does_not_shadow_a_held_sealed_one():
    """The same forgery one step earlier: the peer's first sealed packet is held until we have
    keys, and a plaintext packet with its number arrives first."""
    net = InMemoryNet(seed=37)
    net.handshake()
    c, s = FixedHandshake(True), FixedHandshake(False)
    ds, ls = net.dsession, net.lsession
    ds.stream_write(c.data_to_send())
    net.run_until(lambda n: len(n.lstream) >= MSG)
    s.receive(bytes(net.lstream), net.now)
    del net.lstream[:]
    ls.stream_write(s.data_to_send())  # message 2, unsealed
    ls.install_keys(s.result)
    net.run_until(lambda n: len(n.dstream) >= MSG)
    ls.handshake_done(0)
    pn = ls._next_pn
    net.dialer.receive_datagram(P.build(P.DATA, ds.local_cid, pn, bytes([P.F_PING])), net.now)
    ls.stream_write(b"sealed")
    (sealed,) = ls.datagrams_to_send(net.now)
    assert sealed[0] in D.SEALED_TYPES
    net.dialer.receive_datagram(sealed, net.now)  # held: the dialer has no keys yet
    c.receive(bytes(net.dstream), net.now)
    del net.dstream[:]
    ds.install_keys(c.result)
    ds.handshake_done(0)
    assert ds.stats["duplicate_packets"] == 0
    net.run_until(lambda n: len(n.dstream) >= 6, max_seconds=5)
    assert bytes(net.dstream) == b"sealed"


@pytest.mark.parametrize("gro", DELIVERY)
def test_a_long_sealed_control_stream_over_a_lossy_link(gro, loops):
    """A tree of small files is mostly control stream: the sender seals it a burst at a time
    and the receiver takes runs of whole STREAM packets at once; over loss, reordering and
    duplicates, past the offsets where the offset's varint grows (16 KiB, 2 MiB), the bytes
    arrive intact, in order, once."""
    if gro:
        loops(gro == "c")
    imp = dict(loss=0.02, reorder=0.05, dup=0.02)
    net = InMemoryNet(seed=13, fwd=imp, rev=imp, gro=bool(gro))
    secure(net)
    up = random.Random(14).randbytes(2_200_000)
    net.dsession.stream_write(up)
    net.lsession.stream_write(b"results" * 300)
    net.run_until(lambda n: len(n.lstream) >= len(up) and len(n.dstream) >= 2100 and n.dsession.stream_all_acked)
    assert bytes(net.lstream) == up and bytes(net.dstream) == b"results" * 300
    assert net.dsession.stats["retransmitted_bytes"] > 0 and net.lsession.stats["duplicate_packets"] > 0
    assert b"".join(d for _, d, _ in net.fwd.log).find(up[100_000:100_032]) < 0


def test_a_sealed_stream_burst_is_built_and_recorded_beyond_one_gso_send():
    """New control-stream bytes go out in runs of up to the caller's limit (256 datagrams), built,
    sealed and recorded in the recovery as one run -- per 64 KiB burst the Python work around it
    was a fifth of the sender's CPU on a tree of small files -- and handed to the socket as
    slices that one GSO send each takes (at most 64 datagrams, 65 000 bytes)."""
    net = InMemoryNet(seed=5, gro=True)
    secure(net)
    warm = random.Random(1).randbytes(4_000_000)  # the window and pacing rate grow first
    net.dsession.stream_write(warm)
    net.run_until(lambda n: len(n.lstream) >= len(warm) and n.dsession.stream_all_acked)
    s = net.dsession
    more = random.Random(2).randbytes(1_000_000)
    s.stream_write(more)
    runs: list[int] = []
    on_sent = s.recovery.on_sent
    s.recovery.on_sent = lambda p: (runs.append(p.count), on_sent(p))
    now = net.now + 0.01
    out = s.transmit(now, 256)
    assert runs and max(runs) > 64, runs
    assert sum(runs) == sum(-(-len(buf) // seg) for buf, seg in out)
    for buf, seg in out:
        assert len(buf) <= 65000 and -(-len(buf) // seg) <= 64 and seg == s.max_datagram
    for buf, seg in out:  # they are ordinary sealed datagrams: the receiver takes them in order
        for d in P.segments(buf, seg):
            net.fwd.send(bytes(d), now, net.addr)
    net.run_until(lambda n: len(n.lstream) >= len(warm) + len(more) and n.dsession.stream_all_acked)
    assert bytes(net.lstream[len(warm):]) == more


def _opened_burst(payloads: list[bytes], first_pn: int, cid: int, plain: int) -> tuple[memoryview, list[int]]:
    """Datagrams as ``open_burst`` leaves them: header, payload, 8 spare bytes; ``plain`` each."""
    buf = bytearray()
    for k, payload in enumerate(payloads):
        d = P.HEADER.pack(P.DATA, P.VERSION, cid, first_pn + k) + payload
        buf += d + bytes(plain - len(d))
    return memoryview(buf), list(range(0, len(buf), plain))


def _outcome(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 (the test compares what each path raises)
        return type(exc)
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=40).map(lambda b: bytes([P.F_STREAM]) + b),
                          st.binary(min_size=1, max_size=12).map(lambda b: b"\x03" + bytes([0x80 | x for x in b])),
                          st.sampled_from([b"\x03" + b"\x80" * 53, b"\x03" + b"\x80" * 52 + b"\x01",  # varints cut by
                                           b"\x03" + b"\x80" * 51 + b"\x01\x80"]),  # the datagram's end
                          st.binary(min_size=0, max_size=40)), min_size=1, max_size=6),
       st.sampled_from([31, 34, 36, 80]))
def test_opened_stream_packets_taken_as_runs_as_one_by_one(payloads, plain):
    """Whatever the payloads (truncated or overlong varints, several frames, junk), taking a
    burst's STREAM packets as runs ends as taking them one at a time: the same stream, the
    same packets recorded, the same error class (RemoteProtocolError), never another."""
    payloads = [p[: plain - P.HEADER_SIZE - 8] for p in payloads]  # (tiny datagrams: varints cut short)
    results = []
    for runs in (True, False):
        s = UdpSession(1, 2, UdpConfig(), 0.0, chunk_receiver=True)
        view, offsets = _opened_burst(payloads, 5, 1, plain)
        if runs:
            err = _outcome(lambda: s._receive_opened(view, offsets, plain, 0.0))
        else:
            def each():
                for off in offsets:
                    s.receive_payload(5 + off // plain, view[off + P.HEADER_SIZE : off + plain - 8], 0.0, opened=True)
            err = _outcome(each)
        results.append((err, bytes(s._sin.data), list(s._recv)))
    assert results[0][0] in (None, RemoteProtocolError)
    if results[0][0] is None:
        assert results[0] == results[1]
    else:
        assert results[1][0] is RemoteProtocolError
