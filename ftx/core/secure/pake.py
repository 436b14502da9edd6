"""Code mode: SPAKE2 on a pairing code, explicit key confirmation, the receiver's identity.

Messages (kind 2; protocol.md, "Security")::

    sender (client, SPAKE2 side A)                    receiver (server, side B)
    ClientHello   random, SPAKE2 message A, ciphers  -->
                                                 <--  ServerHello   random, SPAKE2 message B, cipher
    ClientConfirm HMAC(finished key of c_hs, H(CH..SH))  -->
                                                 <--  ServerAuth    {Ed25519 key, signature, Finished}s_hs

The sender confirms first, so a wrong code is found by the receiver, which
counts failed attempts (the CLI burns the code after a few) and says "wrong
code"; the sender then reads "the receiver refused: wrong code".  Either side
tests one guess of the code per handshake it takes part in, as SPAKE2 allows:
a recorded handshake gives nothing to test guesses against offline.  The
receiver's Finished (inside ServerAuth) confirms the key the other way, and its
Ed25519 signature over the transcript gives the sender the receiver's
fingerprint (receipts are signed with that key).

The SPAKE2 shared key is the input keying material of the TLS 1.3-shaped key
schedule in ``handshake.Schedule``.  SPAKE2's key comes from the two fresh
ephemeral scalars (x, y): learning the code later does not reveal it, so
SPAKE2 alone gives forward secrecy (Abdalla & Barbosa, "Perfect Forward
Security of SPAKE2", 2019) and no extra X25519 exchange is needed.
"""

from __future__ import annotations

import re

from spake2 import SPAKE2_A, SPAKE2_B
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ...errors import RemoteProtocolError
from . import AuthError, Established, PeerIdentity
from .handshake import (
    KIND_CODE,
    RANDOM_SIZE,
    FramedHandshake,
    Rng,
    Schedule,
    finished_mac,
    macs_equal,
    need_len,
    sha256,
)
from .keys import CIPHER_NAMES, CIPHERS, preferred_ciphers
from .sigma import (
    AUTH_SIZE,
    key_identity,
    open_auth,
    check_proof,
    make_proof,
    read_client_hello,
)

CLIENT_HELLO = 1
SERVER_HELLO = 2
CLIENT_CONFIRM = 3
SERVER_AUTH = 4
SPAKE_SIZE = 33  # side byte ('A' or 'B') + a 32-byte Ed25519 group element
MAC_SIZE = 32
ID_A = b"ftx/1 pairing code: sender"
ID_B = b"ftx/1 pairing code: receiver"
WRONG_CODE = "wrong code"
CODE_CONTEXT = b"ftx code, server signature"


def normalize_code(code: str | bytes) -> bytes:
    """The bytes both sides feed SPAKE2: lower case, surrounding blanks gone, inner
    runs of blanks, '-', '_' or '.' made one '-' ("7 Olive Tiger" = "7-olive-tiger")."""
    if isinstance(code, bytes):
        code = code.decode("utf-8", "replace")
    return re.sub(r"[\s\-_.]+", "-", code.strip().lower()).encode()


def _spake_finish(spake, message: bytes, who: str) -> bytes:
    try:
        return spake.finish(message)
    except (SPAKEError, ValueError, NotOnCurve):
        raise RemoteProtocolError(f"the {who}'s SPAKE2 message is invalid") from None
    except Exception as exc:  # the package's decoder of 33 peer bytes: whatever else it raises is bad input
        raise RemoteProtocolError(f"the {who}'s SPAKE2 message is invalid ({type(exc).__name__})") from None


class PakeClient(FramedHandshake):
    """The sender's side of code mode (SPAKE2 side A)."""

    KIND = KIND_CODE

    def __init__(self, code: str | bytes, verify_server=None, ciphers: list[str] | None = None,
                 rng: Rng | None = None) -> None:
        super().__init__(client=True, rng=rng)
        self._verify_server = verify_server
        self._ciphers = list(ciphers or preferred_ciphers(True))
        self._spake = SPAKE2_A(normalize_code(code), idA=ID_A, idB=ID_B, entropy_f=self._rng)
        body = (self._rng(RANDOM_SIZE) + self._spake.start() + bytes([len(self._ciphers)])
                + bytes(CIPHERS[c] for c in self._ciphers))
        self._transcript = self._send(CLIENT_HELLO, body)
        self._expect = SERVER_HELLO

    def _on_message(self, mtype: int, body: bytes, payload: bytes) -> None:
        if mtype != self._expect:
            raise RemoteProtocolError(f"code handshake: message type {mtype} where {self._expect} was expected")
        if mtype == SERVER_HELLO:
            need_len(body, RANDOM_SIZE + SPAKE_SIZE + 1, "ServerHello")
            cipher = CIPHER_NAMES.get(body[-1])
            if cipher not in self._ciphers:
                raise RemoteProtocolError(f"the receiver chose cipher {body[-1]}, which was not offered")
            self._cipher = cipher
            shared = _spake_finish(self._spake, body[RANDOM_SIZE : RANDOM_SIZE + SPAKE_SIZE], "receiver")
            self._transcript += payload
            sched = self._schedule = Schedule(shared, sha256(self._transcript))
            mac = finished_mac(sched.client_hs, sha256(self._transcript))
            self._transcript += self._send(CLIENT_CONFIRM, mac, last=True)
            self._client_ap, self._server_ap = sched.traffic(sha256(self._transcript))
            # our keys are ready; the receiver is proven only by its ServerAuth
            self._established(Established(cipher, self._client_ap, self._server_ap, PeerIdentity(kind="code"),
                                          b"", {"kind": "code"}))
            self._expect = SERVER_AUTH
            return
        if mtype == SERVER_AUTH:
            need_len(body, AUTH_SIZE, "ServerAuth")
            sched = self._schedule
            plain = open_auth(self._cipher, sched.server_hs, payload[:2], body, "receiver")
            self._peer_keyed = True  # same transcript, same code: it holds the traffic keys we installed
            head = self._transcript + payload[:2]
            public = check_proof(plain, CODE_CONTEXT, sched.server_hs, head, "receiver",
                                 "the receiver's key confirmation does not verify")
            self._transcript = head + plain
            known = key_identity(public)
            peer = PeerIdentity(kind="code", fingerprint=known.fingerprint, public=public, name="code")
            if self._verify_server is not None:
                refusal = self._verify_server(peer)
                if refusal is not None:
                    raise AuthError(refusal)
            self._expect = -1
            self._finish(Established(self._cipher, self._client_ap, self._server_ap, peer,
                                     sha256(self._transcript), {"kind": "code"}))
            return
        raise RemoteProtocolError(f"code handshake: unexpected message type {mtype}")  # pragma: no cover


class PakeServer(FramedHandshake):
    """The receiver's side of code mode (SPAKE2 side B)."""

    KIND = KIND_CODE

    def __init__(self, code: str | bytes, identity: Ed25519PrivateKey, ciphers: list[str] | None = None,
                 rng: Rng | None = None) -> None:
        super().__init__(client=False, rng=rng)
        self._code = normalize_code(code)
        self._identity = identity
        self._ciphers = list(ciphers or preferred_ciphers(True))
        self._expect = CLIENT_HELLO

    def _on_message(self, mtype: int, body: bytes, payload: bytes) -> None:
        if mtype != self._expect:
            raise RemoteProtocolError(f"code handshake: message type {mtype} where {self._expect} was expected")
        if mtype == CLIENT_HELLO:
            their_spake, cipher = read_client_hello(body, SPAKE_SIZE, self._ciphers)
            self._cipher = cipher
            spake = SPAKE2_B(self._code, idA=ID_A, idB=ID_B, entropy_f=self._rng)
            server_hello = self._send(SERVER_HELLO, self._rng(RANDOM_SIZE) + spake.start() + bytes([CIPHERS[cipher]]))
            shared = _spake_finish(spake, their_spake, "sender")
            self._transcript = payload + server_hello
            self._schedule = Schedule(shared, sha256(self._transcript))
            self._expect = CLIENT_CONFIRM
            return
        if mtype == CLIENT_CONFIRM:
            need_len(body, MAC_SIZE, "ClientConfirm")
            sched = self._schedule
            if not macs_equal(body, finished_mac(sched.client_hs, sha256(self._transcript))):
                raise AuthError(WRONG_CODE)
            self._transcript += payload
            client_ap, server_ap = sched.traffic(sha256(self._transcript))
            header = bytes((self.KIND, SERVER_AUTH))
            sealed, plain = make_proof(self._identity, CODE_CONTEXT, self._cipher, sched.server_hs,
                                       self._transcript, header)
            self._send(SERVER_AUTH, sealed, last=True)
            self._transcript += header + plain
            self._expect = -1
            self._finish(Established(self._cipher, server_ap, client_ap, PeerIdentity(kind="code", name="code"),
                                     sha256(self._transcript), {"kind": "code"}))
            return
        raise RemoteProtocolError(f"code handshake: unexpected message type {mtype}")  # pragma: no cover
