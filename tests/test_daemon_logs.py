"""The receiver's default log lines (one per event), --log-format json, and the transfer id both sides print."""

from __future__ import annotations

import json

from ftx.core.messages import EXT_TRANSFER_ID, Hello, ROLE_SENDER, _EXT

from .helpers import Receiver, run_send


def test_hello_carries_the_transfer_id_and_ignores_a_malformed_one():
    h = Hello(ROLE_SENDER, 1 << 20, sender_id=b"s" * 16, transfer_id=bytes(range(8)))
    assert Hello.decode(h.encode()).transfer_id == bytes(range(8))
    bare = Hello(ROLE_SENDER, 1 << 20).encode()
    assert Hello.decode(bare).transfer_id == b""
    assert Hello.decode(bare + _EXT.pack(EXT_TRANSFER_ID, 3) + b"abc").transfer_id == b""  # not 8 bytes
    assert Hello.decode(bare + _EXT.pack(EXT_TRANSFER_ID, 8) + b"abc").transfer_id == b""  # cut short


def _tree(tmp_path, n=30):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        (src / f"f{i}").write_bytes(b"x" * i)
    return src


def test_default_lines_name_the_listener_the_sender_and_a_session_summary(tmp_path):
    src = _tree(tmp_path)
    (tmp_path / "dst").mkdir()
    r = Receiver(tmp_path / "dst", "--insecure")
    try:
        code, report, err = run_send(str(src), r.dest, "--insecure")
        assert code == 0, err
        r.events_until("session")
    finally:
        r.stop()
    tid = report["transfer_id"]
    assert len(tid) == 16 and int(tid, 16) >= 0
    lines = r.stderr.splitlines()
    assert any(line.startswith("ftx: listening on 127.0.0.1 port %d" % r.port) for line in lines), lines
    assert any("sender over tcp, not authenticated" in line for line in lines), lines
    summary = [line for line in lines if f"transfer {tid} over tcp: 31 files (0 identical, 0 failed)" in line]
    assert len(summary) == 1, lines
    assert not any("f17" in line for line in lines), lines  # no line per file without -v


def test_verbose_adds_a_line_per_file_and_json_log_format_is_one_object_per_line(tmp_path):
    src = _tree(tmp_path, 5)
    (tmp_path / "dst").mkdir()
    r = Receiver(tmp_path / "dst", "--insecure", "-v", "--log-format", "json")
    try:
        code, report, err = run_send(str(src), r.dest, "--insecure", "--udp")
        assert code == 0, err
        session = r.events_until("session")[-1]
    finally:
        r.stop()
    assert session["transfer_id"] == report["transfer_id"]
    objs = [json.loads(line) for line in r.stderr.splitlines()]  # every line is JSON
    by_event = {}
    for o in objs:
        assert {"time", "level", "message"} <= o.keys(), o
        by_event.setdefault(o.get("event"), []).append(o)
    assert by_event["listening"][0]["port"] == r.port
    assert by_event["sender"][0]["transport"] == "udp"
    assert sorted(o["path"] for o in by_event["file"]) == ["src"] + [f"src/f{i}" for i in range(5)]
    (s,) = by_event["session"]
    assert s["transfer_id"] == report["transfer_id"] and s["files"] == 6 and s["ok"] is True


def test_an_interrupted_session_logs_the_data_it_received(tmp_path):
    """A sender killed mid-file: the session line counts the data kept for a resume (it said 0 B)."""
    from .helpers import journal_records, start_send, wait_for, write_random

    write_random(tmp_path / "big.bin", 4 << 20)
    r = Receiver(tmp_path / "dst", "--insecure", "--log-format", "json")
    try:
        sender = start_send(str(tmp_path / "big.bin"), r.dest, "--insecure", "--max-rate", "2M", "--chunk-size", "256K")
        wait_for(lambda: journal_records(tmp_path / "dst", "big.bin") >= 3, what="3 chunks received")
        sender.kill()
        sender.communicate(timeout=10)
        r.events_until("session")
    finally:
        r.stop()
    (s,) = [o for o in map(json.loads, r.stderr.splitlines()) if o.get("event") == "session"]
    assert s["ok"] is False and s["bytes_received"] >= 3 * (256 << 10), s


def test_a_session_the_sender_ends_with_an_error_names_its_reason(tmp_path):
    """A sender that gives up says why in an ERROR frame: the receiver's session event and line carry
    that reason, escaped (they said error "" and "incomplete")."""
    import socket

    from ftx.core.frames import FrameType, encode_frame
    from ftx.core.messages import ErrorMessage
    from ftx.errors import ErrorCode

    (tmp_path / "dst").mkdir()
    r = Receiver(tmp_path / "dst", "--insecure", "--log-format", "json")
    try:
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
            s.sendall(encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 1 << 20).encode())
                      + encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.ABORTED, "disk\x1b[31m gone").encode()))
            s.recv(4096)  # (the receiver's HELLO)
        session = r.events_until("session")[-1]
    finally:
        r.stop()
    assert session["ok"] is False and session["error"] == "sender error: disk\\x1b[31m gone", session
    (line,) = [o for o in map(json.loads, r.stderr.splitlines()) if o.get("event") == "session"]
    assert line["error"] == session["error"], line
