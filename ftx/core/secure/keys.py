"""Traffic keys: HKDF labels, the AEAD choice, per-direction key/IV, key update.

A traffic secret (32 bytes, from a handshake's ``Established``) yields the
AEAD key and IV of one direction the way TLS 1.3 does (RFC 8446 §7.1, §7.3)::

    HKDF-Expand-Label(Secret, Label, Context, Length) =
        HKDF-Expand(Secret, HkdfLabel, Length)      with SHA-256 (RFC 5869)
    HkdfLabel = uint16 Length || uint8 len("ftx " + Label) || "ftx " + Label
                || uint8 len(Context) || Context

    key = HKDF-Expand-Label(secret, "key", "", 32)
    iv  = HKDF-Expand-Label(secret, "iv",  "", 12)
    next secret (key update) = HKDF-Expand-Label(secret, "ku", "", 32)

The nonce of record or packet number ``n`` is ``iv XOR n`` (n as a 96-bit
big-endian integer), as in RFC 8446 §5.3 and RFC 9001 §5.3; a number is never
used twice under one key.  Both AEADs have 32-byte keys and 16-byte tags.

Usage limits (RFC 9001 §6.6, RFC 8446 §5.5): a key seals at most
``confidentiality_limit`` records of up to ``block_limit`` 16-byte blocks in
all, and a receiver gives up after ``integrity_limit`` forgeries.  The sealing
side updates its key well before the limit (``Direction.should_update``).
"""

from __future__ import annotations

import struct

# cryptography is imported where it is used (once per handshake or key update), not here: the
# handshake module imports this one, and `ftx send --insecure` uses neither (start-up time).

AES_256_GCM = "aes-256-gcm"
CHACHA20_POLY1305 = "chacha20-poly1305"
CIPHERS = {AES_256_GCM: 1, CHACHA20_POLY1305: 2}  # wire codes (protocol.md, "Security")
CIPHER_NAMES = {v: k for k, v in CIPHERS.items()}
SECRET_SIZE = 32
KEY_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16

# RFC 9001 §6.6: AES-GCM: 2^23 packets (of up to 2^16 bytes... the bound there assumes
# QUIC-sized packets; we count 16-byte blocks instead, below); ChaCha20: 2^62.
# Integrity: AES-GCM 2^52 forgeries, ChaCha20-Poly1305 2^36.
LIMITS = {
    # cipher: (records, blocks, forgeries)
    # AES-GCM: RFC 8446 §5.5 allows 2^24.5 full records of 2^10 blocks = 2^34.5 blocks; keep
    # a margin of 2^2.5 below both.
    AES_256_GCM: (2**23, 2**32, 2**52),
    CHACHA20_POLY1305: (2**60, 2**60, 2**36),
}


def sha256(data: bytes) -> bytes:
    """SHA-256, cryptography's (hashlib would load a second OpenSSL: ~1 ms of every start-up)."""
    from cryptography.hazmat.primitives import hashes

    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104), cryptography's."""
    from cryptography.hazmat.primitives import hashes, hmac

    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 §2.2)."""
    return hmac_sha256(salt or bytes(32), ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869 §2.3)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    full = b"ftx " + label.encode()
    info = struct.pack(">H", length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    return hkdf_expand(secret, info, length)


class InvalidTag(Exception):
    """Replaced by cryptography's InvalidTag when aead() imports it (``open_into`` catches it)."""


def aead(cipher: str, key: bytes):
    global InvalidTag
    from cryptography.exceptions import InvalidTag

    try:  # the classes ciphers.aead re-exports, without that package's other 13 modules (~1.5 ms of a send)
        from cryptography.hazmat.bindings._rust import openssl as _rust_openssl  # (an attribute, not a module)

        AESGCM, ChaCha20Poly1305 = _rust_openssl.aead.AESGCM, _rust_openssl.aead.ChaCha20Poly1305
    except (ImportError, AttributeError):  # a cryptography that moved them
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    if cipher == AES_256_GCM:
        return AESGCM(key)
    if cipher == CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown cipher {cipher!r}")


def preferred_ciphers(has_aes_instructions: bool) -> list[str]:
    """Our preference order: AES-256-GCM where the CPU has AES instructions, else ChaCha20."""
    if has_aes_instructions:
        return [AES_256_GCM, CHACHA20_POLY1305]
    return [CHACHA20_POLY1305, AES_256_GCM]


class Direction:
    """The keys of one direction: seal (or open) numbered records, update before the limits.

    ``phase`` counts key updates (its low bit travels in records and packets so
    the receiver knows which key to use).  ``sealed`` and ``blocks`` count what
    the current key has sealed; ``forged`` counts failed opens over the whole
    connection.
    """

    __slots__ = ("cipher", "secret", "phase", "key", "iv", "_aead", "_iv_int", "sealed", "blocks", "forged",
                 "_limits")

    def __init__(self, cipher: str, secret: bytes, phase: int = 0) -> None:
        if len(secret) != SECRET_SIZE:
            raise ValueError("traffic secret must be 32 bytes")
        self.cipher = cipher
        self._limits = LIMITS[cipher]
        self.forged = 0
        self._install(secret, phase)

    def _install(self, secret: bytes, phase: int) -> None:
        self.secret = secret
        self.phase = phase
        self.key = expand_label(secret, "key", b"", KEY_SIZE)
        self.iv = expand_label(secret, "iv", b"", IV_SIZE)
        self._iv_int = int.from_bytes(self.iv, "big")
        self._aead = aead(self.cipher, self.key)
        self.sealed = 0
        self.blocks = 0

    def next(self) -> "Direction":
        """The keys after one key update (the old object stays usable for late packets)."""
        d = Direction.__new__(Direction)
        d.cipher, d._limits, d.forged = self.cipher, self._limits, self.forged
        d._install(expand_label(self.secret, "ku", b"", SECRET_SIZE), self.phase + 1)
        return d

    def nonce(self, number: int) -> bytes:
        return (self._iv_int ^ number).to_bytes(IV_SIZE, "big")

    def seal(self, number: int, plaintext, aad: bytes) -> bytes:
        """Ciphertext and tag of ``plaintext`` as record/packet ``number``."""
        self.sealed += 1
        self.blocks += (len(plaintext) + 15) // 16 + 1
        return self._aead.encrypt(self.nonce(number), plaintext, aad)

    def seal_into(self, number: int, plaintext, aad: bytes, out) -> None:
        """Seal into ``out`` (len(plaintext) + 16 bytes; may not overlap ``plaintext``)."""
        self.sealed += 1
        self.blocks += (len(plaintext) + 15) // 16 + 1
        self._aead.encrypt_into((self._iv_int ^ number).to_bytes(IV_SIZE, "big"), plaintext, aad, out)

    def open(self, number: int, ciphertext, aad: bytes) -> bytes | None:
        """The plaintext, or None when the tag does not verify (counted in ``forged``)."""
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(self.nonce(number), ciphertext, aad)
        except InvalidTag:
            self.forged += 1
            return None

    def open_into(self, number: int, ciphertext, aad: bytes, out) -> bool:
        """Open into ``out`` (len(ciphertext) - 16 bytes); False when the tag does not verify."""
        try:  # (the nonce inline: this runs per record)
            self._aead.decrypt_into((self._iv_int ^ number).to_bytes(IV_SIZE, "big"), ciphertext, aad, out)
            return True
        except InvalidTag:
            self.forged += 1
            return False

    def should_update(self, margin: float = 0.5) -> bool:
        """Time to update: past ``margin`` of either confidentiality limit of this key."""
        records, blocks, _ = self._limits
        return self.sealed >= records * margin or self.blocks >= blocks * margin

    @property
    def too_many_forgeries(self) -> bool:
        return self.forged >= self._limits[2]
