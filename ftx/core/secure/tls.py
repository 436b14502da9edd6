"""TLS 1.3 with X.509 certificates as an ftx handshake (kind 3), sans-I/O.

The TLS byte stream of an ``ssl.SSLObject`` (``SSLContext.wrap_bio`` over two
``ssl.MemoryBIO``) travels in HANDSHAKE frames (protocol.md, "TLS 1.3 (kind
3)").  Python's ``ssl`` has no exporter (RFC 8446 §7.5), so once TLS is up each
side writes one *key message* inside it: 32 random bytes, plus the client's
list of AEADs or the server's choice.  Both traffic secrets come from the two
randoms and the hash of every HANDSHAKE frame::

    C -> S   TLS ClientHello                                  (DATA frames)
    S -> C   TLS ServerHello .. server Finished               (DATA frames)
    C -> S   TLS [Certificate, CertificateVerify] Finished,
             key message {client random, ciphers}             (DATA .., LAST)
    S -> C   key message {server random, cipher}              (DATA .., LAST)

    transcript  = SHA-256(SHA-256(client frames) || SHA-256(server frames))
    prk         = HKDF-Extract(salt=transcript, client random || server random)
    client->server secret = HKDF-Expand-Label(prk, "tls c2s", "", 32)
    server->client secret = HKDF-Expand-Label(prk, "tls s2c", "", 32)

The ``SSLContext`` is built outside the core (``ftx/tlsconfig.py``): this module
opens no file and no socket.  It uses only ``MemoryBIO``/``wrap_bio``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
import struct
from typing import Callable

from cryptography import x509
from cryptography.x509.oid import NameOID

from ...errors import ChecksumMismatch, ErrorCode, FtxError, PeerError, RemoteProtocolError
from ..checksum import frame_checksum
from ..frames import HEADER, HEADER_SIZE, FrameType
from ..messages import ErrorMessage
from . import AuthError, Established, PeerIdentity
from .keys import CIPHER_NAMES, CIPHERS, SECRET_SIZE, expand_label, hkdf_extract, preferred_ciphers

KIND_TLS = 3
HANDSHAKE_FRAME = 0x10  # protocol.md 3.3: the HANDSHAKE frame type
MSG_DATA = 1  # a piece of this side's TLS byte stream; more follows
MSG_LAST = 2  # the last piece: this side's handshake ends with this frame
MAX_PAYLOAD = 16_384  # HANDSHAKE payload limit (kind, type, body)
MAX_BODY = MAX_PAYLOAD - 2
MAX_ERROR_PAYLOAD = 4096  # an ERROR frame during the handshake: code and one line
MAX_HANDSHAKE_BYTES = 256 * 1024  # all HANDSHAKE bytes a peer may send (certificate chains included)
RANDOM_SIZE = 32
MAX_OFFERED = 16  # AEADs a client may list

INSECURE_PEER = "the peer runs --insecure; plaintext needs --insecure on both sides"
WE_REQUIRE_AUTH = "the peer requires authentication; this side runs --insecure"

Authorize = Callable[[PeerIdentity], "str | None"]


def certificate_fingerprint(der: bytes) -> str:
    """``SHA256:`` + unpadded base64 of SHA-256 of the DER certificate (as ssh prints keys)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def certificate_identity(der: bytes) -> PeerIdentity:
    """What a verified certificate proves: its fingerprint, the DER, the subject's CN."""
    name = ""
    try:
        subject = x509.load_der_x509_certificate(der).subject
        cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cns[0].value) if cns else subject.rfc4514_string()
    except ValueError:  # TLS verified it; a subject cryptography cannot parse keeps no name
        pass
    return PeerIdentity("tls", certificate_fingerprint(der), der, name)


def key_schedule(client_frames_hash: bytes, server_frames_hash: bytes, client_random: bytes,
                 server_random: bytes) -> tuple[bytes, bytes, bytes]:
    """(transcript, client->server secret, server->client secret); protocol.md, "TLS 1.3 (kind 3)"."""
    transcript = hashlib.sha256(client_frames_hash + server_frames_hash).digest()
    prk = hkdf_extract(transcript, client_random + server_random)
    return (transcript, expand_label(prk, "tls c2s", b"", SECRET_SIZE),
            expand_label(prk, "tls s2c", b"", SECRET_SIZE))


def encode_handshake(msg_type: int, body: bytes) -> bytes:
    """One HANDSHAKE frame of kind 3 (protocol.md 3.1 header, XXH3 checksum)."""
    payload = bytes((KIND_TLS, msg_type)) + body
    n = len(payload)
    header8 = (HANDSHAKE_FRAME << 56) | n
    return HEADER.pack(HANDSHAKE_FRAME, 0, 0, n, frame_checksum(header8, payload)) + payload


def encode_refusal(reason: str, code: int = ErrorCode.AUTH) -> bytes:
    payload = ErrorMessage(code, reason).encode()
    header8 = (FrameType.ERROR << 56) | len(payload)
    return HEADER.pack(FrameType.ERROR, 0, 0, len(payload), frame_checksum(header8, payload)) + payload


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


def _ssl_reason(exc: ssl.SSLError) -> str:
    """The ssl failure in one line: the verify message where there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return _one_line(f"certificate verify failed: {exc.verify_message}")
    reason = exc.reason or exc.strerror or str(exc)
    return _one_line(str(reason).replace("_", " ").lower())


class _TlsHandshake:
    """What client and server share: frame reading, the TLS pump, the key schedule."""

    _server_side = False
    KIND = KIND_TLS

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None,
                 randbytes: Callable[[int], bytes]) -> None:
        if context.minimum_version < ssl.TLSVersion.TLSv1_3:
            context.minimum_version = ssl.TLSVersion.TLSv1_3  # ftx speaks TLS 1.3 only
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=self._server_side,
                                     server_hostname=server_hostname)
        self._randbytes = randbytes
        self._random = b""
        self._buf = bytearray()  # peer bytes not yet a whole frame
        self._received = 0  # HANDSHAKE bytes the peer sent in all
        self._sent_hash = hashlib.sha256()
        self._recv_hash = hashlib.sha256()
        self._pending = bytearray()  # frames for data_to_send
        self._tls_up = False  # TLS handshake finished on our side
        self._ended = False  # we sent our LAST frame
        self._peer_ended = False  # the peer's LAST frame is consumed
        self._app = bytearray()  # the peer's key message, read from inside TLS
        self._result: Established | None = None
        self._error: FtxError | None = None

    # -- the Handshake protocol

    @property
    def done(self) -> bool:
        return self._peer_ended and self._result is not None

    @property
    def keys_ready(self) -> bool:
        return self._result is not None and not self._pending

    @property
    def result(self) -> Established | None:
        return self._result

    @property
    def error(self) -> FtxError | None:
        return self._error

    def receive_eof(self) -> None:
        """The peer closed its side before its handshake ended."""
        if self._error is None and not self.done:
            self._error = RemoteProtocolError(f"the {self._peer_role} closed the connection during the handshake")
            raise self._error

    def data_to_send(self) -> bytes:
        out = bytes(self._pending)
        self._pending.clear()
        return out

    def receive(self, data: bytes, now: float) -> int:
        if self._error is not None:
            raise self._error
        if self.done:
            return 0
        before = len(self._buf)
        self._buf += data
        pos = 0
        try:
            while not self._peer_ended:
                frame = self._next_frame(pos)
                if frame is None:
                    break
                pos, msg_type, body = frame
                self._on_tls_bytes(msg_type, body)
        except ssl.SSLError as exc:
            self._fail(AuthError(f"TLS: {_ssl_reason(exc)}"))
        except PeerError as exc:
            self._error = exc
            raise
        except FtxError as exc:
            self._fail(exc)
        if self._peer_ended:
            used = pos - before
            self._buf.clear()  # what follows belongs to the driver (the leftover)
            return used
        del self._buf[:pos]
        return len(data)

    # -- frames

    def _next_frame(self, pos: int):
        """(end, type, body) of the next whole frame at ``pos``, or None for "need more"."""
        buf = self._buf
        if len(buf) - pos < HEADER_SIZE:
            return None
        ftype, flags, reserved, length, csum = HEADER.unpack_from(buf, pos)
        if ftype == FrameType.ERROR:
            if length > MAX_ERROR_PAYLOAD:
                raise RemoteProtocolError("ERROR frame too large during the TLS handshake")
        elif ftype == HANDSHAKE_FRAME:
            if length > MAX_PAYLOAD:
                raise RemoteProtocolError(f"HANDSHAKE frame of {length} bytes exceeds {MAX_PAYLOAD}")
        elif ftype == FrameType.HELLO:
            raise _InsecurePeer(INSECURE_PEER)
        else:
            raise RemoteProtocolError(f"frame type 0x{ftype:02x} during the TLS handshake")
        if flags or reserved:
            raise RemoteProtocolError("HANDSHAKE frame with flags or reserved bits set")
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + HEADER_SIZE:end])
        if frame_checksum((ftype << 56) | length, payload) != csum:
            raise ChecksumMismatch("HANDSHAKE frame checksum mismatch")
        if ftype == FrameType.ERROR:
            msg = ErrorMessage.decode(payload)
            reason = _one_line(msg.message)
            if msg.code == ErrorCode.AUTH:
                raise _PeerRefused(f"the {self._peer_role} refused: {reason}")
            raise PeerError(f"the {self._peer_role} failed: {reason}", code=msg.code)
        self._received += HEADER_SIZE + length
        if self._received > MAX_HANDSHAKE_BYTES:
            raise RemoteProtocolError(f"TLS handshake longer than {MAX_HANDSHAKE_BYTES} bytes")
        if length < 3:
            raise RemoteProtocolError("HANDSHAKE frame without a TLS body")
        if payload[0] != KIND_TLS:
            raise RemoteProtocolError(f"HANDSHAKE kind {payload[0]} where TLS (3) was expected")
        if payload[1] not in (MSG_DATA, MSG_LAST):
            raise RemoteProtocolError(f"unknown TLS handshake message type {payload[1]}")
        self._recv_hash.update(buf[pos:end])
        return end, payload[1], payload[2:]

    def _emit_tls(self, last: bool) -> None:
        """Frame what TLS wrote; the final frame is LAST when ``last``."""
        data = self._out.read()
        if not data and not last:
            return
        pieces = [data[i:i + MAX_BODY] for i in range(0, len(data), MAX_BODY)] or [b""]
        for i, piece in enumerate(pieces):
            frame = encode_handshake(MSG_LAST if last and i == len(pieces) - 1 else MSG_DATA, piece)
            self._sent_hash.update(frame)
            self._pending += frame
        if last:
            self._ended = True

    # -- TLS

    def _on_tls_bytes(self, msg_type: int, body: bytes) -> None:
        self._in.write(body)
        if not self._tls_up:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                if msg_type == MSG_LAST:
                    raise AuthError(f"the {self._peer_role} ended its handshake before TLS finished") from None
                self._emit_tls(last=False)
                return
            if self._tls.version() != "TLSv1.3":
                raise AuthError(f"TLS: the {self._peer_role} negotiated {self._tls.version()}, ftx needs TLSv1.3")
            self._tls_up = True
            self._on_tls_up()
        self._read_app()
        if msg_type == MSG_LAST:
            self._peer_ended = True
            self._on_peer_last()

    def _read_app(self) -> None:
        while True:
            try:
                chunk = self._tls.read(4096)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return
            if not chunk:
                return
            self._app += chunk
            if len(self._app) > RANDOM_SIZE + 1 + MAX_OFFERED:
                raise RemoteProtocolError("TLS key message too long")

    def _peer_certificate(self) -> PeerIdentity:
        der = self._tls.getpeercert(binary_form=True)
        return certificate_identity(der) if der else PeerIdentity("tls")

    def _establish(self, peer_random: bytes, cipher: str) -> None:
        c_rand, s_rand = (peer_random, self._random) if self._server_side else (self._random, peer_random)
        c_hash, s_hash = (self._recv_hash, self._sent_hash) if self._server_side else (self._sent_hash,
                                                                                        self._recv_hash)
        transcript, c2s, s2c = key_schedule(c_hash.digest(), s_hash.digest(), c_rand, s_rand)
        send, recv = (s2c, c2s) if self._server_side else (c2s, s2c)
        self._result = Established(
            cipher, send, recv, self._peer_certificate(), transcript,
            {"tls_version": self._tls.version(), "tls_cipher": (self._tls.cipher() or ("",))[0]})

    def _fail(self, exc: FtxError) -> None:
        """Refuse: an ERROR frame replaces whatever we had not sent yet; then raise."""
        self._error = exc
        self._pending.clear()
        if isinstance(exc, _InsecurePeer):
            self._pending += encode_refusal(WE_REQUIRE_AUTH)
        elif not isinstance(exc, _PeerRefused):
            self._pending += encode_refusal(str(exc), exc.code)
        raise exc

    # subclasses
    _peer_role = "peer"

    def _on_tls_up(self) -> None:
        raise NotImplementedError

    def _on_peer_last(self) -> None:
        raise NotImplementedError


class _PeerRefused(AuthError):
    """The peer sent an ERROR AUTH: we do not answer it."""


class _InsecurePeer(AuthError):
    """A plaintext HELLO where the handshake was expected: we tell the peer we require authentication."""


class TlsClientHandshake(_TlsHandshake):
    """The dialing side (the ftx sender): verifies the server's certificate, sends the AEADs it takes.

    ``context`` is a client ``SSLContext`` (``ftx.tlsconfig.client_context``).  With
    ``pinned_fingerprint`` the server certificate's SHA-256 must equal it (in
    addition to whatever the context verifies: a context without a CA trusts the
    pin alone).
    """

    _server_side = False
    _peer_role = "receiver"

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None = None,
                 pinned_fingerprint: str | None = None, ciphers: list[str] | None = None,
                 randbytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        super().__init__(context, server_hostname, randbytes)
        self._pin = pinned_fingerprint
        self._ciphers = list(ciphers) if ciphers else preferred_ciphers(True)
        if not 1 <= len(self._ciphers) <= MAX_OFFERED or any(c not in CIPHERS for c in self._ciphers):
            raise ValueError(f"bad cipher list {self._ciphers!r}")
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:  # e.g. a context that allows no TLS 1.3
            raise AuthError(f"TLS: {_ssl_reason(exc)}") from None
        self._emit_tls(last=False)

    def _on_tls_up(self) -> None:
        if self._pin is not None:
            got = certificate_fingerprint(self._tls.getpeercert(binary_form=True) or b"")
            if got != self._pin:
                raise AuthError(f"TLS: the receiver's certificate is {got}, not the pinned {self._pin}")
        self._random = self._randbytes(RANDOM_SIZE)
        codes = bytes(CIPHERS[c] for c in self._ciphers)
        self._tls.write(self._random + bytes((len(codes),)) + codes)
        self._emit_tls(last=True)

    def _on_peer_last(self) -> None:
        msg = bytes(self._app)
        if len(msg) != RANDOM_SIZE + 1:
            raise RemoteProtocolError(f"TLS key message of {len(msg)} bytes from the receiver, not 33")
        cipher = CIPHER_NAMES.get(msg[RANDOM_SIZE])
        if cipher not in self._ciphers:
            raise AuthError(f"the receiver chose AEAD {msg[RANDOM_SIZE]}, which this side did not offer")
        self._establish(msg[:RANDOM_SIZE], cipher)


class TlsServerHandshake(_TlsHandshake):
    """The listening side (the ftx receiver): presents its certificate, picks the AEAD.

    ``context`` is a server ``SSLContext`` (``ftx.tlsconfig.server_context``);
    client certificates are required when its ``verify_mode`` says so.
    ``authorize(peer)`` decides on the verified client (a ``PeerIdentity`` whose
    fingerprint is empty when the client sent no certificate): None accepts,
    a string refuses with that reason.  ``ciphers`` are the AEADs this side
    takes; the first of the client's list among them wins.
    """

    _server_side = True
    _peer_role = "sender"

    def __init__(self, context: ssl.SSLContext, authorize: Authorize | None = None,
                 ciphers: list[str] | None = None,
                 randbytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        super().__init__(context, None, randbytes)
        self._authorize = authorize
        self._accept = set(ciphers) if ciphers else set(CIPHERS)

    def _on_tls_up(self) -> None:
        pass  # the client's key message follows in its LAST frame

    def _on_peer_last(self) -> None:
        msg = bytes(self._app)
        if len(msg) < RANDOM_SIZE + 2 or len(msg) != RANDOM_SIZE + 1 + msg[RANDOM_SIZE]:
            raise RemoteProtocolError(f"malformed TLS key message of {len(msg)} bytes from the sender")
        offered = [CIPHER_NAMES.get(c) for c in msg[RANDOM_SIZE + 1:]]
        cipher = next((c for c in offered if c in self._accept), None)
        if cipher is None:
            raise AuthError("no AEAD in common with the sender")
        peer = self._peer_certificate()
        if self._authorize is not None:
            why = self._authorize(peer)
            if why is not None:
                raise AuthError(_one_line(why))
        self._random = self._randbytes(RANDOM_SIZE)
        self._tls.write(self._random + bytes((CIPHERS[cipher],)))
        self._emit_tls(last=True)
        self._establish(msg[:RANDOM_SIZE], cipher)


__all__ = ["TlsClientHandshake", "TlsServerHandshake", "certificate_fingerprint", "certificate_identity",
           "encode_handshake", "KIND_TLS"]
