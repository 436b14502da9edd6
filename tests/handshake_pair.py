"""Two handshakes wired in memory (bytes only), as the driver ftx/securing.py runs them.

``pump`` moves each side's ``data_to_send`` to the other's ``receive`` until both
are done or one fails, optionally through ``tamper(direction, stream_offset, data)``
and in pieces of ``split`` bytes.  The exception each side raised is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ftx.core.secure import pake, sigma
from ftx.core.secure.handshake import KIND_CODE, KIND_KEYS, ServerHandshake


def counter_rng(seed: int = 1):
    """Deterministic randomness: SHA-256 of (seed, counter), as many bytes as asked."""
    import hashlib

    state = {"n": 0}

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(b"ftx test rng %d %d" % (seed, state["n"])).digest()
            state["n"] += 1
        return out[:n]

    return rng


def key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


CLIENT_KEY, SERVER_KEY, OTHER_KEY = key(1), key(2), key(3)


def accept(_peer):
    return None


def only(public_key):
    want = sigma.raw_public(public_key)

    def policy(peer):
        return None if peer.public == want else f"unknown key {peer.fingerprint}"

    return policy


def sigma_pair(client_key=CLIENT_KEY, server_key=SERVER_KEY, authorize=None, verify=None, seed=1,
               client_ciphers=None, server_ciphers=None, dispatch=True):
    client = sigma.SigmaClient(client_key, verify or only(server_key), ciphers=client_ciphers,
                               rng=counter_rng(seed))

    def factory():
        return sigma.SigmaServer(server_key, authorize or only(client_key), ciphers=server_ciphers,
                                 rng=counter_rng(seed + 1000))

    server = ServerHandshake({KIND_KEYS: factory}) if dispatch else factory()
    return client, server


def pake_pair(client_code=b"7-olive-tiger", server_code=b"7-olive-tiger", server_key=SERVER_KEY, seed=1,
              verify=None, dispatch=True, kinds=(KIND_CODE,)):
    client = pake.PakeClient(client_code, verify_server=verify, rng=counter_rng(seed))

    def factory():
        return pake.PakeServer(server_code, server_key, rng=counter_rng(seed + 1000))

    server = ServerHandshake({k: factory for k in kinds}) if dispatch else factory()
    return client, server


@dataclass
class Outcome:
    client_error: Exception | None = None
    server_error: Exception | None = None
    streams: list = field(default_factory=lambda: [bytearray(), bytearray()])  # c->s, s->c as sent
    leftover: list = field(default_factory=lambda: [b"", b""])  # bytes each side did not consume


def pump(client, server, tamper=None, split=0, trailing=(b"", b""), rounds=50) -> Outcome:
    """Run both sides to the end.  ``trailing[i]`` is appended after side i's handshake bytes
    (as its first sealed bytes would be) to check that ``receive`` stops at the boundary."""
    out = Outcome()
    sides = [client, server]
    inbox = [bytearray(), bytearray()]  # what side i has received and not consumed
    errors = [None, None]
    trailed = [False, False]
    for _ in range(rounds):
        moved = False
        for i, hs in enumerate(sides):
            data = hs.data_to_send()
            if hs.keys_ready and not trailed[i]:
                data += trailing[i]
                trailed[i] = True
            if data:
                moved = True
                start = len(out.streams[i])
                out.streams[i] += data
                if tamper is not None:
                    data = tamper(i, start, bytes(data))
                inbox[1 - i] += data
        for i, hs in enumerate(sides):
            if errors[i] is not None or hs.done or not inbox[i]:
                continue
            pieces = [bytes(inbox[i])] if not split else [bytes(inbox[i][k : k + split])
                                                          for k in range(0, len(inbox[i]), split)]
            inbox[i].clear()
            for n, piece in enumerate(pieces):
                try:
                    used = hs.receive(piece, 0.0)
                except Exception as exc:  # recorded; the test judges its type
                    errors[i] = exc
                    break
                if used < len(piece) or hs.done:
                    inbox[i] += piece[used:] + b"".join(pieces[n + 1 :])
                    break
            moved = True
        if (client.done and server.done) or (errors[0] and errors[1]):
            break
        if not moved:
            break
    # the last words: a refusal queued by the failing side
    for i, hs in enumerate(sides):
        data = hs.data_to_send()
        if data:
            out.streams[i] += data
            if sides[1 - i].done:  # reaches it after its handshake: left over, as sealed bytes are
                inbox[1 - i] += data
            elif errors[1 - i] is None:
                try:
                    sides[1 - i].receive(data if tamper is None else tamper(i, len(out.streams[i]) - len(data), data),
                                         0.0)
                except Exception as exc:
                    errors[1 - i] = exc
    out.client_error, out.server_error = errors
    out.leftover = [bytes(inbox[0]), bytes(inbox[1])]
    return out
