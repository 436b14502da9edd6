"""The handshake test vectors of protocol.md ("Security", test vectors), rebuilt from fixed inputs.

Inputs: the sender's Ed25519 identity is the seed of 32 bytes 0x01, the receiver's 32 bytes
0x02; randomness call k (k = 0, 1, ...) of the sender returns bytes all equal to 0x10 + k, of
the receiver 0x20 + k; the sender offers AES-256-GCM then ChaCha20-Poly1305; the pairing code
is "7-olive-tiger".  ``python -m tests.handshake_vectors`` prints the blocks for protocol.md.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from spake2 import SPAKE2_A

from ftx.core.secure import pake, sigma
from ftx.core.secure.keys import AES_256_GCM, CHACHA20_POLY1305, Direction

SENDER_KEY = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
RECEIVER_KEY = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
CODE = "7-olive-tiger"
CIPHERS = [AES_256_GCM, CHACHA20_POLY1305]


def vector_rng(base: int):
    calls = [0]

    def rng(n: int) -> bytes:
        value = base + calls[0]
        calls[0] += 1
        return bytes([value]) * n

    return rng


def _frames(stream: bytes) -> list[bytes]:
    out, k = [], 0
    while k < len(stream):
        n = 16 + int.from_bytes(stream[k + 4 : k + 8], "big")
        out.append(stream[k : k + n])
        k += n
    return out


def _run(client, server) -> tuple[list[bytes], list[bytes]]:
    """Messages in the order sent: (frames sender->receiver, frames receiver->sender)."""
    c2s, s2c = [], []
    out = client.data_to_send()
    c2s += _frames(out)
    server.receive(out, 0.0)
    out = server.data_to_send()
    s2c += _frames(out)
    client.receive(out, 0.0)
    out = client.data_to_send()
    c2s += _frames(out)
    server.receive(out, 0.0)
    out = server.data_to_send()
    if out:
        s2c += _frames(out)
        client.receive(out, 0.0)
    assert client.done and server.done
    return c2s, s2c


def vectors() -> dict[str, bytes]:
    client = sigma.SigmaClient(SENDER_KEY, lambda p: None, CIPHERS, vector_rng(0x10))
    server = sigma.SigmaServer(RECEIVER_KEY, lambda p: None, CIPHERS, vector_rng(0x20))
    (ch, ca), (sh, sa) = _run(client, server)
    est = client.result
    v = {
        "**Keys ClientHello**": ch, "**Keys ServerHello**": sh, "**Keys ServerAuth**": sa, "**Keys ClientAuth**": ca,
        "keys c ap traffic": est.send_secret, "keys s ap traffic": est.recv_secret,
        "keys transcript": est.transcript,
        "keys c hs traffic": client._schedule.client_hs, "keys s hs traffic": client._schedule.server_hs,
    }
    client = pake.PakeClient(CODE, None, CIPHERS, vector_rng(0x10))
    server = pake.PakeServer(CODE, RECEIVER_KEY, CIPHERS, vector_rng(0x20))
    (ch, cc), (sh, sa) = _run(client, server)
    est = client.result
    v |= {
        "**Code ClientHello**": ch, "**Code ServerHello**": sh, "**Code ClientConfirm**": cc,
        "**Code ServerAuth**": sa,
        "code c ap traffic": est.send_secret, "code s ap traffic": est.recv_secret,
        "code transcript": est.transcript,
        "code c hs traffic": client._schedule.client_hs, "code s hs traffic": client._schedule.server_hs,
    }
    # the shared secrets the schedules start from
    share = v["**Keys ServerHello**"][18 + 32 : 18 + 64]
    v["keys x25519 shared"] = X25519PrivateKey.from_private_bytes(bytes([0x11]) * 32).exchange(
        X25519PublicKey.from_public_bytes(share))
    spake = SPAKE2_A(pake.normalize_code(CODE), idA=pake.ID_A, idB=pake.ID_B, entropy_f=lambda n: bytes([0x11]) * n)
    spake.start()
    v["code spake2 key"] = spake.finish(v["**Code ServerHello**"][18 + 32 : 18 + 32 + 33])
    d = Direction(AES_256_GCM, v["keys c ap traffic"])
    v["keys c ap key"], v["keys c ap iv"] = d.key, d.iv
    return v


def dump(data: bytes) -> str:
    return "\n".join(f"{k:04x}  " + " ".join(f"{b:02x}" for b in data[k : k + 16]) for k in range(0, len(data), 16))


if __name__ == "__main__":
    for name, value in vectors().items():
        if name.startswith("**"):
            print(f"{name}\n\n```\n{dump(value)}\n```\n")
        else:
            print(f"{name}: `{value.hex()}`")
