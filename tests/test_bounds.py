"""What one client can cost a TCP receiver: memory, connections, handshake time, stalling.

Each test attacks one limit of ``ftx receive`` (ftx/limits.py) through a real
subprocess with raw sockets, and checks the receiver both holds the bound and
tells the client why (ERROR BUSY / TIMEOUT) before closing.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from ftx.core.frames import FrameDecoder, FrameType, encode_data_header, encode_frame
from ftx.core.messages import ROLE_SENDER, ErrorMessage, Hello

from .helpers import SealedSocket
from ftx.errors import ErrorCode

from .helpers import journal_records, run_send, second_sender_busy, wait_for, write_random

pytestmark = pytest.mark.timeout(90)

MIB = 1 << 20
HELLO = encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 4 * MIB + 64 * 1024).encode())


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def ping(n: int = 0) -> bytes:
    return encode_frame(FrameType.PING, struct.pack(">d", float(n)))


class Raw:
    """A raw TCP client: sends whatever it is told, reads back frames (past the handshake, as an
    authorized sender: ``SealedSocket``)."""

    def __init__(self, port: int, host: str = "127.0.0.1", handshake: bool = True, source: str | None = None) -> None:
        # without the handshake: a connection the receiver turns away at once, in plaintext
        self.sock = SealedSocket(port, host, source=source) if handshake \
            else socket.create_connection((host, port), timeout=10)
        self.decoder = FrameDecoder(copy_payloads=True)
        self.decoder.set_max_payload(4 * MIB + 64 * 1024)
        self.frames: list = []
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, pred, timeout: float = 10.0):
        """Read frames until ``pred(frame)`` holds; return that frame (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, fr in enumerate(self.frames):
                if pred(fr):
                    del self.frames[: i + 1]
                    return fr
            if self.eof:
                raise AssertionError(f"connection closed; frames seen: {[f.type.name for f in self.frames]}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for a frame")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                continue
            self.decoder.feed(data)
            while (fr := self.decoder.next_frame()) is not None:
                self.frames.append(fr)

    def error(self, timeout: float = 10.0) -> ErrorMessage:
        fr = self.read_until(lambda f: f.type == FrameType.ERROR, timeout)
        return ErrorMessage.decode(fr.payload)

    def closed(self, timeout: float = 10.0) -> bool:
        """True once the receiver has closed the connection (reads EOF)."""
        try:
            self.read_until(lambda f: False, timeout)
        except AssertionError:
            return self.eof
        return True

    def close(self) -> None:
        self.sock.close()


# -- item 7: memory ----------------------------------------------------------------------
def test_200_hello_only_connections_cost_little_memory_and_give_it_back(receiver_factory):
    r = receiver_factory("--max-connections", "1000", "--max-per-host", "1000")
    pid = r.proc.pid
    before = rss(pid)
    clients = []
    try:
        for _ in range(200):
            c = Raw(r.port)
            c.send(HELLO + ping())
            clients.append(c)
        for c in clients:  # PONG proves the receiver read our HELLO and set its limits
            c.read_until(lambda f: f.type == FrameType.PONG)
        peak = rss(pid)
    finally:
        for c in clients:
            c.close()
    assert peak - before < 48 * MIB, f"200 idle connections took {(peak - before) / MIB:.0f} MiB"
    wait_for(lambda: rss(pid) - before < 16 * MIB, timeout=20, what="memory back after the clients left")


def test_idle_connections_give_their_buffers_back(receiver_factory):
    """16 connections each send one legal 4 MiB PING, then stay open and quiet.  From 8 hosts
    (127.0.0.2-9): one host's connections may hold only its share of the frame buffers
    (test_host_limits.py), 19.5 MiB by default."""
    r = receiver_factory("--max-per-host", "100")
    pid = r.proc.pid
    before = rss(pid)
    big = encode_frame(FrameType.PING, os.urandom(4 * MIB))
    clients = []
    try:
        for k in range(16):
            c = Raw(r.port, source=f"127.0.0.{2 + k % 8}")
            c.send(HELLO + big)
            clients.append(c)
        for c in clients:
            c.read_until(lambda f: f.type == FrameType.PONG)
        wait_for(lambda: rss(pid) - before < 16 * MIB, timeout=20, interval=0.2,
                 what="idle connections to give their buffers back")
        for c in clients:  # still served
            c.send(ping(1))
            c.read_until(lambda f: f.type == FrameType.PONG)
    finally:
        for c in clients:
            c.close()


def test_partial_frames_stay_within_max_memory(receiver_factory):
    """Big frames that never finish: buffers grow with the bytes, and all of them within --max-memory."""
    r = receiver_factory("--max-connections", "1000", "--max-per-host", "1000", "--max-memory", "24M")
    pid = r.proc.pid
    before = rss(pid)
    clients, refused = [], 0
    try:
        for _ in range(16):
            c = Raw(r.port)
            # a DATA frame announcing 4 MiB, of which 3 MiB arrive
            c.send(HELLO + encode_data_header(0, 0, 0, 4 * MIB)[:16] + bytes(16))
            clients.append(c)
        for c in clients:
            try:
                c.send(os.urandom(3 * MIB))
            except OSError:
                pass
        for c in clients:
            try:
                c.sock.settimeout(0.5)
                err = c.error(timeout=0.5)
                assert err.code == ErrorCode.BUSY and "--max-memory" in err.message
                refused += 1
            except AssertionError:
                pass
        peak = rss(pid)
    finally:
        for c in clients:
            c.close()
    assert refused >= 8, "the memory limit refused no one"
    assert peak - before < 24 * MIB, f"receiver grew by {(peak - before) / MIB:.0f} MiB"


# -- item 12: connections ------------------------------------------------------------------
def _held_sessions(r, n: int) -> list[Raw]:
    held = []
    for _ in range(n):
        c = Raw(r.port)
        c.send(HELLO + ping())
        c.read_until(lambda f: f.type == FrameType.PONG)
        held.append(c)
    return held


def test_max_per_host_refuses_with_busy_and_a_clear_message(tmp_path, receiver_factory):
    r = receiver_factory("--max-per-host", "2")
    held = _held_sessions(r, 2)
    try:
        extra = Raw(r.port, handshake=False)
        extra.send(HELLO)
        err = extra.error()
        assert err.code == ErrorCode.BUSY and "--max-per-host 2" in err.message
        assert extra.closed(timeout=5)
        write_random(tmp_path / "f.bin", 1000)
        rc, _report, stderr = run_send(str(tmp_path / "f.bin"), r.dest, timeout=30)
        assert rc == 3, stderr
        assert "busy" in stderr and "--max-per-host" in stderr
    finally:
        for c in held:
            c.close()
    # once they leave, the host is served again
    wait_for(lambda: run_send(str(tmp_path / "f.bin"), r.dest, timeout=30)[0] == 0, timeout=20,
             interval=0.2, what="a send after the held connections closed")


def test_max_connections_counts_every_host(tmp_path, receiver_factory):
    r = receiver_factory("--max-connections", "3", "--max-per-host", "16")
    held = _held_sessions(r, 3)
    try:
        extra = Raw(r.port, handshake=False)
        extra.send(HELLO)
        err = extra.error()
        assert err.code == ErrorCode.BUSY and "--max-connections 3" in err.message
        assert extra.closed(timeout=5)
    finally:
        for c in held:
            c.close()


def test_slow_handshake_is_dropped(receiver_factory):
    r = receiver_factory("--handshake-timeout", "1", "--idle-timeout", "60")
    c = Raw(r.port)
    t0 = time.monotonic()
    try:
        # one byte of HELLO every 0.2 s: never silent, never done
        for b in HELLO[:20]:
            try:
                c.send(bytes([b]))
            except OSError:
                break
            if c.closed(timeout=0.2):
                break
        err = c.error(timeout=5)
        assert err.code == ErrorCode.TIMEOUT and "--handshake-timeout" in err.message
        assert c.closed(timeout=5)
        assert time.monotonic() - t0 < 5
    finally:
        c.close()


def test_connection_that_only_pings_is_dropped(receiver_factory):
    r = receiver_factory("--stall-timeout", "1.5", "--idle-timeout", "60")
    c = Raw(r.port)
    t0 = time.monotonic()
    try:
        c.send(HELLO)
        n, err = 0, None
        while time.monotonic() - t0 < 10 and not c.eof:
            n += 1
            try:
                c.send(ping(n))
            except OSError:
                break
            try:
                err = c.error(timeout=0.3)
                break
            except AssertionError:
                pass
        assert time.monotonic() - t0 < 6, "a ping-only connection was kept"
        assert err is not None and err.code == ErrorCode.TIMEOUT and "--stall-timeout" in err.message
        assert c.closed(timeout=5)
        ev = r.events_until("session", timeout=5)[-1]
        assert not ev["complete"] and "--stall-timeout" in ev["error"]
    finally:
        c.close()


def test_stall_timeout_spares_a_sender_that_moves_data(tmp_path, receiver_factory):
    r = receiver_factory("--stall-timeout", "2")
    write_random(tmp_path / "slow.bin", 6 * MIB)  # 3 s at 2 MB/s: longer than the stall timeout
    rc, _report, stderr = run_send(str(tmp_path / "slow.bin"), r.dest, "--max-rate", "2M", "--chunk-size", "64K",
                                   timeout=60)
    assert rc == 0, stderr


# -- item 13: who may take over a partial ----------------------------------------------------
def _send_as(state_dir, *args: str):
    import subprocess
    import sys

    env = dict(os.environ, XDG_STATE_HOME=str(state_dir))
    return subprocess.Popen([sys.executable, "-m", "ftx", "send", *args, "--json", "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _journaled(dst, name: str) -> bool:
    return journal_records(dst, name) > 0


def test_another_sender_cannot_abort_a_transfer_in_progress(tmp_path, receiver):
    a_src, b_src = tmp_path / "a" / "big.bin", tmp_path / "b" / "big.bin"
    a_data = write_random(a_src, 6 * MIB, seed=1)
    write_random(b_src, 6 * MIB, seed=2)
    # 6 s at 1 MB/s: time enough for the second sender to start, even on a loaded machine
    a = _send_as(tmp_path / "state-a", str(a_src), receiver.dest, "--max-rate", "1M", "--chunk-size", "256K")

    def second():
        wait_for(lambda: _journaled(receiver.dir, "big.bin"), what="the first transfer to be under way")
        return _send_as(tmp_path / "state-b", str(b_src), receiver.dest)

    second_sender_busy(a, second, "busy", "another sender")
    assert (receiver.dir / "big.bin").read_bytes() == a_data


def test_the_same_sender_takes_over_its_own_partial_at_once(tmp_path, receiver_factory):
    r = receiver_factory("--idle-timeout", "60")
    src = tmp_path / "src" / "big.bin"
    data = write_random(src, 6 * MIB, seed=3)
    first = _send_as(tmp_path / "state", str(src), r.dest, "--max-rate", "2M", "--chunk-size", "256K")
    wait_for(lambda: _journaled(r.dir, "big.bin"), what="the first transfer to be under way")
    first.kill()  # SIGKILL: its connection lingers on the receiver until the idle timeout
    first.communicate(timeout=10)
    t0 = time.monotonic()
    again = _send_as(tmp_path / "state", str(src), r.dest)
    _out, err = again.communicate(timeout=30)
    assert again.returncode == 0, err
    assert time.monotonic() - t0 < 20
    assert (r.dir / "big.bin").read_bytes() == data
    assert (tmp_path / "state" / "ftx" / "sender-id").exists()


def test_a_superseded_sender_is_told_why(tmp_path, receiver):
    src = tmp_path / "src" / "big.bin"
    data = write_random(src, 6 * MIB, seed=4)
    first = _send_as(tmp_path / "state", str(src), receiver.dest, "--max-rate", "1M", "--chunk-size", "256K")
    try:
        wait_for(lambda: _journaled(receiver.dir, "big.bin"), what="the first transfer to be under way")
        second = _send_as(tmp_path / "state", str(src), receiver.dest)
        _out, err2 = second.communicate(timeout=30)
        assert second.returncode == 0, err2
        _out, err1 = first.communicate(timeout=30)
        assert first.returncode == 3, err1
        assert "superseded" in err1
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (receiver.dir / "big.bin").read_bytes() == data
