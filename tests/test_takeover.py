"""Who may take over a destination another connection is writing (issue #11's review, item 3).

A new connection used to take over a partial from a live connection whenever both
carried the same SENDER_ID -- an id that is not a credential (it travels in clear
with --insecure, and any sender can present any id).  Now that connections are
authenticated, only a connection authenticated with the same credential as the one
it would replace (the same sender key, the same TLS client certificate; a pairing-code
session never, each code being good for one session) may take over, and it must carry
the same SENDER_ID as well.  Any other gets RESULT BUSY with a reason, and the
running transfer is not disturbed.  Real ``ftx`` processes, two keys, one receiver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ftx.core.secure import Established, PeerIdentity
from ftx.credentials import config_dir, create_identity, load_identity, public_line

from .helpers import journal_records, second_sender_busy, wait_for, write_random

pytestmark = pytest.mark.timeout(120)
MIB = 1 << 20


def _send(state_dir, *args: str) -> subprocess.Popen:
    env = dict(os.environ, XDG_STATE_HOME=str(state_dir))
    return subprocess.Popen([sys.executable, "-m", "ftx", "send", *args, "--json", "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def two_keys(tmp_path):
    """(path of a second identity, an authorized_keys file listing the tests' own key and it)."""
    other = tmp_path / "keys" / "other"
    other.parent.mkdir(mode=0o700)
    ident = create_identity(str(other), "the other sender")
    mine = load_identity(os.path.join(config_dir(), "identity"), create=False)
    keys = tmp_path / "keys" / "authorized_keys"
    keys.write_text(public_line(mine.public, "the tests' own identity") + "\n"
                    + public_line(ident.public, "the other sender") + "\n")
    keys.chmod(0o600)
    return str(other), str(keys)


def _under_way(dst, name: str) -> bool:
    return journal_records(dst, name) > 0


def test_another_key_cannot_take_over_even_with_the_same_sender_id(tmp_path, receiver_factory, two_keys):
    """The second sender presents the first one's SENDER_ID (it was in clear, or copied) but is
    authenticated with another key: BUSY, and the first transfer completes undisturbed."""
    other, keys = two_keys
    r = receiver_factory("--authorized-keys", keys)
    a_src, b_src = tmp_path / "a" / "big.bin", tmp_path / "b" / "big.bin"
    a_data = write_random(a_src, 6 * MIB, seed=1)
    write_random(b_src, 6 * MIB, seed=2)
    state = tmp_path / "state"  # one sender id for both
    a = _send(state, str(a_src), r.dest, "--max-rate", "1M", "--chunk-size", "256K")

    def second():
        wait_for(lambda: _under_way(r.dir, "big.bin"), what="the first transfer to be under way")
        return _send(state, str(b_src), r.dest, "--identity", other)

    second_sender_busy(a, second, "busy: another sender holds this transfer", "a different key")
    assert (r.dir / "big.bin").read_bytes() == a_data


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_the_same_key_takes_over_a_connection_left_by_a_killed_sender(tmp_path, receiver_factory, transport):
    """SIGKILL: over UDP the old session lingers until the idle timeout (no FIN); over TCP the
    sender is stopped (SIGSTOP) first, so that its connection is alive when the re-run arrives.
    The re-run, same key and same sender id, takes over at once and completes."""
    r = receiver_factory("--idle-timeout", "60")
    udp = ["--udp"] if transport == "udp" else []
    src = tmp_path / "src" / "big.bin"
    data = write_random(src, 6 * MIB, seed=3)
    first = _send(tmp_path / "state", str(src), r.dest, "--max-rate", "1M", "--chunk-size", "256K", *udp)
    try:
        wait_for(lambda: _under_way(r.dir, "big.bin"), what="the first transfer to be under way")
        if transport == "tcp":
            first.send_signal(signal.SIGSTOP)  # alive but silent: its connection stays open
        again = _send(tmp_path / "state", str(src), r.dest, *udp)
        _out, err = again.communicate(timeout=40)
        assert again.returncode == 0, err
    finally:
        first.kill()
        first.communicate(timeout=10)
    assert (r.dir / "big.bin").read_bytes() == data


def _stop_and_take_over(r, tmp_path, first: subprocess.Popen, src, data: bytes, *args: str) -> None:
    """Stop ``first`` (its connection stays open), send the same file again with ``args``: it
    takes over and completes."""
    first.send_signal(signal.SIGSTOP)
    again = _send(tmp_path / "state", str(src), r.dest, *args)
    _out, err = again.communicate(timeout=40)
    assert again.returncode == 0, err
    assert (r.dir / src.name).read_bytes() == data


def test_tls_another_client_certificate_cannot_take_over_and_the_same_one_can(tmp_path, receiver_factory):
    from .tls_pki import CA

    ca = CA(tmp_path / "pki")
    server = ca.issue("receiver.example", ["localhost", "127.0.0.1"], stem="server")
    one, two = ca.issue("one.example", client=True, stem="one"), ca.issue("two.example", client=True, stem="two")
    r = receiver_factory("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(ca.path))
    tls = lambda cert: ["--tls-ca", str(ca.path), "--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]  # noqa: E731
    src = tmp_path / "src" / "big.bin"
    data = write_random(src, 6 * MIB, seed=4)
    first = _send(tmp_path / "state", str(src), r.dest, "--max-rate", "1M", "--chunk-size", "256K", *tls(one))
    try:
        wait_for(lambda: _under_way(r.dir, "big.bin"), what="the first transfer to be under way")
        other = _send(tmp_path / "state", str(src), r.dest, *tls(two))  # same sender id, another certificate
        _out, err = other.communicate(timeout=30)
        assert other.returncode == 1 and "a different certificate" in err, err
        assert first.poll() is None  # undisturbed
        _stop_and_take_over(r, tmp_path, first, src, data, *tls(one))
    finally:
        first.kill()
        first.communicate(timeout=10)


def test_insecure_keeps_the_sender_id_rule(tmp_path, receiver_factory):
    """--insecure has no credential: the same SENDER_ID takes over, as before (protocol.md 6.1)."""
    r = receiver_factory("--insecure")
    src = tmp_path / "src" / "big.bin"
    data = write_random(src, 6 * MIB, seed=5)
    first = _send(tmp_path / "state", str(src), r.dest, "--insecure", "--max-rate", "1M", "--chunk-size", "256K")
    try:
        wait_for(lambda: _under_way(r.dir, "big.bin"), what="the first transfer to be under way")
        _stop_and_take_over(r, tmp_path, first, src, data, "--insecure")
    finally:
        first.kill()
        first.communicate(timeout=10)


# -- what counts as the same credential ----------------------------------------------------------
def _est(peer: PeerIdentity, transcript: bytes = b"t") -> Established:
    return Established("aes-256-gcm", bytes(32), bytes(32), peer, transcript)


def test_the_credential_a_takeover_must_match():
    from ftx.security_setup import takeover_credential

    key_a = PeerIdentity("key", "SHA256:a", b"a" * 32)
    key_b = PeerIdentity("key", "SHA256:b", b"b" * 32)
    cert = PeerIdentity("tls", "SHA256:c", b"der")
    assert takeover_credential(_est(key_a)) == takeover_credential(_est(key_a, b"other session"))
    assert takeover_credential(_est(key_a)) != takeover_credential(_est(key_b))
    assert takeover_credential(_est(cert)) not in (None, takeover_credential(_est(key_a)))
    # nothing to match: a pairing-code session, a TLS sender without a certificate
    assert takeover_credential(_est(PeerIdentity("code", name="code"))) is None
    assert takeover_credential(_est(PeerIdentity("tls"))) is None
    assert takeover_credential(None) == ""  # --insecure: the sender id alone decides, as before




def test_the_takeover_rule():
    from types import SimpleNamespace as S

    from ftx.security_setup import takeover_refusal

    key_a, key_b = PeerIdentity("key", "SHA256:a", b"a" * 32), PeerIdentity("key", "SHA256:b", b"b" * 32)
    old = S(identity=b"id", established=_est(key_a))
    assert takeover_refusal(S(identity=b"id", established=_est(key_a, b"new")), old) is None
    assert "a different key" in takeover_refusal(S(identity=b"id", established=_est(key_b)), old)
    assert "transfer identity" in takeover_refusal(S(identity=b"other", established=_est(key_a)), old)
    assert "transfer identity" in takeover_refusal(S(identity=b"", established=_est(key_a)), S(identity=b"",
                                                                                              established=_est(key_a)))
    code = S(identity=b"id", established=_est(PeerIdentity("code", name="code")))
    assert "pairing-code session cannot take over" in takeover_refusal(code, S(identity=b"id", established=code.established))
    assert takeover_refusal(S(identity=b"id", established=None), S(identity=b"id", established=None)) is None  # --insecure
    assert "transfer identity" in takeover_refusal(old, old)
