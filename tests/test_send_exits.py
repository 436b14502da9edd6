"""`ftx send --json` prints its object on every exit, and UDP to a closed port fails at once."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest

from .helpers import FTX, run_send


def _closed_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def _assert_failure_object(report, code: int, words: str):
    assert report is not None, "no --json object"
    assert report["ok"] is False and report["exit"] == code, report
    assert words in report["error"], report
    for key in ("transport", "seconds", "bytes", "bytes_sent", "file_count", "transfer_id"):
        assert key in report, key


def test_resolve_failure_prints_the_json_object(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    code, report, err = run_send(str(tmp_path / "f"), "no-such-host.invalid:9", "--insecure", timeout=60)
    assert code == 3, err
    _assert_failure_object(report, 3, "resolve")


def test_tcp_connection_refused_prints_the_json_object(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    code, report, err = run_send(str(tmp_path / "f"), f"127.0.0.1:{_closed_port()}", "--insecure", timeout=60)
    assert code == 3, err
    _assert_failure_object(report, 3, "refused")


def test_udp_to_a_closed_port_is_refused_at_once(tmp_path):
    """An ICMP port unreachable ends it; it took the whole 15 s 'no answer' wait before."""
    (tmp_path / "f").write_bytes(b"x")
    t0 = time.monotonic()
    code, report, err = run_send(str(tmp_path / "f"), f"127.0.0.1:{_closed_port(socket.SOCK_DGRAM)}", "--udp",
                                 "--insecure", timeout=60)
    assert time.monotonic() - t0 < 8, "waited for the timeout instead of the ICMP error"
    assert code == 3, err
    assert "connection refused" in err, err
    _assert_failure_object(report, 3, "connection refused")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signalled_sender_prints_the_json_object(tmp_path, sig, code, word):
    (tmp_path / "f").write_bytes(b"x")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes datagrams, never answers
        silent.bind(("127.0.0.1", 0))
        silent.settimeout(30)
        proc = subprocess.Popen(FTX + ["send", str(tmp_path / "f"), "127.0.0.1:%d" % silent.getsockname()[1],
                                       "--udp", "--insecure", "--json", "--no-progress", "--idle-timeout", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            silent.recvfrom(65536)  # the sender is running its loop, waiting for an answer
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"ftx: {word}", err
    _assert_failure_object(json.loads(out), code, word)


def test_a_missing_path_prints_the_json_object(tmp_path):
    code, report, err = run_send(str(tmp_path / "nothing-here"), "127.0.0.1:9", "--insecure", timeout=60)
    assert code == 5, err
    _assert_failure_object(report, 5, "no such file")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_sender_signalled_mid_transfer_reports_what_it_sent(tmp_path, sig, code):
    """The --json object of an interrupted transfer counts the data sent and the files done so far."""
    from .helpers import Receiver, start_send, wait_for, write_random

    src = tmp_path / "src"
    for i in range(3):
        write_random(src / f"small{i}", 1000, seed=i)
    write_random(src / "z-big.bin", 8 << 20, seed=9)
    r = Receiver(tmp_path / "dst", "--insecure")
    try:
        proc = start_send(str(src), r.dest, "--insecure", "--json", "--max-rate", "2M", "--chunk-size", "256K")
        try:
            wait_for(lambda: sum(p.stat().st_size for p in (tmp_path / "dst").rglob("*") if p.is_file()) > 1 << 20,
                     what="a MiB received")
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        r.stop()
    assert proc.returncode == code, err
    report = json.loads(out)
    assert report["bytes_sent"] >= 256 << 10 and report["bytes"] >= 3000, report  # a chunk of z-big.bin, the small ones
    assert report["file_count"] >= 3 and report["failed"] == 0, report
