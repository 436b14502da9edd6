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
import ssl
from typing import Callable

from cryptography import x509
from cryptography.x509.oid import NameOID

from ...errors import RemoteProtocolError
from ..frames import HEADER_SIZE
from . import AuthError, Established, PeerIdentity
from .handshake import (
    HANDSHAKE_FRAME,
    INSECURE_PEER,
    KIND_TLS,
    MAX_MESSAGE,
    WE_REQUIRE_AUTH,
    FramedHandshake,
    encode_message,
    printable,
    refusal_frame,
)
from .keys import CIPHER_NAMES, CIPHERS, SECRET_SIZE, expand_label, hkdf_extract, preferred_ciphers

MSG_DATA = 1  # TLS_DATA: a piece of this side's TLS byte stream; more follows
MSG_LAST = 2  # TLS_LAST: the last piece; this side's handshake ends with this frame
MAX_PAYLOAD = MAX_MESSAGE  # HANDSHAKE payload limit (kind, type, body): 16 384
MAX_BODY = MAX_PAYLOAD - 2
MAX_HANDSHAKE_BYTES = 256 * 1024  # all HANDSHAKE bytes a peer may send (certificate chains included)
# A ClientHello may announce up to 128 KiB, and OpenSSL allocates (and zeroes) what the
# header announces before the bytes come: 4 bytes would pin 128 KiB.  Real ones are a few
# KiB (post-quantum key shares included); a receiver refuses one announced larger.
MAX_CLIENT_HELLO = 16 * 1024
_HELLO_HEAD = 9  # TLS record header (5) + handshake message header (4)
RANDOM_SIZE = 32
MAX_OFFERED = 16  # AEADs a client may list

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
        name = printable(str(cns[0].value) if cns else subject.rfc4514_string(), 200)
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
    return encode_message(KIND_TLS, msg_type, body)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


def _ssl_reason(exc: ssl.SSLError) -> str:
    """The ssl failure in one line: the verify message where there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return _one_line(f"certificate verify failed: {exc.verify_message}")
    reason = exc.reason or exc.strerror or str(exc)
    return _one_line(str(reason).replace("_", " ").lower())


class _TlsHandshake(FramedHandshake):
    """What client and server share: the TLS pump over HANDSHAKE frames, the key schedule."""

    KIND = KIND_TLS

    def __init__(self, context: ssl.SSLContext, client: bool, server_hostname: str | None,
                 rng: Callable[[int], bytes] | None) -> None:
        super().__init__(client, rng)
        if context.minimum_version < ssl.TLSVersion.TLSv1_3:
            context.minimum_version = ssl.TLSVersion.TLSv1_3  # ftx speaks TLS 1.3 only
        self._in = ssl.MemoryBIO()
        self._out_bio = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out_bio, server_side=not client,
                                     server_hostname=server_hostname)
        self._random = b""
        self._received = 0  # HANDSHAKE bytes the peer sent in all
        self._sent_hash = hashlib.sha256()
        self._recv_hash = hashlib.sha256()
        self._tls_up = False  # TLS handshake finished on our side
        self._app = bytearray()  # the peer's key message, read from inside TLS
        self._hello_head: bytearray | None = None if client else bytearray()  # server: until checked

    def _on_message(self, mtype: int, body: bytes, payload: bytes) -> None:
        self._received += HEADER_SIZE + len(payload)
        if self._received > MAX_HANDSHAKE_BYTES:
            raise RemoteProtocolError(f"TLS handshake longer than {MAX_HANDSHAKE_BYTES} bytes")
        if mtype not in (MSG_DATA, MSG_LAST):
            raise RemoteProtocolError(f"unknown TLS handshake message type {mtype}")
        if not body:
            raise RemoteProtocolError("HANDSHAKE frame without a TLS body")
        self._recv_hash.update(encode_message(KIND_TLS, mtype, body))  # the frame as it came (checksum verified)
        try:
            self._on_tls_bytes(mtype, body)
        except ssl.SSLError as exc:
            raise AuthError(f"TLS: {_ssl_reason(exc)}") from None

    def _emit_tls(self, last: bool) -> None:
        """Frame what TLS wrote; the final frame is TLS_LAST when ``last``."""
        data = self._out_bio.read()
        pieces = [data[i:i + MAX_BODY] for i in range(0, len(data), MAX_BODY)]
        for i, piece in enumerate(pieces):
            is_last = last and i == len(pieces) - 1
            self._send(MSG_LAST if is_last else MSG_DATA, piece, last=is_last)
            self._sent_hash.update(self._out[-(HEADER_SIZE + 2 + len(piece)):])

    def _check_client_hello(self, body: bytes) -> None:
        """Server: the ClientHello's announced length, before OpenSSL allocates it."""
        head = self._hello_head
        head += body[: _HELLO_HEAD - len(head)]
        if len(head) < _HELLO_HEAD:
            return
        self._hello_head = None
        if head[0] != 22 or head[5] != 1:
            return  # not a handshake record with a ClientHello: OpenSSL refuses it
        if int.from_bytes(head[3:5], "big") < 4:
            raise RemoteProtocolError("TLS ClientHello header split across records")
        announced = int.from_bytes(head[6:9], "big")
        if announced > MAX_CLIENT_HELLO:
            raise RemoteProtocolError(f"TLS ClientHello of {announced} bytes (at most {MAX_CLIENT_HELLO})")

    def _on_tls_bytes(self, mtype: int, body: bytes) -> None:
        if self._hello_head is not None:
            self._check_client_hello(body)
        self._in.write(body)
        if not self._tls_up:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                if mtype == MSG_LAST:
                    raise AuthError(f"the {self.peer_name} ended its handshake before TLS finished") from None
                self._emit_tls(last=False)
                return
            if self._tls.version() != "TLSv1.3":
                raise AuthError(f"TLS: the {self.peer_name} negotiated {self._tls.version()}, ftx needs TLSv1.3")
            self._tls_up = True
            self._on_tls_up()
        self._read_app()
        if mtype == MSG_LAST:
            self._on_peer_last(bytes(self._app))

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

    def _keys(self, peer_random: bytes, cipher: str) -> Established:
        if self.client:
            c_rand, s_rand, c_hash, s_hash = self._random, peer_random, self._sent_hash, self._recv_hash
        else:
            c_rand, s_rand, c_hash, s_hash = peer_random, self._random, self._recv_hash, self._sent_hash
        transcript, c2s, s2c = key_schedule(c_hash.digest(), s_hash.digest(), c_rand, s_rand)
        send, recv = (c2s, s2c) if self.client else (s2c, c2s)
        return Established(cipher, send, recv, self._peer_certificate(), transcript,
                           {"tls_version": self._tls.version(), "tls_cipher": (self._tls.cipher() or ("",))[0]})

    def _on_tls_up(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _on_peer_last(self, msg: bytes) -> None:  # pragma: no cover
        raise NotImplementedError


class TlsClientHandshake(_TlsHandshake):
    """The dialing side (the ftx sender): verifies the server's certificate, sends the AEADs it takes.

    ``context`` is a client ``SSLContext`` (``ftx.tlsconfig.client_context``).  With
    ``pinned_fingerprint`` the server certificate's SHA-256 must equal it (in
    addition to whatever the context verifies: a context without a CA trusts the
    pin alone).
    """

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None = None,
                 pinned_fingerprint: str | None = None, ciphers: list[str] | None = None,
                 rng: Callable[[int], bytes] | None = None) -> None:
        super().__init__(context, True, server_hostname, rng)
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
        self._random = self._rng(RANDOM_SIZE)
        codes = bytes(CIPHERS[c] for c in self._ciphers)
        self._tls.write(self._random + bytes((len(codes),)) + codes)
        self._emit_tls(last=True)

    def _on_peer_last(self, msg: bytes) -> None:
        if len(msg) != RANDOM_SIZE + 1:
            raise RemoteProtocolError(f"TLS key message of {len(msg)} bytes from the receiver, not 33")
        cipher = CIPHER_NAMES.get(msg[RANDOM_SIZE])
        if cipher not in self._ciphers:
            raise AuthError(f"the receiver chose AEAD {msg[RANDOM_SIZE]}, which this side did not offer")
        self._finish(self._keys(msg[:RANDOM_SIZE], cipher))


class TlsServerHandshake(_TlsHandshake):
    """The listening side (the ftx receiver): presents its certificate, picks the AEAD.

    ``context`` is a server ``SSLContext`` (``ftx.tlsconfig.server_context``);
    client certificates are required when its ``verify_mode`` says so.
    ``authorize(peer)`` decides on the verified client (a ``PeerIdentity`` whose
    fingerprint is empty when the client sent no certificate): None accepts,
    a string refuses with that reason.  ``ciphers`` are the AEADs this side
    takes; the first of the client's list among them wins.
    """

    def __init__(self, context: ssl.SSLContext, authorize: Authorize | None = None,
                 ciphers: list[str] | None = None, rng: Callable[[int], bytes] | None = None) -> None:
        super().__init__(context, False, None, rng)
        self._authorize = authorize
        self._accept = set(ciphers) if ciphers else set(CIPHERS)

    def _on_tls_up(self) -> None:
        pass  # the client's key message follows, ending with its TLS_LAST

    def _on_peer_last(self, msg: bytes) -> None:
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
        self._random = self._rng(RANDOM_SIZE)
        self._tls.write(self._random + bytes((CIPHERS[cipher],)))
        self._emit_tls(last=True)
        self._finish(self._keys(msg[:RANDOM_SIZE], cipher))


__all__ = ["TlsClientHandshake", "TlsServerHandshake", "certificate_fingerprint", "certificate_identity",
           "encode_handshake", "key_schedule", "KIND_TLS", "MSG_DATA", "MSG_LAST", "HANDSHAKE_FRAME",
           "INSECURE_PEER", "WE_REQUIRE_AUTH", "refusal_frame"]
