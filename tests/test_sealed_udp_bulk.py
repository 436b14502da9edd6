"""Sealed UDP datagrams of every size through each AEAD path of the burst loops
(secure/datagrams.py ``BULK_AEAD_FROM``): the C loops with the system libcrypto's EVP, the
C loops calling cryptography's encrypt_into / decrypt_into, and the Python loops.  The
bytes on the wire must be the same whichever path sealed them, each path must open what
the others sealed, and a datagram with one flipped bit must be dropped by each path without
touching what the receiver already holds."""

from __future__ import annotations

import os
import random

import pytest
import xxhash

from ftx.core.secure import datagrams as D
from ftx.core.secure.keys import AES_256_GCM, CHACHA20_POLY1305
from ftx.core.udp import burst

from .test_sealed_udp import _pair, secure
from .test_udp_core import InMemoryNet

pytestmark = pytest.mark.timeout(60)
NEVER = 1 << 40
PATHS = [pytest.param((True, NEVER), id="c-evp"), pytest.param((True, 0), id="c-cryptography"),
         pytest.param((False, NEVER), id="python")]
SIZES = [1452, 4399, 4400, 9000, 65000]  # 65000: a loopback datagram found by --pmtud


@pytest.fixture
def path():
    """Picks one AEAD path of the burst loops (``use(accelerated, bulk_aead_from)``); restores the default."""
    default = D.BULK_AEAD_FROM

    def pick(p):
        accelerated, bulk_from = p
        if D.use(accelerated, bulk_from) != accelerated:
            pytest.skip("_seal was not built")

    yield pick
    D.use(True, default)


def _chunk_bursts(prot, mss: int, nbytes: int, pn: int = 40):
    """The sealed CHUNK burst of ``nbytes`` of a chunk made both ways: seal_chunk_burst (C only)
    and build_chunk_burst + seal_burst."""
    data = random.Random(mss).randbytes(nbytes + 100)
    seg = mss - 8
    size = burst.burst_size(nbytes, seg)
    built = bytearray(size)
    burst.py_build_chunk_burst(built, seg, 9, pn, 3, 4, len(data), 77, data, 50, nbytes, None)
    two_pass = bytes(prot.seal_burst(built, seg, size, mss, pn))
    one_pass = bytes(prot.seal_chunk_burst(mss, 9, pn, 3, 4, len(data), 77, data, 50, nbytes)) \
        if prot.seals_chunk_bursts else None
    return data[50 : 50 + nbytes], two_pass, one_pass


@pytest.mark.parametrize("cipher", [AES_256_GCM, CHACHA20_POLY1305])
@pytest.mark.parametrize("mss", SIZES)
def test_every_aead_path_seals_the_same_bytes_and_opens_the_others(cipher, mss, path):
    a, b = _pair(cipher)
    a.send = a.send.next()  # key phase 1 on both: the phase bit goes through each path too
    b.recv, b.recv_next = b.recv_next, b.recv_next.next()
    room = mss - 18 - 31 - 16
    nbytes = 5 * room + 1  # five full datagrams and a last one of one byte (seal_chunk_burst: no second piece)
    sealed = {}
    for p in PATHS:
        path(p.values[0])
        data, two_pass, one_pass = _chunk_bursts(a, mss, nbytes)
        if one_pass is not None:
            assert one_pass == two_pass
        sealed[p.id] = two_pass
    assert len(set(sealed.values())) == 1, "the paths sealed different bytes"
    wire = sealed["c-evp"]
    full = wire[: 5 * mss]  # whole datagrams, as a GRO read
    opened = {}
    for p in PATHS:
        path(p.values[0])
        b2 = D.PacketProtection.__new__(D.PacketProtection)
        b2.__dict__.update(b.__dict__)
        scratch = bytearray(len(full))
        used, bad, left = b2.open_burst(full, mss, (9).to_bytes(8, "big"), scratch)
        opened[p.id] = (used, bad, left, bytes(scratch[:used]))
        assert b2.open(wire[5 * mss :]) is not None  # the short last one, alone
    assert len(set(map(repr, opened.values()))) == 1, "the paths opened differently"
    used, bad, left, out = opened["c-evp"]
    assert bad == 0 and left == [] and used == 5 * (mss - 8)
    runs, others, garbage = burst.scan_chunk_burst(out, mss - 8, 9, None)
    assert garbage == 0 and others == [] and [r[1] for r in runs] == [5]
    got = b"".join(out[k * (mss - 8) + 49 : (k + 1) * (mss - 8) - 8] for k in range(5))
    assert got == data[: 5 * room]


@pytest.mark.parametrize("mss", [1452, 9000, 65000])
@pytest.mark.parametrize("p", PATHS)
def test_a_flipped_bit_is_dropped_and_leaves_received_chunk_bytes_alone(mss, p, path):
    """A session that holds half of a chunk gets copies of its datagrams, each with one bit
    flipped (header, chunk header, data, tag), in a GRO read with good ones: each is counted
    as forged, and the chunk bytes already received stay as they were."""
    path(p)
    net = InMemoryNet(seed=11, gro=True)
    secure(net)
    sender, receiver = net.dsession, net.lsession
    room = mss - 18 - 31 - 16
    n = 8
    data = os.urandom(n * room)
    pn = sender._next_pn
    csum = xxhash.xxh3_64_intdigest(data)
    wire = bytes(sender.protection.seal_chunk_burst(mss, sender.peer_cid, pn, 3, 0, len(data), csum, data, 0, len(data))
                 if sender.protection.seals_chunk_bursts else b"")
    if not wire:  # (no C loops: build then seal)
        seg = mss - 8
        built = bytearray(burst.burst_size(len(data), seg))
        burst.py_build_chunk_burst(built, seg, sender.peer_cid, pn, 3, 0, len(data), csum, data, 0, len(data), None)
        wire = bytes(sender.protection.seal_burst(built, seg, len(built), mss, pn))
    datagrams = [wire[k * mss : (k + 1) * mss] for k in range(n)]
    now = net.now
    receiver.receive_sealed_burst(b"".join(datagrams[: n // 2]), mss, now)
    slot = receiver._cin.slots[3, 0]
    held = bytes(slot.buf[: n // 2 * room])
    assert held == data[: n // 2 * room] and receiver.stats["forged"] == 0
    forged = 0
    for k in (1, n // 2 + 1):  # one already received, one not
        for pos in (5, 12, 17, 18, 18 + 20, 18 + 31, 18 + 31 + room // 2, mss - 16, mss - 1):
            bad = bytearray(datagrams[k])
            bad[pos] ^= 0x10
            receiver.receive_sealed_burst(datagrams[0] + bytes(bad), mss, now)  # after a good duplicate
            forged += 1
            assert receiver.stats["forged"] == forged, (k, pos)
            assert bytes(slot.buf[: n // 2 * room]) == held, (k, pos)
            assert list(slot.got) == [(0, n // 2 * room)], (k, pos)  # nothing more counts as arrived
    assert not receiver.closed
    receiver.receive_sealed_burst(b"".join(datagrams[n // 2 :]), mss, now)  # the genuine rest completes the chunk
    assert receiver.stats["forged"] == forged
    (chunk,) = receiver.take_chunks()
    assert bytes(chunk[3]) == data
