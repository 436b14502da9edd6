"""The real handshakes as ``bench_secure.py --handshake`` factories (``FACTORY(role, cipher=...)``).

Both benchmark processes derive the same two fixed Ed25519 identities, and each
side accepts exactly the other's key, so ``keys`` runs the full SIGMA-I
handshake the CLI runs (the file handling of ``ftx/credentials.py`` aside);
``code`` runs SPAKE2 on a fixed code.

    python benchmarks/bench_secure.py --handshake real_handshakes:keys --handshake-latency 50
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ftx.core.secure.sigma import SigmaClient, SigmaServer, raw_public

SENDER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RECEIVER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))


def _only(key):
    want = raw_public(key)
    return lambda peer: None if peer.public == want else f"unknown key {peer.fingerprint}"


def keys(role: str, cipher: str | None = None):
    ciphers = [cipher] if cipher else None
    if role == "client":
        return SigmaClient(SENDER, _only(RECEIVER), ciphers=ciphers)
    return SigmaServer(RECEIVER, _only(SENDER), ciphers=ciphers)


def code(role: str, cipher: str | None = None):
    from ftx.core.secure.pake import PakeClient, PakeServer  # spake2 takes ~50 ms to import: only here,
    # as in the CLI (ftx/security_setup.py), so that ``keys`` runs do not pay it in their timed window

    ciphers = [cipher] if cipher else None
    if role == "client":
        return PakeClient("7-olive-tiger", ciphers=ciphers)
    return PakeServer("7-olive-tiger", RECEIVER, ciphers=ciphers)
