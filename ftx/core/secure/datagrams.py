"""Sealed UDP packets (protocol.md 14.13): AEAD protection of DATA packets, sans I/O.

Once a side's handshake has given it keys, its DATA packets (other than those
still carrying its own handshake bytes, see ``udp/sealing.py``) go out as
SEALED packets::

    0      1        2                10               18             n-16     n
    +------+--------+----------------+----------------+--------------+--------+
    | type | version| dest conn ID   | packet number  | ciphertext   | tag    |
    +------+--------+----------------+----------------+--------------+--------+

    type  = 0x04 | key phase bit (0x04 or 0x05)
    nonce = iv XOR packet number (keys.Direction), AAD = the 18 header bytes,
    ciphertext || tag = AEAD-Seal(key, nonce, frames, AAD)

The 16-byte tag takes the place of the XXH3-64 trailer; the header is
authenticated, not encrypted (the packet number must be read before opening).
Each direction has its own traffic secret, so a packet number is never used
twice under one key.

Key update works as RFC 9001 section 6, with one phase for both directions:
a side whose sending key reaches half its usage limit (``Direction.should_update``)
moves both of its directions to the next keys and flips the phase bit, once
it has received a packet in the current phase (the peer has the current keys);
a side that opens a packet of the other phase with the next receiving key
moves its receiving keys, and its sending keys if it has not yet.  The
previous receiving key stays for packets numbered below the first packet of
the new phase (late, reordered ones) until the next update.

Failed opens are counted; past the AEAD's integrity limit (``too_many_forgeries``)
the connection ends with ``AuthError``.  Replays are the session's business:
it drops a packet number it has recorded or that is below what it tracks.
"""

from __future__ import annotations

from . import AuthError, Established
from .keys import AES_256_GCM, CIPHERS, Direction, TAG_SIZE

try:
    from . import _seal  # the burst loops in C with OpenSSL (setup.py); else the Python ones below
except ImportError:
    _seal = None
ACCELERATED = _seal is not None
# From this datagram size on, the C loops seal and open AES-256-GCM datagrams by calling
# cryptography's encrypt_into / decrypt_into (the same AEAD, key, nonce and AAD: the same bytes)
# instead of the system libcrypto's EVP they link: cryptography's own OpenSSL may have a much
# faster bulk AES-GCM (VAES/AVX-512: 18 against 4.7-5.4 GB/s here), but a call costs ~0.3 us more.
# Measured on one core (benchmarks/bench_udp.py --seal-loops), a datagram sealed or opened,
# us, EVP against cryptography: 1452 B 0.42/0.75, 4096 B 0.90/0.93, 5000 B 1.05/0.97,
# 8952 B 1.76/1.16, 65000 B 11.8/3.7.  ChaCha20-Poly1305 stays on EVP: cryptography's was
# no faster at any size (65000 B: 17.4 against 17.9 us).
BULK_AEAD_FROM = 4400
_BULK_CIPHERS = (AES_256_GCM,)


def use(accelerated: bool, bulk_aead_from: int | None = None) -> bool:
    """Choose the C burst loops (when built) or the Python ones; returns whether C is in use.
    (The driver honours FTX_PURE_PYTHON=1 through this; tests run both.)  ``bulk_aead_from``:
    set ``BULK_AEAD_FROM`` too (tests force each path at one size)."""
    global ACCELERATED, BULK_AEAD_FROM
    ACCELERATED = accelerated and _seal is not None
    if bulk_aead_from is not None:
        BULK_AEAD_FROM = bulk_aead_from
    return ACCELERATED


def _cipher(key: Direction, datagram: int, seal: bool):
    """What the C loops take as ``cipher`` for datagrams of ``datagram`` bytes under ``key``:
    the wire code (EVP), or cryptography's bound encrypt_into / decrypt_into (BULK_AEAD_FROM)."""
    if datagram >= BULK_AEAD_FROM and key.cipher in _BULK_CIPHERS and getattr(_seal, "VERSION", 1) >= 2:
        return key._aead.encrypt_into if seal else key._aead.decrypt_into
    return CIPHERS[key.cipher]


SEALED = 0x04
SEALED_TYPES = (0x04, 0x05)
HEADER_SIZE = 18
SEALED_OVERHEAD = HEADER_SIZE + TAG_SIZE  # 34, against 26 for a checksummed DATA packet
PLAIN_TRAILER = 8  # XXH3-64 trailer of a DATA packet (packets.TRAILER_SIZE)
DATA = 0x03


class PacketProtection:
    """The keys of one UDP connection, both directions, and their phase."""

    def __init__(self, est: Established, limits: tuple[int, int, int] | None = None) -> None:
        send = Direction(est.cipher, est.send_secret)
        recv = Direction(est.cipher, est.recv_secret)
        if limits is not None:  # (records, blocks, forgeries): tests force tiny ones
            send._limits = recv._limits = limits
        self.send = send
        self.recv = recv
        self.recv_prev: Direction | None = None
        self.recv_next = recv.next()
        self._phase_start = 0  # lowest packet number opened in the current receive phase
        self._recv_in_phase = False  # a packet of the current phase was opened
        self.forged = 0
        self.max_forgeries = recv._limits[2]
        self.updates = 0  # key updates this side started or followed
        self._sealed = 0  # packets sealed with send keys not yet counted into ``send``
        self._bytes = 0

    # -- sealing ---------------------------------------------------------------------
    def maybe_update(self) -> None:
        """Start a key update when the sending key nears its limits and the peer has the
        current keys (it sent a packet in this phase)."""
        send = self.send
        if self._sealed:
            send.sealed += self._sealed
            send.blocks += self._bytes // 16 + 2 * self._sealed
            self._sealed = self._bytes = 0
        if send.should_update() and self.recv.phase == send.phase and self._recv_in_phase:
            self.send = send.next()
            self.updates += 1

    def seal(self, pkt: bytearray, pn: int) -> bytearray:
        """Seal a packet built as 18 header bytes, the frames and 16 spare bytes, in place."""
        send = self.send
        pkt[0] = SEALED | (send.phase & 1)
        mv = memoryview(pkt)
        end = len(pkt) - TAG_SIZE
        send._aead.encrypt_into((send._iv_int ^ pn).to_bytes(12, "big"), mv[HEADER_SIZE:end],
                                bytes(mv[:HEADER_SIZE]), mv[HEADER_SIZE:])
        self._sealed += 1
        self._bytes += end
        return pkt

    def seal_burst(self, src, src_seg: int, size: int, dst_seg: int, first_pn: int) -> bytearray:
        """Seal a burst of checksummed DATA packets (``src``: datagrams of ``src_seg`` bytes, each
        with an 8-byte trailer, ``size`` bytes in all, numbered from ``first_pn``) into a new
        burst of datagrams of ``dst_seg`` = ``src_seg`` + 8 bytes, the AEAD writing each
        ciphertext straight into place."""
        send = self.send
        n = -(-size // src_seg)
        out = bytearray(size + n * (TAG_SIZE - PLAIN_TRAILER))
        self._sealed += n
        self._bytes += size
        if ACCELERATED:
            _seal.seal_burst(out, src, src_seg, size, dst_seg, first_pn, SEALED | (send.phase & 1),
                             _cipher(send, dst_seg, True), send.key, send.iv)
            return out
        aead = send._aead.encrypt_into
        iv = send._iv_int
        dst = memoryview(out)
        src = memoryview(src)
        ptype = SEALED | (send.phase & 1)
        q = 0
        for p in range(0, size, src_seg):
            end = min(p + src_seg, size) - PLAIN_TRAILER
            h = dst[q : q + HEADER_SIZE]
            h[:] = src[p : p + HEADER_SIZE]
            h[0] = ptype
            aead((iv ^ first_pn).to_bytes(12, "big"), src[p + HEADER_SIZE : end], h,
                 dst[q + HEADER_SIZE : q + end - p + TAG_SIZE])
            first_pn += 1
            q += dst_seg
        return out

    @property
    def seals_chunk_bursts(self) -> bool:
        """``seal_chunk_burst`` is there (the C loops are in use, built with it)."""
        return ACCELERATED and hasattr(_seal, "seal_chunk_burst")

    def seal_chunk_burst(self, mss: int, dcid: int, first_pn: int, fid: int, index: int, clen: int, csum: int,
                         data, off: int, nbytes: int) -> bytearray:
        """The sealed burst of CHUNK packets ``first_pn, ...`` (datagrams of ``mss`` bytes, each but
        the last full) carrying ``data[off:off + nbytes]``: the same bytes as
        ``burst.build_chunk_burst`` (no checksum, datagrams of ``mss - 8``) then ``seal_burst``,
        built and sealed datagram by datagram in C, in place, while each is in the cache.
        Only with the C loops (``seals_chunk_bursts``)."""
        send = self.send
        out = _seal.seal_chunk_burst(mss, dcid, first_pn, SEALED | (send.phase & 1), fid, index, clen, csum, data,
                                     off, nbytes, _cipher(send, mss, True), send.key, send.iv)
        n = -(-len(out) // mss)
        self._sealed += n
        self._bytes += len(out) - n * (TAG_SIZE - PLAIN_TRAILER)  # as seal_burst counts the plaintext burst
        return out

    # -- opening ---------------------------------------------------------------------
    def _key_for(self, ptype: int, pn: int) -> Direction:
        recv = self.recv
        if (ptype & 1) == (recv.phase & 1):
            return recv
        if self.recv_prev is not None and pn < self._phase_start:
            return self.recv_prev
        return self.recv_next

    def _opened(self, key: Direction, pn: int) -> None:
        if key is self.recv_next:  # the peer moved to the next phase: follow it
            self.recv_prev, self.recv = self.recv, key
            self.recv_next = key.next()
            self._phase_start = pn
            if self.send.phase < key.phase:
                self.maybe_update()  # settle the counters of the old key first
                if self.send.phase < key.phase:
                    self.send = self.send.next()
                self.updates += 1
        elif key is self.recv and pn < self._phase_start:
            self._phase_start = pn
        if key is self.recv:
            self._recv_in_phase = True

    def _failed(self, count: int = 1) -> None:
        self.forged += count
        if count and self.forged >= self.max_forgeries:
            raise AuthError(f"{self.forged} UDP packets failed authentication (forged or corrupted)")

    def open(self, view, out=None):
        """Open one SEALED datagram (``view``, at least 34 bytes): the plaintext frames as a
        memoryview, or None if it does not authenticate (counted; ``AuthError`` past the limit).
        ``out``: where to write the plaintext (``len(view) - 34`` bytes), else a new buffer."""
        view = memoryview(view)
        if len(view) < SEALED_OVERHEAD:
            self._failed()
            return None
        pn = int.from_bytes(view[10:HEADER_SIZE], "big")
        key = self._key_for(view[0], pn)
        if out is None:
            out = memoryview(bytearray(len(view) - SEALED_OVERHEAD))
        try:
            key._aead.decrypt_into((key._iv_int ^ pn).to_bytes(12, "big"), view[HEADER_SIZE:], view[:HEADER_SIZE],
                                   out)
        except Exception:  # cryptography's InvalidTag: forged, corrupted, or keys we do not have
            self._failed()
            return None
        self._opened(key, pn)
        return out

    def open_burst(self, view, seg: int, cid: bytes, scratch) -> tuple[int, int]:
        """Open a burst of ``seg``-byte SEALED datagrams (``len(view)`` a multiple of ``seg``) into
        ``scratch`` as checksummed DATA datagrams of ``seg - 8`` bytes whose trailers are zero
        (``burst.scan_chunk_burst`` with hasher None takes them); a datagram that
        does not open, or is not for ``cid``, gets a trailer of ones (garbage to the scan).
        Returns (bytes of ``scratch`` used, failed opens, offsets in ``view`` of datagrams that
        are not SEALED: the caller takes them one by one)."""
        view = memoryview(view)
        dst = memoryview(scratch)
        out_seg = seg - TAG_SIZE + PLAIN_TRAILER
        recv = self.recv
        if ACCELERATED:
            used, bad, left = _seal.open_burst(view, seg, cid, recv.phase & 1, self._phase_start, dst,
                                               _cipher(recv, seg, False), recv.key, recv.iv)
            if len(view) // seg > bad + len(left):
                self._recv_in_phase = True
            self._failed(bad)
            plain = []
            for p in left:  # another phase, an earlier number, not sealed, not ours: one by one
                h = view[p : p + HEADER_SIZE]
                if h[0] not in SEALED_TYPES:
                    plain.append(p)
                    continue
                q = p // seg * out_seg
                end = q + out_seg - PLAIN_TRAILER
                if h[2:10] == cid and h[1] == 1 and self.open(view[p : p + seg], dst[q + HEADER_SIZE : end]) is not None:
                    dst[end : end + PLAIN_TRAILER] = _ZERO
                else:
                    bad += 1
            return used, bad, plain
        bit = recv.phase & 1
        aead, iv = recv._aead.decrypt_into, recv._iv_int
        q = bad = 0
        plain = []
        for p in range(0, len(view), seg):
            h = view[p : p + HEADER_SIZE]
            end = q + out_seg - PLAIN_TRAILER
            pn = int.from_bytes(h[10:], "big")
            ok = h[2:10] == cid and h[1] == 1 and h[0] in SEALED_TYPES
            if not ok and h[0] not in SEALED_TYPES:
                plain.append(p)
                bad -= 1  # (not a failed open)
            if ok:
                if (h[0] & 1) == bit and pn >= self._phase_start:
                    try:
                        aead((iv ^ pn).to_bytes(12, "big"), view[p + HEADER_SIZE : p + seg], h,
                             dst[q + HEADER_SIZE : end])
                    except Exception:
                        ok = False
                        self._failed()
                    else:
                        self._recv_in_phase = True
                else:  # another phase (a key update, or a late packet): the general path
                    ok = self.open(view[p : p + seg], dst[q + HEADER_SIZE : end]) is not None
                    recv = self.recv
                    bit = recv.phase & 1
                    aead, iv = recv._aead.decrypt_into, recv._iv_int
            dst[q : q + HEADER_SIZE] = h
            dst[q] = DATA
            dst[end : end + PLAIN_TRAILER] = _ZERO if ok else _ONES
            bad += not ok
            q += out_seg
        return q, bad, plain


_ZERO = bytes(PLAIN_TRAILER)
_ONES = b"\xff" * PLAIN_TRAILER
