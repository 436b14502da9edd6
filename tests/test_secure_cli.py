"""Secure by default, through the real CLI: keys, pairing codes, TLS, --insecure, refusals, a capture.

Every test runs real ``ftx`` subprocesses on loopback.  The session's config
directory (tests/conftest.py) holds an identity that authorizes itself; tests
that need a stranger give a subprocess its own ``XDG_CONFIG_HOME``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx import credentials as cr
from ftx.errors import ErrorCode
from ftx.security_setup import CODE_TRIES, ReceiverAuth, Throttle

from .helpers import FTX, LineReader, Receiver, run_send, start_send, wait_for, with_env, write_random
from .tls_pki import CA

pytestmark = pytest.mark.timeout(90)

EXIT_AUTH, EXIT_USAGE = 4, 2  # an authentication failure exits as a protocol error
TRANSPORTS = [pytest.param([], id="tcp"), pytest.param(["--udp"], id="udp")]


def stranger(tmp_path, name="stranger") -> dict:
    """The environment of a user with a config directory of their own (no identity yet)."""
    return {"XDG_CONFIG_HOME": str(tmp_path / name)}


def one_line(err: str, needle: str) -> str:
    lines = [line for line in err.splitlines() if needle in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("ftx: "), err
    return lines[0]


def nothing_written(directory) -> bool:
    return not os.path.exists(directory) or os.listdir(directory) == []


# -- keys mode --------------------------------------------------------------------------


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_keys_mode_default_sealed_and_fingerprints_agree(tmp_path, receiver, udp):
    data = write_random(tmp_path / "a.bin", 300_000)
    assert receiver.listening["auth"] == "key"
    fp = receiver.listening["fingerprint"]
    assert fp.startswith("SHA256:") and len(fp) == 50
    rc, report, err = run_send(str(tmp_path / "a.bin"), receiver.dest, *udp)
    assert rc == 0, err
    assert report["auth"] == "key" and report["fingerprint"] == fp
    assert (receiver.dir / "a.bin").read_bytes() == data


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_unknown_sender_refused_on_both_sides_and_receiver_keeps_serving(tmp_path, receiver, udp):
    write_random(tmp_path / "secret.bin", 50_000)
    env = stranger(tmp_path)
    rc, report, err = run_send(str(tmp_path / "secret.bin"), receiver.dest, *udp, env=env)
    assert rc == EXIT_AUTH, err
    ident = cr.load_identity(str(tmp_path / "stranger" / "ftx" / "identity"), create=False)
    assert ident.fingerprint in one_line(err, "created identity")  # the sender's first use shows its fingerprint
    line = one_line(err, "not authorized")
    assert ident.fingerprint in line
    assert "not authenticated" not in line  # the receiver sealed its refusal: the sender knows who says so
    ev = receiver.events_until("session")[-1]
    assert ev["ok"] is False and ident.fingerprint in ev["error"] and "authorized_keys" in ev["error"]
    assert nothing_written(receiver.dir)
    # the receiver still serves its authorized sender
    rc, _, err = run_send(str(tmp_path / "secret.bin"), receiver.dest, *udp)
    assert rc == 0, err
    assert (receiver.dir / "secret.bin").exists()


def test_default_receiver_and_sender_without_credentials_refused(tmp_path, receiver_factory):
    """Neither side has ever been set up: the sender is refused, nothing is written."""
    r = receiver_factory(env=stranger(tmp_path, "rcfg"))
    write_random(tmp_path / "f", 1000)
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, env=stranger(tmp_path, "scfg"))
    assert rc == EXIT_AUTH, err
    one_line(err, "not authorized")
    assert nothing_written(r.dir)
    assert (tmp_path / "rcfg" / "ftx" / "identity").exists()  # created on first start
    r.stop()
    assert "no sender is authorized yet" in r.stderr and "authorized_keys" in r.stderr


def test_first_contact_is_remembered_and_a_changed_key_refused(tmp_path, receiver_factory):
    env = stranger(tmp_path, "s")
    cfg = tmp_path / "s" / "ftx"
    cfg.mkdir(parents=True)
    mine = cr.load_identity(str(cfg / "identity"))
    r = receiver_factory(env=stranger(tmp_path, "r1"))
    (tmp_path / "r1" / "ftx" / "authorized_keys").write_text(cr.public_line(mine.public) + "\n")
    write_random(tmp_path / "f", 1000)
    rc, report, err = run_send(str(tmp_path / "f"), r.dest, env=env)
    assert rc == 0, err
    fp = r.listening["fingerprint"]
    assert f"first contact with 127.0.0.1:{r.port}: its key is {fp}; remembered in" in one_line(err, "first contact")
    assert (cfg / "known_hosts").read_text() == f"127.0.0.1:{r.port} {fp}\n"
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, env=env)
    assert rc == 0 and "first contact" not in err
    # another receiver (another key) now answers at that address
    kh = cfg / "known_hosts"
    r2 = receiver_factory(directory=tmp_path / "dst2", env=stranger(tmp_path, "r2"))
    (tmp_path / "r2" / "ftx" / "authorized_keys").write_text(cr.public_line(mine.public) + "\n")
    kh.write_text(f"127.0.0.1:{r2.port} {fp}\n")  # what the sender knew about that address
    rc, _, err = run_send(str(tmp_path / "f"), r2.dest, env=env)
    assert rc == EXIT_AUTH, err
    line = one_line(err, "CHANGED")
    assert fp in line and r2.listening["fingerprint"] in line and f"line 1 of {kh}" in line
    assert nothing_written(tmp_path / "dst2")
    assert kh.read_text() == f"127.0.0.1:{r2.port} {fp}\n"


def test_expect_fingerprint_match_and_mismatch(tmp_path, receiver):
    write_random(tmp_path / "f", 1000)
    fp = receiver.listening["fingerprint"]
    rc, _, err = run_send(str(tmp_path / "f"), receiver.dest, "--expect-fingerprint", fp)
    assert rc == 0, err
    other = cr.fingerprint(b"\1" * 32)
    rc, _, err = run_send(str(tmp_path / "f"), receiver.dest, "--expect-fingerprint", other, "--no-resume")
    assert rc == EXIT_AUTH, err
    line = one_line(err, "expected")
    assert fp in line and other in line


# -- pairing codes -----------------------------------------------------------------------


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_code_mode_via_env_and_code_file(tmp_path, receiver_factory, udp):
    r = receiver_factory("--code", "--yes", env=stranger(tmp_path, "r"))
    code = r.listening["code"]
    assert cr.parse_code(code) == code
    data = write_random(tmp_path / "a.bin", 200_000)
    env = {**stranger(tmp_path, "s"), "FTX_CODE": code}
    rc, report, err = run_send(str(tmp_path / "a.bin"), r.dest, *udp, env=env)
    assert rc == 0, err
    assert report["auth"] == "code" and report["fingerprint"] == r.listening["fingerprint"]
    assert (r.dir / "a.bin").read_bytes() == data
    code = next(e for e in r.events_until("code") if e["event"] == "code")["code"]  # that one is used up
    (tmp_path / "codefile").write_text(code + "\n")
    write_random(tmp_path / "b.bin", 1000)
    rc, _, err = run_send(str(tmp_path / "b.bin"), r.dest, *udp, "--code-file", str(tmp_path / "codefile"),
                          env=stranger(tmp_path, "s"))
    assert rc == 0, err
    assert not (tmp_path / "s" / "ftx" / "identity").exists()  # a code sender needs no identity


def test_wrong_code_refused_and_burned_after_three(tmp_path, receiver_factory):
    r = receiver_factory("--code", "--yes", env=stranger(tmp_path, "r"))
    code = r.listening["code"]
    write_random(tmp_path / "f", 1000)
    wrong = "1-acid-acid" if code != "1-acid-acid" else "2-acid-acid"
    for attempt in range(CODE_TRIES):
        rc, _, err = run_send(str(tmp_path / "f"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": wrong})
        assert rc == EXIT_AUTH, err
        assert "wrong code" in one_line(err, "wrong code")
    events = r.events_until("code")  # the code is burned: a new one
    told = [e for e in events if e["event"] == "session"]  # --json tells an address's first failure at once,
    assert told and "wrong code" in told[0]["error"]  # and sums up the next ones (failures_suppressed)
    (ev,) = [e for e in events if e["event"] == "code"]
    assert cr.parse_code(ev["code"]) == ev["code"] != code
    assert nothing_written(r.dir)
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": code})
    assert rc == EXIT_AUTH, err  # the old code is burned
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": ev["code"]})
    assert rc == 0, err
    r.stop()
    assert f"pairing code: {code}" in r.stderr and f"new pairing code: {ev['code']}" in r.stderr


def test_one_code_one_transfer(tmp_path, receiver_factory):
    """A code admits one sender: once used it is burned, a new one printed, and the old one is a wrong code."""
    r = receiver_factory("--code", "--yes", env=stranger(tmp_path, "r"))
    code = r.listening["code"]
    write_random(tmp_path / "a", 1000)
    rc, _, err = run_send(str(tmp_path / "a"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": code})
    assert rc == 0, err
    events = r.events_until("session")
    (ev,) = [e for e in events if e["event"] == "code"]
    assert cr.parse_code(ev["code"]) == ev["code"] != code
    write_random(tmp_path / "b", 1000, seed=1)
    rc, _, err = run_send(str(tmp_path / "b"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": code})
    assert rc == EXIT_AUTH, err
    assert "wrong code" in one_line(err, "wrong code")
    assert "wrong code" in r.events_until("session")[-1]["error"]
    assert sorted(os.listdir(r.dir)) == ["a"]  # nothing of the second sender landed
    rc, _, err = run_send(str(tmp_path / "b"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": ev["code"]})
    assert rc == 0, err
    r.stop()
    assert f"new pairing code: {ev['code']}" in r.stderr


def test_once_keeps_no_spare_code_and_renews_it_when_the_session_fails(tmp_path):
    """--once: the used code is not replaced while its transfer may end the receiver; a session that
    fails (here: the user declines) gives a new code and the receiver goes on."""
    import pty

    write_random(tmp_path / "a", 1000)
    d = tmp_path / "dst"
    master, slave = pty.openpty()
    proc = subprocess.Popen(FTX + ["receive", "--mkdir", "--code", "--once", "--listen", "127.0.0.1", "--port", "0", "--dir",
                                   str(d), "--json"], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=with_env(stranger(tmp_path, "r")))
    os.close(slave)
    try:
        lines = LineReader(proc.stdout)
        first = lines.next_json()
        err = Drain(proc.stderr)
        dest = f"127.0.0.1:{first['port']}"
        sender = start_send(str(tmp_path / "a"), dest, env={**stranger(tmp_path, "s"), "FTX_CODE": first["code"]})
        wait_for(lambda: "Accept?" in err.text(), what="the question")
        # while one sender holds the code, nobody else gets in, with it or any other code
        rc, _, serr = run_send(str(tmp_path / "a"), dest, env={**stranger(tmp_path, "s"), "FTX_CODE": first["code"]})
        assert rc == EXIT_AUTH and "was used" in serr, serr
        assert "new pairing code" not in err.text()
        os.write(master, b"n\n")
        sender.communicate(timeout=30)
        while (ev := lines.next_json())["event"] != "code":
            pass
        sender = start_send(str(tmp_path / "a"), dest, env={**stranger(tmp_path, "s"), "FTX_CODE": ev["code"]})
        wait_for(lambda: err.text().count("Accept?") == 2, what="the second question")
        os.write(master, b"y\n")
        _, serr = sender.communicate(timeout=30)
        assert sender.returncode == 0, serr
        assert proc.wait(30) == 0  # --once: the complete transfer ends the receiver
        assert (d / "a").stat().st_size == 1000
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)


def test_a_handshake_on_a_code_used_meanwhile_is_refused(tmp_path, monkeypatch):
    """Two senders prove the same code at once: the first is admitted and burns it; the second,
    though its handshake succeeded, is refused, and its guess does not wear the new code."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    codes = []
    auth = ReceiverAuth(code=True, on_code=codes.append)
    gen = auth.code_generation
    assert auth.begin("10.0.0.1") is None and auth.begin("10.0.0.2") is None
    assert auth.end("10.0.0.1", None, None, gen) is None
    assert len(codes) == 2 and auth.code == codes[-1]  # burned and replaced
    assert "already used" in auth.end("10.0.0.2", None, None, gen)
    assert auth.code == codes[-1] and auth._code_inflight == 0 and auth._code_failures == 0


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_the_users_time_at_the_question_is_not_the_senders_silence(tmp_path, udp):
    """A receiver whose user takes longer than --idle-timeout to answer still gets the transfer:
    while it asks, it reads nothing, and that is its own doing, not a silent sender."""
    import pty

    write_random(tmp_path / "a", 1000)
    d = tmp_path / "dst"
    master, slave = pty.openpty()
    proc = subprocess.Popen(FTX + ["receive", "--mkdir", "--code", "--idle-timeout", "1", "--listen", "127.0.0.1", "--port",
                                   "0", "--dir", str(d), "--json"], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=with_env(stranger(tmp_path, "r")))
    os.close(slave)
    try:
        first = LineReader(proc.stdout).next_json()
        err = Drain(proc.stderr)
        sender = start_send(str(tmp_path / "a"), f"127.0.0.1:{first['port']}", *udp,
                            env={**stranger(tmp_path, "s"), "FTX_CODE": first["code"]})
        wait_for(lambda: "Accept?" in err.text(), what="the question")
        time.sleep(2.5)  # the user reads the question for longer than --idle-timeout (time passing, not a sync)
        os.write(master, b"y\n")
        _, serr = sender.communicate(timeout=30)
        assert sender.returncode == 0, serr + err.text()
        assert (d / "a").stat().st_size == 1000
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(master)


def test_a_sender_at_the_question_holds_up_only_the_next_question(tmp_path):
    """While one code-mode sender waits for the user's answer, the receiver keeps serving: a wrong code
    is refused at once; the next code holder's question comes when the first is answered."""
    import pty

    write_random(tmp_path / "a", 1000)
    write_random(tmp_path / "b", 2000, seed=1)
    d = tmp_path / "dst"
    master, slave = pty.openpty()
    proc = subprocess.Popen(FTX + ["receive", "--mkdir", "--code", "--listen", "127.0.0.1", "--port", "0", "--dir", str(d),
                                   "--json"], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=with_env(stranger(tmp_path, "r")))
    os.close(slave)
    try:
        lines = LineReader(proc.stdout)
        first = lines.next_json()
        err = Drain(proc.stderr)
        dest = f"127.0.0.1:{first['port']}"
        a = start_send(str(tmp_path / "a"), dest, env={**stranger(tmp_path, "s"), "FTX_CODE": first["code"]})
        wait_for(lambda: "Accept?" in err.text(), what="the first question")
        while (ev := lines.next_json())["event"] != "code":  # a holds the first code: a new one is out
            pass
        wrong = "1-acid-acid" if ev["code"] != "1-acid-acid" else "2-acid-acid"
        rc, _, serr = run_send(str(tmp_path / "b"), dest, env={**stranger(tmp_path, "s"), "FTX_CODE": wrong},
                               timeout=20)
        assert rc == EXIT_AUTH and "wrong code" in serr, serr
        b = start_send(str(tmp_path / "b"), dest, env={**stranger(tmp_path, "s"), "FTX_CODE": ev["code"]})
        os.write(master, b"y\n")
        _, serr = a.communicate(timeout=30)
        assert a.returncode == 0, serr
        wait_for(lambda: err.text().count("Accept?") == 2, what="the second question")
        assert "offers 1 item, 2000 bytes: 'b'" in err.text()
        os.write(master, b"y\n")
        _, serr = b.communicate(timeout=30)
        assert b.returncode == 0, serr
        assert sorted(os.listdir(d)) == ["a", "b"]
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(master)


def test_a_sender_that_proves_a_code_another_just_used_is_refused(tmp_path, receiver_factory):
    """Two code holders race: B's handshake started before A's, and proves the code after A used it.
    B is refused (sealed ERROR AUTH), though its code was right when it began."""
    from ftx.core.frames import FrameType
    from ftx.core.secure.pake import PakeClient
    from ftx.core.secure.records import RecordOpener

    r = receiver_factory("--code", "--yes", env=stranger(tmp_path, "r"))
    code = r.listening["code"]
    write_random(tmp_path / "a", 1000)
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as b:
        hs = PakeClient(code)
        b.sendall(hs.data_to_send())  # ClientHello
        held = b""
        while not (confirm := hs.data_to_send()):  # until the ServerHello is in and ClientConfirm ready
            data = b.recv(65536)
            assert data, "the receiver closed during the handshake"
            held += data
            held = held[hs.receive(held, time.monotonic()):]
        rc, _, err = run_send(str(tmp_path / "a"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": code})
        assert rc == 0, err  # A used the code
        b.sendall(confirm)  # B proves the same code now
        while not hs.done:
            data = b.recv(65536)
            assert data, "the receiver closed during the handshake"
            held += data
            held = held[hs.receive(held, time.monotonic()):]
        opener, plain = RecordOpener(hs.result), b""
        plain += opener.feed(held) if held else b""
        while data := b.recv(65536):
            plain += opener.feed(data)
    assert plain[0] == FrameType.ERROR and b"already used" in plain, plain
    events = r.events_until("session")  # A's
    events += r.events_until("session")  # B's
    assert "already used" in events[-1]["error"] and not events[-1]["ok"]
    assert sorted(os.listdir(r.dir)) == ["a"]


# -- what the offer summary admits ---------------------------------------------------------

LIAR = """import sys
import ftx.security_setup as s
from ftx.core.messages import OfferSummary
items, size, names, count = {summary!r}
s.offer_summary = lambda real: OfferSummary(items, size, tuple(names), count).encode()
from ftx.cli import main
sys.argv = ["ftx"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("summary, refused", [
    pytest.param((2, 2000, ["a", "b"], 2), "more", id="count"),
    pytest.param((3, 2000, ["a", "b", "big"], 3), "bytes", id="bytes"),
    pytest.param((3, 10**9, ["a", "b"], 2), "top-level", id="name"),
    pytest.param((3, 10**9, ["a", "b"], 3), None, id="names-left-out"),
])
@pytest.mark.parametrize("udp", TRANSPORTS)
def test_a_sender_offering_more_than_it_announced_is_refused(tmp_path, receiver_factory, udp, summary, refused):
    """croc#593: a code holder announces a little (what the user says yes to) and sends more.
    The sender here lies in its HELLO's OFFER_SUMMARY; what it did not announce is refused, not written."""
    r = receiver_factory("--code", "--yes", env=stranger(tmp_path, "r"))
    src = tmp_path / "src"
    write_random(src / "a", 1000)
    write_random(src / "b", 1000, seed=1)
    big = write_random(src / "big", 300_000, seed=2)  # an OFFER (a and b go as SMALL_FILE)
    env = with_env({**stranger(tmp_path, "s"), "FTX_CODE": r.listening["code"]})
    proc = subprocess.run([sys.executable, "-c", LIAR.format(summary=summary), "send", str(src / "a"),
                           str(src / "b"), str(src / "big"), r.dest, *udp, "--json", "--no-progress"],
                          capture_output=True, text=True, timeout=60, env=env)
    files = [e for e in r.events_until("session") if e["event"] == "file"]
    status = {f["path"]: f["status"] for f in files}
    if refused is None:  # the summary said it left a name out: one unlisted top-level name is admitted
        assert proc.returncode == 0, proc.stderr
        assert (r.dir / "big").read_bytes() == big
        return
    assert proc.returncode != 0 and "not announced" in proc.stderr, proc.stderr
    assert status == {"a": "ok", "b": "ok", "big": "aborted"}, files
    assert refused in next(f["message"] for f in files if f["path"] == "big")
    assert sorted(os.listdir(r.dir)) == ["a", "b"]  # nothing of "big", not even a partial


def test_a_file_named_through_a_symlink_is_announced_with_its_own_size(tmp_path, receiver_factory):
    """The summary counts what is sent: the file a named symlink points to, not the link itself."""
    r = receiver_factory("--code", "--yes", env=stranger(tmp_path, "r"))
    data = write_random(tmp_path / "real.bin", 100_000)
    os.symlink(tmp_path / "real.bin", tmp_path / "link.bin")
    rc, _, err = run_send(str(tmp_path / "link.bin"), r.dest,
                          env={**stranger(tmp_path, "s"), "FTX_CODE": r.listening["code"]})
    assert rc == 0, err
    assert (r.dir / "link.bin").read_bytes() == data


def test_more_top_level_names_than_the_summary_lists_all_arrive(tmp_path, receiver_factory):
    """The summary lists at most 64 names (and fewer long ones); the rest are counted and admitted."""
    r = receiver_factory("--code", "--yes", env=stranger(tmp_path, "r"))
    names = [f"{i:03d}-" + "n" * 60 + "\u00e9" for i in range(70)]
    for i, name in enumerate(names):
        write_random(tmp_path / "src" / name, 10, seed=i)
    rc, _, err = run_send(*(str(tmp_path / "src" / n) for n in names), r.dest,
                          env={**stranger(tmp_path, "s"), "FTX_CODE": r.listening["code"]})
    assert rc == 0, err
    assert sorted(os.listdir(r.dir)) == names


def test_a_name_that_is_not_utf8_matches_its_announcement(tmp_path, receiver_factory):
    r = receiver_factory("--code", "--yes", env=stranger(tmp_path, "r"))
    src = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.makedirs(src)
    with open(os.path.join(src, b"x"), "wb") as f:
        f.write(b"x" * 10)
    rc, _, err = run_send(os.fsdecode(src), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": r.listening["code"]})
    assert rc == 0, err
    assert os.listdir(os.fsencode(r.dir)) == [b"caf\xe9"]


@settings(max_examples=150, deadline=None)
@given(files=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans(), st.integers(0, 3000),
                                st.booleans()), max_size=8),
       items=st.integers(0, 9), size=st.integers(0, 12_000), names=st.sets(st.sampled_from(["a", "b", "c"])),
       left_out=st.integers(0, 2), honest=st.booleans())
def test_what_is_written_stays_within_the_summary_whatever_is_offered(files, items, size, names, left_out, honest):
    """Two sans-I/O peers: whatever a sender offers (OFFER or SMALL_FILE), what the receiver writes stays
    within its HELLO's summary, everything else gets RESULT ABORTED, and an honest summary admits all."""
    from ftx.core.manifest import FileEntry, Kind
    from ftx.core.messages import OfferSummary

    from .fuzz.wiring import TcpPair

    entries = [(FileEntry((f"{top}/{i}" if deep else top).encode(), Kind.FILE, n, chunk_size=4096), bytes(n), small)
               for i, (top, deep, n, small) in enumerate(files)]
    if honest:
        tops = sorted({e.path.split(b"/")[0].decode() for e, _, _ in entries})
        summary = OfferSummary(len(entries), sum(e.size for e, _, _ in entries), tuple(tops), len(tops))
    else:
        summary = OfferSummary(items, size, tuple(sorted(names)), len(names) + left_out)
    pair = TcpPair(summary=summary.encode())
    pair.pump()
    for entry, data, small in entries:
        pair.sd.offer(entry, data, small=small)
        pair.pump()
    codes = {fid: code for fid, code, _ in pair.rd.results}
    assert len(codes) == len(entries)  # every item has its RESULT
    written = [e for fid, (e, _, _) in enumerate(entries) if codes[fid] == 0]
    assert all(codes[fid] in (0, int(ErrorCode.ABORTED)) for fid in codes)
    if honest:
        assert len(written) == len(entries)
        return
    assert len(written) <= summary.items and sum(e.size for e in written) <= summary.size
    unlisted = {e.path.split(b"/")[0].decode() for e in written} - set(summary.names)
    assert len(unlisted) <= left_out
    assert len(pair.rd.completed) == len(written)


def test_announced_admits_what_was_announced_and_counts_only_that():
    from ftx.core.announced import Announced, top_name
    from ftx.core.manifest import FileEntry, Kind
    from ftx.core.messages import OfferSummary

    def entry(path: bytes, size: int = 0, kind=Kind.FILE):
        return FileEntry(path, kind, size)

    a = Announced(OfferSummary(3, 100, ("d",), 2))
    assert a.admit(entry(b"d", kind=Kind.DIR)) is None
    assert "bytes" in a.admit(entry(b"d/x", 101))  # refused ones are not counted
    assert a.admit(entry(b"d/x", 60)) is None
    assert a.admit(entry(b"e", 40)) is None  # the one name the summary left out
    assert "more" in a.admit(entry(b"d/y", 0))
    b = Announced(OfferSummary(9, 100, ("d",), 2))
    assert b.admit(entry(b"e")) is None and b.admit(entry(b"e/f")) is None
    assert "top-level" in b.admit(entry(b"g"))
    assert Announced(None).admit(entry(b"anything", 10**12)) is None
    assert top_name(b"\xff\xfe/x") == "\\xff\\xfe"  # as the sender's wire_text spells a non-UTF-8 name


def test_code_is_never_taken_from_the_command_line(tmp_path, receiver_factory):
    write_random(tmp_path / "f", 10)
    proc = subprocess.run(FTX + ["send", "--code=7-olive-tiger", str(tmp_path / "f"), "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == EXIT_USAGE and "does not take a value" in proc.stderr
    proc = subprocess.run(FTX + ["send", "--code", "7-olive-tiger", str(tmp_path / "f"), "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == EXIT_USAGE and "never taken from the command line" in proc.stderr
    proc = subprocess.run(FTX + ["receive", "--mkdir", "--code", "7-olive-tiger"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == EXIT_USAGE and "unexpected extra argument" in proc.stderr
    proc = subprocess.run(FTX + ["send", "--code", str(tmp_path / "f"), "127.0.0.1:9"], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL, env=with_env({"FTX_CODE": None}))
    assert proc.returncode == EXIT_USAGE and "FTX_CODE" in proc.stderr  # no terminal to prompt on


def test_code_receiver_without_terminal_needs_yes(tmp_path):
    proc = subprocess.run(FTX + ["receive", "--mkdir", "--code", "--port", "0", "--dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == EXIT_USAGE and "--yes" in proc.stderr


class Drain:
    """Everything a child writes to a pipe, collected on a thread (prompts end without a newline)."""

    def __init__(self, stream) -> None:
        self.data = b""
        self._fd = stream.fileno()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while chunk := os.read(self._fd, 4096):
            self.data += chunk

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def test_code_mode_shows_what_is_offered_and_asks_first(tmp_path):
    """croc#593: files slipped in unnoticed.  The receiver's user sees count, size and names, and decides."""
    import pty

    src = tmp_path / "holiday"
    write_random(src / "a.jpg", 30_000)
    write_random(src / "b" / "c.jpg", 12_000)
    d = tmp_path / "dst"
    master, slave = pty.openpty()
    proc = subprocess.Popen(FTX + ["receive", "--mkdir", "--code", "--listen", "127.0.0.1", "--port", "0", "--dir", str(d),
                                   "--json"], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=with_env(stranger(tmp_path, "r")))
    os.close(slave)
    try:
        lines = LineReader(proc.stdout)
        first = lines.next_json()
        err = Drain(proc.stderr)
        code = first["code"]
        for answer, asked in ((b"n\n", 1), (b"y\n", 2)):
            env = {**stranger(tmp_path, "s"), "FTX_CODE": code}
            sender = start_send(str(src), f"127.0.0.1:{first['port']}", env=env)
            wait_for(lambda: err.text().count("Accept?") == asked, what="the question")
            assert "offers 4 items, 42000 bytes: 'holiday'" in err.text()  # holiday, a.jpg, b, b/c.jpg
            assert not os.path.exists(d) or not os.listdir(d)  # nothing before the answer
            os.write(master, answer)
            out, serr = sender.communicate(timeout=30)
            if answer == b"n\n":
                assert sender.returncode != 0 and "declined" in serr, serr
                assert not os.path.exists(d) or not os.listdir(d)
                while (ev := lines.next_json())["event"] != "code":  # it admitted that sender: used up
                    pass
                code = ev["code"]
            else:
                assert sender.returncode == 0, serr
                assert (d / "holiday" / "b" / "c.jpg").stat().st_size == 12_000
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(master)


# -- --insecure --------------------------------------------------------------------------


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_insecure_on_one_side_only_is_a_clear_error_on_both(tmp_path, receiver_factory, udp):
    write_random(tmp_path / "f", 1000)
    r = receiver_factory(env=None)
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, "--insecure", *udp)
    assert rc != 0
    one_line(err, "authentication")
    assert "authentication" in r.events_until("session")[-1]["error"]
    ri = receiver_factory("--insecure", directory=tmp_path / "dst2")
    rc, _, err = run_send(str(tmp_path / "f"), ri.dest, *udp)
    assert rc != 0
    assert "--insecure" in one_line(err, "--insecure")
    assert "--insecure" in ri.events_until("session")[-1]["error"]
    assert nothing_written(r.dir) and nothing_written(tmp_path / "dst2")


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_insecure_on_both_sides_works_and_the_receiver_warns(tmp_path, udp):
    data = write_random(tmp_path / "f", 100_000)
    d = tmp_path / "dst"
    proc = subprocess.Popen(FTX + ["receive", "--mkdir", "--insecure", "--port", "0", "--dir", str(d), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = LineReader(proc.stdout).next_json()
        assert first["host"] == "127.0.0.1" and first["auth"] == "insecure"  # loopback unless --listen
        rc, report, err = run_send(str(tmp_path / "f"), f"127.0.0.1:{first['port']}", "--insecure", *udp)
        assert rc == 0, err
        assert report["auth"] == "insecure" and (d / "f").read_bytes() == data
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "WARNING: --insecure" in err


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = CA(d / "ca"), CA(d / "other", cn="somebody else's CA")
    return ca, other, ca.issue("receiver.example", ["localhost", "127.0.0.1"], stem="server")


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_tls_trusted_ok_untrusted_refused(tmp_path, receiver_factory, pki, udp):
    ca, other, server = pki
    r = receiver_factory("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-any-client")
    assert r.listening["auth"] == "tls" and r.listening["fingerprint"] == cr.fingerprint(server.der)
    data = write_random(tmp_path / "f", 100_000)
    rc, report, err = run_send(str(tmp_path / "f"), r.dest, "--tls-ca", str(ca.path), *udp)
    assert rc == 0, err
    assert report["auth"] == "tls" and report["fingerprint"] == cr.fingerprint(server.der)
    assert (r.dir / "f").read_bytes() == data
    r.events_until("session")
    os.unlink(r.dir / "f")
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, "--tls-ca", str(other.path), *udp)
    assert rc == EXIT_AUTH, err
    one_line(err, "certificate")
    assert r.events_until("session")[-1]["ok"] is False
    assert nothing_written(r.dir)


def test_tls_receiver_without_a_way_to_authenticate_senders_refuses_to_start(tmp_path, pki):
    """Secure by default: --tls-cert alone would let anyone who reaches the port write into --dir."""
    ca, other, server = pki
    d = tmp_path / "dst"
    p = subprocess.run(FTX + ["receive", "--mkdir", "--tls-cert", str(server.cert), "--tls-key", str(server.key), "--port", "0",
                              "--listen", "127.0.0.1", "--dir", str(d)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "--tls-ca" in p.stderr and "--tls-any-client" in p.stderr
    p = subprocess.run(FTX + ["receive", "--mkdir", "--tls-any-client", "--port", "0", "--dir", str(d)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--tls-any-client needs --tls-cert" in p.stderr


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_tls_ca_requires_a_client_certificate(tmp_path, receiver_factory, pki, udp):
    ca, other, server = pki
    client = ca.issue("sender.example", client=True, stem="client")
    r = receiver_factory("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(ca.path))
    data = write_random(tmp_path / "f", 10_000)
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, "--tls-ca", str(ca.path), *udp)
    assert rc == EXIT_AUTH, err
    assert nothing_written(r.dir)
    r.events_until("session")
    rc, report, err = run_send(str(tmp_path / "f"), r.dest, "--tls-ca", str(ca.path), "--tls-cert", str(client.cert),
                               "--tls-key", str(client.key), *udp)
    assert rc == 0, err
    assert (r.dir / "f").read_bytes() == data


def test_tls_any_client_warns_at_start(tmp_path, pki):
    ca, other, server = pki
    proc = subprocess.Popen(FTX + ["receive", "--mkdir", "--tls-cert", str(server.cert), "--tls-key", str(server.key),
                                   "--tls-any-client", "--listen", "127.0.0.1", "--port", "0",
                                   "--dir", str(tmp_path / "d"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert LineReader(proc.stdout).next_json()["auth"] == "tls"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "WARNING: --tls-any-client" in err and "can write into" in err


# -- what an observer sees, and what an attacker costs ----------------------------------


class TcpTap:
    """An in-test TCP proxy that records every byte it forwards, both ways."""

    def __init__(self, target_port: int) -> None:
        self.captured = bytearray()
        self.target = target_port
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                with self.lock:
                    self.captured += data
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.lsock.close()


def test_tcp_capture_holds_neither_content_nor_name(tmp_path, receiver):
    name = "quarterly-PAY-ALICE-report.txt"
    content = b"PAY ALICE $100; " * 4000
    (tmp_path / name).write_bytes(content)
    tap = TcpTap(receiver.port)
    try:
        rc, _, err = run_send(str(tmp_path / name), f"127.0.0.1:{tap.port}")
    finally:
        tap.close()
    assert rc == 0, err
    assert (receiver.dir / name).read_bytes() == content
    with tap.lock:
        captured = bytes(tap.captured)
    assert len(captured) > len(content)
    assert b"PAY ALICE" not in captured and name.encode() not in captured and b"quarterly" not in captured


def _bogus_handshakes(port: int, stop: threading.Event, counter: list) -> None:
    """From 127.0.0.2: full keys handshakes with a key the receiver does not know, or garbage, again and again."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ftx.core.secure.sigma import SigmaClient

    while not stop.is_set():
        try:
            with socket.socket() as s:
                s.settimeout(5)
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", port))
                if counter[0] % 2:
                    s.sendall(b"\x10" + os.urandom(200))
                else:
                    hs, held = SigmaClient(Ed25519PrivateKey.generate(), lambda peer: None), b""
                    while not hs.done:
                        if out := hs.data_to_send():
                            s.sendall(out)
                        data = s.recv(65536)
                        if not data:
                            break
                        held += data
                        held = held[hs.receive(held, time.monotonic()):]
                    s.sendall(hs.data_to_send())  # our last flight: now the receiver judges our key
                while s.recv(4096):
                    pass
        except Exception:
            pass
        counter[0] += 1


def test_handshake_flood_does_not_stop_an_authenticated_transfer(tmp_path, receiver_factory):
    r = receiver_factory("--max-per-host", "4", "--max-connections", "8")
    data = write_random(tmp_path / "big.bin", 8 << 20)
    stop, counter = threading.Event(), [0]
    flood = [threading.Thread(target=_bogus_handshakes, args=(r.port, stop, counter)) for _ in range(8)]
    for t in flood:
        t.start()
    try:
        wait_for(lambda: counter[0] >= 20, what="the flood to start")
        rc, _, err = run_send(str(tmp_path / "big.bin"), r.dest, "--max-rate", "16M")
        seen = counter[0]
    finally:
        stop.set()
        for t in flood:
            t.join(10)
    assert rc == 0, err
    assert (r.dir / "big.bin").read_bytes() == data
    assert seen >= 40  # the flood ran all along
    r.stop()
    assert "127.0.0.2 failed 5 handshakes" in r.stderr  # and its address got throttled


# -- the receiver's bookkeeping (no network) -------------------------------------------------


def test_throttle_bans_after_failures_in_window_and_forgets():
    now = [0.0]
    t = Throttle(limit=5, window=60, ban=30, max_hosts=3, clock=lambda: now[0])
    for _ in range(4):
        t.failed("a")
        now[0] += 10
    assert t.refused("a") == 0
    now[0] = 61  # the failure at 0 has left the window: 10, 20, 30, 61
    t.failed("a")
    assert t.refused("a") == 0
    t.failed("a")  # 5 within 60 s
    assert t.refused("a") == 30
    now[0] += 31
    assert t.refused("a") == 0
    for host in "bcdef":
        t.failed(host)
    assert len(t._fails) <= 3 and len(t._banned) <= 3


def test_code_attempts_in_flight_count_against_the_code(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    codes = []
    auth = ReceiverAuth(code=True, on_code=codes.append)
    for i in range(CODE_TRIES):
        assert auth.begin(f"10.0.0.{i}") is None
    assert "try again" in auth.begin("10.0.0.9")  # no more guesses at once than the code survives
    auth.end("10.0.0.0", None, None)
    assert auth.begin("10.0.0.9") is None


def test_failed_handshakes_are_summarized_not_one_line_each(tmp_path, receiver):
    """A flood of failed handshakes fills neither the log nor a stderr pipe: the first from an
    address is reported at once, the rest in one summary line per address per interval."""
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    assert receiver.events_until("session")[-1]["ok"] is False  # --json tells the first one...
    receiver.stop()
    rest = receiver.events_until("failures_suppressed", 5)  # ...and sums up the others, at the latest at exit
    assert [e["event"] for e in rest] == ["failures_suppressed"] and rest[0]["failures"] == 29, rest
    lines = [line for line in receiver.stderr.splitlines() if "127.0.0.1:" in line]
    assert len(lines) == 2, lines
    assert "does not speak ftx" in lines[0]
    assert "127.0.0.1: 29 failed handshakes in the last" in lines[1] and "(last: " in lines[1]


def test_code_handshake_rate_per_address_and_in_total():
    """Token buckets on code-mode handshakes: each costs the receiver SPAKE2 work before the
    sender proves anything, so an address (an IPv6 /64) gets ``per_host`` a minute and all
    together ``total`` a second, in bursts of as many."""
    from ftx.security_setup import HandshakeRate

    now = [0.0]
    rate = HandshakeRate(per_host=6, total=10, clock=lambda: now[0])
    assert all(rate.take("192.0.2.7") is None for _ in range(6))
    why = rate.take("192.0.2.7")
    assert why is not None and "192.0.2.7" in why and "try again in 10 s" in why
    now[0] = 10.0  # one minute / 6: one more
    assert rate.take("192.0.2.7") is None and rate.take("192.0.2.7") is not None
    assert rate.take("2001:db8::1") is None
    for k in range(5):  # the same /64: the same bucket
        assert rate.take(f"2001:db8::{k + 2:x}") is None
    assert "2001:db8::/64" in rate.take("2001:db8::ffff")
    assert rate.take("2001:db8:1::1") is None  # another /64
    # the total: 10 a second, whatever the addresses
    now[0] = 100.0
    taken = sum(rate.take(f"10.0.0.{k}") is None for k in range(40))
    assert taken == 10
    assert "too many pairing attempts" in rate.take("10.1.1.1")
    now[0] = 100.5
    assert sum(rate.take(f"10.0.1.{k}") is None for k in range(40)) == 5
    # the table of addresses is bounded
    small = HandshakeRate(per_host=1, total=1000, max_hosts=3, clock=lambda: now[0])
    for k in range(10):
        small.take(f"10.9.0.{k}")
    assert len(small._hosts) <= 3


def test_code_mode_turns_away_a_handshake_flood_by_rate(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    from ftx.security_setup import HandshakeRate

    now = [0.0]
    auth = ReceiverAuth(code=True, rate=HandshakeRate(per_host=2, total=100, clock=lambda: now[0]))
    gen = auth.code_generation
    for _ in range(2):
        assert auth.begin("10.0.0.1") is None
        auth.end("10.0.0.1", None, TimeoutError(), gen)
    assert "too many pairing attempts from 10.0.0.1" in auth.begin("10.0.0.1")
    assert auth._code_inflight == 0  # a turned-away one holds no place


def _code_hellos(port: int, stop: threading.Event, answers: list) -> None:
    """Open a connection, send a code-mode ClientHello (SPAKE2 work for the receiver), leave as
    soon as it answered: no guess was made, so nothing counts as a failed attempt."""
    from ftx.core.secure.pake import PakeClient

    while not stop.is_set():
        got = b""
        try:
            with socket.socket() as s:
                s.settimeout(5)
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", port))
                s.sendall(PakeClient("1-acid-acid").data_to_send())
                got = s.recv(4096)  # a ServerHello (work done) or a refusal; then away
        except OSError:
            pass
        answers.append(got)


def test_a_code_hello_flood_is_turned_away_by_rate_while_a_transfer_runs(tmp_path, receiver_factory):
    r = receiver_factory("--code", "--yes", env=stranger(tmp_path, "r"))
    data = write_random(tmp_path / "big.bin", 6 << 20)
    sender = start_send(str(tmp_path / "big.bin"), r.dest, "--max-rate", "4M",
                        env={**stranger(tmp_path, "s"), "FTX_CODE": r.listening["code"]})
    stop, answers = threading.Event(), []
    flood = [threading.Thread(target=_code_hellos, args=(r.port, stop, answers)) for _ in range(4)]
    try:
        wait_for(lambda: os.listdir(r.dir) or sender.poll() is not None, what="the transfer to start")
        for t in flood:
            t.start()
        _, err = sender.communicate(timeout=60)
    finally:
        stop.set()
        for t in flood:
            t.join(10)
    assert sender.returncode == 0, err
    assert (r.dir / "big.bin").read_bytes() == data
    by_rate = sum(b"too many pairing attempts from 127.0.0.2" in a for a in answers)
    worked = sum(b"try again" not in a for a in answers)  # answered with SPAKE2 work
    assert by_rate >= 20 and worked <= 12, (len(answers), by_rate, worked)


@pytest.mark.timeout(60)
def test_the_receivers_texts_reach_the_senders_report_escaped(receiver, tmp_path):
    """A file name with a line break in the receiver's refusal text cannot forge a line of the
    sender's output: the receiver's words are escaped before the sender shows them."""
    from .helpers import run_send

    name = "a\nftx: all 3 files sent\x1b[2K"
    src = tmp_path / name
    src.write_bytes(b"ours")
    (receiver.dir / name).write_bytes(b"theirs, different")
    code, report, err = run_send(str(src), receiver.dest)
    assert code == 1, err
    message = report["files"][0]["message"]
    assert "exists" in message and "\n" not in message and "\x1b" not in message, message
    assert "a\\nftx: all 3 files sent\\x1b[2K exists" in err  # the receiver's text, as the sender shows it


def test_a_flood_of_failed_handshakes_gives_a_bounded_number_of_json_lines(receiver):
    """2 000 bad handshakes: --json tells the first ones, then one summary per interval saying how
    many more (from how many addresses) were held back -- not one line each (disk, pipe)."""
    n = 2000
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    receiver.stop()
    events = []
    while True:
        try:
            events.append(receiver.next_event(5))
        except AssertionError:  # the output ended
            break
    told = [e for e in events if e["event"] == "session" and not e["ok"]]
    summaries = [e for e in events if e["event"] == "failures_suppressed"]
    assert 1 <= len(told) <= 20 and 1 <= len(summaries) <= 10, (len(told), len(summaries))
    counted = len(told) + sum(e["failures"] for e in summaries)
    assert n - 1 <= counted <= n  # the last may be cut short by the stop itself
    last = summaries[-1]
    assert last["addresses"] == 1 and last["message"] == f"{last['failures']} more failures from 1 address suppressed"
