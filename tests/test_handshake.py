"""The keys (SIGMA-I) and pairing-code (SPAKE2) handshakes, bytes only, two peers in memory."""

from __future__ import annotations

import pytest

from ftx.core.frames import FrameType, encode_frame
from ftx.core.messages import ROLE_SENDER, Hello
from ftx.core.secure import AuthError
from ftx.core.secure.handshake import (
    HANDSHAKE_FRAME,
    KIND_CODE,
    KIND_KEYS,
    MAX_MESSAGE,
    ServerHandshake,
    encode_message,
    peer_error,
    refusal_frame,
)
from ftx.core.secure.keys import AES_256_GCM, CHACHA20_POLY1305, Direction
from ftx.core.secure.pake import normalize_code
from ftx.core.secure.sigma import fingerprint, raw_public
from ftx.errors import ErrorCode, FtxError, PeerError, RemoteProtocolError

from .handshake_pair import (
    CLIENT_KEY,
    OTHER_KEY,
    SERVER_KEY,
    counter_rng,
    only,
    pake_pair,
    pump,
    sigma_pair,
)

PAIRS = {"keys": sigma_pair, "code": pake_pair}


def assert_agree(client, server):
    c, s = client.result, server.result
    assert client.done and server.done
    assert c.cipher == s.cipher
    assert c.send_secret == s.recv_secret and c.recv_secret == s.send_secret
    assert c.send_secret != c.recv_secret
    assert c.transcript == s.transcript and len(c.transcript) == 32
    # the secrets really key a channel both ways
    sealed = Direction(c.cipher, c.send_secret).seal(0, b"HELLO", b"aad")
    assert Direction(s.cipher, s.recv_secret).open(0, sealed, b"aad") == b"HELLO"


# -- success ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", PAIRS)
@pytest.mark.parametrize("split", [0, 1, 7])
def test_success_stops_at_the_first_sealed_byte(mode, split):
    client, server = PAIRS[mode]()
    out = pump(client, server, split=split, trailing=(b"client sealed", b"server sealed"))
    assert out.client_error is None and out.server_error is None
    assert_agree(client, server)
    # receive never consumed a byte past the peer's last handshake message
    assert out.leftover == [b"server sealed", b"client sealed"]


def test_keys_mode_proves_both_identities():
    client, server = sigma_pair()
    pump(client, server)
    assert client.result.peer.public == raw_public(SERVER_KEY)
    assert client.result.peer.fingerprint == fingerprint(raw_public(SERVER_KEY))
    assert server.result.peer.public == raw_public(CLIENT_KEY)
    assert server.result.peer.kind == client.result.peer.kind == "key"
    assert server.kind == KIND_KEYS


def test_code_mode_gives_the_sender_the_receivers_fingerprint():
    client, server = pake_pair()
    pump(client, server)
    assert client.result.peer.kind == "code"
    assert client.result.peer.fingerprint == fingerprint(raw_public(SERVER_KEY))
    assert server.result.peer.kind == "code" and server.result.peer.fingerprint == ""


def test_fingerprint_is_ssh_style():
    fp = fingerprint(bytes(32))
    assert fp.startswith("SHA256:") and not fp.endswith("=") and len(fp) == 7 + 43


def test_code_is_normalised():
    assert normalize_code(" 7 Olive_Tiger ") == normalize_code("7-olive-tiger") == b"7-olive-tiger"
    client, server = pake_pair(client_code=" 7 OLIVE tiger", server_code="7-olive-tiger")
    pump(client, server)
    assert_agree(client, server)


@pytest.mark.parametrize("mode", PAIRS)
def test_fresh_randomness_gives_fresh_keys(mode):
    a = PAIRS[mode](seed=1)
    b = PAIRS[mode](seed=2)
    pump(*a), pump(*b)
    assert a[0].result.send_secret != b[0].result.send_secret


@pytest.mark.parametrize("mode", PAIRS)
def test_same_randomness_same_bytes(mode):
    """Vectors are reproducible: every random byte comes from the injected source."""
    a, b = pump(*PAIRS[mode]()), pump(*PAIRS[mode]())
    assert a.streams == b.streams


@pytest.mark.parametrize("client_ciphers,server_ciphers,chosen", [
    ([AES_256_GCM, CHACHA20_POLY1305], None, AES_256_GCM),
    ([CHACHA20_POLY1305, AES_256_GCM], None, CHACHA20_POLY1305),
    ([AES_256_GCM, CHACHA20_POLY1305], [CHACHA20_POLY1305], CHACHA20_POLY1305),
])
def test_the_server_picks_the_clients_first_cipher_it_takes(client_ciphers, server_ciphers, chosen):
    client, server = sigma_pair(client_ciphers=client_ciphers, server_ciphers=server_ciphers)
    pump(client, server)
    assert client.result.cipher == server.result.cipher == chosen


def test_no_common_cipher_is_refused():
    client, server = sigma_pair(client_ciphers=[AES_256_GCM], server_ciphers=[CHACHA20_POLY1305])
    out = pump(client, server)
    assert isinstance(out.server_error, AuthError) and "no common cipher" in str(out.server_error)
    assert isinstance(out.client_error, AuthError) and "the receiver refused: no common cipher" in str(out.client_error)


# -- refusals -------------------------------------------------------------------------
def test_wrong_code_is_refused_on_both_sides():
    client, server = pake_pair(server_code="8-olive-tiger")
    out = pump(client, server)
    assert isinstance(out.server_error, AuthError) and str(out.server_error) == "wrong code"
    assert isinstance(out.client_error, AuthError)
    assert str(out.client_error) == "the receiver refused: wrong code"
    assert not client.done and not server.done and client.result is None and server.result is None


def test_unknown_sender_key_is_refused_with_the_policys_reason():
    client, server = sigma_pair(client_key=OTHER_KEY, authorize=only(CLIENT_KEY))
    out = pump(client, server)
    fp = fingerprint(raw_public(OTHER_KEY))
    assert isinstance(out.server_error, AuthError) and str(out.server_error) == f"unknown key {fp}"
    assert not server.done and server.result is None
    # the receiver checks the sender's key after its own last flight: the sender is done by
    # then, and the refusal reaches it after the handshake (sealed, as everything the receiver
    # sends from its install_keys on) as an ERROR frame with code AUTH
    assert client.done and out.client_error is None
    err = peer_error(out.leftover[0][16:], "receiver")
    assert isinstance(err, AuthError) and str(err) == f"the receiver refused: unknown key {fp}"


def test_unexpected_receiver_key_is_refused_by_the_sender():
    client, server = sigma_pair(server_key=OTHER_KEY, verify=only(SERVER_KEY))
    out = pump(client, server)
    assert isinstance(out.client_error, AuthError) and "unknown key" in str(out.client_error)
    assert str(out.server_error).startswith("the sender refused: unknown key")
    assert not client.done and not server.done


def test_the_sender_learns_nothing_of_its_own_refusal_ahead_of_the_receiver_policy():
    """The sender's identity is only revealed to a receiver that proved its own."""
    seen = []
    client, server = sigma_pair(server_key=OTHER_KEY, verify=lambda p: seen.append(p) or "no")
    out = pump(client, server)
    assert len(seen) == 1 and out.streams[0].count(raw_public(CLIENT_KEY)) == 0


def test_identities_never_travel_in_clear():
    for pair in (sigma_pair, pake_pair):
        out = pump(*pair())
        for stream in out.streams:
            for k in (CLIENT_KEY, SERVER_KEY):
                assert raw_public(k) not in stream


@pytest.mark.parametrize("served,offered,expect", [
    ({KIND_CODE}, sigma_pair, "this receiver expects a pairing code, the sender offered identity keys"),
    ({KIND_KEYS}, pake_pair, "this receiver expects identity keys, the sender offered a pairing code"),
])
def test_wrong_kind_names_what_the_receiver_expects(served, offered, expect):
    client, _ = offered()
    server = ServerHandshake({k: (lambda: None) for k in served})
    out = pump(client, server)
    assert isinstance(out.server_error, AuthError) and str(out.server_error).startswith(expect)
    assert str(out.client_error).startswith("the receiver refused: " + expect)


def test_unknown_kind():
    server = ServerHandshake({KIND_KEYS: lambda: None})
    with pytest.raises(AuthError, match="unknown handshake"):
        server.receive(encode_message(9, 1, b"x"), 0.0)
    assert server.data_to_send().startswith(bytes([FrameType.ERROR]))
    with pytest.raises(AuthError):  # dead from here on
        server.receive(b"", 0.0)


# -- mismatched peers ---------------------------------------------------------------
@pytest.mark.parametrize("side", ["client", "server"])
def test_plaintext_hello_means_the_peer_runs_insecure(side):
    client, server = sigma_pair()
    hs = client if side == "client" else server
    client.data_to_send()
    hello = encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 4_259_840, 0, "ftx/0.1.0").encode())
    with pytest.raises(AuthError, match="the peer runs --insecure; plaintext needs --insecure on both sides"):
        hs.receive(hello, 0.0)
    # the insecure peer is told why, in an ERROR frame it understands
    answer = hs.data_to_send()
    assert answer == refusal_frame("the peer requires authentication; this side runs --insecure")


def test_the_hello_is_recognised_from_its_header_alone():
    client, _ = sigma_pair()
    hello = encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 4_259_840, 0, "ftx/0.1.0").encode())
    with pytest.raises(AuthError):
        client.receive(hello[:16], 0.0)


@pytest.mark.parametrize("code,cls", [(ErrorCode.AUTH, AuthError), (ErrorCode.BUSY, PeerError)])
def test_the_peers_error_frame_ends_the_handshake_with_its_reason(code, cls):
    client, _ = sigma_pair()
    client.data_to_send()
    with pytest.raises(cls, match="too many connections") as info:
        client.receive(refusal_frame("too many connections", code), 0.0)
    assert info.value.code == code
    assert client.data_to_send() == b""  # nothing is sent back to a peer that gave up


@pytest.mark.parametrize("junk", [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 400 Bad Request\r\n", b"\x16\x03\x01\x02\x00"])
def test_a_peer_that_is_not_ftx_fails_on_its_first_bytes(junk):
    for hs in (sigma_pair()[0], sigma_pair()[1]):
        with pytest.raises(RemoteProtocolError, match="peer does not speak ftx"):
            hs.receive(junk[:2], 0.0)


# -- malformed and hostile input ---------------------------------------------------------
@pytest.mark.parametrize("mode", PAIRS)
def test_tampering_with_any_byte_fails_the_handshake(mode):
    """A bit flipped anywhere in either direction: a typed error, never two sides done.
    (Every byte is covered by a frame checksum, the transcript or an AEAD tag.)"""
    clean = pump(*PAIRS[mode]())
    stride = 1 if mode == "keys" else 5  # SPAKE2 is pure Python: sample its positions
    for direction in (0, 1):
        for pos in range(0, len(clean.streams[direction]), stride):
            for bit in (0x01, 0x80):
                def tamper(d, start, data, pos=pos, bit=bit, direction=direction):
                    if d == direction and start <= pos < start + len(data):
                        data = bytearray(data)
                        data[pos - start] ^= bit
                    return bytes(data)

                client, server = PAIRS[mode]()
                out = pump(client, server, tamper=tamper)
                assert not (client.done and server.done), (direction, pos, bit)
                for err in (out.client_error, out.server_error):
                    assert err is None or isinstance(err, (AuthError, RemoteProtocolError, PeerError)), err
                if not (out.client_error or out.server_error):
                    # a length made larger: the receiving side waits for the rest, and the
                    # driver's handshake timeout ends it
                    assert 4 <= pos - _frame_start(clean.streams[direction], pos) < 8, (direction, pos)


def _frame_start(stream: bytes, pos: int) -> int:
    k = 0
    while True:
        n = 16 + int.from_bytes(stream[k + 4 : k + 8], "big")
        if pos < k + n:
            return k
        k += n


def _checksummed(frame: bytes) -> bytes:
    """``frame`` with its checksum made right again (a tamperer that fixes XXH3 up)."""
    from ftx.core.frames import HEADER

    ftype, flags, _, _, _ = HEADER.unpack_from(frame)
    return encode_frame(ftype, frame[16:], flags)


@pytest.mark.parametrize("mode", PAIRS)
def test_tampering_with_checksums_fixed_up_still_fails(mode):
    clean = pump(*PAIRS[mode]())
    stride = 1 if mode == "keys" else 7
    for direction in (0, 1):
        stream = clean.streams[direction]
        frames, k = [], 0
        while k < len(stream):
            n = 16 + int.from_bytes(stream[k + 4 : k + 8], "big")
            frames.append((k, n))
            k += n
        for start, n in frames:
            for off in range(18, n, stride):  # payload bytes after kind and type
                def tamper(d, s0, data, start=start, n=n, off=off, direction=direction):
                    if d != direction or not s0 <= start < s0 + len(data):
                        return data
                    data = bytearray(data)
                    frame = bytearray(data[start - s0 : start - s0 + n])
                    frame[off] ^= 0x01
                    data[start - s0 : start - s0 + n] = _checksummed(bytes(frame))
                    return bytes(data)

                client, server = PAIRS[mode]()
                out = pump(client, server, tamper=tamper)
                assert not (client.done and server.done), (direction, start, off)
                assert isinstance(out.client_error or out.server_error, (AuthError, RemoteProtocolError, PeerError))


@pytest.mark.parametrize("mode", PAIRS)
def test_truncated_messages_are_protocol_errors(mode):
    clean = pump(*PAIRS[mode]())
    for direction in (0, 1):
        stream = bytes(clean.streams[direction])
        k = 0
        while k < len(stream):
            n = 16 + int.from_bytes(stream[k + 4 : k + 8], "big")
            frame = stream[k : k + n]
            short = encode_frame(HANDSHAKE_FRAME, frame[16:-1])
            client, server = PAIRS[mode]()
            if direction == 0:
                hs, prefix = server, stream[:k]
            else:
                hs, prefix = client, stream[:k]
            with pytest.raises((RemoteProtocolError, AuthError)):
                hs.receive(prefix, 0.0)
                hs.receive(short, 0.0)
            k += n


@pytest.mark.parametrize("mode", PAIRS)
def test_message_out_of_order_is_a_protocol_error(mode):
    client, server = PAIRS[mode]()
    first = client.data_to_send()
    again = first  # a second ClientHello
    server.receive(first, 0.0)
    with pytest.raises(RemoteProtocolError, match="message type 1 where"):
        server.receive(again, 0.0)


def test_oversize_length_fails_before_the_payload_is_buffered():
    import struct

    _, server = sigma_pair()
    header = struct.pack(">BBHIQ", HANDSHAKE_FRAME, 0, 0, MAX_MESSAGE + 1, 0)
    with pytest.raises(RemoteProtocolError, match="handshake message of 16385 bytes"):
        server.receive(header, 0.0)
    assert server.data_to_send().startswith(bytes([FrameType.ERROR]))


@pytest.mark.parametrize("head", [
    bytes([HANDSHAKE_FRAME, 1, 0, 0]),  # flags
    bytes([HANDSHAKE_FRAME, 0, 0, 1]),  # reserved
    bytes([FrameType.OFFER, 0, 0, 0]) + bytes(12),  # an ftx frame that has no place here
])
def test_bad_headers(head):
    client, _ = sigma_pair()
    with pytest.raises(RemoteProtocolError):
        client.receive(head, 0.0)


def test_eof_during_the_handshake():
    client, server = sigma_pair()
    with pytest.raises(RemoteProtocolError, match="closed the connection during the handshake"):
        server.receive_eof()
    with pytest.raises(RemoteProtocolError, match="the receiver closed"):
        client.receive_eof()


def test_a_dead_handshake_stays_dead():
    client, server = pake_pair(server_code="nope")
    out = pump(client, server)
    assert out.server_error
    with pytest.raises(AuthError):
        server.receive(b"\x10", 0.0)
    assert not server.keys_ready and server.result is None


def test_keys_ready_only_after_the_last_flight_was_taken():
    client, server = sigma_pair(dispatch=False)
    server.receive(client.data_to_send(), 0.0)
    assert server.result is not None and not server.keys_ready  # flight still queued
    flight = server.data_to_send()
    assert server.keys_ready and not server.done  # sealed sending may start; the sender is unproven
    assert server.result.peer.fingerprint == ""
    client.receive(flight, 0.0)
    assert client.done and not client.keys_ready
    server.receive(client.data_to_send(), 0.0)
    assert client.keys_ready and server.done


def test_randomness_is_injected():
    rng = counter_rng(5)
    assert rng(40) != rng(40)
    assert counter_rng(5)(40) == counter_rng(5)(40)


def test_errors_are_ftx_errors():
    for cls in (AuthError, RemoteProtocolError, PeerError):
        assert issubclass(cls, FtxError)


# -- a peer that lies about its proof ------------------------------------------------------
class LyingKey:
    """Claims one identity and signs with another (as a thief of a public key would)."""

    def __init__(self, claimed, signer):
        self._claimed, self._signer = claimed, signer

    def public_key(self):
        return self._claimed.public_key()

    def sign(self, data):
        return self._signer.sign(data)


@pytest.mark.parametrize("liar", ["sender", "receiver"])
def test_a_signature_by_another_key_is_refused(liar):
    lying = LyingKey(CLIENT_KEY if liar == "sender" else SERVER_KEY, OTHER_KEY)
    if liar == "sender":
        client, server = sigma_pair(client_key=lying, authorize=only(CLIENT_KEY))
    else:
        client, server = sigma_pair(server_key=lying, verify=only(SERVER_KEY))
    out = pump(client, server)
    victim_error = out.server_error if liar == "sender" else out.client_error
    assert isinstance(victim_error, AuthError)
    assert str(victim_error) == f"the {liar}'s identity signature does not verify"
    assert not server.done


def test_code_mode_receiver_signature_by_another_key_is_refused():
    client, server = pake_pair(server_key=LyingKey(SERVER_KEY, OTHER_KEY))
    out = pump(client, server)
    assert str(out.client_error) == "the receiver's identity signature does not verify"
    assert not client.done


@pytest.mark.parametrize("liar", ["receiver", "sender"])
def test_a_wrong_finished_mac_is_refused(monkeypatch, liar):
    """A right signature but a Finished that is not the key exchange's (the MAC proves that
    the signer took part in this exchange): the liar's own Finished is spoiled."""
    from ftx.core.secure import sigma

    real = sigma.finished_mac
    calls = []

    def spoiled(nth):
        def finished_mac(base, transcript_hash):
            calls.append(base)
            return bytes(32) if len(calls) == nth else real(base, transcript_hash)
        return finished_mac

    client, server = sigma_pair(dispatch=False)
    if liar == "receiver":
        monkeypatch.setattr(sigma, "finished_mac", spoiled(1))  # the one it sends
    server.receive(client.data_to_send(), 0.0)
    monkeypatch.setattr(sigma, "finished_mac", spoiled(2) if liar == "sender" else real)
    calls.clear()
    if liar == "receiver":
        with pytest.raises(AuthError, match="the receiver's Finished does not verify"):
            client.receive(server.data_to_send(), 0.0)
        assert not client.done
        return
    client.receive(server.data_to_send(), 0.0)  # 1st call checks the receiver's, 2nd is its own
    monkeypatch.setattr(sigma, "finished_mac", real)
    with pytest.raises(AuthError, match="the sender's Finished does not verify"):
        server.receive(client.data_to_send(), 0.0)
    assert not server.done


@pytest.mark.parametrize("share", [bytes(32), bytes([1]) + bytes(31)])
def test_a_low_order_key_share_is_refused(share):
    from ftx.core.secure.handshake import encode_message

    client, server = sigma_pair()
    hello = client.data_to_send()
    body = bytearray(hello[18:])
    body[32:64] = share
    with pytest.raises(AuthError, match="key share is invalid"):
        server.receive(encode_message(KIND_KEYS, 1, bytes(body)), 0.0)


# -- what an unauthenticated peer can make us print or log --------------------------------
HOSTILE_REASON = "ok\n\rftx: sent 3 files, all verified\x1b[2J\x1b]0;pwned\x07\u202edxt.exe\x00\x9b"


def _no_controls(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_peers_error_reason_cannot_forge_lines_or_drive_the_terminal(side):
    """The reason in a peer's ERROR during the handshake (the peer is not proven: anyone can
    send one) ends up in our one-line error and the receiver's log: control characters,
    escape sequences and bidi overrides come out as visible escapes, on one line."""
    client, server = sigma_pair()
    hs = client if side == "client" else server
    with pytest.raises(FtxError) as info:
        hs.receive(refusal_frame(HOSTILE_REASON), 0.0)
    text = str(info.value)
    assert _no_controls(text), repr(text)
    assert "\\n" in text and "\\x1b[2J" in text and "ftx: sent 3 files" in text  # shown, as what it is
    assert "\\u202e" in text


def test_the_driver_also_neuters_a_peers_error_reason():
    from ftx.securing import _peer_error

    exc = _peer_error(refusal_frame(HOSTILE_REASON))
    assert isinstance(exc, AuthError) and _no_controls(str(exc)), repr(str(exc))
    assert "\\x1b" in str(exc)


# every X25519 point of small order (and the non-canonical encodings of some), as libsodium lists them
LOW_ORDER = [bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
)]


@pytest.mark.parametrize("share", LOW_ORDER, ids=lambda s: s[:2].hex())
def test_every_low_order_share_is_refused_by_both_sides(share):
    from ftx.core.secure.handshake import encode_message

    client, server = sigma_pair(dispatch=False)
    hello = client.data_to_send()
    body = bytearray(hello[18:])
    body[32:64] = share
    with pytest.raises(AuthError, match="key share is invalid"):
        server.receive(encode_message(KIND_KEYS, 1, bytes(body)), 0.0)
    client, server = sigma_pair(dispatch=False)
    server.receive(client.data_to_send(), 0.0)
    flight = server.data_to_send()
    n = 16 + int.from_bytes(flight[4:8], "big")  # the ServerHello frame
    body = bytearray(flight[18:n])
    body[32:64] = share
    with pytest.raises(AuthError, match="key share is invalid"):
        client.receive(encode_message(KIND_KEYS, 2, bytes(body)), 0.0)


@pytest.mark.parametrize("mode", PAIRS)
def test_a_senders_own_hello_reflected_back_is_refused(mode):
    """Reflection: an attacker answers the sender with the sender's own ClientHello."""
    client, _ = PAIRS[mode]()
    hello = client.data_to_send()
    with pytest.raises(RemoteProtocolError, match="message type 1 where 2 was expected"):
        client.receive(hello, 0.0)
    assert not client.done and client.result is None


def test_code_mode_a_reflected_spake2_message_is_refused():
    """The sender's own SPAKE2 message relabelled as the receiver's ServerHello: SPAKE2's side
    byte (and its reflection check) refuse it; keys mode needs no such check, as a reflected
    share leaves the attacker without the receiver's signature (ServerAuth)."""
    from ftx.core.secure.handshake import encode_message

    client, _ = pake_pair()
    body = client.data_to_send()[18:]
    random, spake, ciphers = body[:32], body[32:65], body[66:]
    with pytest.raises(RemoteProtocolError, match="SPAKE2 message is invalid"):
        client.receive(encode_message(KIND_CODE, 2, random + spake + ciphers[:1]), 0.0)
    client, _ = pake_pair()
    body = client.data_to_send()[18:]
    random, spake, ciphers = body[:32], body[32:65], body[66:]
    with pytest.raises(RemoteProtocolError, match="SPAKE2 message is invalid"):
        client.receive(encode_message(KIND_CODE, 2, random + b"B" + spake[1:] + ciphers[:1]), 0.0)
    assert not client.done and client.result is None


# -- which refusals can be sealed (the peer provably holds our keys) --------------------------
def test_a_refusal_after_the_peers_last_message_opened_is_sealable():
    """Keys mode: the receiver judges ClientAuth after it opened under the handshake keys, so
    the sender has the receiver's traffic keys: the refusal can be sealed (authenticated)."""
    client, server = sigma_pair(dispatch=False, authorize=lambda peer: "key X is not authorized")
    server.receive(client.data_to_send(), 0.0)
    client.receive(server.data_to_send(), 0.0)
    assert client.done and not server.refusal_sealable
    with pytest.raises(AuthError, match="not authorized"):
        server.receive(client.data_to_send(), 0.0)
    assert server.refusal_sealable


def test_a_refusal_of_a_client_auth_that_did_not_open_stays_plaintext():
    client, server = sigma_pair(dispatch=False)
    server.receive(client.data_to_send(), 0.0)
    client.receive(server.data_to_send(), 0.0)
    last = bytearray(client.data_to_send())
    last[-1] ^= 1
    from ftx.core.frames import HEADER
    from ftx.core.checksum import frame_checksum
    ftype, flags, reserved, length, _ = HEADER.unpack_from(last, 0)
    HEADER.pack_into(last, 0, ftype, flags, reserved, length,
                     frame_checksum((ftype << 56) | (flags << 48) | (reserved << 32) | length, bytes(last[16:])))
    with pytest.raises(AuthError, match="did not decrypt"):
        server.receive(bytes(last), 0.0)
    assert not server.refusal_sealable  # the sender may hold other keys: plaintext it is


def test_code_mode_sender_refusing_the_receivers_key_can_seal():
    client, server = pake_pair(dispatch=False, verify=lambda peer: "not the receiver I expected")
    server.receive(client.data_to_send(), 0.0)
    client.receive(server.data_to_send(), 0.0)
    server.receive(client.data_to_send(), 0.0)
    assert server.done
    with pytest.raises(AuthError, match="not the receiver I expected"):
        client.receive(server.data_to_send(), 0.0)
    assert client.refusal_sealable


def test_a_wrong_code_refusal_stays_plaintext():
    client, server = pake_pair(server_code=b"8-olive-tiger", dispatch=False)
    server.receive(client.data_to_send(), 0.0)
    client.receive(server.data_to_send(), 0.0)
    with pytest.raises(AuthError, match="wrong code"):
        server.receive(client.data_to_send(), 0.0)
    assert not server.refusal_sealable  # the receiver has no keys installed yet
