"""HANDSHAKE frames, the shared key schedule, and the receiver's dispatcher by kind.

Every handshake message travels as one ftx frame (protocol.md §3.1) of type
0x10 HANDSHAKE, flags 0, whose payload is::

    kind (u8) | type (u8) | body        payload <= 16 384 bytes

kind 1 = keys (SIGMA-I, ``sigma.py``), 2 = pairing code (SPAKE2, ``pake.py``),
3 = TLS 1.3 (``tls.py``).  A refusal is a plaintext ERROR frame (§5.10) with
code AUTH and a one-line reason.

``FramedHandshake`` is the base of the kinds framed here: it reads frames one
at a time, never past the peer's last handshake message, with every length
bounded before anything is buffered, and turns whatever goes wrong into a typed
error (``AuthError`` or ``RemoteProtocolError``) plus, when the fault is not the
peer's own ERROR, an ERROR frame for the peer in ``data_to_send``.  What else
it recognises, so that the driver can say it in one line:

* a plaintext HELLO where a handshake was expected: the peer runs
  ``--insecure`` (we answer with an ERROR saying that we require authentication);
* the peer's ERROR frame: ``AuthError`` ("the receiver refused: ...") for code
  AUTH, ``PeerError`` for any other code;
* bytes that are no ftx frame at all: "peer does not speak ftx (it sent ...)".

``ServerHandshake(kinds)`` is what a receiver runs: it picks the handshake by
the kind byte of the first message and refuses a kind it does not serve with a
reason naming what it expects.

All randomness comes from ``rng(n) -> bytes`` (injectable, so that protocol.md's
vectors are reproducible); no clock is read (a deadline is the driver's job).
"""

from __future__ import annotations

from _operator import _compare_digest  # hmac.compare_digest without hmac's import of hashlib
from typing import Callable

from ...errors import ChecksumMismatch, ErrorCode, FtxError, PeerError, RemoteProtocolError
from ..checksum import frame_checksum
from ..frames import FRAME_TYPES, HEADER, HEADER_SIZE, FrameType, encode_frame
from ..messages import MAX_TEXT, ErrorMessage
from . import AuthError, Established
from .keys import expand_label, hkdf_extract, hmac_sha256, sha256 as _sha256

HANDSHAKE_FRAME = 0x10
MAX_MESSAGE = 16384  # payload bytes of one HANDSHAKE frame
MAX_ERROR = 4 + MAX_TEXT  # an ERROR frame's payload: code, text length, text
KIND_KEYS = 1
KIND_CODE = 2
KIND_TLS = 3
KIND_NAMES = {KIND_KEYS: "identity keys", KIND_CODE: "a pairing code", KIND_TLS: "TLS"}
RANDOM_SIZE = 32
HASH_SIZE = 32

Rng = Callable[[int], bytes]


def _token_bytes(n: int) -> bytes:
    """The operating system's CSPRNG, imported at the first draw: the core does no I/O of its
    own, and `secrets` imports `random`, ~1 ms of start-up a send does not otherwise need."""
    import secrets

    return secrets.token_bytes(n)


# where a handshake draws its randoms unless given ``rng``: the shell (ftx/security_setup.py) installs
# os.urandom, the same source as secrets.token_bytes, without importing `random`
default_rng: list[Rng] = [_token_bytes]

INSECURE_PEER = "the peer runs --insecure; plaintext needs --insecure on both sides"
WE_REQUIRE_AUTH = "the peer requires authentication; this side runs --insecure"


# -- frames and messages ------------------------------------------------------
def encode_message(kind: int, mtype: int, body: bytes = b"") -> bytes:
    """One handshake message as a whole HANDSHAKE frame."""
    payload = bytes((kind, mtype)) + body
    if len(payload) > MAX_MESSAGE:
        raise ValueError("handshake message too large")
    return encode_frame(HANDSHAKE_FRAME, payload)


def refusal_frame(reason: str, code: ErrorCode = ErrorCode.AUTH) -> bytes:
    """The plaintext ERROR frame a side sends when it refuses the handshake."""
    return encode_frame(FrameType.ERROR, ErrorMessage(code, reason).encode())


def _quote(head: bytes) -> str:
    line = head.split(b"\n", 1)[0].rstrip(b"\r") or head
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in line[:40])
    return f"'{text}'" + ("..." if len(line) > 40 else "")


class FrameReader:
    """Reads one frame at a time from the bytes it is offered, never more than that frame.

    ``need()`` says how many more bytes complete the header or the frame; the
    caller offers at most that many (``add``), so nothing past a frame is ever
    taken.  The header is judged as its bytes arrive: a first byte that is no
    ftx frame type, a HELLO, or a length above the limit fails before the
    payload is buffered.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def need(self) -> int:
        if len(self._buf) < HEADER_SIZE:
            return HEADER_SIZE - len(self._buf)
        return HEADER_SIZE + int.from_bytes(self._buf[4:8], "big") - len(self._buf)

    def add(self, data) -> tuple[int, bytes] | None:
        """Append ``data`` (at most ``need()`` bytes); the (type, payload) once complete."""
        buf = self._buf
        before = len(buf)
        buf += data
        if before < HEADER_SIZE:
            self._sniff()
        if len(buf) < HEADER_SIZE or self.need():
            return None
        ftype, flags, reserved, length, csum = HEADER.unpack_from(buf, 0)
        payload = bytes(buf[HEADER_SIZE:])
        buf.clear()
        if frame_checksum((ftype << 56) | (flags << 48) | (reserved << 32) | length, payload) != csum:
            raise ChecksumMismatch(f"handshake frame checksum mismatch (type 0x{ftype:02x})")
        return ftype, payload

    def _sniff(self) -> None:
        buf = self._buf
        if not buf:
            return
        ftype = buf[0]
        if ftype not in FRAME_TYPES and ftype != HANDSHAKE_FRAME:
            raise RemoteProtocolError(f"peer does not speak ftx (it sent {_quote(bytes(buf))})")
        if any(buf[1:4]):
            raise RemoteProtocolError(f"peer does not speak ftx (it sent {_quote(bytes(buf))})")
        if len(buf) < HEADER_SIZE:
            return
        if ftype == FrameType.HELLO:
            raise AuthError(INSECURE_PEER)
        length = int.from_bytes(buf[4:8], "big")
        if ftype == HANDSHAKE_FRAME:
            if not 2 <= length <= MAX_MESSAGE:
                raise RemoteProtocolError(f"handshake message of {length} bytes (at most {MAX_MESSAGE})")
        elif ftype == FrameType.ERROR:
            if length > MAX_ERROR:
                raise RemoteProtocolError(f"ERROR frame of {length} bytes during the handshake")
        else:
            raise RemoteProtocolError(f"unexpected frame type 0x{ftype:02x} during the handshake")


MAX_SHOWN = 300  # characters of a peer's text we put in an error or a log line


def printable(text, limit: int | None = MAX_SHOWN, backslash: bool = False) -> str:
    """A peer's or the file system's text made safe to print on one line -- the one function
    every name, reason and message passes through before a terminal or a log sees it.

    Every character that is not printable (line breaks, terminal escape sequences, other C0/C1
    controls, bidi overrides and other format characters) becomes a visible escape (``\\n``,
    ``\\x1b``, ``\\u202e``); ``text`` may be bytes (a wire or file-system name), and a byte
    that is not UTF-8 (also a surrogate escape from ``os.fsdecode``) shows as ``\\xNN``.  With
    ``backslash`` a backslash is escaped too (unambiguous paths).  At most ``limit`` characters
    (None: no limit), then "..."."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "surrogateescape")
    out = []
    size = 0
    for ch in text:
        n = ord(ch)
        if ch.isprintable() and not (backslash and ch == "\\"):
            piece = ch
        elif ch in "\n\r\t":
            piece = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch]
        elif 0xDC80 <= n <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            piece = f"\\x{n - 0xDC00:02x}"
        elif n < 0x100:
            piece = f"\\x{n:02x}"
        else:
            piece = f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
        size += len(piece)
        if limit is not None and size > limit:
            out.append("...")
            break
        out.append(piece)
    return "".join(out)


NOT_AUTHENTICATED = (" (not authenticated: it came in plaintext before the sealed channel; "
                     "anyone on the path could have sent it)")


def unauthenticated_reason(text: str, limit: int = MAX_SHOWN) -> str:
    """A peer's reason that reached us unsealed after our keys: shown inert, and marked."""
    return printable(text, limit) + NOT_AUTHENTICATED


def split_message(payload: bytes) -> tuple[int, int, bytes]:
    """kind, type and body of a HANDSHAKE payload (the reader guarantees >= 2 bytes)."""
    return payload[0], payload[1], payload[2:]


def peer_error(payload: bytes, peer: str) -> FtxError:
    """The exception a peer's ERROR frame stands for."""
    err = ErrorMessage.decode(payload)
    reason = printable(err.message) or "no reason given"  # the peer is not proven: its text is shown inert
    if err.code == ErrorCode.AUTH:
        return AuthError(f"the {peer} refused: {reason}")
    return PeerError(f"{peer} error: {reason}", err.code if isinstance(err.code, ErrorCode) else None)


# -- the key schedule (protocol.md, "Security"; RFC 8446 §7.1 with ftx labels) --
# SHA-256 and HMAC are cryptography's (keys.sha256, keys.hmac_sha256), which every secure mode has
# loaded anyway, not hashlib's: a second OpenSSL library would cost every send ~1 ms of start-up
def sha256(data: bytes) -> bytes:
    return _sha256(data)


EMPTY_HASH = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")  # sha256(b"")


def derive_secret(secret: bytes, label: str, transcript_hash: bytes) -> bytes:
    """Derive-Secret(Secret, Label, Messages) = HKDF-Expand-Label(Secret, Label, Hash(Messages), 32)."""
    return expand_label(secret, label, transcript_hash, 32)


def extract(salt: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(salt, ikm)


def finished_mac(base_key: bytes, transcript_hash: bytes) -> bytes:
    """HMAC-SHA256(HKDF-Expand-Label(base_key, "finished", "", 32), transcript hash)."""
    return hmac_sha256(expand_label(base_key, "finished", b"", 32), transcript_hash)


def macs_equal(a: bytes, b: bytes) -> bool:
    return _compare_digest(a, b)


class Schedule:
    """TLS 1.3's key schedule (RFC 8446 §7.1) over one shared secret ``ikm``.

    early = Extract(0, 0^32); hs = Extract(Derive(early, "derived", ""), ikm);
    c/s hs traffic = Derive(hs, "c hs traffic"/"s hs traffic", H(CH..SH));
    master = Extract(Derive(hs, "derived", ""), 0^32);
    c/s ap traffic = Derive(master, "c ap traffic"/"s ap traffic", H(CH..server Finished)).
    """

    def __init__(self, ikm: bytes, hello_hash: bytes) -> None:
        early = extract(bytes(32), bytes(32))
        hs = extract(derive_secret(early, "derived", EMPTY_HASH), ikm)
        self.client_hs = derive_secret(hs, "c hs traffic", hello_hash)
        self.server_hs = derive_secret(hs, "s hs traffic", hello_hash)
        self._master = extract(derive_secret(hs, "derived", EMPTY_HASH), bytes(32))

    def traffic(self, transcript_hash: bytes) -> tuple[bytes, bytes]:
        """(client, server) application traffic secrets."""
        return (derive_secret(self._master, "c ap traffic", transcript_hash),
                derive_secret(self._master, "s ap traffic", transcript_hash))


def need_len(body: bytes, size: int, what: str) -> None:
    if len(body) != size:
        raise RemoteProtocolError(f"{what} of {len(body)} bytes, expected {size}")


# -- the shared driver side of every framed handshake ----------------------------
class FramedHandshake:
    """Base of the framed handshakes: frames in, messages to ``_on_message``, errors typed.

    Subclasses set ``KIND`` and implement ``_on_message(mtype, body, payload)``;
    they queue output with ``_send``, publish keys with ``_established`` (once
    their last message is queued: ``keys_ready`` follows as soon as the driver has
    taken it) and finish with ``_finish`` (the peer's last message verified).
    """

    KIND = 0

    def __init__(self, client: bool, rng: Rng | None = None) -> None:
        self.client = client
        self.peer_name = "receiver" if client else "sender"
        self._rng = rng or default_rng[0]
        self._reader = FrameReader()
        self._out = bytearray()
        self._result: Established | None = None
        self._last_queued = False
        self._done = False
        self._error: FtxError | None = None
        self._peer_keyed = False  # the peer's last message opened under the handshake keys

    # -- the Handshake interface
    @property
    def done(self) -> bool:
        return self._done and self._error is None

    @property
    def keys_ready(self) -> bool:
        return self._result is not None and self._last_queued and not self._out and self._error is None

    @property
    def result(self) -> Established | None:
        return self._result

    @property
    def error(self) -> FtxError | None:
        return self._error

    @property
    def refusal_sealable(self) -> bool:
        """True when we refuse after the peer's last message opened under the handshake keys:
        the peer then provably holds the traffic keys we installed, so the driver seals the
        refusal (the peer knows it is ours) instead of sending it in plaintext."""
        return self._peer_keyed

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive(self, data, now: float) -> int:
        """Consume handshake bytes from ``data``; the count used (never past the peer's
        last handshake message).  Raises the typed error that ended the handshake."""
        if self._error is not None:
            raise self._error
        data = memoryview(bytes(data))
        pos = 0
        try:
            while pos < len(data) and not self._done:
                take = min(self._reader.need(), len(data) - pos)
                frame = self._reader.add(data[pos : pos + take])
                pos += take
                if frame is not None:
                    self._on_frame(*frame)
        except (AuthError, RemoteProtocolError, PeerError) as exc:
            self._fail(exc)
        return pos

    def receive_eof(self) -> None:
        """The peer closed its side before the handshake finished."""
        if self._error is None and not self._done:
            self._error = RemoteProtocolError(f"the {self.peer_name} closed the connection during the handshake")
            raise self._error

    # -- for subclasses
    def _on_frame(self, ftype: int, payload: bytes) -> None:
        if ftype == FrameType.ERROR:
            raise _FromPeer(peer_error(payload, self.peer_name))
        kind, mtype, body = split_message(payload)
        if kind != self.KIND:
            raise RemoteProtocolError(
                f"handshake message of kind {kind} in a {KIND_NAMES.get(self.KIND, self.KIND)} handshake")
        self._on_message(mtype, body, payload)

    def _on_message(self, mtype: int, body: bytes, payload: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def _send(self, mtype: int, body: bytes, last: bool = False) -> bytes:
        """Queue one message; its payload (kind, type, body) for the transcript."""
        frame = encode_message(self.KIND, mtype, body)
        self._out += frame
        self._last_queued = self._last_queued or last
        return frame[HEADER_SIZE:]

    def _established(self, result: Established) -> None:
        self._result = result

    def _finish(self, result: Established) -> None:
        self._result = result
        self._done = True

    def _fail(self, exc: FtxError) -> None:
        if isinstance(exc, _FromPeer):
            exc = exc.error
        else:
            reason = WE_REQUIRE_AUTH if str(exc) == INSECURE_PEER else str(exc)
            self._out[:] = refusal_frame(reason, ErrorCode.AUTH if isinstance(exc, AuthError) else exc.code)
        self._error = exc
        self._result = None
        raise exc


class _FromPeer(RemoteProtocolError):
    """Carries the peer's own ERROR out of the frame loop (nothing is sent back)."""

    def __init__(self, error: FtxError) -> None:
        super().__init__(str(error))
        self.error = error


# -- the receiver: pick the handshake by the first message's kind -----------------
class ServerHandshake:
    """A receiver's handshake: the kind of the peer's first message picks which one runs.

    ``kinds`` maps a kind byte to a factory of a server-side handshake with
    the ``FramedHandshake`` interface.  A kind not in ``kinds`` is refused with a
    reason naming what this receiver expects.  Until the first message is in,
    the dispatcher holds at most one frame (<= 16 400 bytes).
    """

    def __init__(self, kinds: dict[int, Callable[[], FramedHandshake]]) -> None:
        if not kinds:
            raise ValueError("a receiver serves at least one handshake kind")
        self.kinds = dict(kinds)
        self.inner: FramedHandshake | None = None
        self._reader = FrameReader()
        self._first = bytearray()
        self._out = b""
        self._error: FtxError | None = None

    @property
    def done(self) -> bool:
        return self.inner is not None and self.inner.done

    @property
    def keys_ready(self) -> bool:
        return self.inner is not None and self.inner.keys_ready

    @property
    def result(self) -> Established | None:
        return self.inner.result if self.inner is not None else None

    @property
    def kind(self) -> int | None:
        return self.inner.KIND if self.inner is not None else None

    @property
    def refusal_sealable(self) -> bool:
        return self.inner is not None and self.inner.refusal_sealable

    def data_to_send(self) -> bytes:
        if self.inner is not None:
            return self.inner.data_to_send()
        out, self._out = self._out, b""
        return out

    def receive_eof(self) -> None:
        if self.inner is not None:
            return self.inner.receive_eof()
        if self._error is None:
            self._error = RemoteProtocolError("the sender closed the connection during the handshake")
            raise self._error

    def receive(self, data, now: float) -> int:
        if self.inner is not None:
            return self.inner.receive(data, now)
        if self._error is not None:
            raise self._error
        data = bytes(data)
        try:
            take, frame = 0, None
            while frame is None and take < len(data):  # header, then payload: one frame at most
                n = min(self._reader.need(), len(data) - take)
                frame = self._reader.add(data[take : take + n])
                self._first += data[take : take + n]
                take += n
            if frame is None:
                return take
            ftype, payload = frame
            if ftype == FrameType.ERROR:
                raise _FromPeer(peer_error(payload, "sender"))
            kind = payload[0]
            factory = self.kinds.get(kind)
            if factory is None:
                raise AuthError(self._expects(kind))
        except (AuthError, RemoteProtocolError) as exc:
            if isinstance(exc, _FromPeer):
                exc = exc.error
            else:
                reason = WE_REQUIRE_AUTH if str(exc) == INSECURE_PEER else str(exc)
                self._out = refusal_frame(reason, ErrorCode.AUTH if isinstance(exc, AuthError) else exc.code)
            self._error = exc
            raise exc from None
        self.inner = factory()
        first = bytes(self._first)
        self._first.clear()
        used = self.inner.receive(first + data[take:], now)
        return used - len(first) + take

    def _expects(self, kind: int) -> str:
        offered = KIND_NAMES.get(kind, f"an unknown handshake (kind {kind})")
        wanted = " or ".join(KIND_NAMES.get(k, f"kind {k}") for k in sorted(self.kinds))
        hint = {KIND_CODE: "; give the sender the code (ftx send --code)",
                KIND_KEYS: "; run the sender without --code",
                KIND_TLS: "; give the sender --tls-ca"}
        only = sorted(self.kinds)[0] if len(self.kinds) == 1 else None
        return f"this receiver expects {wanted}, the sender offered {offered}" + hint.get(only, "")
