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
import threading
import time

import pytest

from ftx import credentials as cr
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
    events = []
    for attempt in range(CODE_TRIES):
        rc, _, err = run_send(str(tmp_path / "f"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": wrong})
        assert rc == EXIT_AUTH, err
        assert "wrong code" in one_line(err, "wrong code")
        events += r.events_until("session")
        assert "wrong code" in events[-1]["error"]
    (ev,) = [e for e in events if e["event"] == "code"]  # the code is burned: a new one
    assert cr.parse_code(ev["code"]) == ev["code"] != code
    assert nothing_written(r.dir)
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": code})
    assert rc == EXIT_AUTH, err  # the old code is burned
    r.events_until("session")
    rc, _, err = run_send(str(tmp_path / "f"), r.dest, env={**stranger(tmp_path, "s"), "FTX_CODE": ev["code"]})
    assert rc == 0, err
    r.stop()
    assert f"pairing code: {code}" in r.stderr and f"new pairing code: {ev['code']}" in r.stderr


def test_code_is_never_taken_from_the_command_line(tmp_path, receiver_factory):
    write_random(tmp_path / "f", 10)
    proc = subprocess.run(FTX + ["send", "--code=7-olive-tiger", str(tmp_path / "f"), "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == EXIT_USAGE and "does not take a value" in proc.stderr
    proc = subprocess.run(FTX + ["send", "--code", "7-olive-tiger", str(tmp_path / "f"), "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == EXIT_USAGE and "never taken from the command line" in proc.stderr
    proc = subprocess.run(FTX + ["receive", "--code", "7-olive-tiger"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == EXIT_USAGE and "unexpected extra argument" in proc.stderr
    proc = subprocess.run(FTX + ["send", "--code", str(tmp_path / "f"), "127.0.0.1:9"], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL, env=with_env({"FTX_CODE": None}))
    assert proc.returncode == EXIT_USAGE and "FTX_CODE" in proc.stderr  # no terminal to prompt on


def test_code_receiver_without_terminal_needs_yes(tmp_path):
    proc = subprocess.run(FTX + ["receive", "--code", "--port", "0", "--dir", str(tmp_path)], capture_output=True,
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
    proc = subprocess.Popen(FTX + ["receive", "--code", "--listen", "127.0.0.1", "--port", "0", "--dir", str(d),
                                   "--json"], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=with_env(stranger(tmp_path, "r")))
    os.close(slave)
    try:
        first = LineReader(proc.stdout).next_json()
        err = Drain(proc.stderr)
        env = {**stranger(tmp_path, "s"), "FTX_CODE": first["code"]}
        for answer, asked in ((b"n\n", 1), (b"y\n", 2)):
            sender = start_send(str(src), f"127.0.0.1:{first['port']}", env=env)
            wait_for(lambda: err.text().count("Accept?") == asked, what="the question")
            assert "offers 4 items, 42000 bytes: 'holiday'" in err.text()  # holiday, a.jpg, b, b/c.jpg
            assert not os.path.exists(d) or not os.listdir(d)  # nothing before the answer
            os.write(master, answer)
            out, serr = sender.communicate(timeout=30)
            if answer == b"n\n":
                assert sender.returncode != 0 and "declined" in serr, serr
                assert not os.path.exists(d) or not os.listdir(d)
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
    proc = subprocess.Popen(FTX + ["receive", "--insecure", "--port", "0", "--dir", str(d), "--json"],
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
    r = receiver_factory("--tls-cert", str(server.cert), "--tls-key", str(server.key))
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
