"""Receipt files: a verified receipt as one self-contained JSON document.

Written as it arrives (entries are never all in memory), into a nameless
file (``O_TMPFILE``) in FILE's directory that replaces FILE only once the
signature has verified: linked under a fresh name (``FILE.<random>.ftx-tmp``)
and renamed over FILE at once, so a sender killed while the receipt arrives
leaves nothing behind.  Where the file system has no ``O_TMPFILE`` the
temporary is named from the start (created exclusively, as with ``mkstemp``)::

    {"ftx_receipt": 2,
     "files": [
      {"path": "<base64 wire path>", "kind": "file", "size": 5, "status": "ok", "code": 0,
       "digest": "<base64 XXH3-128>", "sha256": "<base64 SHA-256>"},
      ...
     ],
     "count": 1, "receiver_time_ns": 1764000000000000000, "transcript": "<base64>",
     "public_key": "<base64, 32 bytes Ed25519>", "fingerprint": "SHA256:...",
     "signature": "<base64, 64 bytes>"}

A receiver in TLS mode signs with its certificate's key: ``"certificates": [<base64
DER>, ...]`` (leaf first) stands in place of ``"public_key"``, the fingerprint is
the certificate's, and the signature is of the leaf key's type.

Format 1 (receipts written before entries carried SHA-256: no "sha256" field,
END version 1) is still read and verified; ``verify_file`` says which it was.

``read`` streams it back one entry at a time and accepts only that exact
layout (a receipt reformatted, e.g. by jq, no longer verifies: any changed
byte makes it invalid); ``verify_file`` re-checks it with
``core.secure.receipt.verify``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
from typing import Callable, Iterator

from .core.manifest import MAX_PATH, Kind
from .core.secure.receipt import (LEGACY_VERSION, MAX_TRANSCRIPT, VERSION, Entry, ReceiptEnd, ReceiptError,
                                  hash_entries, verify)
from .errors import ErrorCode
from .fileops import Temp

FORMAT = VERSION  # the file's format number is the receipt version it holds (1 or 2)
_HEADS = {v: f'{{"ftx_receipt": {v},\n "files": [\n' for v in (LEGACY_VERSION, VERSION)}
_HEAD = _HEADS[FORMAT]
_TAIL = " ],\n"
_MAX_LINE = 8 * 1024  # an entry line: base64 of a path of at most 4096 bytes, and the rest
TRY_TMPFILE = True  # False: the temporary is named from the start, as on a file system without O_TMPFILE


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _status(code: int) -> str:
    return ErrorCode(code).name.lower() if code in ErrorCode._value2member_map_ else f"error_{code}"


def entry_json(e: Entry) -> dict:
    d = {"path": _b64(e.path), "kind": Kind(e.kind).name.lower(), "size": e.size, "status": _status(e.code),
         "code": int(e.code), "digest": _b64(e.digest)}
    if e.sha256 is not None:  # format 2
        d["sha256"] = _b64(e.sha256)
    return d


def end_json(end: ReceiptEnd) -> dict:
    d = {"count": end.count, "receiver_time_ns": end.time_ns, "transcript": _b64(end.transcript)}
    if end.chain:  # TLS mode: signed with the certificate's key; the chain, leaf first
        d["certificates"] = [_b64(c) for c in end.chain]
    else:
        d["public_key"] = _b64(end.public)
    return {**d, "fingerprint": end.fingerprint, "signature": _b64(end.signature)}


class ReceiptWriter:
    """Entries to a temporary file as they come; ``finish`` puts it in place under ``path``.
    Writes format 2 (entries with SHA-256), the only one a sender accepts now.  The temporary is
    ``fileops.Temp`` in FILE's directory (held open): nameless where the file system allows."""

    def __init__(self, path) -> None:
        self.path = os.fspath(path)
        self._dir = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._base = os.fsencode(os.path.basename(self.path))
        try:
            self._temp: Temp | None = Temp(self._dir, TRY_TMPFILE, names=_Beside(self._base))
        except BaseException:
            os.close(self._dir)
            raise
        self._f = open(self._temp.fd, "w", encoding="ascii", closefd=False)
        self._f.write(_HEAD)
        self._last = ""  # held back: only the last entry line has no comma

    def add(self, entries) -> None:
        for e in entries:
            if self._last:
                self._f.write(f"  {self._last},\n")
            self._last = json.dumps(entry_json(e))

    def finish(self, end: ReceiptEnd) -> None:
        f = self._f
        try:
            if self._last:
                f.write(f"  {self._last}\n")
            f.write(_TAIL + _end_line(end))
            f.flush()
            os.fsync(self._temp.fd)
            self._temp.replace(self._base)  # a nameless one is linked as FILE.<random>.ftx-tmp first
            os.fsync(self._dir)  # the new name survives a power loss once the send has said it is there
        except BaseException:
            self.abort()
            raise
        self.abort()  # nothing is left to remove: this closes the descriptors

    def abort(self) -> None:
        if self._temp is None:
            return
        try:  # its last bytes may still be unwritten (why finish failed: a full disk); the fd goes anyway
            self._f.close()
        except OSError:
            pass
        self._temp.close()  # a named temporary not renamed over FILE is removed
        self._temp = None
        os.close(self._dir)


class _Beside:
    """``Temp``'s names for a receipt: ``FILE.<random>.ftx-tmp`` beside FILE (nothing records them)."""

    __slots__ = ("base",)

    def __init__(self, base: bytes) -> None:
        self.base = base

    def take(self) -> bytes:
        return b"%s.%s.ftx-tmp" % (self.base, secrets.token_hex(6).encode())

    def done(self, name: bytes) -> None:
        pass


def _end_line(end: ReceiptEnd) -> str:
    return " " + json.dumps(end_json(end))[1:] + "\n"  # the trailer's fields close the document


def _int(value, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value < hi:  # noqa: E721 - not a bool, not a float
        raise ValueError(f"{value!r} is not an integer in range")
    return value


def _bytes(value, lo: int, hi: int) -> bytes:
    raw = base64.b64decode(value, validate=True)
    if not lo <= len(raw) <= hi:
        raise ValueError(f"a field of {len(raw)} bytes, not {lo}..{hi}")
    return raw


def _entry(d: dict, version: int) -> Entry:
    kind = {"file": Kind.FILE, "dir": Kind.DIR, "symlink": Kind.SYMLINK}[d["kind"]]
    sha = _bytes(d["sha256"], 32, 32) if version >= 2 else None
    return Entry(_bytes(d["path"], 1, MAX_PATH), kind, _int(d["size"], 0, 2**63), _int(d["code"], 0, 2**16),
                 _bytes(d["digest"], 16, 16), sha)


def _end(d: dict, version: int) -> ReceiptEnd:
    """The END of a file of format ``version`` (the version the signature covers: a relabelled
    file no longer verifies)."""
    count, time_ns = _int(d["count"], 0, 2**64), _int(d["receiver_time_ns"], -(2**63), 2**63)
    transcript = _bytes(d["transcript"], 0, MAX_TRANSCRIPT)
    if "certificates" in d and version >= 2:
        from .core.secure.receipt_x509 import MAX_CERT, MAX_CERTS, MAX_SIGNATURE, signer_id

        certs = d["certificates"]
        if not isinstance(certs, list) or not 1 <= len(certs) <= MAX_CERTS:
            raise ValueError("a receipt lists 1 to 8 certificates")
        chain = tuple(_bytes(c, 1, MAX_CERT) for c in certs)
        return ReceiptEnd(count, time_ns, transcript, signer_id(chain), _bytes(d["signature"], 1, MAX_SIGNATURE),
                          version, chain)
    return ReceiptEnd(count, time_ns, transcript, _bytes(d["public_key"], 32, 32), _bytes(d["signature"], 64, 64),
                      version)


def read(path) -> tuple[Iterator[Entry], Callable[[], ReceiptEnd]]:
    """Entries one at a time, and a function giving the END once they are consumed
    (``read_versioned`` also gives the file's format)."""
    entries, end_of, _ = read_versioned(path)
    return entries, end_of


def read_versioned(path) -> tuple[Iterator[Entry], Callable[[], ReceiptEnd], int]:
    """Entries one at a time, a function giving the END once they are consumed, and the format.

    Only the exact layout ``ReceiptWriter`` writes is accepted: every line must
    be the canonical rendering of what it parses to, so any changed byte of a
    receipt -- even one JSON or base64 would forgive -- makes it invalid.
    Raises ReceiptError for a malformed receipt, OSError for an unreadable file.
    """
    f = open(os.fspath(path), "rb")
    head = f.read(len(_HEAD))
    version = next((v for v, h in _HEADS.items() if head == h.encode()), None)
    if version is None:
        f.close()
        raise ReceiptError(f"not an ftx receipt (format {LEGACY_VERSION} or {VERSION})")
    trailer: list[ReceiptEnd] = []

    def entries() -> Iterator[Entry]:
        with f:
            comma = False  # the previous entry line ended in a comma: another must follow
            while (line := f.readline(_MAX_LINE)).endswith(b"\n"):
                if line == _TAIL.encode():
                    if comma:
                        break
                    text = f.read(_MAX_LINE + 1)
                    end = _canonical(text, lambda t: _end(json.loads("{" + t[1:]), version), _end_line)
                    trailer.append(end)
                    return
                body = line[2:-1].decode("ascii", "replace")
                comma = body.endswith(",")
                body = body.removesuffix(",")
                if not line.startswith(b"  "):
                    break
                yield _canonical(body + "\n", lambda t: _entry(json.loads(t), version),
                                 lambda e: json.dumps(entry_json(e)) + "\n")
            raise ReceiptError("receipt is malformed inside its file list")

    def end_of() -> ReceiptEnd:
        if not trailer:
            raise ReceiptError("receipt has no signature part")
        return trailer[0]

    return entries(), end_of, version


def _canonical(text, parse, render):
    """``parse(text)``, provided that ``render`` gives back exactly ``text``."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        value = parse(text)
        same = render(value) == text
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, struct.error) as exc:
        raise ReceiptError(f"receipt is malformed: {exc}") from None
    if not same:
        raise ReceiptError("receipt is not in its canonical form (a byte was changed)")
    return value


def verify_file(path, expect_fingerprint: str | None = None, ca_certs=None, certificate: bytes | None = None
                ) -> ReceiptEnd:
    """Re-check a receipt file (its entries streamed, never all in memory).

    ``ca_certs`` (DER CA certificates): a TLS receipt's chain must lead to one of them,
    valid when it was signed; ``certificate`` (DER): it must be signed by exactly that
    certificate.  Either needs a TLS receipt.
    Raises ReceiptError for a receipt that is malformed or does not verify,
    OSError if it cannot be read.
    """
    entries, end_of, version = read_versioned(path)
    digest, count = hash_entries(entries)
    end = end_of()
    verify(end, digest, count, version)
    if expect_fingerprint is not None and end.fingerprint != expect_fingerprint:
        raise ReceiptError(f"receipt is signed by {end.fingerprint}, not {expect_fingerprint}")
    if ca_certs is not None or certificate is not None:
        if not end.chain:
            raise ReceiptError(f"receipt is signed by the identity key {end.fingerprint}, not by a certificate")
        from .core.secure.receipt_x509 import verify_chain

        verify_chain(end.chain, ca_certs or [], end.time_ns, certificate)
    return end
