"""ftx/credentials.py: identity files, authorized_keys, known_hosts (TOFU, pinning), pairing codes."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import stat

import pytest

from ftx import credentials as cr
from ftx.core.secure import PeerIdentity
from ftx.words import INDEX, MAX_NUMBER, WORDS


def peer_of(identity: cr.Identity) -> PeerIdentity:
    return PeerIdentity(kind="key", fingerprint=identity.fingerprint, public=identity.public)


def test_fingerprint_is_what_ssh_prints():
    raw = bytes(range(32))
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert cr.fingerprint(raw) == expected and not expected.endswith("=") and len(expected) == 7 + 43
    assert cr.normalize_fingerprint(expected[7:]) == expected
    assert cr.normalize_fingerprint(" sha256:" + expected[7:] + "=") == expected
    with pytest.raises(cr.CredentialError):
        cr.normalize_fingerprint("SHA256:short")


def test_identity_created_0600_in_a_0700_directory_and_never_overwritten(tmp_path):
    path = tmp_path / "cfg" / "ftx" / "identity"
    ident = cr.load_identity(str(path))
    assert ident.created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    raw, comment = cr.parse_public_line((tmp_path / "cfg" / "ftx" / "identity.pub").read_text())
    assert raw == ident.public and comment
    before = path.read_bytes()
    again = cr.load_identity(str(path))
    assert not again.created and again.public == ident.public and path.read_bytes() == before
    with pytest.raises(cr.CredentialError, match="already exists"):
        cr.create_identity(str(path))
    assert path.read_bytes() == before


def test_identity_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "identity"
    cr.create_identity(str(path))
    path.chmod(0o644)
    with pytest.raises(cr.CredentialError, match="chmod 600"):
        cr.load_identity(str(path))


def test_identity_garbage_and_missing_without_create(tmp_path):
    path = tmp_path / "identity"
    with pytest.raises(cr.CredentialError, match="ftx keygen"):
        cr.load_identity(str(path), create=False)
    assert not path.exists()
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(cr.CredentialError, match="not an unencrypted PEM"):
        cr.load_identity(str(path))


def test_existing_parent_directory_keeps_its_mode(tmp_path):
    tmp_path.chmod(0o755)
    cr.create_identity(str(tmp_path / "id"))
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_authorized_keys_accepts_listed_refuses_others_and_rereads(tmp_path):
    a = cr.create_identity(str(tmp_path / "a"))
    b = cr.create_identity(str(tmp_path / "b"))
    path = tmp_path / "authorized_keys"
    path.write_text("# my senders\n\n" + cr.public_line(a.public, "alice laptop") + "\n")
    keys = cr.AuthorizedKeys(str(path))
    assert keys.keys[a.public] == "alice laptop"
    assert keys.authorize(peer_of(a)) is None
    refusal = keys.authorize(peer_of(b))
    assert b.fingerprint in refusal and str(path) not in refusal  # the peer learns no local path
    with open(path, "a") as f:
        f.write(cr.public_line(b.public) + "\n")
    assert keys.authorize(peer_of(b)) is None  # no restart needed


def test_authorized_keys_missing_file_refuses_everyone(tmp_path):
    a = cr.create_identity(str(tmp_path / "a"))
    keys = cr.AuthorizedKeys(str(tmp_path / "nope"))
    assert "not authorized" in keys.authorize(peer_of(a))


@pytest.mark.parametrize("line, why", [
    ("ssh-ed25519 AAAA", "expected"),
    ("ftx-ed25519", "expected"),
    ("ftx-ed25519 !!!!", "not base64"),
    ("ftx-ed25519 " + base64.b64encode(b"x" * 31).decode(), "31 bytes"),
])
def test_authorized_keys_bad_line_names_file_and_line(tmp_path, line, why):
    path = tmp_path / "authorized_keys"
    good = cr.public_line(bytes(32), "ok")
    path.write_text(f"# c\n{good}\n{line}\n")
    with pytest.raises(cr.CredentialError) as info:
        cr.AuthorizedKeys(str(path))
    assert f"{path}:3: " in str(info.value) and why in str(info.value) and "\n" not in str(info.value)


def test_known_hosts_first_contact_then_same_then_changed(tmp_path, caplog):
    a = cr.create_identity(str(tmp_path / "a"))
    b = cr.create_identity(str(tmp_path / "b"))
    path = tmp_path / "cfg" / "known_hosts"
    kh = cr.KnownHosts(str(path), "127.0.0.1", 4000)
    with caplog.at_level(logging.WARNING, logger="ftx"):
        assert kh.verify(peer_of(a)) is None
    assert kh.first_contact
    assert f"first contact with 127.0.0.1:4000: its key is {a.fingerprint}; remembered in {path}" in caplog.text
    assert path.read_text() == f"127.0.0.1:4000 {a.fingerprint}\n"
    assert cr.KnownHosts(str(path), "127.0.0.1", 4000).verify(peer_of(a)) is None
    assert cr.KnownHosts(str(path), "127.0.0.1", 4001).verify(peer_of(b)) is None  # another port, another host
    refusal = cr.KnownHosts(str(path), "127.0.0.1", 4000).verify(peer_of(b))
    assert a.fingerprint in refusal and b.fingerprint in refusal and f"line 1 of {path}" in refusal
    assert path.read_text().count("\n") == 2  # the changed key was not written


def test_known_hosts_ipv6_label(tmp_path):
    a = cr.create_identity(str(tmp_path / "a"))
    kh = cr.KnownHosts(str(tmp_path / "kh"), "::1", 7)
    kh.verify(peer_of(a))
    assert (tmp_path / "kh").read_text().startswith("[::1]:7 SHA256:")


def test_expected_fingerprint_pins_without_writing(tmp_path):
    a = cr.create_identity(str(tmp_path / "a"))
    b = cr.create_identity(str(tmp_path / "b"))
    path = tmp_path / "known_hosts"
    assert cr.KnownHosts(str(path), "h", 1, expect=a.fingerprint).verify(peer_of(a)) is None
    refusal = cr.KnownHosts(str(path), "h", 1, expect=a.fingerprint[7:]).verify(peer_of(b))
    assert a.fingerprint in refusal and b.fingerprint in refusal
    assert not path.exists()


def test_words_and_code_entropy():
    assert len(WORDS) == 256 == len(set(WORDS)) and all(w.isalpha() and w.islower() for w in WORDS)
    assert math.log2(MAX_NUMBER * 256 * 256) > 25.9
    codes = {cr.new_code() for _ in range(200)}
    assert len(codes) > 190  # random, not a constant
    for code in codes:
        n, w1, w2 = code.split("-")
        assert 1 <= int(n) <= MAX_NUMBER and w1 in INDEX and w2 in INDEX
        assert cr.parse_code(code) == code


def test_parse_code_normalizes_and_refuses():
    assert cr.parse_code("  07 Olive  TIGER\n") == "7-olive-tiger"
    for bad in ["", "olive-tiger", "7-olive", "0-olive-tiger", "1000-olive-tiger", "7-olive-xyzzy", "7-olive-tiger-x"]:
        with pytest.raises(cr.CredentialError, match="7-olive-tiger"):
            cr.parse_code(bad)


def test_read_code_sources(tmp_path):
    f = tmp_path / "code"
    f.write_text("12-lion-moon\nignored\n")
    assert cr.read_code(False, str(f), environ={"FTX_CODE": "3-oak-owl"}) == "12-lion-moon"  # file first
    assert cr.read_code(False, None, environ={"FTX_CODE": "3-oak-owl"}) == "3-oak-owl"
    assert cr.read_code(False, None, environ={}) is None  # no code mode
    with pytest.raises(cr.CredentialError, match="FTX_CODE"):
        cr.read_code(True, None, environ={}, isatty=False)
    with pytest.raises(cr.CredentialError, match="--code-file"):
        cr.read_code(False, str(tmp_path / "missing"), environ={})


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_authorized_keys_writable_by_others_is_refused(tmp_path, mode, caplog):
    """As ssh (StrictModes): a file that others may write lets them add their own key."""
    a = cr.create_identity(str(tmp_path / "a"))
    path = tmp_path / "authorized_keys"
    path.write_text(cr.public_line(a.public) + "\n")
    os.chmod(path, mode)
    with pytest.raises(cr.CredentialError) as info:
        cr.AuthorizedKeys(str(path))
    msg = str(info.value)
    assert str(path) in msg and "writable by others" in msg and f"chmod go-w {path}" in msg and "\n" not in msg
    # one that turns writable while the receiver runs: the keys read before stay, a warning says why
    os.chmod(path, 0o644)
    keys = cr.AuthorizedKeys(str(path))
    b = cr.create_identity(str(tmp_path / "b"))
    with open(path, "a") as f:
        f.write(cr.public_line(b.public) + "\n")
    os.chmod(path, mode)
    with caplog.at_level(logging.WARNING, logger="ftx"):
        assert "not authorized" in keys.authorize(peer_of(b))
    assert "writable by others" in caplog.text
    assert keys.authorize(peer_of(a)) is None
    # a chmod alone (same size and mtime) is noticed too
    os.chmod(path, 0o644)
    assert keys.authorize(peer_of(b)) is None
    os.chmod(path, mode)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ftx"):
        keys.authorize(peer_of(a))
    assert "writable by others" in caplog.text


def test_authorized_keys_in_a_directory_others_may_write_is_refused(tmp_path):
    """Others could replace the file by another one (rename) in a world-writable directory
    without the sticky bit."""
    shared = tmp_path / "shared"
    shared.mkdir()
    path = shared / "authorized_keys"
    path.write_text(cr.public_line(bytes(32)) + "\n")
    os.chmod(shared, 0o777)
    with pytest.raises(cr.CredentialError) as info:
        cr.AuthorizedKeys(str(path))
    assert f"directory {shared}" in str(info.value) and "writable by others" in str(info.value)
    os.chmod(shared, 0o1777)  # sticky, as /tmp: only the owner may replace the file
    assert cr.AuthorizedKeys(str(path)).keys


def test_authorized_keys_owned_by_another_user_is_refused(tmp_path):
    path = tmp_path / "authorized_keys"
    path.write_text(cr.public_line(bytes(32)) + "\n")
    os.chmod(path, 0o644)
    assert cr.AuthorizedKeys(str(path)).keys  # ours: fine
    if os.geteuid() != 0:  # only root can give a file away; as a user, the check above is the test
        return  # pragma: no cover
    os.chown(path, 65534, 65534)
    # root reading a file owned by someone else: that user may rewrite it
    with pytest.raises(cr.CredentialError) as info:
        cr.AuthorizedKeys(str(path))
    assert "owned by uid 65534" in str(info.value)


def test_authorized_keys_through_a_symlink_checks_the_file_it_names(tmp_path):
    real = tmp_path / "real"
    real.write_text(cr.public_line(bytes(32)) + "\n")
    os.chmod(real, 0o666)
    link = tmp_path / "authorized_keys"
    link.symlink_to(real)
    with pytest.raises(cr.CredentialError, match="writable by others"):
        cr.AuthorizedKeys(str(link))


@pytest.mark.parametrize("spelling", ["[::1]", "0:0:0:0:0:0:0:1", "::0001"])
def test_known_hosts_ipv6_spellings_are_one_host(tmp_path, spelling):
    a = cr.create_identity(str(tmp_path / "a"))
    b = cr.create_identity(str(tmp_path / "b"))
    cr.KnownHosts(str(tmp_path / "kh"), "::1", 7).verify(peer_of(a))
    refusal = cr.KnownHosts(str(tmp_path / "kh"), spelling, 7).verify(peer_of(b))
    assert refusal is not None and "HAS CHANGED" in refusal  # not a first contact under another label


def test_known_hosts_host_names_ignore_case(tmp_path):
    a = cr.create_identity(str(tmp_path / "a"))
    b = cr.create_identity(str(tmp_path / "b"))
    cr.KnownHosts(str(tmp_path / "kh"), "files.example", 7).verify(peer_of(a))
    assert "HAS CHANGED" in cr.KnownHosts(str(tmp_path / "kh"), "Files.EXAMPLE.", 7).verify(peer_of(b))


def test_identity_owned_by_another_user_is_refused(tmp_path):
    """Its owner can read it whatever its mode: the private key is not ours alone."""
    path = tmp_path / "identity"
    cr.create_identity(str(path))
    assert cr.load_identity(str(path), create=False).key  # ours: fine
    if os.geteuid() != 0:  # only root can give a file away; as a user, the check above is the test
        return  # pragma: no cover
    os.chown(path, 65534, 65534)
    with pytest.raises(cr.CredentialError) as info:
        cr.load_identity(str(path), create=False)
    assert "owned by uid 65534" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_known_hosts_writable_by_others_is_refused(tmp_path, mode):
    """As authorized_keys: whoever may write known_hosts may plant a key for a receiver."""
    a = cr.create_identity(str(tmp_path / "a"))
    path = tmp_path / "known_hosts"
    path.write_text(f"127.0.0.1:4000 {a.fingerprint}\n")
    os.chmod(path, mode)
    kh = cr.KnownHosts(str(path), "127.0.0.1", 4000)
    with pytest.raises(cr.CredentialError) as info:
        kh.check()
    msg = str(info.value)
    assert str(path) in msg and "writable by others" in msg and f"chmod go-w {path}" in msg and "\n" not in msg
    refusal = kh.verify(peer_of(a))  # during a handshake: a refusal, not a stray exception
    assert refusal is not None and "writable by others" in refusal
    assert path.read_text() == f"127.0.0.1:4000 {a.fingerprint}\n"
    os.chmod(path, 0o644)
    kh.check()
    assert kh.verify(peer_of(a)) is None


def test_known_hosts_in_a_directory_others_may_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    kh = cr.KnownHosts(str(shared / "known_hosts"), "127.0.0.1", 4000)
    kh.check()  # missing: a first contact will create it
    (shared / "known_hosts").write_text("")
    with pytest.raises(cr.CredentialError, match=f"directory {shared}"):
        kh.check()


def test_the_sender_offers_aes_first_only_where_the_cpu_has_aes_instructions():
    from ftx.core.secure.keys import AES_256_GCM, CHACHA20_POLY1305
    from ftx.security_setup import has_aes_instructions

    x86 = "processor\t: 0\nflags\t\t: fpu vme sse2 aes avx2\n"
    x86_no = "processor\t: 0\nflags\t\t: fpu vme sse2 avx2 aesx\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1\n"
    arm_no = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n"
    assert has_aes_instructions(x86) and has_aes_instructions(arm)
    assert not has_aes_instructions(x86_no) and not has_aes_instructions(arm_no)
    assert not has_aes_instructions("")
    from ftx.core.secure.keys import preferred_ciphers

    assert preferred_ciphers(has_aes_instructions(arm_no))[0] == CHACHA20_POLY1305
    assert preferred_ciphers(has_aes_instructions(x86))[0] == AES_256_GCM


def test_host_label_spells_each_host_one_way():
    from ftx.credentials import host_label

    assert host_label("127.0.0.1", 7431) == "127.0.0.1:7431"
    assert host_label("010.0.0.1", 1) == "010.0.0.1:1"  # not an address ipaddress takes: a name
    assert host_label("Example.COM.", 22) == "example.com:22"
    assert host_label("[0:0::1]", 9) == host_label("::1", 9) == "[::1]:9"
    assert host_label("FE80::1%eth0", 9) == "[fe80::1%eth0]:9"
