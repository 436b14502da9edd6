"""Progress bars appear on a terminal, and only there."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import re
import signal
import subprocess

import pytest

from .helpers import FTX, run_send, write_random

pytestmark = pytest.mark.timeout(60)


def _send_on_tty(*args: str, rows: int = 40, cols: int = 120, signal_when: bytes | None = None,
                 raw: bool = False):
    """``ftx send ARGS`` with stderr on a pty of ``rows`` x ``cols`` (0 x 0: as script(1) gives);
    ``signal_when``: SIGINT it once that text has appeared.  Returns (exit code, what it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
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
            if signal_when is not None and signal_when in b"".join(chunks[-2:]):
                proc.send_signal(signal.SIGINT)
                signal_when = None
        out = b"".join(chunks)
        return proc.wait(30), (out if raw else out.decode(errors="replace"))
    finally:
        os.close(master)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _assert_lines_above_bars(screen: str, text: str) -> None:
    """``text`` starts a line of its own (not in a bar's line) and no bar is drawn into it."""
    plain = ANSI.sub("", screen)
    at = plain.find(text)
    assert at >= 0, plain[-2000:]
    assert at == 0 or plain[at - 1] in "\r\n", repr(plain[max(0, at - 200):at + 100])
    end = min([i for i in (plain.find("\r", at), plain.find("\n", at)) if i >= 0] or [len(plain)])
    assert "total:" not in plain[at:end], repr(plain[at:end])


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


def test_bars_on_a_terminal_that_reports_no_size(tmp_path, receiver):
    """Issue #14: on a pty that reports 0 rows and 0 columns (script -q -c ... /dev/null) no bar appeared."""
    write_random(tmp_path / "f.bin", 9 * 1024 * 1024)
    rc, screen = _send_on_tty(str(tmp_path / "f.bin"), receiver.dest, "--max-rate", "40M", rows=0, cols=0)
    assert rc == 0
    assert "total:" in screen and "100%" in screen and "1/1 files" in screen
    assert "f.bin:" in screen  # a file this large gets a bar of its own
    bars = [line for line in ANSI.sub("", screen).replace("\r", "\n").split("\n") if not line.startswith("ftx:")]
    assert max(len(line) for line in bars) <= 80  # 80 columns when the terminal says 0


def test_many_small_files_draw_one_total_bar_and_little_output(tmp_path, receiver):
    """Issue #14: 5 000 small files drew 5 000 per-file bars at 0 % (about 1 MB of terminal output)
    while the total read 100 % with ETA 00:00 for the whole run."""
    src = tmp_path / "tree"
    for d in range(50):
        (src / f"d{d:02d}").mkdir(parents=True)
        for f in range(100):
            (src / f"d{d:02d}" / f"file{f:03d}.txt").write_bytes(b"x" * (100 + f))
    rc, out = _send_on_tty(str(src), receiver.dest, "--expect-fingerprint", receiver.listening["fingerprint"],
                           raw=True)
    screen = out.decode(errors="replace")
    assert rc == 0, screen[-2000:]
    assert len(out) < 40_000, len(out)  # a redraw every 0.2 s at most, whatever the file count
    assert "5000/5000 files" in screen and "100%" in screen
    assert "file000.txt" not in screen  # no bar for a file too small to watch
    last = ANSI.sub("", screen).strip().splitlines()[-1]
    assert last.startswith("ftx: sent 5051 items (5051 transferred, 0 identical, 0 failed)"), last


def test_a_warning_is_printed_above_the_bars(tmp_path, receiver):
    """Issue #14: warnings were printed into the bar lines."""
    (receiver.dir / "a.txt").write_bytes(b"different content")
    (tmp_path / "a.txt").write_bytes(b"the sender's content")
    write_random(tmp_path / "big.bin", 9 * 1024 * 1024)
    rc, screen = _send_on_tty(str(tmp_path / "a.txt"), str(tmp_path / "big.bin"), receiver.dest,
                              "--max-rate", "20M", "--expect-fingerprint", receiver.listening["fingerprint"])
    assert rc == 1
    _assert_lines_above_bars(screen, "ftx: a.txt: ")
    plain = ANSI.sub("", screen)
    assert "sent 3 items (1 transferred, 0 identical, 1 failed)" in plain or \
        "sent 2 items (1 transferred, 0 identical, 1 failed)" in plain, plain[-1000:]


def test_interrupted_is_printed_above_the_bars(tmp_path, receiver):
    write_random(tmp_path / "big.bin", 12 * 1024 * 1024)
    rc, screen = _send_on_tty(str(tmp_path / "big.bin"), receiver.dest, "--max-rate", "2M",
                              "--expect-fingerprint", receiver.listening["fingerprint"], signal_when=b"big.bin:")
    assert rc == 130
    _assert_lines_above_bars(screen, "ftx: interrupted")


def test_no_summary_with_quiet(tmp_path, receiver):
    write_random(tmp_path / "f.bin", 1024)
    rc, screen = _send_on_tty(str(tmp_path / "f.bin"), receiver.dest, "-q",
                              "--expect-fingerprint", receiver.listening["fingerprint"])
    assert rc == 0 and "ftx: sent" not in screen and "total:" in screen


def test_the_receivers_bar_is_a_session_total_not_a_wrong_file_name(tmp_path):
    """Issue #14: the receiver's bar named the file decided last while chunks of an earlier one arrived."""
    from .helpers import LineReader, run_send

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    (tmp_path / "dst").mkdir()
    proc = subprocess.Popen(FTX + ["receive", "--insecure", "--once", "--port", "0", "--dir", str(tmp_path / "dst"),
                                   "--json"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    try:
        port = LineReader(proc.stdout).next_json()["port"]
        for name in ("a.bin", "b.bin"):
            write_random(tmp_path / name, 9 * 1024 * 1024)
        rc, _report, _err = run_send(str(tmp_path / "a.bin"), str(tmp_path / "b.bin"), f"127.0.0.1:{port}",
                                     "--insecure", "--max-rate", "40M")
        assert rc == 0, _err
        assert proc.wait(30) == 0
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    plain = ANSI.sub("", b"".join(chunks).decode(errors="replace"))
    bars = [line for line in plain.replace("\r", "\n").split("\n") if line.strip() and not line.startswith("ftx:")]
    assert bars and all(line.startswith("127.0.0.1:") for line in bars), bars  # the sender's address, no file
    assert any("2 files" in line for line in bars), bars


def test_bars_of_sessions_at_the_same_time_take_lines_of_their_own(monkeypatch):
    """A receiver serving two senders at once drew both session bars on the same line."""
    import sys

    from ftx.progress import Bars

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with os.fdopen(slave, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)  # a real terminal for tqdm and get_terminal_size
        a, b = Bars(label="10.0.0.1:5000"), Bars(label="10.0.0.2:5000")
        c = Bars(label="sender", file_bars=True)
        try:
            assert len({a._position, b._position, c._position, c._position + 1}) == 4
        finally:
            a.close()
        d = Bars(label="10.0.0.3:5000")
        assert d._position == a._position  # a closed session's line is free again
        for bars in (b, c, d):
            bars.close()
    os.close(master)


def test_receiver_small_files_reach_a_display_and_leave_a_quiet_tally_even(tmp_path):
    """A small file skips start_file/advance only when nothing would show them (a plain Progress,
    or the daemon's Tally over one): a display still sees start, bytes and end of each."""
    from ftx import receiving, recv_pipeline
    from ftx.core.checksum import file_digest
    from ftx.core.manifest import FileEntry
    from ftx.core.receiver import ReceiverConnection
    from ftx.core.sender import SenderConnection
    from ftx.progress import Progress
    from ftx.service import Tally
    from ftx.storage import Destination

    class Seen(Progress):
        def __init__(self):
            self.calls = []

        def start_file(self, path, size, resumed):
            self.calls.append(("start", path, size))

        def advance(self, nbytes):
            self.calls.append(("advance", nbytes))

        def end_file(self, report):
            self.calls.append(("end", report.path, report.status))

    def run(progress, where):
        s, r = SenderConnection(), ReceiverConnection()
        r.receive_data(b"".join(map(bytes, s.data_to_send())))
        s.receive_data(b"".join(map(bytes, r.data_to_send())))
        for data in (b"abc", b""):
            s.send_small_file(FileEntry(b"f%d" % len(data), size=len(data)), data, file_digest(data))
        r.receive_data(b"".join(map(bytes, s.data_to_send())))
        (where).mkdir()
        session = receiving.ReceiveSession(r, Destination(bytes(where)), progress=progress)
        session.handle_all(recv_pipeline._drain(r))
        assert session.files == 2 and not session.failed

    seen = Seen()
    run(seen, tmp_path / "a")
    assert seen.calls == [("start", "f3", 3), ("advance", 3), ("end", "f3", "ok"),
                          ("start", "f0", 0), ("advance", 0), ("end", "f0", "ok")]
    shown = Tally("tcp", Seen())
    assert not shown.quiet
    run(shown, tmp_path / "b")
    assert len(shown.then.calls) == 6
    quiet = Tally("tcp")
    assert quiet.quiet
    run(quiet, tmp_path / "c")
    assert quiet.bytes == 0 and not quiet.started
