"""Output never stalls the daemon: a --json reader that stops reading costs lines, not transfers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from ftx.output import LineWriter  # noqa: E402

from .helpers import FTX, run_send, wait_for


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = []
    while True:
        try:
            part = os.read(fd, 1 << 16)
        except BlockingIOError:
            return b"".join(out)
        if not part:
            return b"".join(out)
        out.append(part)


def test_writer_drops_when_full_and_says_how_many_once_the_reader_catches_up():
    r, w = os.pipe()
    writer = LineWriter(w, limit=4096, dropped=lambda n: json.dumps({"event": "dropped", "lines": n}) + "\n")
    try:
        sent = 6000  # about 170 KB: more than the pipe (64 KiB) and the queue (4 KiB) together
        for i in range(sent):
            writer.write(json.dumps({"event": "file", "i": i}) + "\n")  # never blocks, the pipe is not read
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the reader catches up
            idle = writer.idle()  # before the read: what it wrote until then is in the pipe
            got += [json.loads(line) for line in _drain(r).splitlines()]
            if idle:
                break
        files = [e for e in got if e["event"] == "file"]
        drops = [e for e in got if e["event"] == "dropped"]
        assert drops and all(d["lines"] > 0 for d in drops), got[-3:]  # one line per loss, once caught up
        assert len(files) + sum(d["lines"] for d in drops) == sent
        assert [e["i"] for e in files] == sorted(e["i"] for e in files)  # in order, nothing duplicated
    finally:
        writer.close(1.0)
        os.close(r)


def test_unread_json_stdout_does_not_stall_the_receiver(tmp_path):
    src = tmp_path / "src"
    for d in range(20):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (src / f"d{d}" / f"f{i}").write_bytes(b"x" * (i % 7))
    dst = tmp_path / "dst"
    dst.mkdir()
    proc = subprocess.Popen(FTX + ["receive", "--listen", "127.0.0.1", "--port", "0", "--dir", str(dst), "--json",
                                   "--insecure", "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        first = b""
        while not first.endswith(b"\n"):  # the listening line; after it, stdout is never read again
            first += os.read(proc.stdout.fileno(), 1)
        port = json.loads(first)["port"]
        code, report, err = run_send(str(src), f"127.0.0.1:{port}", "--insecure", "--idle-timeout", "10", timeout=120)
        assert code == 0, err
        assert report["ok"], report
        one = tmp_path / "one"
        one.write_bytes(b"second sender")
        code, report, err = run_send(str(one), f"127.0.0.1:{port}", "--insecure", timeout=60)
        assert code == 0, err
        assert (dst / "one").read_bytes() == b"second sender"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
        assert time.monotonic() - t0 < 2.0
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def test_a_mistyped_dir_is_not_created(tmp_path):
    """`ftx receive --dir /srv/ftxx` created the typo and received into it; now it is a usage error."""
    typo = tmp_path / "ftxx"
    proc = subprocess.run(FTX + ["receive", "--insecure", "--listen", "127.0.0.1", "--port", "0", "--dir", str(typo)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert not typo.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftx: ") and "--mkdir" in lines[0], proc.stderr


def test_mkdir_creates_the_directory(tmp_path):
    new = tmp_path / "a" / "b"
    proc = subprocess.Popen(FTX + ["receive", "--insecure", "--listen", "127.0.0.1", "--port", "0", "--dir", str(new),
                                   "--mkdir", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert json.loads(proc.stdout.readline())["event"] == "listening"
        assert new.is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        proc.stdout.close()


def test_the_per_file_json_line_is_json_dumps_byte_for_byte():
    """cli_output.emit_report (the daemon's --json "file" line without a dict) writes exactly what
    emit({"event": "file", **report.__dict__}) writes, for any path, status and message (a path that
    is not UTF-8 is written with U+FFFD and its bytes in "path_b64", ftx/jsontext.py)."""
    import json

    from ftx import cli_output
    from ftx.jsontext import clean
    from ftx.receiving import FileReport

    odd = ["d/f.bin", "quote\"back\\slash", "tab\tnl\n", "ünï cødé ☃", "bad\udcff byte", "\x00\x1f", ""]
    reports = [FileReport(p, "file", 2**40, "ok", "ab" * 16, m, 7, 0) for p in odd for m in ("", odd[1], odd[4])]
    reports += [FileReport("l", "symlink", 0, "bad_path", "", "unsafe", 0, 0),
                FileReport("x", "file", 1, "error_999", "", "", 0, 3)]
    cli_output._queued.clear()
    for r in reports:
        cli_output.emit_report(r)
    got = list(cli_output._queued)
    cli_output._queued.clear()
    assert got == [json.dumps(clean({"event": "file", **r.__dict__})) + "\n" for r in reports]
    assert '"path": "bad\\ufffd byte", "path_b64": "YmFk/yBieXRl", "kind"' in "".join(got)

    class Other:  # not a FileReport's fields: the generic path
        def __init__(self):
            self.path, self.extra = "p", [1]
    cli_output.emit_report(Other())
    assert list(cli_output._queued) == ['{"event": "file", "path": "p", "extra": [1]}\n']
    cli_output._queued.clear()
    assert cli_output.emit.report is cli_output.emit_report
