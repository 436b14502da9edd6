"""Bad input loses nothing: hostile paths, broken peers, vanished peers, a full disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from ftx.core.checksum import file_digest
from ftx.core.config import Config
from ftx.core.events import FileResolved, SessionComplete
from ftx.core.frames import FrameType, encode_data_frame, encode_frame
from ftx.core.manifest import FileEntry, Kind
from ftx.core.messages import ROLE_SENDER, Hello
from ftx.core.sender import SenderConnection
from ftx.errors import ErrorCode

from .helpers import SealedSocket, run_send, write_random

pytestmark = pytest.mark.timeout(60)


class RawSender:
    """A hand-driven sender: the real core on a blocking socket, so tests can misbehave
    (authenticated as the tests' own identity: a sender the receiver trusts, misbehaving)."""

    def __init__(self, port: int) -> None:
        self.sock = SealedSocket(port)
        self.conn = SenderConnection(Config())
        self.flush()
        self.wait_for(lambda ev: ev.__class__.__name__ == "HandshakeComplete")

    def flush(self) -> None:
        for b in self.conn.data_to_send():
            self.sock.sendall(b)

    def wait_for(self, pred):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            while (ev := self.conn.next_event()) is not None:
                if pred(ev):
                    return ev
            data = self.sock.recv(65536)
            if not data:
                self.conn.receive_eof()
            self.conn.receive_data(data)
        raise AssertionError("no such event in time")


HOSTILE = [b"../escape.txt", b"a/../../escape.txt", b"/tmp/abs-escape.txt", b"nul\x00name", b"", b"./x", b"a//b"]


@pytest.mark.parametrize("path", HOSTILE, ids=[repr(p) for p in HOSTILE])
def test_hostile_names_are_refused(tmp_path, receiver, path):
    s = RawSender(receiver.port)
    data = b"pwned"
    s.conn.send_small_file(FileEntry(path, size=len(data)), data, file_digest(data))
    s.flush()
    ev = s.wait_for(lambda ev: isinstance(ev, FileResolved))
    assert ev.result.code == ErrorCode.BAD_PATH
    s.conn.finish()
    s.flush()
    s.wait_for(lambda ev: isinstance(ev, SessionComplete))
    assert not (tmp_path / "escape.txt").exists()
    assert not os.path.exists("/tmp/abs-escape.txt")
    assert list(receiver.dir.iterdir()) == []


def test_hostile_offer_of_large_file_and_symlink(tmp_path, receiver):
    s = RawSender(receiver.port)
    fid = s.conn.offer(FileEntry(b"../../big-escape.bin", size=5_000_000))
    lid = s.conn.offer(FileEntry(b"link", Kind.SYMLINK, target=b"../../etc"))
    s.flush()
    codes = {}
    for _ in range(2):
        ev = s.wait_for(lambda ev: isinstance(ev, FileResolved))
        codes[ev.result.file_id] = ev.result.code
    assert codes == {fid: ErrorCode.BAD_PATH, lid: ErrorCode.BAD_PATH}
    assert list(receiver.dir.iterdir()) == []


def test_never_writes_through_a_symlink_in_the_destination(tmp_path, receiver):
    outside = tmp_path / "outside"
    outside.mkdir()
    (receiver.dir / "sub").symlink_to(outside)
    write_random(tmp_path / "src" / "sub" / "f.txt", 100)
    write_random(tmp_path / "src" / "sub" / "big.bin", 2_000_000)
    rc, report, err = run_send(str(tmp_path / "src" / "sub"), receiver.dest)
    assert rc != 0
    assert list(outside.iterdir()) == []


def _assert_still_serving(tmp_path, receiver):
    data = write_random(tmp_path / "after.bin", 1_234_567, seed=9)
    rc, report, err = run_send(str(tmp_path / "after.bin"), receiver.dest)
    assert rc == 0, err
    assert (receiver.dir / "after.bin").read_bytes() == data


def test_disconnect_mid_frame_leaves_receiver_serving(tmp_path, receiver):
    s = RawSender(receiver.port)
    fid = s.conn.offer(FileEntry(b"cut.bin", size=3 * 1024 * 1024))
    s.flush()
    s.wait_for(lambda ev: ev.__class__.__name__ == "DecisionReceived")
    frame = encode_data_frame(fid, 0, os.urandom(1024 * 1024))
    s.sock.sendall(frame[: len(frame) // 2])
    s.sock.close()
    _assert_still_serving(tmp_path, receiver)
    assert not (receiver.dir / "cut.bin").exists()


@pytest.mark.parametrize("garbage", [
    os.urandom(5000),
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 1 << 20).encode())[:-1] + b"\x00",
])
def test_garbage_is_rejected_and_receiver_keeps_serving(tmp_path, receiver, garbage):
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        while sock.recv(65536):  # the receiver answers (HELLO, ERROR) and closes
            pass
    _assert_still_serving(tmp_path, receiver)


def test_corrupt_chunk_never_lands_under_the_final_name(tmp_path, receiver):
    """A chunk whose bytes are not what its sender hashed: over a sealed connection the receiver
    takes the stated chunk checksum (protocol.md 20.2), and the whole-file digest of FILE_END,
    over the bytes written, refuses the file (plaintext: the chunk check ends the session,
    tests/test_sealed_tcp.py)."""
    s = RawSender(receiver.port)
    data = os.urandom(2 * 1024 * 1024)
    fid = s.conn.offer(FileEntry(b"c.bin", size=len(data)))
    s.flush()
    s.wait_for(lambda ev: ev.__class__.__name__ == "DecisionReceived")
    frame = bytearray(encode_data_frame(fid, 0, data[: 1024 * 1024]))
    frame[5000] ^= 1
    s.sock.sendall(frame)
    s.conn.send_chunk(fid, 1, data[1024 * 1024 :])
    s.conn.end_file(fid, file_digest(data))
    s.flush()
    ev = s.wait_for(lambda ev: isinstance(ev, FileResolved))
    assert ev.result.code == ErrorCode.DIGEST_MISMATCH
    assert not (receiver.dir / "c.bin").exists()
    _assert_still_serving(tmp_path, receiver)


def test_vanished_receiver_times_out(tmp_path, receiver):
    write_random(tmp_path / "f.bin", 40 * 1024 * 1024)
    receiver.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        rc, report, err = run_send(str(tmp_path / "f.bin"), receiver.dest, "--idle-timeout", "2", timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        receiver.proc.send_signal(signal.SIGCONT)
    assert rc == 3, err
    assert "silent" in err or "timed out" in err or "did not finish within 2 s" in err  # (in the handshake)
    assert elapsed < 20


def test_vanished_sender_frees_the_receiver(tmp_path, receiver_factory):
    r = receiver_factory("--idle-timeout", "1.5")
    s = RawSender(r.port)
    fid = s.conn.offer(FileEntry(b"stall.bin", size=3 * 1024 * 1024))
    s.flush()
    s.wait_for(lambda ev: ev.__class__.__name__ == "DecisionReceived")
    # say nothing more, keep the socket open: the receiver must give up on us
    ev = r.events_until("session", timeout=15)[-1]
    assert ev["complete"] is False and "silent" in ev["error"]
    s.sock.close()


def _mount_tiny_tmpfs(path) -> bool:
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


def test_full_disk_is_a_clear_error(tmp_path, receiver_factory):
    mnt = tmp_path / "tiny"
    if not _mount_tiny_tmpfs(mnt):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        r = receiver_factory(directory=mnt)
        write_random(tmp_path / "huge.bin", 5 * 1024 * 1024)
        rc, report, err = run_send(str(tmp_path / "huge.bin"), r.dest)
        assert rc == 1
        assert "space" in err.lower()
        assert not (mnt / "huge.bin").exists()
        r.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


EVIL = "fine\n\x1b[2Jftx: all files received \u202e" + "C" * 600


def test_a_senders_texts_reach_the_receivers_log_escaped(tmp_path, receiver):
    """An authenticated sender's words (a withdrawn file's reason, its ERROR) are printed with
    escape sequences, line breaks and bidi overrides made visible, and capped."""
    s = RawSender(receiver.port)
    fid = s.conn.offer(FileEntry(b"w.bin", size=3 * 1024 * 1024))
    s.flush()
    s.wait_for(lambda ev: ev.__class__.__name__ == "DecisionReceived")
    s.conn.abort_file(fid, ErrorCode.SOURCE_CHANGED, EVIL)
    s.flush()
    s.wait_for(lambda ev: isinstance(ev, FileResolved))
    s.conn.send_error(ErrorCode.STORAGE, EVIL)
    s.flush()
    events = receiver.events_until("session")
    receiver.stop()
    assert "\x1b" not in receiver.stderr and "\u202e" not in receiver.stderr
    lines = [line for line in receiver.stderr.splitlines() if "fine" in line]
    # the withdrawn file, the sender's ERROR, and the session's summary line that names it
    assert len(lines) == 3 and all("\\x1b[2J" in line and len(line) < 500 for line in lines), lines
    for ev in events:
        assert "\x1b" not in str(ev) and "\u202e" not in str(ev), ev
