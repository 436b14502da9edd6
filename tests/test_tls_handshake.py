"""TLS 1.3 as an ftx handshake (ftx/core/secure/tls.py): two peers wired in memory, real certificates.

The PKI is real (``tests/tls_pki.py`` issues it with ``cryptography.x509``), and so
is TLS (OpenSSL through ``ssl.MemoryBIO``); only the wire is a function call.
"""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx import tlsconfig
from ftx.core.checksum import frame_checksum
from ftx.core.frames import HEADER, HEADER_SIZE, FrameType, encode_frame
from ftx.core.messages import ErrorMessage
from ftx.core.secure import AuthError, Established
from ftx.core.secure import tls as tlsmod
from ftx.core.secure.keys import AES_256_GCM, CHACHA20_POLY1305, Direction
from ftx.core.secure.tls import (
    MSG_DATA,
    MSG_LAST,
    TlsClientHandshake,
    TlsServerHandshake,
    certificate_fingerprint,
    encode_handshake,
)
from ftx.errors import ChecksumMismatch, ErrorCode, FtxError, PeerError, RemoteProtocolError

from .tls_pki import CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CA(d / "ca")
    other = CA(d / "other", cn="somebody else's CA")

    class P:
        pass

    p = P()
    p.ca, p.other = ca, other
    p.server = ca.issue("receiver.example", ["localhost", "127.0.0.1"], stem="server")
    p.client = ca.issue("alice", client=True, stem="alice")
    p.rogue_server = other.issue("receiver.example", ["localhost", "127.0.0.1"], stem="rogue-server")
    p.rogue_client = other.issue("mallory", client=True, stem="mallory")
    return p


def server_ctx(pki, client_ca=None, cert=None):
    cert = cert or pki.server
    return tlsconfig.server_context(cert.cert, cert.key, client_ca=client_ca)


def client_ctx(pki, ca="ca", cert=None, pinned=None):
    ca_path = {"ca": pki.ca.path, "other": pki.other.path, None: None}[ca]
    return tlsconfig.client_context(ca=ca_path, cert=cert.cert if cert else None,
                                    key=cert.key if cert else None, pinned=pinned)


def split(data: bytes, step: int | None):
    if not step:
        return [data]
    return [data[i:i + step] for i in range(0, len(data), step)]


def pump(client, server, tamper=None, step=None, rounds=12):
    """Run both sides as the driver does; each side ends with its Established or its exception.

    ``tamper(flight_number, bytes) -> bytes`` rewrites a flight on the wire.
    """
    outcome = {client: None, server: None}
    flight = 0
    for _ in range(rounds):
        moved = False
        for a, b in ((client, server), (server, client)):
            data = a.data_to_send()
            if not data or outcome[b] is not None:
                continue
            if tamper is not None:
                data = tamper(flight, data)
            flight += 1
            moved = True
            try:
                for piece in split(data, step):
                    used = b.receive(piece, 0.0)
                    assert 0 <= used <= len(piece)
            except FtxError as exc:
                outcome[b] = exc
        for side in (client, server):
            if outcome[side] is None and side.done and side.keys_ready:
                outcome[side] = side.result
        if not moved:
            break
    return outcome[client], outcome[server]


def assert_paired(c: Established, s: Established):
    assert isinstance(c, Established) and isinstance(s, Established), (c, s)
    assert c.send_secret == s.recv_secret and c.recv_secret == s.send_secret
    assert c.send_secret != c.recv_secret and len(c.send_secret) == 32
    assert c.cipher == s.cipher and c.transcript == s.transcript
    # the secrets really key both directions
    sealed = Direction(c.cipher, c.send_secret).seal(0, b"HELLO", b"aad")
    assert Direction(s.cipher, s.recv_secret).open(0, sealed, b"aad") == b"HELLO"


def frames_of(data: bytes):
    """(offset, type, payload) of each frame in a flight."""
    out, pos = [], 0
    while pos < len(data):
        ftype, _fl, _res, length, _cs = HEADER.unpack_from(data, pos)
        out.append((pos, ftype, data[pos + HEADER_SIZE:pos + HEADER_SIZE + length]))
        pos += HEADER_SIZE + length
    return out


def refit(frame_type: int, payload: bytes) -> bytes:
    """A frame with a correct XXH3 checksum around ``payload`` (what a relay can always do)."""
    n = len(payload)
    return HEADER.pack(frame_type, 0, 0, n, frame_checksum((frame_type << 56) | n, payload)) + payload


# -- success


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_handshake_agrees_on_secrets_and_names_the_server(pki, host):
    c = TlsClientHandshake(client_ctx(pki), host)
    s = TlsServerHandshake(server_ctx(pki))
    rc, rs = pump(c, s)
    assert_paired(rc, rs)
    assert rc.peer.kind == "tls" and rc.peer.name == "receiver.example"
    assert rc.peer.fingerprint == certificate_fingerprint(pki.server.der)
    assert rc.peer.public == pki.server.der
    assert rs.peer.kind == "tls" and rs.peer.fingerprint == ""  # no client certificate asked
    assert rc.extra["tls_version"] == "TLSv1.3"


def test_fingerprint_is_sha256_of_der_unpadded_base64(pki):
    import base64
    import hashlib

    fp = certificate_fingerprint(pki.server.der)
    assert fp == "SHA256:" + base64.b64encode(hashlib.sha256(pki.server.der).digest()).decode().rstrip("=")
    assert not fp.endswith("=") and len(fp) == 7 + 43
    assert tlsconfig.certificate_file_fingerprint(pki.server.cert) == fp


def test_each_handshake_has_fresh_secrets(pki):
    r1 = pump(TlsClientHandshake(client_ctx(pki), "localhost"), TlsServerHandshake(server_ctx(pki)))
    r2 = pump(TlsClientHandshake(client_ctx(pki), "localhost"), TlsServerHandshake(server_ctx(pki)))
    assert r1[0].send_secret != r2[0].send_secret and r1[0].transcript != r2[0].transcript


def test_server_picks_the_first_aead_of_the_client_it_takes(pki):
    c = TlsClientHandshake(client_ctx(pki), "localhost", ciphers=[CHACHA20_POLY1305, AES_256_GCM])
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki)))
    assert_paired(rc, rs)
    assert rc.cipher == CHACHA20_POLY1305
    c = TlsClientHandshake(client_ctx(pki), "localhost", ciphers=[CHACHA20_POLY1305, AES_256_GCM])
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki), ciphers=[AES_256_GCM]))
    assert_paired(rc, rs)
    assert rc.cipher == AES_256_GCM


def test_no_common_aead_is_refused_on_both_sides(pki):
    c = TlsClientHandshake(client_ctx(pki), "localhost", ciphers=[CHACHA20_POLY1305])
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki), ciphers=[AES_256_GCM]))
    assert isinstance(rs, AuthError) and "no AEAD in common" in str(rs)
    assert isinstance(rc, AuthError) and "the receiver refused: no AEAD in common" in str(rc)


def test_one_byte_at_a_time(pki):
    c = TlsClientHandshake(client_ctx(pki, cert=pki.client), "localhost")
    s = TlsServerHandshake(server_ctx(pki, client_ca=pki.ca.path))
    assert_paired(*pump(c, s, step=1))


def test_receive_stops_at_the_end_of_the_peer_handshake(pki):
    """Sealed bytes right behind the peer's LAST frame are the driver's leftover, not consumed."""
    c = TlsClientHandshake(client_ctx(pki), "localhost")
    s = TlsServerHandshake(server_ctx(pki))
    s.receive(c.data_to_send(), 0.0)
    c.receive(s.data_to_send(), 0.0)
    flight3 = c.data_to_send()
    assert frames_of(flight3)[-1][2][:2] == bytes((3, MSG_LAST))
    tail = b"\x17sealed records follow"
    assert s.receive(flight3 + tail, 0.0) == len(flight3)
    assert s.done and not s.keys_ready  # its last flight is still to be sent
    flight4 = s.data_to_send()
    assert s.keys_ready and s.data_to_send() == b""
    assert c.receive(flight4[:5], 0.0) == 5
    assert not c.done
    assert c.receive(flight4[5:] + tail, 0.0) == len(flight4) - 5
    assert c.done and c.keys_ready
    assert_paired(c.result, s.result)
    assert s.receive(b"more", 0.0) == 0 and c.receive(b"more", 0.0) == 0


def test_a_server_context_that_sends_session_tickets_still_works(pki):
    """Contexts built elsewhere may keep OpenSSL's default tickets: they ride in the server's last flight."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    assert ctx.num_tickets > 0
    c = TlsClientHandshake(client_ctx(pki), "localhost")
    s = TlsServerHandshake(ctx)
    s.receive(c.data_to_send(), 0.0)
    c.receive(s.data_to_send(), 0.0)
    s.receive(c.data_to_send(), 0.0)
    flight4 = s.data_to_send()
    assert len(flight4) > 200  # tickets and the key message
    tail = b"sealed"
    assert c.receive(flight4 + tail, 0.0) == len(flight4)
    assert_paired(c.result, s.result)


def test_client_certificate_is_verified_and_reported(pki):
    seen = []

    def authorize(peer):
        seen.append(peer)
        return None

    c = TlsClientHandshake(client_ctx(pki, cert=pki.client), "localhost")
    s = TlsServerHandshake(server_ctx(pki, client_ca=pki.ca.path), authorize=authorize)
    rc, rs = pump(c, s)
    assert_paired(rc, rs)
    assert rs.peer.name == "alice" and rs.peer.fingerprint == certificate_fingerprint(pki.client.der)
    assert seen == [rs.peer]


def test_large_certificate_chain_is_split_over_frames(pki, tmp_path):
    big = pki.ca.issue("big.example", ["localhost"] + [f"host-{i:05d}.example.org" for i in range(900)],
                       stem="big")
    assert len(big.der) > tlsmod.MAX_PAYLOAD
    c = TlsClientHandshake(client_ctx(pki), "localhost")
    s = TlsServerHandshake(server_ctx(pki, cert=big))
    s.receive(c.data_to_send(), 0.0)
    flight2 = s.data_to_send()
    frames = frames_of(flight2)
    assert len(frames) >= 2
    assert all(t == 0x10 and len(p) <= tlsmod.MAX_PAYLOAD and p[:2] == bytes((3, MSG_DATA))
               for _, t, p in frames)
    c.receive(flight2, 0.0)
    rc, rs = pump(c, s)
    assert_paired(rc, rs)
    assert rc.peer.public == big.der


# -- trust failures: refused on both sides, with the reason in one line


def assert_refused(rc, rs, client_says, server_says):
    assert isinstance(rc, AuthError), rc
    assert isinstance(rs, AuthError), rs
    assert client_says in str(rc), str(rc)
    assert server_says in str(rs), str(rs)
    for e in (rc, rs):
        assert "\n" not in str(e) and e.code == ErrorCode.AUTH


def test_untrusted_ca_is_refused_by_both(pki):
    c = TlsClientHandshake(client_ctx(pki, ca="other"), "localhost")
    s = TlsServerHandshake(server_ctx(pki))
    rc, rs = pump(c, s)
    assert_refused(rc, rs, "certificate verify failed", "the sender refused: TLS: certificate verify failed")


def test_refusal_is_a_plaintext_error_frame_with_code_auth(pki):
    c = TlsClientHandshake(client_ctx(pki, ca="other"), "localhost")
    s = TlsServerHandshake(server_ctx(pki))
    s.receive(c.data_to_send(), 0.0)
    with pytest.raises(AuthError):
        c.receive(s.data_to_send(), 0.0)
    out = c.data_to_send()
    ((_, ftype, payload),) = frames_of(out)
    assert ftype == FrameType.ERROR
    msg = ErrorMessage.decode(payload)
    assert msg.code == ErrorCode.AUTH and "certificate verify failed" in msg.message
    assert c.data_to_send() == b""
    with pytest.raises(AuthError):  # dead after the error
        c.receive(b"", 0.0)


def test_hostname_mismatch_is_refused(pki):
    c = TlsClientHandshake(client_ctx(pki), "files.example.com")
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki)))
    assert_refused(rc, rs, "Hostname mismatch", "the sender refused")


def test_pinned_fingerprint_alone_is_trusted(pki):
    pin = certificate_fingerprint(pki.rogue_server.der)  # no CA vouches for it: the pin does
    c = TlsClientHandshake(client_ctx(pki, ca=None, pinned=pin), "localhost", pinned_fingerprint=pin)
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki, cert=pki.rogue_server)))
    assert_paired(rc, rs)
    assert rc.peer.fingerprint == pin


def test_pinned_fingerprint_mismatch_is_refused(pki):
    pin = certificate_fingerprint(pki.client.der)
    c = TlsClientHandshake(client_ctx(pki, ca=None, pinned=pin), "localhost", pinned_fingerprint=pin)
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki)))
    assert_refused(rc, rs, certificate_fingerprint(pki.server.der), "the sender refused")
    assert pin in str(rc)


def test_pin_is_checked_on_top_of_the_ca(pki):
    pin = certificate_fingerprint(pki.client.der)
    c = TlsClientHandshake(client_ctx(pki, pinned=pin), "localhost", pinned_fingerprint=pin)
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki)))
    assert_refused(rc, rs, "not the pinned", "the sender refused")


def test_missing_client_certificate_is_refused(pki):
    c = TlsClientHandshake(client_ctx(pki), "localhost")
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki, client_ca=pki.ca.path)))
    assert_refused(rc, rs, "the receiver refused: TLS: peer did not return a certificate", "certificate")


def test_untrusted_client_certificate_is_refused(pki):
    c = TlsClientHandshake(client_ctx(pki, cert=pki.rogue_client), "localhost")
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki, client_ca=pki.ca.path)))
    assert_refused(rc, rs, "the receiver refused: TLS: certificate verify failed",
                   "certificate verify failed")


def test_authorize_callback_refusal_reaches_the_sender(pki):
    s = TlsServerHandshake(server_ctx(pki, client_ca=pki.ca.path),
                           authorize=lambda peer: f"{peer.fingerprint} is not\nallowed here")
    c = TlsClientHandshake(client_ctx(pki, cert=pki.client), "localhost")
    rc, rs = pump(c, s)
    assert_refused(rc, rs, "is not allowed here", "is not allowed here")
    assert certificate_fingerprint(pki.client.der) in str(rc)


# -- TLS below 1.3


def legacy_peer(ctx: ssl.SSLContext, server_side: bool):
    """A TLS 1.2 peer framing its bytes as ftx HANDSHAKE frames."""
    i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(i, o, server_side=server_side, server_hostname=None if server_side else "localhost")

    def step(incoming_frames: bytes) -> bytes:
        for _, t, p in frames_of(incoming_frames):
            if t == 0x10:
                i.write(p[2:])
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass
        data = o.read()
        return encode_handshake(MSG_DATA, data) if data else b""

    return step


def test_tls12_client_is_refused(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(pki.ca.path)
    legacy = legacy_peer(ctx, server_side=False)
    s = TlsServerHandshake(server_ctx(pki))
    with pytest.raises(AuthError, match="TLS: .*(version|protocol)"):
        s.receive(legacy(b""), 0.0)
    ((_, t, p),) = frames_of(s.data_to_send())
    assert t == FrameType.ERROR and ErrorMessage.decode(p).code == ErrorCode.AUTH


def test_tls12_server_is_refused(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    legacy = legacy_peer(ctx, server_side=True)
    c = TlsClientHandshake(client_ctx(pki), "localhost")
    answer = legacy(c.data_to_send())
    assert answer  # the legacy server answers with an alert, not a TLS 1.2 ServerHello we could take
    with pytest.raises(AuthError, match="TLS: .*(version|protocol)"):
        c.receive(answer, 0.0)


def test_a_context_that_allows_tls12_is_raised_to_13(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(pki.ca.path)
    c = TlsClientHandshake(ctx, "localhost")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    rc, rs = pump(c, TlsServerHandshake(server_ctx(pki)))
    assert rc.extra["tls_version"] == "TLSv1.3"


# -- tampering: failure, never a success with different secrets


def _payload_positions(flights: list[bytes], stride: int):
    for n, data in enumerate(flights):
        for k, (_off, _t, payload) in enumerate(frames_of(data)):
            for i in range(0, len(payload), stride):
                yield n, k, i


def _record_flights(pki, client_cert=False):
    flights = []

    def keep(n, data):
        flights.append(data)
        return data

    c = TlsClientHandshake(client_ctx(pki, cert=pki.client if client_cert else None), "localhost")
    s = TlsServerHandshake(server_ctx(pki, client_ca=pki.ca.path if client_cert else None))
    assert_paired(*pump(c, s, tamper=keep))
    return flights


def _check_tampered(pki, flight_no, mutate, client_cert):
    def tamper(n, data):
        return mutate(data) if n == flight_no else data

    c = TlsClientHandshake(client_ctx(pki, cert=pki.client if client_cert else None), "localhost")
    s = TlsServerHandshake(server_ctx(pki, client_ca=pki.ca.path if client_cert else None))
    rc, rs = pump(c, s, tamper=tamper)
    assert not (isinstance(rc, Established) and isinstance(rs, Established)), "tampering went unnoticed"
    for r in (rc, rs):  # None: still waiting for the rest (the driver's timeout ends it)
        assert r is None or isinstance(r, (Established, AuthError, RemoteProtocolError, PeerError)), r
    return rc, rs


@pytest.mark.parametrize("client_cert", [False, True])
def test_bit_flips_with_fixed_up_checksums_never_succeed(pki, client_cert):
    """A relay that rewrites TLS bytes and recomputes XXH3 (it is unkeyed) is caught by TLS itself."""
    flights = _record_flights(pki, client_cert)
    assert len(flights) == 4
    checked = 0
    for n, k, i in _payload_positions(flights, stride=7):
        def mutate(data, k=k, i=i):
            # signatures vary in length from run to run: the same frame, the same spot or the last byte
            off, ftype, payload = frames_of(data)[k]
            bad = bytearray(payload)
            bad[min(i, len(bad) - 1)] ^= 0x01 << (i % 8)
            frame = refit(ftype, bytes(bad))
            return data[:off] + frame + data[off + HEADER_SIZE + len(payload):]

        _check_tampered(pki, n, mutate, client_cert)
        checked += 1
    assert checked > 150


def test_bit_flips_in_frame_bytes_are_caught_by_the_checksum(pki):
    flights = _record_flights(pki)
    for n, data in enumerate(flights):
        for i in range(0, len(data), 97):
            def mutate(d, i=i):
                b = bytearray(d)
                b[min(i, len(b) - 1)] ^= 0x80  # flight lengths vary a little from run to run
                return bytes(b)

            _check_tampered(pki, n, mutate, False)


def test_truncated_last_flight_does_not_finish(pki):
    rc, rs = _check_tampered(pki, 3, lambda d: d[:-1], False)
    assert rc is None and isinstance(rs, Established)  # the client waits for the rest
    rc, rs = _check_tampered(pki, 2, lambda d: d[:len(d) // 2], False)
    assert rc is None and rs is None


def test_a_last_frame_before_tls_finished_is_refused(pki):
    c = TlsClientHandshake(client_ctx(pki), "localhost")
    s = TlsServerHandshake(server_ctx(pki))
    ((_, _t, payload),) = frames_of(c.data_to_send())
    with pytest.raises(AuthError, match="before TLS finished"):
        s.receive(encode_handshake(MSG_LAST, payload[2:]), 0.0)


# -- malformed frames and peer errors


def fresh_server(pki):
    return TlsServerHandshake(server_ctx(pki))


def test_oversize_frame_is_refused_from_its_header(pki):
    s = fresh_server(pki)
    header = HEADER.pack(0x10, 0, 0, tlsmod.MAX_PAYLOAD + 1, 0)
    with pytest.raises(RemoteProtocolError, match="at most 16384"):
        s.receive(header, 0.0)
    ((_, t, p),) = frames_of(s.data_to_send())
    assert t == FrameType.ERROR and ErrorMessage.decode(p).code == ErrorCode.PROTOCOL


@pytest.mark.parametrize("payload,match", [
    (bytes((1, 1)) + b"x" * 40, "kind 1 in a TLS handshake"),
    (bytes((3, 9)) + b"x" * 40, "unknown TLS handshake message type"),
    (bytes((3, 1)), "without a TLS body"),
    (bytes((3, 1)) + b"\x16\x03\x01\x00\x05hello", "TLS: "),
])
def test_malformed_handshake_frames(pki, payload, match):
    s = fresh_server(pki)
    with pytest.raises((RemoteProtocolError, AuthError), match=match):
        s.receive(refit(0x10, payload), 0.0)


def test_bad_checksum_flags_and_foreign_frames(pki):
    good = refit(0x10, bytes((3, 1)) + b"abc")
    bad = bytearray(good)
    bad[15] ^= 1
    with pytest.raises(ChecksumMismatch):
        fresh_server(pki).receive(bytes(bad), 0.0)
    flagged = bytearray(good)
    flagged[1] = 1
    with pytest.raises(RemoteProtocolError, match="does not speak ftx"):
        fresh_server(pki).receive(bytes(flagged), 0.0)
    s = fresh_server(pki)
    with pytest.raises(AuthError, match="the peer runs --insecure; plaintext needs --insecure on both sides"):
        s.receive(encode_frame(FrameType.HELLO, b"ftx\x00" + bytes(16)), 0.0)
    ((_, t, p),) = frames_of(s.data_to_send())  # the insecure peer learns why, in its own terms
    assert t == FrameType.ERROR and ErrorMessage.decode(p) == ErrorMessage(
        ErrorCode.AUTH, "the peer requires authentication; this side runs --insecure")
    with pytest.raises(RemoteProtocolError, match="0x02"):
        fresh_server(pki).receive(encode_frame(FrameType.OFFER, b"x"), 0.0)


def test_peer_error_frames_end_the_handshake_without_an_answer(pki):
    s = fresh_server(pki)
    with pytest.raises(AuthError, match="the sender refused: no way"):
        s.receive(encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.AUTH, "no way").encode()), 0.0)
    assert s.data_to_send() == b""  # a refusal is not answered with another
    c = TlsClientHandshake(client_ctx(pki), "localhost")
    c.data_to_send()
    with pytest.raises(PeerError, match="receiver error: too many") as e:
        c.receive(encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.BUSY, "too many").encode()), 0.0)
    assert e.value.code == ErrorCode.BUSY


def test_peer_closing_mid_handshake(pki):
    c = TlsClientHandshake(client_ctx(pki), "localhost")
    s = fresh_server(pki)
    s.receive(c.data_to_send(), 0.0)
    with pytest.raises(RemoteProtocolError, match="the sender closed the connection during the handshake"):
        s.receive_eof()
    c.receive(TlsServerHandshake(server_ctx(pki)).data_to_send(), 0.0)  # nothing yet: still waiting
    with pytest.raises(RemoteProtocolError, match="the receiver closed"):
        c.receive_eof()
    assert c.error is not None and c.KIND == 3


def test_total_handshake_bytes_are_bounded(pki, monkeypatch):
    monkeypatch.setattr(tlsmod, "MAX_HANDSHAKE_BYTES", 300)
    c = TlsClientHandshake(client_ctx(pki), "localhost")
    s = TlsServerHandshake(server_ctx(pki))
    rc, rs = pump(c, s)
    assert isinstance(rc, RemoteProtocolError) and "longer than 300" in str(rc)
    assert isinstance(rs, PeerError | AuthError)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), split_at=st.integers(0, 400))
def test_any_input_ends_in_a_typed_error_or_more_input(pki, data, split_at):
    for side in (TlsServerHandshake(server_ctx(pki)), TlsClientHandshake(client_ctx(pki), "localhost")):
        side.data_to_send()
        try:
            used = side.receive(data[:split_at], 0.0)
            used += side.receive(data[split_at:], 0.0)
            assert used <= len(data)
        except FtxError:
            side.data_to_send()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=1, max_size=300), msg_type=st.sampled_from([MSG_DATA, MSG_LAST]))
def test_any_frame_with_a_valid_checksum_ends_in_a_typed_error(pki, body, msg_type):
    s = TlsServerHandshake(server_ctx(pki))
    try:
        s.receive(encode_handshake(msg_type, body), 0.0)
    except FtxError:
        return
    assert not s.done


# -- purity and configuration


def test_tls_module_opens_no_files():
    """The core builds on contexts made elsewhere: no loading of files, no sockets."""
    src = Path(tlsmod.__file__).read_text()
    names = {n.attr for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Attribute)}
    names |= {n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name)}
    forbidden = {"wrap_socket", "load_cert_chain", "load_verify_locations", "load_default_certs",
                 "set_default_verify_paths", "open", "create_default_context", "get_server_certificate"}
    assert names & forbidden == set()


def test_config_errors_name_the_file(pki, tmp_path):
    with pytest.raises(tlsconfig.TlsConfigError, match="no such file"):
        tlsconfig.server_context(tmp_path / "missing.pem", tmp_path / "missing.key")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(tlsconfig.TlsConfigError, match="junk.pem"):
        tlsconfig.server_context(junk, pki.server.key)
    with pytest.raises(tlsconfig.TlsConfigError, match="with key"):
        tlsconfig.server_context(pki.server.cert, pki.client.key)  # a key that does not match
    with pytest.raises(tlsconfig.TlsConfigError, match="junk.pem"):
        tlsconfig.client_context(ca=junk)
    ctx = tlsconfig.server_context(pki.server.cert, pki.server.key, client_ca=pki.ca.path)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.num_tickets == 0


def test_fingerprints_are_normalized():
    import hashlib

    raw = hashlib.sha256(b"x").digest()
    canon = certificate_fingerprint(b"x")
    assert tlsconfig.normalize_fingerprint(canon) == canon
    assert tlsconfig.normalize_fingerprint(canon + "=") == canon
    assert tlsconfig.normalize_fingerprint("sha256:" + canon[7:]) == canon
    assert tlsconfig.normalize_fingerprint(raw.hex()) == canon
    assert tlsconfig.normalize_fingerprint(":".join(f"{b:02X}" for b in raw)) == canon
    for bad in ["", "SHA256:", "SHA256:abc", "MD5:" + raw.hex(), raw.hex()[:-2], "SHA256:" + "!" * 43]:
        with pytest.raises(tlsconfig.TlsConfigError):
            tlsconfig.normalize_fingerprint(bad)


# -- protocol.md's vectors are what the code produces


def test_protocol_md_vectors():
    import hashlib
    import re

    spec = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()
    section = spec[spec.index("TLS 1.3 (kind 3)\n"):]
    values = dict(re.findall(r"^(transcript|c->s secret|s->c secret)\s+([0-9a-f]{64})$", section, re.M))
    ch, sh = hashlib.sha256(b"client frames").digest(), hashlib.sha256(b"server frames").digest()
    assert f"SHA-256(C)  {ch.hex()}" in section and f"SHA-256(S)  {sh.hex()}" in section
    transcript, c2s, s2c = tlsmod.key_schedule(ch, sh, bytes([1]) * 32, bytes([2]) * 32)
    assert values == {"transcript": transcript.hex(), "c->s secret": c2s.hex(), "s->c secret": s2c.hex()}
    dump = section[section.index("**TLS_LAST** carrying"):]
    rows = re.findall(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} )+)", dump, re.M)[:2]
    assert bytes.fromhex("".join(rows)) == encode_handshake(MSG_LAST, bytes.fromhex("170303000100"))


# -- one real loopback connection


async def _drive(reader, writer, hs, timeout=10.0):
    """The driver loop of the Handshake docstring over an asyncio stream; returns (result, leftover)."""
    import asyncio

    async def run():
        incoming = b""
        while not hs.done:
            out = hs.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
            if not incoming:
                incoming = await reader.read(65536)
                if not incoming:
                    raise AssertionError("peer closed during the handshake")
            used = hs.receive(incoming, 0.0)
            incoming = incoming[used:]
            if hs.done:
                break
        out = hs.data_to_send()
        if out:
            writer.write(out)
            await writer.drain()
        assert hs.keys_ready
        return hs.result, incoming

    return await asyncio.wait_for(run(), timeout)


def test_tls_handshake_then_sealed_bytes_over_real_tcp(pki):
    """Receiver and sender built from files, over a loopback socket; the first sealed message opens."""
    import asyncio

    server_factory = tlsconfig.receiver_handshakes(pki.server.cert, pki.server.key, client_ca=pki.ca.path)

    async def main():
        got = {}

        async def serve(reader, writer):
            est, leftover = await _drive(reader, writer, server_factory())
            data = leftover
            while len(data) < 5 + 16:
                more = await asyncio.wait_for(reader.read(65536), 10)
                assert more
                data += more
            got["server"] = est
            got["plain"] = Direction(est.cipher, est.recv_secret).open(0, data[:21], b"")
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        hs = tlsconfig.sender_handshake("127.0.0.1", ca=pki.ca.path, cert=pki.client.cert, key=pki.client.key)
        est, leftover = await _drive(reader, writer, hs)
        assert leftover == b""
        writer.write(Direction(est.cipher, est.send_secret).seal(0, b"HELLO", b""))
        await writer.drain()
        await asyncio.wait_for(reader.read(), 10)  # the server closes after reading it
        writer.close()
        server.close()
        await server.wait_closed()
        return est, got

    est, got = asyncio.run(main())
    assert got["plain"] == b"HELLO"
    assert_paired(est, got["server"])
    assert est.peer.fingerprint == tlsconfig.certificate_file_fingerprint(pki.server.cert)
    assert got["server"].peer.name == "alice"


# -- the receiver's dispatcher by kind


def test_dispatcher_runs_tls_by_its_kind(pki):
    from ftx.core.secure.handshake import KIND_TLS, ServerHandshake

    server = ServerHandshake({KIND_TLS: tlsconfig.receiver_handshakes(pki.server.cert, pki.server.key)})
    client = TlsClientHandshake(client_ctx(pki), "localhost")
    rc, rs = pump(client, server, step=7)
    assert_paired(rc, rs)
    assert server.kind == KIND_TLS


def test_wrong_kind_is_refused_naming_what_the_receiver_expects(pki):
    from ftx.core.secure.handshake import KIND_KEYS, KIND_TLS, ServerHandshake

    from .handshake_pair import sigma_pair

    keys_client, _ = sigma_pair()
    tls_receiver = ServerHandshake({KIND_TLS: tlsconfig.receiver_handshakes(pki.server.cert, pki.server.key)})
    rc, rs = pump(keys_client, tls_receiver)
    assert_refused(rc, rs, "the receiver refused: this receiver expects TLS", "give the sender --tls-ca")

    _, keys_receiver = sigma_pair()
    assert isinstance(keys_receiver, ServerHandshake) and KIND_KEYS in keys_receiver.kinds
    rc, rs = pump(TlsClientHandshake(client_ctx(pki), "localhost"), keys_receiver)
    assert_refused(rc, rs, "this receiver expects identity keys, the sender offered TLS", "offered TLS")
