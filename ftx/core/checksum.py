"""Checksums used by the protocol (all xxHash, see protocol.md "Integrity").

* frame checksum: XXH3-64 of the covered bytes, seeded with the first eight
  header bytes read as a big-endian integer, so the header is bound too;
* chunk checksum: XXH3-64 (seed 0) of a chunk's bytes;
* held digest: XXH3-64 over the 8-byte big-endian chunk checksums of the held
  chunks in index order (lets a sender verify a receiver's partial cheaply);
* file digest: XXH3-128 of the whole file, 16 bytes big-endian (canonical).
"""

from __future__ import annotations

import xxhash

chunk_checksum = xxhash.xxh3_64_intdigest
FileHasher = xxhash.xxh3_128
DIGEST_SIZE = 16
EMPTY_DIGEST = xxhash.xxh3_128_digest(b"")


def frame_checksum(header8: int, covered) -> int:
    return xxhash.xxh3_64_intdigest(covered, seed=header8)


def file_digest(data) -> bytes:
    """Digest of an in-memory file (small files; large ones stream through FileHasher)."""
    return xxhash.xxh3_128_digest(data)


class HeldDigest:
    """Accumulates the held digest over chunk checksums fed in index order."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = xxhash.xxh3_64()

    def add(self, checksum: int) -> None:
        self._h.update(checksum.to_bytes(8, "big"))

    def value(self) -> int:
        return self._h.intdigest()
