"""A sealed UDP session takes a reassembled chunk's stated checksum as sealed TCP does
(protocol.md 14.8, 20.2): every byte of it, and the checksum, came in datagrams whose tags
verified, so hashing it again proves nothing more.  A plaintext session still hashes."""

from __future__ import annotations

import os

import pytest
import xxhash

from ftx.core.udp import burst
from ftx.errors import ErrorCode

from .test_sealed_udp import secure
from .test_udp_core import InMemoryNet

pytestmark = pytest.mark.timeout(60)
MSS = 1452


def _sealed_chunk(sender, data: bytes, csum: int) -> bytes:
    pn = sender._next_pn
    prot = sender.protection
    if prot.seals_chunk_bursts:
        return bytes(prot.seal_chunk_burst(MSS, sender.peer_cid, pn, 3, 0, len(data), csum, data, 0, len(data)))
    seg = MSS - 8
    built = bytearray(burst.burst_size(len(data), seg))
    burst.py_build_chunk_burst(built, seg, sender.peer_cid, pn, 3, 0, len(data), csum, data, 0, len(data), None)
    return bytes(prot.seal_burst(built, seg, len(built), MSS, pn))


def test_a_sealed_chunk_is_taken_with_its_stated_checksum_unhashed():
    """The sender states a checksum that is not the XXH3 of the bytes it sealed: the receiver
    hands the chunk over with the stated checksum (the whole-file digest of FILE_END still
    covers every byte written), instead of hashing it and closing with CHECKSUM."""
    net = InMemoryNet(seed=5, gro=True)
    secure(net)
    sender, receiver = net.dsession, net.lsession
    data = os.urandom(10 * (MSS - 18 - 31 - 16))
    stated = xxhash.xxh3_64_intdigest(data) ^ 1
    receiver.receive_sealed_burst(_sealed_chunk(sender, data, stated), MSS, net.now)
    assert not receiver.closed
    (chunk,) = receiver.take_chunks()
    assert chunk[:3] == (3, 0, stated) and bytes(chunk[3]) == data


def test_a_plaintext_chunk_is_still_hashed():
    """Without keys nothing vouches for the bytes: the same wrong checksum closes with CHECKSUM."""
    net = InMemoryNet(seed=5, gro=True)
    net.handshake()
    data = os.urandom(10 * 1400)
    net.dsession.send_chunk(3, 0, xxhash.xxh3_64_intdigest(data) ^ 1, data)
    net.run_until(lambda n: n.lsession.closed)
    assert net.lsession.close_code == ErrorCode.CHECKSUM
