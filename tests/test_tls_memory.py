"""TLS handshakes count in --max-memory: a flood of large handshakes stalled mid-way keeps the
receiver's memory bounded, is refused (BUSY) beyond the budget, and a legitimate sender gets through."""

from __future__ import annotations

import socket
import time

import pytest
from cryptography import x509

from ftx.core.secure.tls import TlsClientHandshake
from ftx.tlsconfig import client_context

from .helpers import run_send, wait_for, write_random
from .tls_pki import CA

pytestmark = pytest.mark.timeout(120)

FLOOD = 200
CERT_EXTRA = 90_000  # bytes of an unknown, non-critical extension: a 90 KB client certificate


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _big_client(ca: CA, tmp_path):
    """A client certificate of ~90 KB, signed by ``ca`` (valid: the receiver would accept it)."""
    issued = ca.issue("big sender", client=True, stem="big")
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    from cryptography.hazmat.primitives import hashes, serialization

    key = serialization.load_pem_private_key(issued.key.read_bytes(), None)
    b = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(cert.not_valid_before_utc)
         .not_valid_after(cert.not_valid_after_utc))
    for ext in cert.extensions:
        b = b.add_extension(ext.value, ext.critical)
    b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"),
                                                   b"\x04\x83" + CERT_EXTRA.to_bytes(3, "big") + bytes(CERT_EXTRA)),
                        critical=False)
    big = b.sign(ca.key, hashes.SHA256())
    path = tmp_path / "big.pem"
    path.write_bytes(big.public_bytes(serialization.Encoding.PEM))
    return path, issued.key


def _stall(port: int, ctx) -> socket.socket:
    """A TLS handshake that sends its ClientHello, reads the server's flight, then sends only the
    first 70 KB of its 90 KB Certificate message, and stops (the connection stays open)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    hs = TlsClientHandshake(ctx, "127.0.0.1")
    s.sendall(hs.data_to_send())
    held = b""
    while not (out := hs.data_to_send()):
        data = s.recv(65536)
        if not data:
            return s  # refused already
        held += data
        held = held[hs.receive(held, time.monotonic()):]
    assert len(out) > CERT_EXTRA
    s.sendall(out[:70_000])
    return s


def test_stalled_tls_handshakes_count_in_max_memory_and_a_sender_gets_through(tmp_path, receiver_factory):
    ca = CA(tmp_path / "ca")
    server = ca.issue("receiver.example", ["localhost", "127.0.0.1"], stem="server")
    small = ca.issue("sender", client=True, stem="sender")
    big_cert, big_key = _big_client(ca, tmp_path)
    r = receiver_factory("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(ca.path),
                         "--max-memory", "24M", "--max-connections", "400", "--max-per-host", "400",
                         "--handshake-timeout", "60s", "--no-udp")
    data = write_random(tmp_path / "f", 200_000)
    send = ["--tls-ca", str(ca.path), "--tls-cert", str(small.cert), "--tls-key", str(small.key)]
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, *send)  # warm up: the receiver's own first costs
    assert rc == 0, err
    before = _rss(r.proc.pid)
    ctx = client_context(ca.path, big_cert, big_key)
    socks = [_stall(r.port, ctx) for _ in range(FLOOD)]
    try:
        refused = 0
        for s in socks:  # every flood connection either stalls with its bytes taken, or was refused (BUSY)
            s.settimeout(0.05)
            try:
                refused += s.recv(65536) != b"" or 0
            except TimeoutError:
                pass
        wait_for(lambda: _outq_empty(socks), what="the flood's bytes reached the receiver")
        rc, report, err = run_send(str(tmp_path / "f"), r.dest, *send, "--json")  # a legitimate sender
        assert rc == 0, err
        grown = _rss(r.proc.pid) - before
        # unbounded: 200 x ~90 KB that OpenSSL allocates for the announced certificate = 18 MB
        assert grown < 10 * 2**20, (grown >> 20, refused)
        assert refused > FLOOD // 2, refused
    finally:
        for s in socks:
            s.close()
    r.stop()
    assert "out of handshake memory" in r.stderr
    assert (r.dir / "f").read_bytes() == data


def _outq_empty(socks) -> bool:
    import fcntl
    import struct
    import termios

    for s in socks:
        try:
            if struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]:
                return False
        except OSError:
            pass
    return True


@pytest.mark.parametrize("announced, record, refused", [
    (100 * 1024, 512, "ClientHello of 102400 bytes"),
    (16 * 1024, 3, "split across records"),
    (16 * 1024, 512, None),
])
def test_a_client_hello_announcing_more_than_16_kib_is_refused_before_tls_allocates_it(announced, record, refused):
    """4 bytes announcing a 128 KiB ClientHello would make OpenSSL allocate (and zero) 128 KiB."""
    import ssl

    from ftx.core.secure.tls import MSG_DATA, TlsServerHandshake, encode_handshake
    from ftx.errors import RemoteProtocolError

    hs = TlsServerHandshake(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    tls = bytes([22, 3, 1]) + record.to_bytes(2, "big") + bytes([1]) + announced.to_bytes(3, "big") + bytes(40)
    frame = encode_handshake(MSG_DATA, tls)
    if refused is None:
        try:
            hs.receive(frame, 0.0)  # handed on to TLS, which judges the rest
        except RemoteProtocolError as exc:
            assert "ClientHello" not in str(exc)
        except Exception:
            pass
    else:
        with pytest.raises(RemoteProtocolError, match=refused):
            hs.receive(frame, 0.0)
