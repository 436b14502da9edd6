"""Signed receipts: the receiver's signed list of what landed in one session.

A sender that asks for a receipt (HELLO flag RECEIPT) gets, on the same
stream, RECEIPT frames (protocol.md, "Receipts") from the receiver:

* ENTRIES: a batch of entries, one per item with a RESULT, in RESULT order
  (part 4, ENTRIES_SHA256, since version 2: each entry also carries the SHA-256
  of the landed file, which binds content; XXH3-128 is not collision resistant).
  The receiver sends a batch once it holds ``BATCH_ENTRIES`` entries or
  ``BATCH_BYTES`` bytes of them, and the rest before END, so neither side
  ever holds more than one batch;
* END: format version, entry count, receiver time, the session's handshake
  transcript hash, the receiver's Ed25519 public key and its signature over
  a domain-separated message that includes the SHA-256 of all entries;
* END_X509: the same for a receiver in TLS mode, signed with its certificate's
  key, with the certificate chain in place of the Ed25519 key (receipt_x509.py);
* DECLINED: the receiver cannot sign (it has no identity key), with a reason.

Both sides hash the entries as they go: a session of a million files costs
one batch of memory here, never the list.  ``ReceiptSigner`` is the
receiver's half, ``ReceiptChecker`` the sender's (it compares every entry
with what the sender itself sent, then checks the signature), and
``verify`` re-checks a stored receipt.  Pure: bytes and times in, bytes out.
"""

from __future__ import annotations

import base64
import struct
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

from ...errors import ErrorCode, RemoteProtocolError
from ..manifest import MAX_PATH, Kind
from ..messages import wire_text
from . import AuthError
from .handshake import printable as _printable

def _sha256(data: bytes = b""):
    """hashlib's SHA-256, imported when a receipt is made or checked: a send without one does not
    load hashlib's OpenSSL (~1 ms of start-up; the handshake hashes with cryptography's)."""
    import hashlib

    return hashlib.sha256(data)


VERSION = 2  # entries carry SHA-256 besides the protocol's whole-file digest, XXH3-128 (protocol.md 21)
LEGACY_VERSION = 1  # XXH3-128 only: stored receipts of this version still verify, flagged as weaker
CONTEXT = b"ftx receipt\x00"  # domain separation: no other ftx signature starts so
PART_ENTRIES, PART_END, PART_DECLINED, PART_ENTRIES_SHA256, PART_END_X509 = 1, 2, 3, 4, 5
BATCH_ENTRIES = 256  # the receiver flushes its batch at this many entries...
BATCH_BYTES = 32 * 1024  # ...or this many bytes (a frame stays below 64 KiB)
MAX_TRANSCRIPT = 64
PUBLIC_SIZE, SIGNATURE_SIZE, DIGEST_SIZE, SHA256_SIZE = 32, 64, 16, 32
ZERO_DIGEST = bytes(DIGEST_SIZE)
ZERO_SHA256 = bytes(SHA256_SIZE)

_ENTRY_V1 = struct.Struct(">HBBQ16sH")  # code, kind, reserved, size, digest, path length; then the path
_ENTRY = struct.Struct(">HBBQ16s32sH")  # the same with the SHA-256 after the digest (version 2)
_END = struct.Struct(">BBHQq")  # part, version, reserved, count, receiver time (ns since the epoch)
_SIGNED = struct.Struct(">BQq")  # version, count, time


class ReceiptError(AuthError):
    """A receipt is missing, does not match what was sent, or its signature does not verify."""


def fingerprint(public: bytes) -> str:
    """``SHA256:`` and the unpadded base64 of the SHA-256 of a raw public key, as ssh prints it."""
    return "SHA256:" + base64.b64encode(_sha256(public).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class Entry:
    """One item with a RESULT: its wire path, kind, size, RESULT code and whole-file digest.

    The digests (XXH3-128 and SHA-256) are those of the landed (or identical)
    file for a regular file with code OK or IDENTICAL, and zeros otherwise.
    ``sha256`` None: an entry of a version-1 receipt, which had none.
    """

    path: bytes
    kind: int
    size: int
    code: int
    digest: bytes = ZERO_DIGEST
    sha256: bytes | None = ZERO_SHA256

    def encode(self) -> bytes:
        if self.sha256 is None:
            return _ENTRY_V1.pack(int(self.code), int(self.kind), 0, self.size, self.digest,
                                  len(self.path)) + self.path
        return _ENTRY.pack(int(self.code), int(self.kind), 0, self.size, self.digest, self.sha256,
                           len(self.path)) + self.path

    @property
    def ok(self) -> bool:
        return self.code in (ErrorCode.OK, ErrorCode.IDENTICAL)


def iter_entries(payload, offset: int = 1, sha256: bool = True) -> Iterator[Entry]:
    """The entries of a RECEIPT ENTRIES_SHA256 payload (``sha256`` False: a version-1 ENTRIES
    payload) from ``offset`` to its end, one at a time (a checker can refuse the first bad
    one before the rest are decoded)."""
    layout = _ENTRY if sha256 else _ENTRY_V1
    end = len(payload)
    while offset < end:
        if end - offset < layout.size:
            raise RemoteProtocolError("RECEIPT entry truncated")
        if sha256:
            code, kind, reserved, size, digest, sha, plen = layout.unpack_from(payload, offset)
        else:
            (code, kind, reserved, size, digest, plen), sha = layout.unpack_from(payload, offset), None
        offset += layout.size
        if reserved or kind not in (Kind.FILE, Kind.DIR, Kind.SYMLINK) or size >= 2**63:
            raise RemoteProtocolError("RECEIPT entry has a bad kind, size or reserved byte")
        if plen == 0 or plen > MAX_PATH or end - offset < plen:
            raise RemoteProtocolError("RECEIPT entry path is empty, too long or truncated")
        yield Entry(bytes(payload[offset : offset + plen]), kind, size, code, digest, sha)
        offset += plen


def decode_entries(payload, offset: int = 1, sha256: bool = True) -> list[Entry]:
    return list(iter_entries(payload, offset, sha256))


class ContentHasher:
    """XXH3-128 (the protocol's whole-file digest) and SHA-256 (what a receipt binds) over the
    same bytes in one pass: ``digest()`` is XXH3's, so it stands in for ``FileHasher`` where a
    receipt was asked for; ``sha256()`` the other."""

    __slots__ = ("_xxh", "_sha")

    def __init__(self) -> None:
        from ..checksum import FileHasher

        self._xxh = FileHasher()
        self._sha = _sha256()

    def update(self, data) -> None:
        self._xxh.update(data)
        self._sha.update(data)

    def digest(self) -> bytes:
        return self._xxh.digest()

    def sha256(self) -> bytes:
        return self._sha.digest()


@dataclass(frozen=True)
class ReceiptEnd:
    """The END part: everything but the entries, and the signature.

    With ``chain`` (DER certificates, leaf first: an END_X509) ``public`` is the
    SHA-256 of the leaf, the signer field of the signed message."""

    count: int
    time_ns: int
    transcript: bytes
    public: bytes
    signature: bytes
    version: int = VERSION
    chain: tuple = ()

    def encode(self) -> bytes:
        head = _END.pack(PART_END_X509 if self.chain else PART_END, self.version, 0, self.count, self.time_ns)
        head += bytes([len(self.transcript)]) + self.transcript
        if not self.chain:
            return head + self.public + self.signature
        return (head + bytes([len(self.chain)]) + b"".join(struct.pack(">H", len(c)) + c for c in self.chain)
                + struct.pack(">H", len(self.signature)) + self.signature)

    @classmethod
    def decode(cls, p) -> "ReceiptEnd":
        if len(p) < _END.size + 1:
            raise RemoteProtocolError("RECEIPT END truncated")
        part, version, _reserved, count, time_ns = _END.unpack_from(p, 0)
        tlen = p[_END.size]
        off = _END.size + 1
        if tlen > MAX_TRANSCRIPT or len(p) < off + tlen:
            raise RemoteProtocolError("RECEIPT END has the wrong length")
        transcript = bytes(p[off : off + tlen])
        off += tlen
        if part == PART_END_X509:
            return cls._decode_x509(p, off, count, time_ns, transcript, version)
        if len(p) != off + PUBLIC_SIZE + SIGNATURE_SIZE:
            raise RemoteProtocolError("RECEIPT END has the wrong length")
        return cls(count, time_ns, transcript, bytes(p[off : off + PUBLIC_SIZE]),
                   bytes(p[off + PUBLIC_SIZE :]), version)

    @classmethod
    def _decode_x509(cls, p, off: int, count: int, time_ns: int, transcript: bytes, version: int) -> "ReceiptEnd":
        from .receipt_x509 import MAX_CERT, MAX_CERTS, MAX_CHAIN, MAX_SIGNATURE, signer_id

        if len(p) < off + 1 or not 1 <= p[off] <= MAX_CERTS:
            raise RemoteProtocolError("RECEIPT END_X509 has no certificate, or too many")
        n, off, chain = p[off], off + 1, []
        for _ in range(n):
            if len(p) < off + 2:
                raise RemoteProtocolError("RECEIPT END_X509 truncated")
            clen = struct.unpack_from(">H", p, off)[0]
            if not 1 <= clen <= MAX_CERT or len(p) < off + 2 + clen:
                raise RemoteProtocolError("RECEIPT END_X509 certificate empty, too long or truncated")
            chain.append(bytes(p[off + 2 : off + 2 + clen]))
            off += 2 + clen
        if sum(map(len, chain)) > MAX_CHAIN or len(p) < off + 2:
            raise RemoteProtocolError("RECEIPT END_X509 chain too long, or truncated")
        slen = struct.unpack_from(">H", p, off)[0]
        if not 1 <= slen <= MAX_SIGNATURE or len(p) != off + 2 + slen:
            raise RemoteProtocolError("RECEIPT END_X509 has the wrong length")
        return cls(count, time_ns, transcript, signer_id(chain), bytes(p[off + 2 :]), version, tuple(chain))

    @property
    def fingerprint(self) -> str:
        if self.chain:  # the certificate's fingerprint (the hash is the signer field already)
            return "SHA256:" + base64.b64encode(self.public).decode().rstrip("=")
        return fingerprint(self.public)


def signed_message(version: int, count: int, time_ns: int, transcript: bytes, public: bytes,
                   entries_hash: bytes) -> bytes:
    """What the receiver signs (protocol.md, "Receipts")."""
    return (CONTEXT + _SIGNED.pack(version, count, time_ns) + bytes([len(transcript)]) + transcript
            + public + entries_hash)


def declined(reason: str) -> bytes:
    """A DECLINED payload: the receiver will send no receipt, and why."""
    raw = wire_text(reason)
    return bytes([PART_DECLINED]) + struct.pack(">H", len(raw)) + raw


def decode_declined(p) -> str:
    if len(p) < 3 or len(p) - 3 != struct.unpack_from(">H", p, 1)[0]:
        raise RemoteProtocolError("RECEIPT DECLINED has the wrong length")
    return bytes(p[3:]).decode("utf-8", "replace")


class ReceiptSigner:
    """The receiver's half: entries in RESULT order, batches out, then the signed END."""

    def __init__(self, key, transcript: bytes = b"", chain=()) -> None:
        """Signs version 2 (ENTRIES_SHA256): every entry carries a SHA-256 (zeros where none).
        ``key``: the Ed25519 identity key; with ``chain`` (DER, leaf first) the private key of
        the leaf certificate, any type receipt_x509 signs with (an END_X509)."""
        if len(transcript) > MAX_TRANSCRIPT:
            raise ValueError("transcript hash longer than 64 bytes")
        self._key = key
        self.chain = tuple(chain)
        if self.chain:
            from .receipt_x509 import signer_id

            self.public = signer_id(self.chain)
        else:
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

            self.public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.transcript = transcript
        self.count = 0
        self._hash = _sha256()
        self._batch = bytearray([PART_ENTRIES_SHA256])
        self._batched = 0

    def add(self, entry: Entry) -> bytes | None:
        """Take one entry; return an ENTRIES_SHA256 payload to send when the batch is full."""
        if entry.sha256 is None:
            raise ValueError("a version-2 receipt entry needs its SHA-256 (zeros where there is none)")
        raw = entry.encode()
        self._hash.update(raw)
        self.count += 1
        self._batch += raw
        self._batched += 1
        if self._batched >= BATCH_ENTRIES or len(self._batch) - 1 >= BATCH_BYTES:  # entry bytes, not the part byte
            return self._flush()
        return None

    def _flush(self) -> bytes:
        out = bytes(self._batch)
        self._batch = bytearray([PART_ENTRIES_SHA256])
        self._batched = 0
        return out

    def finish(self, time_ns: int) -> list[bytes]:
        """The last ENTRIES payload (if any) and the END payload."""
        out = [self._flush()] if self._batched else []
        msg = signed_message(VERSION, self.count, time_ns, self.transcript, self.public, self._hash.digest())
        if self.chain:
            from .receipt_x509 import sign

            signature = sign(self._key, msg)
        else:
            signature = self._key.sign(msg)
        out.append(ReceiptEnd(self.count, time_ns, self.transcript, self.public, signature, VERSION,
                              self.chain).encode())
        return out


class ReceiptChecker:
    """The sender's half: what it sent, compared entry by entry with what the receiver signs.

    ``expect`` is called at each RESULT with the sender's own view (its path,
    size and the digest it computed); the receiver's entries must match them
    in order.  Entries come at most one batch behind their RESULTs, so at most
    ``BATCH_ENTRIES`` expectations wait here.  ``public``: the receiver key the
    handshake proved (None on a plaintext link: the receipt's own key is taken
    and reported by fingerprint); with ``certificate`` (the DER certificate a TLS
    handshake proved) the receipt must be an END_X509 signed by that certificate.
    """

    def __init__(self, public: bytes | None = None, transcript: bytes = b"", certificate: bytes | None = None) -> None:
        self.certificate = certificate
        if certificate is not None:
            public = _sha256(certificate).digest()
        self.public = public
        self.transcript = transcript
        self.count = 0
        self.end: ReceiptEnd | None = None
        self.declined = ""
        self._expected: deque[Entry] = deque()
        self._hash = _sha256()

    @property
    def finished(self) -> bool:
        return self.end is not None or bool(self.declined)

    def expect(self, entry: Entry) -> None:
        if self.finished:
            raise ReceiptError("receipt: a RESULT after the receipt's END")
        self._expected.append(entry)
        if len(self._expected) > BATCH_ENTRIES:
            raise ReceiptError(f"receipt: the receiver holds back the entries of more than {BATCH_ENTRIES} "
                               "results (it must send them in batches)")

    def entries(self, got: Iterable[Entry]) -> None:
        """Check received entries against the expected ones, in order (raises ReceiptError)."""
        if self.finished:
            raise ReceiptError("receipt: entries after the receipt's END")
        for e in got:
            if not self._expected:
                raise ReceiptError(f"receipt lists {_show(e.path)}, which has no RESULT yet")
            want = self._expected.popleft()
            if e != want:
                raise ReceiptError(f"receipt: the receiver signs {_describe(e)} for {_show(want.path)}, "
                                   f"but we sent {_describe(want)}")
            self._hash.update(e.encode())
            self.count += 1

    def finish(self, end: ReceiptEnd) -> None:
        """Check the END against everything before it; raise ReceiptError if anything differs."""
        if self.finished:
            raise ReceiptError("receipt: a second END")
        if self._expected:
            raise ReceiptError(f"receipt omits {len(self._expected)} items, e.g. {_show(self._expected[0].path)}")
        if end.version != VERSION:
            raise ReceiptError(f"receipt format version {end.version} (we know {VERSION})")
        if end.count != self.count:
            raise ReceiptError(f"receipt claims {end.count} entries but lists {self.count}")
        if end.transcript != self.transcript:
            raise ReceiptError("receipt is bound to another session (transcript hash differs)")
        if self.public is not None and (end.public != self.public or bool(end.chain) != (self.certificate is not None)):
            proved = (f"certificate SHA256:{base64.b64encode(self.public).decode().rstrip('=')}"
                      if self.certificate is not None else fingerprint(self.public))
            raise ReceiptError(f"receipt is signed by {end.fingerprint}, not by the receiver the handshake "
                               f"proved ({proved})")
        check_signature(end, self._hash.digest())
        self.end = end

    def legacy(self, _=None) -> None:
        """The receiver sent version-1 entries (an older ftx): refused, clearly."""
        raise ReceiptError("the receiver's receipt lists XXH3-128 digests only (receipt version 1, an older ftx), "
                           "which do not bind content; upgrade the receiver to get SHA-256 digests")

    def decline(self, reason: str) -> None:
        if self.finished:
            raise ReceiptError("receipt: DECLINED after the receipt's END")
        self.declined = reason or "no reason given"


def check_signature(end: ReceiptEnd, entries_hash: bytes) -> None:
    msg = signed_message(end.version, end.count, end.time_ns, end.transcript, end.public, entries_hash)
    if end.chain:
        from .receipt_x509 import signer_id, verify as verify_x509

        if end.public != signer_id(end.chain):
            raise ReceiptError("receipt signer field is not its certificate's hash")
        verify_x509(end.chain, end.signature, msg, end.fingerprint)
        return
    from cryptography.exceptions import InvalidSignature  # here: only a receipt's check needs it
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(end.public).verify(end.signature, msg)
    except (InvalidSignature, ValueError):
        raise ReceiptError(f"receipt signature does not verify (key {end.fingerprint})") from None


def hash_entries(entries: Iterable[Entry]) -> tuple[bytes, int]:
    """SHA-256 over the entries' encodings, and their count (streamed: one entry at a time)."""
    h, count = _sha256(), 0
    for e in entries:
        h.update(e.encode())
        count += 1
    return h.digest(), count


def verify(end: ReceiptEnd, entries_hash: bytes, count: int, version: int = VERSION) -> None:
    """Re-check a stored receipt, given ``hash_entries`` of its entries, whose layout is that of
    ``version`` (1: XXH3-128 only, still accepted for receipts written before SHA-256; 2)."""
    if end.version != version or version not in (LEGACY_VERSION, VERSION):
        raise ReceiptError(f"receipt signature part of version {end.version} over entries of version {version} "
                           f"(we know {LEGACY_VERSION} and {VERSION})")
    if count != end.count:
        raise ReceiptError(f"receipt claims {end.count} entries but lists {count}")
    check_signature(end, entries_hash)


def printable(path: bytes) -> str:
    """A wire path for one line of text (handshake.printable, the one escaping function, with
    backslashes escaped and no length limit): \\xNN for bytes that are not UTF-8 and controls."""
    return _printable(path, None, backslash=True)


_show = printable


def _describe(e: Entry) -> str:
    code = ErrorCode(e.code).name if e.code in ErrorCode._value2member_map_ else str(e.code)
    kind = Kind(e.kind).name.lower() if e.kind in (1, 2, 3) else str(e.kind)
    sha = f", sha256 {e.sha256.hex()}" if e.sha256 is not None else ""
    return f"{_show(e.path)} ({kind}, {e.size} bytes, {code}, digest {e.digest.hex()}{sha})"
