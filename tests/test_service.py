"""ftx receive as a service: sd_notify, socket activation, SIGTERM, SIGHUP, the unit files.

Real ``ftx receive`` subprocesses, a real AF_UNIX datagram socket standing in
for systemd's NOTIFY_SOCKET, real listening sockets passed as LISTEN_FDS, real
signals while a slow sender (--max-rate) is in flight.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftx import credentials as cr
from ftx.metrics import outcome, parse_address, refusal_reason
from ftx.systemd import ActivationError, Notifier, passed_sockets

from .helpers import FTX, LineReader, journal_records, run_send, start_send, wait_for, with_env, write_random

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent


class FakeSystemd:
    """A NOTIFY_SOCKET: collects the datagrams a service sends, as the manager would."""

    def __init__(self, tmp_path: Path, abstract: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"ftx-test-notify-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(tmp_path / "notify")
            self.sock.bind(self.address)
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = 20.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        msg = dict(line.split("=", 1) for line in data.split("\n") if line)
        self.messages.append(msg)
        return msg

    def until(self, pred, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such notification; got {self.messages}")
            try:
                msg = self.next(left)
            except socket.timeout:
                continue
            if pred(msg):
                return msg

    def close(self) -> None:
        self.sock.close()


def start_receiver(directory: Path, *args: str, env: dict | None = None, argv: list[str] | None = None,
                   pass_fds=()) -> tuple[subprocess.Popen, LineReader, dict]:
    directory.mkdir(parents=True, exist_ok=True)
    cmd = (argv or FTX) + ["receive", "--mkdir", "--dir", str(directory), "--json", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=with_env(env),
                            pass_fds=pass_fds)
    lines = LineReader(proc.stdout)
    first = lines.next_json()
    assert first["event"] == "listening", first
    return proc, lines, first


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for f in (proc.stdout, proc.stderr):
        f.close()


@pytest.mark.parametrize("udp", [pytest.param([], id="tcp"), pytest.param(["--udp"], id="udp")])
def test_ready_status_and_stopping_reach_a_fake_notify_socket(tmp_path, udp):
    """READY=1 after the listening line; STATUS= tells the sender and its bytes while a slow transfer
    runs; SIGTERM sends STOPPING=1 and exits 0 within 2 s, keeping the partial for a resume."""
    fake = FakeSystemd(tmp_path)
    write_random(tmp_path / "src" / "big.bin", 3 << 20)
    dst = tmp_path / "dst"
    proc, lines, first = start_receiver(dst, "--listen", "127.0.0.1", "--port", "0",
                                        env={"NOTIFY_SOCKET": fake.address})
    try:
        ready = fake.next()
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert "waiting for senders" in ready["STATUS"]
        sender = start_send(str(tmp_path / "src" / "big.bin"), f"127.0.0.1:{first['port']}", "--max-rate", "1M",
                            "--chunk-size", "256K", *udp)
        busy = fake.until(lambda m: m.get("STATUS", "").startswith("1 sender,") and "0 B" not in m["STATUS"])
        assert "1 files in progress" in busy["STATUS"], busy
        wait_for(lambda: journal_records(dst, "big.bin") >= 5, what="five chunks journaled")  # > KEEP_MIN
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert fake.until(lambda m: "STOPPING" in m)["STOPPING"] == "1"
        assert proc.wait(5) == 0
        took = time.monotonic() - t0
        assert took < 2.0, f"took {took:.2f} s to exit"
        t1 = time.monotonic()
        _out, err = sender.communicate(timeout=30)
        assert sender.returncode == 3 and "shutting down" in err or not udp, err  # UDP: told, not left to time out
        assert time.monotonic() - t1 < 5.0
        assert journal_records(dst, "big.bin") >= 5  # checkpointed: the verified chunks stay for a resume
        assert not (dst / "big.bin").exists()
    finally:
        stop(proc)
        fake.close()
    # a new receiver resumes from what the stopped one kept
    proc, lines, first = start_receiver(dst, "--listen", "127.0.0.1", "--port", "0")
    try:
        rc, report, err = run_send(str(tmp_path / "src" / "big.bin"), f"127.0.0.1:{first['port']}",
                                   "--chunk-size", "256K", *udp)
        assert rc == 0, err
        assert report["bytes_resumed"] >= 5 * 256 * 1024
        assert (dst / "big.bin").read_bytes() == (tmp_path / "src" / "big.bin").read_bytes()
    finally:
        stop(proc)


def test_watchdog_pings_at_half_the_period_and_a_path_socket_works(tmp_path):
    fake = FakeSystemd(tmp_path, abstract=False)
    proc, _lines, _first = start_receiver(tmp_path / "dst", "--listen", "127.0.0.1", "--port", "0",
                                          env={"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "300000"})
    try:
        assert fake.next()["READY"] == "1"
        t0 = time.monotonic()
        for _ in range(3):
            fake.until(lambda m: m.get("WATCHDOG") == "1", timeout=5)
        assert time.monotonic() - t0 < 2.0  # every 0.15 s, not once a second
    finally:
        stop(proc)
        fake.close()


def test_no_notify_socket_is_a_no_op():
    n = Notifier({})
    assert not n.enabled and not n.notify("READY=1")
    n.ready()
    n.stopping()
    assert Notifier({"WATCHDOG_USEC": "1000000", "NOTIFY_SOCKET": "@x"}).watchdog_interval == 0.5
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None  # not ours


# -- socket activation ------------------------------------------------------------------

# what systemd does: the passed sockets become descriptors 3, 4, ... and LISTEN_PID names the service
ACTIVATE = ("import os, sys\n"
            "fds = [os.dup(int(fd)) for fd in sys.argv[1].split(',')]\n"
            "for i, fd in enumerate(fds):\n"
            "    if fd != 3 + i:\n"
            "        os.dup2(fd, 3 + i)\n"
            "    os.set_inheritable(3 + i, True)\n"
            "for fd in fds:\n"
            "    if not 3 <= fd < 3 + len(fds):\n"
            "        os.close(fd)\n"
            "os.environ['LISTEN_FDS'] = str(len(fds))\n"
            "os.environ['LISTEN_PID'] = str(os.getpid())\n"
            "os.execvp(sys.executable, [sys.executable, '-m', 'ftx'] + sys.argv[2:])\n")


def activated_sockets():
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", tcp.getsockname()[1]))
    return tcp, udp


def test_socket_activation_serves_the_passed_sockets_on_both_transports(tmp_path):
    tcp, udp = activated_sockets()
    port = tcp.getsockname()[1]
    fds = f"{tcp.fileno()},{udp.fileno()}"
    # --port 0 would bind a new ephemeral port: the passed sockets are served instead
    proc, lines, first = start_receiver(tmp_path / "dst", "--listen", "127.0.0.1", "--port", "0",
                                        argv=[sys.executable, "-c", ACTIVATE, fds],
                                        env={"LISTEN_FDNAMES": "ftx-tcp:ftx-udp"},
                                        pass_fds=(tcp.fileno(), udp.fileno()))
    tcp.close()
    udp.close()
    try:
        assert first["activated"] == ["ftx-tcp", "ftx-udp"]
        assert first["port"] == port and first["udp_port"] == port and first["transport"] == ["tcp", "udp"]
        for name, args in (("tcp.bin", []), ("udp.bin", ["--udp"])):
            write_random(tmp_path / name, 200_000)
            rc, _report, err = run_send(str(tmp_path / name), f"127.0.0.1:{port}", *args)
            assert rc == 0, err
            assert (tmp_path / "dst" / name).read_bytes() == (tmp_path / name).read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        stop(proc)


def test_activation_variables_for_another_process_are_ignored_and_bad_ones_refused(tmp_path):
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2"}
    assert not passed_sockets(env)
    assert env == {}  # removed: a child of ours does not take them for its own
    with pytest.raises(ActivationError, match="LISTEN_FDS"):
        passed_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "many"})
    # the CLI: LISTEN_PID of another process -> it binds as usual
    proc, _lines, first = start_receiver(tmp_path / "dst", "--listen", "127.0.0.1", "--port", "0",
                                         env={"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    try:
        assert "activated" not in first and first["port"] > 0
    finally:
        stop(proc)


# -- SIGHUP -----------------------------------------------------------------------------


def _identity(tmp_path: Path, name: str) -> tuple[dict, str]:
    """A sender's environment with its own identity, and its public-key line."""
    home = tmp_path / name
    ident = cr.load_identity(str(home / "ftx" / "identity"))
    return {"XDG_CONFIG_HOME": str(home), "XDG_STATE_HOME": str(tmp_path / f"{name}-state")}, \
        cr.public_line(ident.public, name)


def test_sighup_reloads_the_authorized_keys_without_dropping_a_transfer(tmp_path):
    alice_env, alice = _identity(tmp_path, "alice")
    bob_env, bob = _identity(tmp_path, "bob")
    keys = tmp_path / "authorized_keys"
    keys.write_text(alice + "\n")
    write_random(tmp_path / "small.bin", 20_000)
    write_random(tmp_path / "slow.bin", 2 << 20, seed=1)
    proc, lines, first = start_receiver(tmp_path / "dst", "--listen", "127.0.0.1", "--port", "0",
                                        "--authorized-keys", str(keys))
    dest = f"127.0.0.1:{first['port']}"
    try:
        rc, _, err = run_send(str(tmp_path / "small.bin"), dest, env=bob_env)
        assert rc == 4 and "not authorized" in err
        keys.write_text(alice + "\n" + bob + "\n")  # a key added: the next sender is accepted
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _next_of(lines, "reloaded"), what="the reload")
        rc, _, err = run_send(str(tmp_path / "small.bin"), dest, env=bob_env)
        assert rc == 0, err
        # a key removed: refused for new sessions, while its running transfer completes
        slow = start_send(str(tmp_path / "slow.bin"), dest, "--max-rate", "1M", "--chunk-size", "256K",
                          env=alice_env)
        wait_for(lambda: journal_records(tmp_path / "dst", "slow.bin") >= 1, what="alice's transfer under way")
        keys.write_text(bob + "\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _next_of(lines, "reloaded"), what="the reload")
        rc, _, err = run_send(str(tmp_path / "small.bin"), dest, env=alice_env)
        assert rc == 4 and "not authorized" in err
        out, err = slow.communicate(timeout=30)
        assert slow.returncode == 0, err
        assert (tmp_path / "dst" / "slow.bin").read_bytes() == (tmp_path / "slow.bin").read_bytes()
        assert proc.poll() is None  # SIGHUP did not end the receiver
    finally:
        stop(proc)


def _next_of(lines: LineReader, kind: str) -> bool:
    try:
        return lines.next_json(timeout=0.2)["event"] == kind
    except AssertionError:
        return False


# -- the unit files ---------------------------------------------------------------------


def test_units_carry_the_promised_settings():
    service = (ROOT / "contrib" / "ftx-receive.service").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict",
                 "ReadWritePaths=/srv/ftx", "NoNewPrivileges=yes", "PrivateTmp=yes", "PrivateDevices=yes",
                 "ProtectHome=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
                 "ProtectControlGroups=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "RestrictNamespaces=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes",
                 "SystemCallFilter=@system-service", "StateDirectory=ftx", "ConfigurationDirectory=ftx"):
        assert f"\n{line}\n" in service, line
    assert "\nExecStart=/usr/bin/ftx receive --dir /srv/ftx " in service
    assert "\nLimitNOFILE=" in service and "\nUser=" in service
    socket_unit = (ROOT / "contrib" / "ftx-receive.socket").read_text()
    assert "\nListenStream=7431\n" in socket_unit and "\nListenDatagram=7431\n" in socket_unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    ftx = shutil.which("ftx") or str(Path(sys.executable).parent / "ftx")
    assert os.path.exists(ftx)
    for name in ("ftx-receive.service", "ftx-receive.socket"):  # ExecStart must exist: point it at ours
        text = (ROOT / "contrib" / name).read_text().replace("/usr/bin/ftx", ftx)
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "ftx-receive.socket"),
                           str(tmp_path / "ftx-receive.service")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr + proc.stdout


# -- small pure parts -------------------------------------------------------------------


def test_metrics_address_and_bounded_labels():
    assert parse_address("9464") == ("127.0.0.1", 9464)
    assert parse_address("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        parse_address("localhost")
    assert refusal_reason("no file data moved for 3 s (receiver's --stall-timeout)") == "stall_timeout"
    assert refusal_reason("receiver busy: 1 senders from 1.2.3.4 already (--max-per-host 1)") == "max_per_host"
    assert refusal_reason("--max-per-hostile") is None and refusal_reason("a/b/--c") is None
    assert outcome({"ok": True, "complete": True}) == "ok"
    assert outcome({"ok": False, "complete": True}) == "files_failed"
    assert outcome({"ok": False, "complete": False, "auth": "key", "error": "authentication failed: x"}) == \
        "auth_failed"
    assert outcome({"ok": False, "complete": False, "error": "connection lost"}) == "incomplete"
