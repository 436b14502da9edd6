"""``ssl.SSLContext`` objects for the TLS handshake (``ftx/core/secure/tls.py``), built from files.

Receiver: ``server_context(cert, key, client_ca=None)`` -- its certificate
chain and key (PEM); with ``client_ca`` every sender must present a client
certificate issued under it.  Sender: ``client_context(ca=None, cert=None,
key=None, pinned=None)`` -- the CA bundle that must have issued the receiver's
certificate (``--tls-ca``), or, without one, the system's trust store; with
``pinned`` and no ``ca`` the receiver's certificate is trusted by its SHA-256
fingerprint alone (the handshake checks the pin).  Both contexts speak TLS 1.3
only; the server sends no session tickets (ftx does not resume TLS sessions).

Every problem with a file is a ``TlsConfigError`` naming the file, in one line.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from pathlib import Path

from typing import Callable

from .core.secure.tls import Authorize, TlsClientHandshake, TlsServerHandshake, certificate_fingerprint

__all__ = ["TlsConfigError", "server_context", "client_context", "normalize_fingerprint",
           "certificate_file_fingerprint", "certificate_fingerprint", "receiver_handshakes",
           "sender_handshake"]


class TlsConfigError(ValueError):
    """A certificate, key or CA file that cannot be used, or a malformed fingerprint."""


def _base(purpose) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _why(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).replace("_", " ").lower()
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _load_chain(ctx: ssl.SSLContext, cert: str | Path, key: str | Path | None, what: str) -> None:
    for path in (cert, key):
        if path is not None and not Path(path).is_file():
            raise TlsConfigError(f"{what}: {path}: no such file")
    try:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"{what}: cannot use {cert}" + (f" with key {key}" if key else "")
                             + f": {_why(exc)}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str | Path, what: str) -> None:
    if not Path(ca).is_file():
        raise TlsConfigError(f"{what}: {ca}: no such file")
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"{what}: cannot read CA certificates from {ca}: {_why(exc)}") from None


def server_context(cert: str | Path, key: str | Path | None = None,
                   client_ca: str | Path | None = None) -> ssl.SSLContext:
    """The receiver's context: ``--tls-cert``/``--tls-key``, optional ``--tls-client-ca``."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.num_tickets = 0
    _load_chain(ctx, cert, key, "--tls-cert")
    if client_ca is not None:
        _load_ca(ctx, client_ca, "--tls-client-ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str | Path | None = None, cert: str | Path | None = None,
                   key: str | Path | None = None, pinned: str | None = None) -> ssl.SSLContext:
    """The sender's context: ``--tls-ca`` or a pin, optional client ``--tls-cert``/``--tls-key``."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        _load_ca(ctx, ca, "--tls-ca")
    elif pinned is not None:
        # the pin is the trust anchor: TlsClientHandshake compares the certificate's hash
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        _load_chain(ctx, cert, key, "--tls-cert")
    return ctx


_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def normalize_fingerprint(text: str) -> str:
    """``SHA256:<unpadded base64>`` from that form (padded or not) or from 64 hex digits (colons allowed)."""
    t = text.strip()
    if t[:7].upper() == "SHA256:":
        b64 = t[7:].rstrip("=")
        try:
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
        except binascii.Error:
            raw = b""
    else:
        hexed = t.replace(":", "")
        raw = bytes.fromhex(hexed) if _HEX.match(hexed) else b""
    if len(raw) != 32:
        raise TlsConfigError(f"{text!r} is not a SHA-256 fingerprint (SHA256:<base64> or 64 hex digits)")
    return "SHA256:" + base64.b64encode(raw).decode().rstrip("=")


def certificate_file_fingerprint(path: str | Path) -> str:
    """The fingerprint of the first certificate in a PEM or DER file (what a receiver prints)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{path}: {_why(exc)}") from None
    if b"-----BEGIN CERTIFICATE-----" in data:
        start = data.index(b"-----BEGIN CERTIFICATE-----")
        end = data.find(b"-----END CERTIFICATE-----", start)
        if end < 0:
            raise TlsConfigError(f"{path}: truncated PEM certificate")
        try:
            der = ssl.PEM_cert_to_DER_cert(data[start:end + 25].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise TlsConfigError(f"{path}: malformed PEM certificate") from None
    else:
        der = data
    return certificate_fingerprint(der)


def receiver_handshakes(cert: str | Path, key: str | Path | None = None, client_ca: str | Path | None = None,
                        authorize: Authorize | None = None) -> Callable[[], TlsServerHandshake]:
    """A factory of receiver-side TLS handshakes (one per connection), the files read once, now.

    Fits the dispatcher's ``kinds`` table: ``{KIND_TLS: receiver_handshakes(...)}``.
    """
    ctx = server_context(cert, key, client_ca)
    return lambda: TlsServerHandshake(ctx, authorize=authorize)


def receipt_signing_key(cert: str | Path, key: str | Path | None = None) -> tuple:
    """(private key, certificate chain as DER, leaf first) to sign receipts with in TLS mode:
    the key ``cryptography`` loads from ``--tls-key`` (or the ``--tls-cert`` file), checked to
    belong to the leaf certificate.  Raises TlsConfigError."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

    from .core.secure.receipt_x509 import MAX_CERTS, check_key_matches

    try:
        certs = x509.load_pem_x509_certificates(Path(cert).read_bytes())[:MAX_CERTS]
        private = load_pem_private_key(Path(key or cert).read_bytes(), None)
        chain = tuple(c.public_bytes(Encoding.DER) for c in certs)
        check_key_matches(private, chain[0])
    except (OSError, ValueError, TypeError) as exc:
        raise TlsConfigError(f"cannot sign receipts with {key or cert}: {exc}") from None
    return private, chain


def sender_handshake(host: str, ca: str | Path | None = None, cert: str | Path | None = None,
                     key: str | Path | None = None, pinned: str | None = None,
                     ciphers: list[str] | None = None) -> TlsClientHandshake:
    """The sender's TLS handshake towards ``host`` (the name or address it dials)."""
    pin = normalize_fingerprint(pinned) if pinned is not None else None
    ctx = client_context(ca, cert, key, pin)
    return TlsClientHandshake(ctx, host.strip("[]"), pinned_fingerprint=pin, ciphers=ciphers)
