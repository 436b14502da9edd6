"""Keys mode: SIGMA-I over X25519 and Ed25519, shaped like TLS 1.3 (RFC 8446 §4.4, §7.1).

Messages (kind 1; protocol.md, "Security", has them byte by byte)::

    sender (client)                                   receiver (server)
    ClientHello   random, X25519 share, ciphers  -->
                                                 <--  ServerHello  random, X25519 share, cipher
                                                 <--  ServerAuth   {Ed25519 key, signature, Finished}s_hs
    ClientAuth    {Ed25519 key, signature, Finished}c_hs  -->

``{...}k`` is AEAD-sealed with the handshake traffic key ``k`` (record number 0,
the two message header bytes as associated data): both identities are hidden
from a passive observer, and the sender's from an active one too, since it is
revealed only to a receiver that proved its own (SIGMA-I).  Each signature
covers the transcript hash through the signer's public key (both ephemeral
shares included); each Finished is an HMAC over the transcript through the
signature, under a key from the shared X25519 secret.  The traffic secrets come
from the transcript through the receiver's Finished.  Fresh ephemerals each
session give forward secrecy.

Policy stays outside the core: the receiver's ``authorize(PeerIdentity)`` and
the sender's ``verify_server(PeerIdentity)`` return None to accept or a
one-line refusal.
"""

from __future__ import annotations

import base64
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

# The public constructors import cryptography's OpenSSL backend module only to ask whether X25519
# is supported (about 9 ms of every keys-mode start-up); the Rust binding behind them makes the same
# key objects without it.  A cryptography that moves the binding gets the public constructors.
try:
    from cryptography.hazmat.bindings._rust import openssl as _rust_openssl  # (an attribute, not a module)

    _x25519_private, _x25519_public = _rust_openssl.x25519.from_private_bytes, _rust_openssl.x25519.from_public_bytes
except (ImportError, AttributeError):
    _x25519_private, _x25519_public = X25519PrivateKey.from_private_bytes, X25519PublicKey.from_public_bytes

from ...errors import RemoteProtocolError
from . import AuthError, Established, PeerIdentity
from .handshake import (
    KIND_KEYS,
    RANDOM_SIZE,
    FramedHandshake,
    Rng,
    Schedule,
    finished_mac,
    macs_equal,
    need_len,
    sha256,
)
from .keys import CIPHER_NAMES, CIPHERS, TAG_SIZE, Direction, preferred_ciphers

CLIENT_HELLO = 1
SERVER_HELLO = 2
SERVER_AUTH = 3
CLIENT_AUTH = 4
SHARE_SIZE = 32
PUBLIC_SIZE = 32
SIGNATURE_SIZE = 64
MAC_SIZE = 32
AUTH_PLAIN = PUBLIC_SIZE + SIGNATURE_SIZE + MAC_SIZE  # 128
AUTH_SIZE = AUTH_PLAIN + TAG_SIZE  # 144
MAX_CIPHERS = 16
SERVER_CONTEXT = b"ftx keys, server signature"
CLIENT_CONTEXT = b"ftx keys, client signature"

Policy = Callable[[PeerIdentity], "str | None"]


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    if hasattr(key, "sign"):  # a private key (or a signer in its place)
        key = key.public_key()
    return key.public_bytes_raw()


def fingerprint(public: bytes) -> str:
    """"SHA256:" + unpadded base64 of SHA-256 of the raw public key (as ssh prints it)."""
    return "SHA256:" + base64.b64encode(sha256(public)).decode().rstrip("=")


def key_identity(public: bytes) -> PeerIdentity:
    return PeerIdentity(kind="key", fingerprint=fingerprint(public), public=public)


def signed_content(context: bytes, transcript_hash: bytes) -> bytes:
    """What a signature covers (RFC 8446 §4.4.3): 64 spaces, context, 0, transcript hash."""
    return b" " * 64 + context + b"\0" + transcript_hash


def verify_signature(public: bytes, signature: bytes, content: bytes, who: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, content)
    except (InvalidSignature, ValueError):
        raise AuthError(f"the {who}'s identity signature does not verify") from None


def x25519_shared(private: X25519PrivateKey, share: bytes, who: str) -> bytes:
    try:
        return private.exchange(_x25519_public(share))
    except ValueError:  # a low-order point gives the all-zero secret, which OpenSSL refuses
        raise AuthError(f"the {who}'s key share is invalid") from None


def seal_auth(cipher: str, secret: bytes, header: bytes, plain: bytes) -> bytes:
    return Direction(cipher, secret).seal(0, plain, header)


def open_auth(cipher: str, secret: bytes, header: bytes, body: bytes, who: str) -> bytes:
    plain = Direction(cipher, secret).open(0, body, header)
    if plain is None:
        raise AuthError(f"the {who}'s handshake did not decrypt (tampered, or not the same key exchange)")
    return plain


def read_client_hello(body: bytes, share_size: int, ours: list[str]) -> tuple[bytes, str]:
    """A ClientHello's body (random, key share, ciphers offered): the share and the cipher we pick."""
    fixed = RANDOM_SIZE + share_size + 1
    if len(body) < fixed or not 1 <= body[fixed - 1] <= MAX_CIPHERS:
        raise RemoteProtocolError("ClientHello malformed")
    need_len(body, fixed + body[fixed - 1], "ClientHello")
    offered = [CIPHER_NAMES.get(c) for c in body[fixed:]]
    cipher = next((c for c in offered if c in ours), None)
    if cipher is None:
        raise AuthError(f"no common cipher (this receiver takes {', '.join(ours)})")
    return body[RANDOM_SIZE : RANDOM_SIZE + share_size], cipher


def make_proof(identity: Ed25519PrivateKey, context: bytes, cipher: str, hs_key: bytes, transcript: bytes,
               header: bytes) -> tuple[bytes, bytes]:
    """ServerAuth or ClientAuth: our public key, its signature over the transcript and the
    Finished MAC; (sealed body, plaintext) -- the plaintext continues the transcript."""
    public = raw_public(identity)
    sig = identity.sign(signed_content(context, sha256(transcript + header + public)))
    mac = finished_mac(hs_key, sha256(transcript + header + public + sig))
    plain = public + sig + mac
    return seal_auth(cipher, hs_key, header, plain), plain


def check_proof(plain: bytes, context: bytes, hs_key: bytes, head: bytes, who: str, failed: str) -> bytes:
    """The peer's opened ServerAuth/ClientAuth against the transcript ``head`` (through its header):
    its signature and Finished MAC verify, or ``AuthError``; return its public key."""
    public, sig, mac = plain[:32], plain[32:96], plain[96:]
    verify_signature(public, sig, signed_content(context, sha256(head + public)), who)
    if not macs_equal(mac, finished_mac(hs_key, sha256(head + public + sig))):
        raise AuthError(failed)
    return public


class SigmaClient(FramedHandshake):
    """The sender's side of keys mode."""

    KIND = KIND_KEYS

    def __init__(self, identity: Ed25519PrivateKey, verify_server: Policy,
                 ciphers: list[str] | None = None, rng: Rng | None = None) -> None:
        super().__init__(client=True, rng=rng)
        self._identity = identity
        self._verify_server = verify_server
        self._ciphers = list(ciphers or preferred_ciphers(True))
        self._random = self._rng(RANDOM_SIZE)
        self._eph = _x25519_private(self._rng(SHARE_SIZE))
        share = self._eph.public_key().public_bytes_raw()
        body = self._random + share + bytes([len(self._ciphers)]) + bytes(CIPHERS[c] for c in self._ciphers)
        self._transcript = self._send(CLIENT_HELLO, body)
        self._expect = SERVER_HELLO

    def _on_message(self, mtype: int, body: bytes, payload: bytes) -> None:
        if mtype != self._expect:
            raise RemoteProtocolError(f"keys handshake: message type {mtype} where {self._expect} was expected")
        if mtype == SERVER_HELLO:
            need_len(body, RANDOM_SIZE + SHARE_SIZE + 1, "ServerHello")
            share, code = body[RANDOM_SIZE : RANDOM_SIZE + SHARE_SIZE], body[-1]
            cipher = CIPHER_NAMES.get(code)
            if cipher not in self._ciphers:
                raise RemoteProtocolError(f"the receiver chose cipher {code}, which was not offered")
            self._cipher = cipher
            self._transcript += payload
            secret = x25519_shared(self._eph, share, "receiver")
            self._schedule = Schedule(secret, sha256(self._transcript))
            self._expect = SERVER_AUTH
            return
        if mtype == SERVER_AUTH:
            need_len(body, AUTH_SIZE, "ServerAuth")
            sched = self._schedule
            plain = open_auth(self._cipher, sched.server_hs, payload[:2], body, "receiver")
            head = self._transcript + payload[:2]
            public = check_proof(plain, SERVER_CONTEXT, sched.server_hs, head, "receiver",
                                 "the receiver's Finished does not verify")
            self._transcript = head + plain
            peer = key_identity(public)
            refusal = self._verify_server(peer)
            if refusal is not None:
                raise AuthError(refusal)
            client_ap, server_ap = sched.traffic(sha256(self._transcript))
            header = bytes((self.KIND, CLIENT_AUTH))
            sealed, plain = make_proof(self._identity, CLIENT_CONTEXT, self._cipher, sched.client_hs,
                                       self._transcript, header)
            self._send(CLIENT_AUTH, sealed, last=True)
            self._transcript += header + plain
            self._expect = -1
            self._finish(Established(self._cipher, client_ap, server_ap, peer, sha256(self._transcript),
                                     {"kind": "keys"}))
            return
        raise RemoteProtocolError(f"keys handshake: unexpected message type {mtype}")  # pragma: no cover


class SigmaServer(FramedHandshake):
    """The receiver's side of keys mode."""

    KIND = KIND_KEYS

    def __init__(self, identity: Ed25519PrivateKey, authorize: Policy,
                 ciphers: list[str] | None = None, rng: Rng | None = None) -> None:
        super().__init__(client=False, rng=rng)
        self._identity = identity
        self._authorize = authorize
        self._ciphers = list(ciphers or preferred_ciphers(True))
        self._expect = CLIENT_HELLO

    def _on_message(self, mtype: int, body: bytes, payload: bytes) -> None:
        if mtype != self._expect:
            raise RemoteProtocolError(f"keys handshake: message type {mtype} where {self._expect} was expected")
        if mtype == CLIENT_HELLO:
            share, cipher = read_client_hello(body, SHARE_SIZE, self._ciphers)
            self._cipher = cipher
            random = self._rng(RANDOM_SIZE)
            eph = _x25519_private(self._rng(SHARE_SIZE))
            secret = x25519_shared(eph, share, "sender")
            mine = eph.public_key().public_bytes_raw()
            server_hello = self._send(SERVER_HELLO, random + mine + bytes([CIPHERS[cipher]]))
            transcript = payload + server_hello
            sched = self._schedule = Schedule(secret, sha256(transcript))
            header = bytes((self.KIND, SERVER_AUTH))
            sealed, plain = make_proof(self._identity, SERVER_CONTEXT, cipher, sched.server_hs, transcript, header)
            self._send(SERVER_AUTH, sealed, last=True)
            self._transcript = transcript + header + plain
            self._client_ap, self._server_ap = sched.traffic(sha256(self._transcript))
            # keys for what we send from now on; the peer is not proven yet (result.peer is empty)
            self._established(Established(cipher, self._server_ap, self._client_ap, PeerIdentity(kind="key"),
                                          b"", {"kind": "keys"}))
            self._expect = CLIENT_AUTH
            return
        if mtype == CLIENT_AUTH:
            need_len(body, AUTH_SIZE, "ClientAuth")
            sched = self._schedule
            plain = open_auth(self._cipher, sched.client_hs, payload[:2], body, "sender")
            self._peer_keyed = True  # its transcript is ours: it holds the traffic keys we installed
            head = self._transcript + payload[:2]
            public = check_proof(plain, CLIENT_CONTEXT, sched.client_hs, head, "sender",
                                 "the sender's Finished does not verify")
            self._transcript = head + plain
            peer = key_identity(public)
            refusal = self._authorize(peer)
            if refusal is not None:
                raise AuthError(refusal)
            self._expect = -1
            self._finish(Established(self._cipher, self._server_ap, self._client_ap, peer,
                                     sha256(self._transcript), {"kind": "keys"}))
            return
        raise RemoteProtocolError(f"keys handshake: unexpected message type {mtype}")  # pragma: no cover
