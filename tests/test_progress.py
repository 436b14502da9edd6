"""Progress bars appear on a terminal, and only there."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import subprocess

import pytest

from .helpers import FTX, run_send, write_random

pytestmark = pytest.mark.timeout(60)


def _send_on_tty(*args: str) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        proc = subprocess.Popen(FTX + ["send", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(30), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)


def test_bars_on_a_terminal(tmp_path, receiver):
    write_random(tmp_path / "f.bin", 8 * 1024 * 1024)
    rc, screen = _send_on_tty(str(tmp_path / "f.bin"), receiver.dest, "--max-rate", "40M")
    assert rc == 0
    assert "total" in screen and "100%" in screen
    assert "B/s" in screen  # a rate is shown


def test_no_progress_flag_silences_bars(tmp_path, receiver):
    write_random(tmp_path / "f.bin", 2 * 1024 * 1024)
    rc, screen = _send_on_tty(str(tmp_path / "f.bin"), receiver.dest, "--no-progress",
                              "--expect-fingerprint", receiver.listening["fingerprint"])  # no first-contact note
    assert rc == 0
    assert screen.strip() == ""


def test_silent_when_not_a_terminal(tmp_path, receiver):
    write_random(tmp_path / "f.bin", 2 * 1024 * 1024)
    proc = subprocess.run(FTX + ["send", str(tmp_path / "f.bin"), receiver.dest, "--expect-fingerprint",
                                 receiver.listening["fingerprint"]], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert proc.stderr == "" and proc.stdout == ""
