"""``ftx verify-receipt FILE [--fingerprint FP] [--tls-ca CA.pem | --tls-cert CERT.pem]``: re-check a
receipt written by ``ftx send --receipt``.  A receipt from a receiver in TLS mode is signed with its
certificate's key and carries the chain: ``--tls-ca`` checks that chain against CA certificates (at the
time the receipt was signed), ``--tls-cert`` requires exactly that certificate.

Exit codes: 0 the receipt is valid (and signed by FP when given), 4 it is not
(one line on stderr says why), 5 it cannot be read.
"""

from __future__ import annotations

import datetime
import sys

import click

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 4, 5


@click.command("verify-receipt", epilog="""\b
Examples:
  ftx send --receipt landed.receipt photos/ host.example.org
  ftx verify-receipt landed.receipt --fingerprint SHA256:...
  ftx verify-receipt landed.receipt --tls-ca company-ca.pem

\b
Exit codes: 0 the receipt is valid, 4 it is not (one line says why), 5 it cannot be read.
""")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--fingerprint", "expect", default=None, metavar="FP",
              help="The receiver's key fingerprint (SHA256:...) the receipt must be signed with.")
@click.option("--tls-ca", type=click.Path(dir_okay=False), default=None,
              help="TLS receipts: the certificate chain in the receipt must lead to these CA certificates (PEM).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None,
              help="TLS receipts: the receipt must be signed by this certificate (PEM).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when the receipt is valid.")
def verify_receipt(file, expect, tls_ca, tls_cert, quiet):
    """Check FILE's signature over every item it lists, and print the list (status, size,
    SHA-256 -- as sha256sum prints it -- and path)."""
    from .core.secure.receipt import VERSION, ReceiptError, printable
    from .receipt_file import read, verify_file
    from .terminal import say

    try:
        ca_certs = _pem_certificates(tls_ca) if tls_ca else None
        pinned = _pem_certificates(tls_cert)[0] if tls_cert else None
    except (OSError, ValueError, IndexError) as exc:
        _die(f"cannot read certificates from {tls_ca or tls_cert}: {getattr(exc, 'strerror', None) or exc}",
             EXIT_UNREADABLE)
    try:
        end = verify_file(file, expect, ca_certs, pinned)
        if quiet:
            return
        when = datetime.datetime.fromtimestamp(end.time_ns / 1e9, datetime.timezone.utc)
        bound = f"session {end.transcript.hex()[:16]}..." if end.transcript else "no handshake (plaintext link)"
        signer = f"certificate {end.fingerprint}" + (" (chain checked)" if tls_ca else "") if end.chain \
            else end.fingerprint
        click.echo(f"valid receipt: {end.count} items, signed by {signer} at "
                   f"{when.isoformat(timespec='seconds')}, {bound}")
        entries, _ = read(file)  # a second pass: nothing is printed before the whole file verified
        legacy = end.version < VERSION
        if legacy:
            say(f"{click.format_filename(file)} is a version-{end.version} receipt: its digests are XXH3-128 only, "
                "which is not collision resistant (it does not bind content against the sender)")
        for e in entries:  # version 2: the SHA-256 (sha256sum prints the same); version 1: the XXH3-128
            shown = e.digest if legacy else e.sha256
            digest = shown.hex() if any(shown) else "-"
            click.echo(f"{_status(e.code):<10} {e.size:>14} {digest:<{32 if legacy else 64}}  {printable(e.path)}")
    except ReceiptError as exc:
        _die(f"invalid receipt {click.format_filename(file)}: {exc}", EXIT_INVALID)
    except OSError as exc:
        _die(f"cannot read {click.format_filename(file)}: {exc.strerror or exc}", EXIT_UNREADABLE)


def _pem_certificates(path) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    with open(path, "rb") as f:
        return [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(f.read())]


def _status(code: int) -> str:
    from .receipt_file import _status as status

    return status(code)


def _die(message: str, code: int) -> None:
    from .terminal import say

    say(message)
    sys.exit(code)
