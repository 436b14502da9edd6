"""Security in the sans-I/O core: handshakes and record/datagram protection.

One mechanism serves both transports (protocol.md, "Security"):

* a **handshake** (``Handshake``, below) turns credentials into an
  ``Established``: the peer's proven identity and two traffic secrets.  Three
  kinds exist, all with the same interface: identity keys (SIGMA-I over
  X25519/Ed25519), a pairing code (SPAKE2) and TLS 1.3 (``ssl.MemoryBIO``).
  Handshake bytes travel at the start of the reliable byte stream (TCP, or
  the UDP control stream) before HELLO;
* ``keys`` derives per-direction AEAD keys and nonces from a traffic secret
  and renews them before the AEAD usage limits (RFC 9001 §6.6, RFC 8446 §5.5);
* ``records`` seals the TCP byte stream into records; ``datagrams`` seals UDP
  packets.  Both use nonces built from record/packet numbers.

Nothing here touches a socket, clock or file: bytes and ``now`` in, bytes and
results out.
"""

from __future__ import annotations

from typing import Protocol

from ...errors import ErrorCode, FtxError
from ..record import field, record


class AuthError(FtxError):
    """The peer failed to prove who it is, or a sealed record/datagram did not open."""

    code = ErrorCode.AUTH


@record
class PeerIdentity:
    """What the handshake proved about the peer."""

    kind: str
    """"key" (an Ed25519 identity), "code" (knows the pairing code), "tls" (a certificate chain)."""

    fingerprint: str = ""
    """"SHA256:<base64>" of the peer's public key or certificate; empty in code mode."""

    public: bytes = b""
    """The raw public key (32 bytes Ed25519) or the DER certificate; empty in code mode."""

    name: str = ""
    """Human label: the key's comment, the certificate subject, or "code"."""


@record
class Established:
    """The outcome of a finished handshake, identical in shape for every kind."""

    cipher: str
    """AEAD for records and datagrams: "aes-256-gcm" or "chacha20-poly1305"."""

    send_secret: bytes
    """32-byte traffic secret for what this side sends (``keys.Direction``)."""

    recv_secret: bytes
    """32-byte traffic secret for what this side receives."""

    peer: PeerIdentity
    transcript: bytes = b""
    """Hash of the whole handshake; binds receipts and exporters to this session."""

    extra: dict = field(default_factory=dict)
    """Kind-specific facts for the driver (e.g. the TLS version), never secrets."""


class Handshake(Protocol):
    """A sans-I/O handshake: bytes in, bytes out, then an ``Established`` or an ``AuthError``.

    The driver loop (ftx/securing.py) is, for both transports::

        while True:
            send(hs.data_to_send())              # may be our last flight, queued by receive
            if hs.keys_ready and not installed:  # our last handshake bytes are written
                link.install_keys(hs.result); installed = True
            if hs.done:
                break
            incoming_bytes = await link.recv_raw()   # (b"": hs.receive_eof())
            used = hs.receive(incoming_bytes, now)   # consumes at most the peer's handshake
        leftover = incoming_bytes[used:]            # the first sealed bytes, not handshake
        link.handshake_done(leftover)

    The sender's last flight is queued by the same ``receive`` that makes it
    ``done`` (keys mode): send and install once more after the last ``receive``.
    On ``AuthError``/``RemoteProtocolError`` from ``receive``, send
    ``data_to_send()`` (the refusal ERROR frame; sealed if keys are installed)
    before giving up.  A receiver in keys mode judges the sender's key after its
    own last flight: a sender already ``done`` then meets that refusal as the
    first (sealed) frame after the handshake, an ERROR with code AUTH.

    ``receive`` never consumes a byte past the peer's last handshake message; it
    raises ``AuthError`` (wrong code, unknown key, bad signature, bad
    certificate) or ``RemoteProtocolError`` (malformed message) and is then dead.
    """

    @property
    def done(self) -> bool: ...
    @property
    def keys_ready(self) -> bool:
        """True once ``result`` is known and all our handshake bytes were returned by
        ``data_to_send``: from here everything we send is sealed."""
    @property
    def result(self) -> Established | None: ...
    def receive(self, data: bytes, now: float) -> int: ...
    def data_to_send(self) -> bytes: ...
