"""The receiver's SHA-256 of each landed file, for receipts (protocol.md 21), in the same pass as XXH3.

A receipt's XXH3-128 digests are not collision resistant: a sender that chooses
contents could make two files with one digest and later claim the receipt covers
either.  So when a sender asks for a receipt, the receiver also computes SHA-256
of what it stores -- never a second read where it can be helped:

* a large file: ``ReceiptPartial`` hashes with ``ContentHasher`` (XXH3-128 and
  SHA-256 over the same bytes) wherever ``PartialFile`` hashes: chunks as they
  arrive in order, chunks held back after a loss, a resumed prefix as it is
  re-verified, and what is left read back at finalize -- every byte once;
* an identical destination: ``hash_file_both`` reads it once for both digests;
* a small file: its bytes are in memory (``hashlib`` directly).

Without a receipt nothing changes (plain ``PartialFile``, XXH3 only).
"""

from __future__ import annotations

from .core.secure.receipt import ContentHasher
from .storage import PartialFile


class ReceiptPartial(PartialFile):
    """A ``PartialFile`` whose whole-file hashing also yields SHA-256 (``sha256()`` after ``finalize``)."""

    def _hashing(self) -> ContentHasher:  # PartialFile's one place that makes its hasher
        if self._hasher is None:
            self._hasher = ContentHasher()
        return self._hasher

    def sha256(self) -> bytes:
        return self._hashing().sha256()


def hash_file_both(dest, path: bytes) -> tuple[bytes, bytes]:
    """XXH3-128 and SHA-256 of a destination file, in one streaming read through the
    destination's held directories (never a path string walked again)."""
    h = ContentHasher()
    dest.hash_file(path, hasher=h)
    return h.digest(), h.sha256()
