"""A test double of the ``Handshake`` protocol (ftx/core/secure): one HANDSHAKE frame each way.

It proves nothing (the secrets are fixed, derived from a shared ``token``), but
it has the real thing's shape on the wire and in the driver: HANDSHAKE frames
(type 0x10, payload = kind, message type, body), a refusal as a plaintext
ERROR AUTH frame returned by ``data_to_send`` before ``receive`` raises
``AuthError``, ``keys_ready`` once our last bytes were handed out, and
``receive`` consuming nothing past the peer's handshake.  The client speaks
first; the server answers after the client's frame.

Wire (test kind 0x7F)::

    client -> server: 0x7F 0x01 cipher(1) token
    server -> client: 0x7F 0x02 cipher(1)

With ``rounds=3`` (the shape of SIGMA-I: the server seals before it has
checked the client) the token moves to a third message::

    client -> server: 0x7F 0x01 cipher(1)
    server -> client: 0x7F 0x02 cipher(1)          server: keys ready
    client -> server: 0x7F 0x03 token              client: done, keys ready; server checks
"""

from __future__ import annotations

import hashlib

from ftx.core.checksum import frame_checksum
from ftx.core.frames import HEADER, HEADER_SIZE, FrameType, _header8, encode_frame
from ftx.core.messages import ErrorMessage
from ftx.core.secure import AuthError, Established, PeerIdentity
from ftx.core.secure.keys import AES_256_GCM, CIPHER_NAMES, CIPHERS
from ftx.errors import ErrorCode, RemoteProtocolError

HANDSHAKE = 0x10
KIND = 0x7F


def handshake_frame(payload: bytes) -> bytes:
    """A HANDSHAKE frame: the ordinary 16-byte header (XXH3 checksum seeded as for any frame)."""
    csum = frame_checksum(_header8(HANDSHAKE, 0, len(payload)), payload)
    return HEADER.pack(HANDSHAKE, 0, 0, len(payload), csum) + payload


def secrets(token: bytes) -> tuple[bytes, bytes]:
    """(client-to-server, server-to-client) traffic secrets."""
    return hashlib.sha256(b"c2s" + token).digest(), hashlib.sha256(b"s2c" + token).digest()


class FakeHandshake:
    """``FakeHandshake("client")`` / ``FakeHandshake("server")``.

    ``token``: both sides must hold the same one (the server refuses another with
    "unknown test token"); ``cipher``: what the client offers.
    """

    def __init__(self, role: str, token: bytes = b"test", cipher: str = AES_256_GCM,
                 refuse: str | None = None, silent: bool = False, rounds: int = 2) -> None:
        self.role = role
        self.rounds = rounds
        self.token = token
        self.cipher = cipher
        self.refuse = refuse  # server: refuse every client with this reason
        self.silent = silent  # server: never answer (a handshake that times out)
        self._out = bytearray()
        self._done = False
        self._result: Established | None = None
        self._dead: Exception | None = None
        self.received: list[bytes] = []
        if role == "client":
            self._out += handshake_frame(bytes([KIND, 1, CIPHERS[cipher]]) + (token if rounds == 2 else b""))
            if rounds == 2:
                self._result = self._established()

    def _established(self) -> Established:
        c2s, s2c = secrets(self.token)
        send, recv = (c2s, s2c) if self.role == "client" else (s2c, c2s)
        return Established(self.cipher, send, recv, PeerIdentity("key", "SHA256:fake", b"", "fake"))

    @property
    def done(self) -> bool:
        return self._done

    @property
    def keys_ready(self) -> bool:
        return self._result is not None and not self._out

    @property
    def result(self) -> Established | None:
        return self._result

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def receive(self, data: bytes, now: float) -> int:
        if self._dead is not None:
            raise self._dead
        if self._done or len(data) < HEADER_SIZE:
            return 0
        ftype, _, _, length, _ = HEADER.unpack_from(data, 0)
        if ftype != HANDSHAKE:
            return self._fail(RemoteProtocolError(f"expected a HANDSHAKE frame, got type 0x{ftype:02x}"))
        if len(data) < HEADER_SIZE + length:
            return 0
        payload = bytes(data[HEADER_SIZE : HEADER_SIZE + length])
        self.received.append(payload)
        if payload[:1] != bytes([KIND]) or len(payload) < 3:
            return self._fail(AuthError("this receiver expects the test handshake"))
        if self.role == "client":
            if self.rounds == 3:
                self._out += handshake_frame(bytes([KIND, 3]) + self.token)
                self._result = self._established()
            self._done = True
            return HEADER_SIZE + length
        if self.silent:
            return HEADER_SIZE + length
        if self.refuse:
            return self._fail(AuthError(self.refuse))
        if payload[1] == 1:
            token = payload[3:] if self.rounds == 2 else self.token
            if token != self.token:
                return self._fail(AuthError("unknown test token"))
            self.cipher = CIPHER_NAMES[payload[2]]
            self._out += handshake_frame(bytes([KIND, 2, payload[2]]))
            self._result = self._established()
            self._done = self.rounds == 2
        elif payload[1] == 3 and self.rounds == 3 and self._result is not None:
            if payload[2:] != self.token:
                return self._fail(AuthError("unknown test token"))
            self._done = True
        else:
            return self._fail(RemoteProtocolError("unexpected test handshake message"))
        return HEADER_SIZE + length

    def _fail(self, exc: Exception) -> int:
        self._out = bytearray(encode_frame(FrameType.ERROR, ErrorMessage(getattr(exc, "code", ErrorCode.AUTH),
                                                                          str(exc)).encode()))
        self._dead = exc
        raise exc
