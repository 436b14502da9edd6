"""Payload layouts of the control frames (protocol.md, "Frame payloads").

Each message is a frozen record (``record.record``) with ``encode() -> bytes`` and a
``decode(payload)`` classmethod that raises RemoteProtocolError on malformed
input.  DATA frames live in frames.py (their bytes never pass through here).
"""

from __future__ import annotations

import struct
from .record import field, record

from ..errors import ErrorCode, RemoteProtocolError
from .checksum import DIGEST_SIZE
from .manifest import FileEntry, built, decode_entry, encode_entry
from .ranges import RangeSet

MAGIC = b"ftx\x00"
PROTOCOL_VERSION = 1
ROLE_SENDER = 1
ROLE_RECEIVER = 2

# HELLO flags
HELLO_NO_RESUME = 1 << 0  # sender: ignore and discard partial data
HELLO_OVERWRITE = 1 << 1  # receiver: differing destination files will be replaced
HELLO_RECEIPT = 1 << 2  # sender: send a signed receipt before DONE (RECEIPT frames)
HELLO_QUICK_CHECK = 1 << 3  # sender: an OFFER may be answered IDENTICAL by size + mtime, and it may send
# CHECK_DIR; receiver: it understands CHECK_DIR (protocol.md 5.11)

# DECISION flags
DECISION_EXISTS = 1 << 0  # destination exists; existing_digest is its digest
DECISION_OVERWRITE = 1 << 1  # receiver will replace a differing destination
DECISION_DISCARDED = 1 << 2  # a stale partial was discarded (source changed)

ZERO_DIGEST = bytes(DIGEST_SIZE)


def _need(payload, size: int, what: str) -> None:
    if len(payload) < size:
        raise RemoteProtocolError(f"{what} payload truncated")


def _text(payload, offset: int, what: str) -> tuple[str, int]:
    _need(payload, offset + 2, what)
    (n,) = struct.unpack_from(">H", payload, offset)
    offset += 2
    _need(payload, offset + n, what)
    return bytes(payload[offset : offset + n]).decode("utf-8", "replace"), offset + n


MAX_TEXT = 1024  # bytes of UTF-8 a text field carries at most


def wire_text(text: str, limit: int = MAX_TEXT) -> bytes:
    """``text`` as valid UTF-8 of at most ``limit`` bytes, whatever it holds.

    Texts often quote local file names, which ``os.fsdecode`` turns into
    lone surrogates when they are not UTF-8: those go out as ``\\xNN`` escapes
    of the original bytes, never as an exception.  A cut never splits a character.
    """
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode("utf-8")
        except UnicodeEncodeError:  # surrogates that do not stand for bytes
            raw = text.encode("utf-8", "backslashreplace")
    if len(raw) > limit:
        raw = raw[:limit].decode("utf-8", "ignore").encode("utf-8")
    return raw


def _pack_text(text: str) -> bytes:
    raw = wire_text(text)
    return struct.pack(">H", len(raw)) + raw


_CODES = {int(c): c for c in ErrorCode}


def _code(value: int) -> ErrorCode | int:
    return _CODES.get(value, value)  # unknown codes from newer peers are kept as numbers


# HELLO extensions (protocol.md section 6.1): u16 type, u16 length, value
EXT_SENDER_ID = 0x0001  # sender: the transfer identity, 1-64 opaque bytes
EXT_OFFER_SUMMARY = 0x0002  # sender: what the session will offer (OfferSummary), for a receiver that asks
EXT_TRANSFER_ID = 0x0003  # sender: this session's id, 8 random bytes, printed in both sides' logs
EXT_RESULT_RUN = 0x0004  # sender: it takes RESULT_RUN frames (empty value)
OFFER_SUMMARY_MAX = 2048
TRANSFER_ID_SIZE = 8
SENDER_ID_MAX = 64
_EXT = struct.Struct(">HH")


@record
class Hello:
    role: int
    max_payload: int
    flags: int = 0
    agent: str = "ftx"
    version: int = PROTOCOL_VERSION
    sender_id: bytes = b""  # transfer identity: who may take over a partial (empty: anonymous)
    summary: bytes = b""  # OFFER_SUMMARY value as sent (``OfferSummary.decode`` reads it)
    transfer_id: bytes = b""  # TRANSFER_ID: names this session in both peers' logs (empty: none sent)
    result_run: bool = False  # RESULT_RUN: the sender takes a run of OK results in one frame
    _S = struct.Struct(">4sHBBIQ")

    def encode(self) -> bytes:
        out = self._S.pack(MAGIC, self.version, self.role, 0, self.max_payload, self.flags) + _pack_text(self.agent)
        if self.sender_id:
            out += _EXT.pack(EXT_SENDER_ID, len(self.sender_id)) + self.sender_id
        if self.summary:
            out += _EXT.pack(EXT_OFFER_SUMMARY, len(self.summary)) + self.summary
        if self.transfer_id:
            out += _EXT.pack(EXT_TRANSFER_ID, len(self.transfer_id)) + self.transfer_id
        if self.result_run:
            out += _EXT.pack(EXT_RESULT_RUN, 0)
        return out

    @classmethod
    def decode(cls, p) -> "Hello":
        _need(p, cls._S.size, "HELLO")
        magic, version, role, _r, max_payload, flags = cls._S.unpack_from(p, 0)
        if magic != MAGIC:
            raise RemoteProtocolError("not an ftx peer (bad HELLO magic)")
        agent, off = _text(p, cls._S.size, "HELLO")
        sender_id = summary = transfer_id = b""
        result_run = False
        # extensions: while a whole one fits; unknown types, a malformed id and
        # a shorter tail are ignored (trailing bytes were reserved, never an error)
        while len(p) - off >= _EXT.size:
            etype, elen = _EXT.unpack_from(p, off)
            off += _EXT.size
            if len(p) - off < elen:
                break
            if etype == EXT_SENDER_ID and not sender_id and 1 <= elen <= SENDER_ID_MAX:
                sender_id = bytes(p[off : off + elen])
            elif etype == EXT_OFFER_SUMMARY and not summary and elen <= OFFER_SUMMARY_MAX:
                summary = bytes(p[off : off + elen])
            elif etype == EXT_TRANSFER_ID and not transfer_id and elen == TRANSFER_ID_SIZE:
                transfer_id = bytes(p[off : off + elen])
            elif etype == EXT_RESULT_RUN and elen == 0:
                result_run = True
            off += elen
        return cls(role, max_payload, flags, agent, version, sender_id, summary, transfer_id, result_run)


@record
class OfferSummary:
    """What a sender announces it will offer: item count, total file bytes, the top-level names.

    Value of the HELLO extension OFFER_SUMMARY (protocol.md 6.1): u64 items, u64
    bytes, u16 name count, then per name u16 length + UTF-8; at most
    ``OFFER_SUMMARY_MAX`` bytes in all (names that do not fit are left out, the
    count says how many there are).
    """

    items: int
    size: int
    names: tuple[str, ...]
    name_count: int

    _S = struct.Struct(">QQH")

    def encode(self) -> bytes:
        out = bytearray(self._S.pack(self.items, self.size, self.name_count))
        for name in self.names:
            raw = wire_text(name, 255)
            if len(out) + 2 + len(raw) > OFFER_SUMMARY_MAX:
                break
            out += struct.pack(">H", len(raw)) + raw
        return bytes(out)

    @classmethod
    def decode(cls, p) -> "OfferSummary | None":
        """The summary, or None when ``p`` is not one (it is informational: never an error)."""
        if len(p) < cls._S.size or len(p) > OFFER_SUMMARY_MAX:
            return None
        items, size, count = cls._S.unpack_from(p, 0)
        names, off = [], cls._S.size
        while off + 2 <= len(p) and len(names) < count:
            (n,) = struct.unpack_from(">H", p, off)
            if off + 2 + n > len(p):
                return None
            names.append(bytes(p[off + 2 : off + 2 + n]).decode("utf-8", "replace"))
            off += 2 + n
        return cls(items, size, tuple(names), count)


@record
class Offer:
    file_id: int
    entry: FileEntry

    def encode(self) -> bytes:
        return encode_entry(self.file_id, self.entry)

    @classmethod
    def decode(cls, p) -> "Offer":
        file_id, entry, end = decode_entry(p)
        if end != len(p):
            raise RemoteProtocolError("trailing bytes after OFFER")
        return cls(file_id, entry)


@record
class SmallFile:
    """A whole small file in one frame: entry, digest, then its bytes."""

    file_id: int
    entry: FileEntry
    digest: bytes
    data: bytes | memoryview

    def encode(self) -> bytes:
        return self.pack(self.file_id, self.entry, self.digest, self.data)

    @staticmethod
    def pack(file_id: int, entry: FileEntry, digest: bytes, data) -> bytes:
        """``SmallFile(...).encode()`` with no object in between (one per small file)."""
        return encode_entry(file_id, entry) + digest + bytes(data)

    @classmethod
    def decode(cls, p) -> "SmallFile":
        file_id, entry, digest, data = cls.unpack(p)
        return built(cls, file_id=file_id, entry=entry, digest=digest, data=data)

    @staticmethod
    def unpack(p) -> tuple[int, FileEntry, bytes, bytes]:
        """``decode`` as (file_id, entry, digest, data), with no object in between (one per small file)."""
        file_id, entry, off = decode_entry(p)
        if len(p) - off != DIGEST_SIZE + entry.size:
            raise RemoteProtocolError("SMALL_FILE length does not match its size")
        # the event owns its bytes (small by definition): whoever holds it may keep it while
        # more input arrives, as the receiver does while it writes the file in a worker thread
        return file_id, entry, bytes(p[off : off + DIGEST_SIZE]), bytes(p[off + DIGEST_SIZE :])


@record
class Decision:
    file_id: int
    flags: int = 0
    existing_digest: bytes = ZERO_DIGEST
    held_digest: int = 0
    held: RangeSet = field(default_factory=RangeSet)
    message: str = ""
    _S = struct.Struct(">IBBH16sQ")

    def encode(self) -> bytes:
        return (
            self._S.pack(self.file_id, 1, self.flags, 0, self.existing_digest, self.held_digest)
            + self.held.encode()
            + _pack_text(self.message)
        )

    @classmethod
    def decode(cls, p, chunks_of=None) -> "Decision":
        """``chunks_of(file_id)`` gives the file's chunk count, which bounds the held
        set while it is decoded (or raises RemoteProtocolError for a file that
        awaits no DECISION)."""
        _need(p, cls._S.size, "DECISION")
        file_id, verdict, flags, _r, existing, held_digest = cls._S.unpack_from(p, 0)
        if verdict != 1:
            raise RemoteProtocolError(f"unknown DECISION verdict {verdict}")
        limit = chunks_of(file_id) if chunks_of is not None else None
        held, off = RangeSet.decode(p, cls._S.size, limit)
        message, _ = _text(p, off, "DECISION")
        return cls(file_id, flags, existing, held_digest, held, message)


@record
class FileEnd:
    file_id: int
    digest: bytes
    _S = struct.Struct(">I16s")

    def encode(self) -> bytes:
        return self._S.pack(self.file_id, self.digest)

    @classmethod
    def decode(cls, p) -> "FileEnd":
        _need(p, cls._S.size, "FILE_END")
        return cls(*cls._S.unpack_from(p, 0))


@record
class Result:
    file_id: int
    code: ErrorCode | int
    digest: bytes = ZERO_DIGEST
    message: str = ""
    _S = struct.Struct(">IH16s")

    def encode(self) -> bytes:
        return self.pack(self.file_id, self.code, self.digest, self.message)

    @classmethod
    def pack(cls, file_id: int, code: ErrorCode | int, digest: bytes = ZERO_DIGEST, message: str = "") -> bytes:
        """``Result(...).encode()`` with no object in between (a RESULT per file)."""
        return cls._S.pack(file_id, code, digest) + (_pack_text(message) if message else b"\0\0")

    @classmethod
    def decode(cls, p) -> "Result":
        _need(p, cls._S.size, "RESULT")
        file_id, code, digest = cls._S.unpack_from(p, 0)
        if len(p) == cls._S.size + 2 and p[-2:] == b"\0\0":  # no message, as most RESULTs
            return built(cls, file_id=file_id, code=_CODES.get(code, code), digest=digest, message="")
        message, _ = _text(p, cls._S.size, "RESULT")
        return cls(file_id, _code(code), digest, message)

    @property
    def ok(self) -> bool:
        return self.code in (ErrorCode.OK, ErrorCode.IDENTICAL)


RESULT_RUN = struct.Struct(">II")  # RESULT_RUN payload: first file id, count (protocol.md 5.13)


def decode_result_run(p) -> tuple[int, int]:
    """RESULT_RUN's (first, count): exactly 8 bytes, count >= 1, ids within u32.  Whether
    each id may be settled is the sender's check (its state per file)."""
    if len(p) != RESULT_RUN.size:
        raise RemoteProtocolError("RESULT_RUN payload must be 8 bytes")
    first, count = RESULT_RUN.unpack_from(p, 0)
    if count == 0:
        raise RemoteProtocolError("RESULT_RUN of no file")
    if first + count > 1 << 32:
        raise RemoteProtocolError(f"RESULT_RUN of files {first}..{first + count - 1} runs past file id 2^32-1")
    return first, count


@record
class FileNotice:
    """SKIP, RESTART and ABORT_FILE share one layout: file id, code, message."""

    file_id: int
    code: ErrorCode | int = ErrorCode.OK
    message: str = ""
    _S = struct.Struct(">IH")

    def encode(self) -> bytes:
        return self._S.pack(self.file_id, self.code) + _pack_text(self.message)

    @classmethod
    def decode(cls, p) -> "FileNotice":
        _need(p, cls._S.size, "file notice")
        file_id, code = cls._S.unpack_from(p, 0)
        message, _ = _text(p, cls._S.size, "file notice")
        return cls(file_id, _code(code), message)


@record
class ErrorMessage:
    code: ErrorCode | int
    message: str = ""

    def encode(self) -> bytes:
        return struct.pack(">H", self.code) + _pack_text(self.message)

    @classmethod
    def decode(cls, p) -> "ErrorMessage":
        _need(p, 2, "ERROR")
        (code,) = struct.unpack_from(">H", p, 0)
        message, _ = _text(p, 2, "ERROR")
        return cls(_code(code), message)


# DIR_STATE states (protocol.md 5.12)
DIR_SAME = 1  # the destination directory's direct entries match the digest
DIR_DIFFERENT = 2  # it exists and differs (or could not be compared)
DIR_ABSENT = 3  # there is no such directory


@record
class CheckDir:
    """CHECK_DIR: does the destination directory ``path`` hold these direct entries?

    ``count`` entries whose listing digest (``core.tree.dir_digest``) is ``digest``."""

    dir_id: int
    count: int
    digest: bytes
    path: bytes
    _S = struct.Struct(">II16sH")

    def encode(self) -> bytes:
        return self._S.pack(self.dir_id, self.count, self.digest, len(self.path)) + self.path

    @classmethod
    def decode(cls, p) -> "CheckDir":
        _need(p, cls._S.size, "CHECK_DIR")
        dir_id, count, digest, plen = cls._S.unpack_from(p, 0)
        if len(p) != cls._S.size + plen:
            raise RemoteProtocolError("CHECK_DIR length does not match its path")
        return cls(dir_id, count, digest, bytes(p[cls._S.size :]))


@record
class DirState:
    dir_id: int
    state: int
    _S = struct.Struct(">IB")

    def encode(self) -> bytes:
        return self._S.pack(self.dir_id, self.state)

    @classmethod
    def decode(cls, p) -> "DirState":
        if len(p) != cls._S.size:
            raise RemoteProtocolError("DIR_STATE payload must be 5 bytes")
        dir_id, state = cls._S.unpack_from(p, 0)
        if state not in (DIR_SAME, DIR_DIFFERENT, DIR_ABSENT):
            raise RemoteProtocolError(f"unknown DIR_STATE state {state}")
        return cls(dir_id, state)
