"""Receipts signed with a TLS certificate's key (a receiver in TLS mode), protocol.md 21.

A receiver in TLS mode has no ftx identity the sender's handshake proved: it
proved its certificate.  So it signs the receipt with that certificate's private
key (whatever ``cryptography`` loads from ``--tls-key``: Ed25519, Ed448, ECDSA on
any curve with SHA-256, RSA with PSS/SHA-256) and sends the certificate chain in
the END (part END_X509).  The signer field of the signed message is the SHA-256
of the leaf certificate (DER), 32 bytes like an Ed25519 key, so the signed
message has one layout for both kinds; the fingerprint is the certificate's
(``SHA256:`` + base64 of that hash), as the receiver's ``--json`` line shows it.

``verify_chain`` checks a stored receipt's chain against CA certificates (or a
pinned certificate), at the time the receipt was signed.  Pure: bytes in.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from .receipt import ReceiptError

MAX_CERTS = 8
MAX_CERT = 16 * 1024
MAX_CHAIN = 32 * 1024  # the END stays well below a frame's 64 KiB
MAX_SIGNATURE = 1024  # RSA-8192


def signer_id(chain) -> bytes:
    """The signer field of the signed message: SHA-256 of the leaf certificate's DER."""
    return hashlib.sha256(chain[0]).digest()


def check_key_matches(key, leaf_der: bytes) -> None:
    """``key`` (a private key) belongs to the leaf certificate (raises ValueError)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert_pub = x509.load_der_x509_certificate(leaf_der).public_key()
    ours = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if cert_pub.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != ours:
        raise ValueError("the private key does not belong to the certificate")
    _scheme(key)  # a key type we can sign with


def _scheme(key):
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey,
                        ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return ()
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return (ec.ECDSA(hashes.SHA256()),)
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return (padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH), hashes.SHA256())
    raise ValueError(f"receipts cannot be signed with a {type(key).__name__}")


def sign(key, message: bytes) -> bytes:
    return key.sign(message, *_scheme(key))


def verify(chain, signature: bytes, message: bytes, fingerprint: str) -> None:
    """The signature over ``message`` by the leaf certificate's key (raises ReceiptError)."""
    try:
        public = x509.load_der_x509_certificate(chain[0]).public_key()
        public.verify(signature, message, *_scheme(public))
    except (InvalidSignature, ValueError, TypeError):
        raise ReceiptError(f"receipt signature does not verify (certificate {fingerprint})") from None


def verify_chain(chain, anchors, at_ns: int, pinned: bytes | None = None) -> None:
    """The receipt's chain leads from its leaf to one of ``anchors`` (DER CA certificates), each
    certificate valid at ``at_ns`` (when the receipt was signed); with ``pinned`` (DER) the leaf
    must be that certificate instead.  Raises ReceiptError."""
    try:
        certs = [x509.load_der_x509_certificate(c) for c in chain]
        roots = [x509.load_der_x509_certificate(c) for c in anchors]
    except ValueError as exc:
        raise ReceiptError(f"receipt certificate does not parse: {exc}") from None
    if pinned is not None:
        if chain[0] != pinned:
            raise ReceiptError("receipt is signed by another certificate than the one given")
        return
    when = datetime.datetime.fromtimestamp(at_ns / 1e9, datetime.timezone.utc)
    current = certs[0]
    pool = certs[1:]
    for _ in range(MAX_CERTS + 1):
        if not current.not_valid_before_utc <= when <= current.not_valid_after_utc:
            raise ReceiptError(f"receipt certificate {_subject(current)} was not valid when the receipt was signed")
        for root in roots:
            if _issued_by(current, root):
                if not root.not_valid_before_utc <= when <= root.not_valid_after_utc:
                    raise ReceiptError(f"CA certificate {_subject(root)} was not valid when the receipt was signed")
                return
        issuer = next((c for c in pool if _issued_by(current, c) and _is_ca(c)), None)
        if issuer is None:
            break
        pool.remove(issuer)
        current = issuer
    raise ReceiptError(f"receipt certificate {_subject(certs[0])} does not chain to the given CA")


def _issued_by(cert, issuer) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _is_ca(cert) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _subject(cert) -> str:
    from .handshake import printable

    return printable(cert.subject.rfc4514_string(), 200)
