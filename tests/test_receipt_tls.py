"""Receipts from a receiver in TLS mode: signed with its certificate's key (Ed25519, ECDSA P-256 or
RSA-PSS), the chain in the receipt, checked by the sender against the certificate its handshake
proved and by ``ftx verify-receipt`` against a CA or a pinned certificate.  Real CLI, real sockets."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ftx.core.checksum import file_digest
from ftx.core.manifest import Kind
from ftx.core.secure import receipt
from ftx.core.secure.receipt import Entry, ReceiptChecker, ReceiptEnd, ReceiptError, ReceiptSigner
from ftx.errors import ErrorCode, RemoteProtocolError
from ftx.receipt_file import end_json, read, verify_file

from .helpers import run_send, write_random
from .test_receipt import PROTOCOL_MD, _hexdump
from .tls_pki import CA

pytestmark = pytest.mark.timeout(90)

KEYS = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa-pss": lambda: rsa.generate_private_key(65537, 2048),
}


def _verify(*args):
    return subprocess.run([sys.executable, "-m", "ftx", "verify-receipt", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    return CA(d / "ca"), CA(d / "other", cn="somebody else's CA")


@pytest.mark.parametrize("kind", list(KEYS))
def test_a_tls_receiver_signs_receipts_with_its_certificate_key(tmp_path, receiver_factory, cas, kind):
    ca, other = cas
    server = ca.issue("receiver.example", ["localhost", "127.0.0.1"], stem=f"server-{kind}", key=KEYS[kind]())
    r = receiver_factory("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-any-client")
    data = write_random(tmp_path / "f", 300_000)
    out = tmp_path / "receipt.json"
    rc, report, err = run_send(str(tmp_path / "f"), r.dest, "--tls-ca", str(ca.path), "--receipt", str(out))
    assert rc == 0, err
    assert report["receipt"]["fingerprint"] == r.listening["fingerprint"] and report["receipt"]["key_proven"]
    end = verify_file(out)
    assert end.chain[0] == server.der and end.fingerprint == r.listening["fingerprint"]
    e = {e.path: e for e in read(out)[0]}[b"f"]
    assert e.sha256 == hashlib.sha256(data).digest()
    ok = _verify(str(out), "--tls-ca", str(ca.path), "--fingerprint", r.listening["fingerprint"])
    assert ok.returncode == 0 and "signed by certificate " + r.listening["fingerprint"] in ok.stdout, ok.stderr
    assert _verify(str(out), "--tls-cert", str(server.cert)).returncode == 0
    wrong_ca = _verify(str(out), "--tls-ca", str(other.path))
    assert wrong_ca.returncode == 4 and "does not chain to the given CA" in wrong_ca.stderr, wrong_ca.stderr
    another = ca.issue("another", stem=f"another-{kind}")
    wrong_cert = _verify(str(out), "--tls-cert", str(another.cert))
    assert wrong_cert.returncode == 4 and "another certificate" in wrong_cert.stderr
    raw = out.read_text()
    sig = json.loads("{" + raw[raw.index('"count"'):])["signature"]
    flipped = base64.b64encode(bytes([base64.b64decode(sig)[0] ^ 1]) + base64.b64decode(sig)[1:]).decode()
    (tmp_path / "bad.json").write_text(raw.replace(sig, flipped))
    bad = _verify(str(tmp_path / "bad.json"))
    assert bad.returncode == 4 and "signature does not verify" in bad.stderr


def test_the_sender_refuses_a_receipt_not_signed_by_the_certificate_it_proved(cas):
    ca, _ = cas
    one, two = ca.issue("one", stem="one"), ca.issue("two", stem="two")
    key2 = serialization.load_pem_private_key(two.key.read_bytes(), None)
    e = Entry(b"a", Kind.FILE, 1, ErrorCode.OK, file_digest(b"x"), hashlib.sha256(b"x").digest())
    signer = ReceiptSigner(key2, b"t" * 32, (two.der,))
    signer.add(e)
    _, end = signer.finish(5)
    checker = ReceiptChecker(None, b"t" * 32, certificate=one.der)
    checker.expect(e)
    checker.entries([e])
    with pytest.raises(ReceiptError, match="not by the receiver the handshake proved"):
        checker.finish(ReceiptEnd.decode(end))
    ok = ReceiptChecker(None, b"t" * 32, certificate=two.der)
    ok.expect(e)
    ok.entries([e])
    ok.finish(ReceiptEnd.decode(end))


def test_a_certificate_key_that_does_not_match_declines_receipts_at_start(tmp_path, cas, receiver_factory):
    ca, _ = cas
    server, stray = ca.issue("receiver", ["127.0.0.1"], stem="srv"), ca.issue("x", stem="stray")
    from ftx.tlsconfig import TlsConfigError, receipt_signing_key

    with pytest.raises(TlsConfigError, match="does not belong"):
        receipt_signing_key(server.cert, stray.key)
    assert receipt_signing_key(server.cert, server.key)[1] == (server.der,)


def test_end_x509_decoder_ends_in_typed_errors():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def run(data):
        try:
            ReceiptEnd.decode(bytes([receipt.PART_END_X509, 2]) + data)
        except RemoteProtocolError:
            pass

    run()


def _vector_certificate() -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    """protocol.md 21.4's certificate: self-signed Ed25519, all fields fixed (so the DER is too)."""
    import datetime

    from cryptography.x509.oid import NameOID

    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver.example")])
    utc = datetime.timezone.utc
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime.datetime(2026, 1, 1, tzinfo=utc))
            .not_valid_after(datetime.datetime(2036, 1, 1, tzinfo=utc)).sign(key, None))
    return key, cert.public_bytes(serialization.Encoding.DER)


def test_protocol_md_end_x509_vector_is_what_the_code_produces():
    key, der = _vector_certificate()
    e = Entry(b"a.txt", Kind.FILE, 5, ErrorCode.OK, file_digest(b"hello"), hashlib.sha256(b"hello").digest())
    signer = ReceiptSigner(key, bytes(range(32)), (der,))
    signer.add(e)
    entries, end = signer.finish(1_764_000_000_000_000_000)
    assert end[0] == receipt.PART_END_X509
    text = PROTOCOL_MD.read_text()
    section = text[text.index("### 21.5"):]
    assert _hexdump(end) in section, _hexdump(end)
    decoded = ReceiptEnd.decode(end)
    assert decoded.fingerprint in section and decoded.chain == (der,)
    assert json.dumps(end_json(decoded))[1:40] in section
