"""End to end through the real CLI: refusals, odd names, peers that are not ftx, bad options."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from .helpers import FTX, run_send, write_random

pytestmark = pytest.mark.timeout(60)


def _leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(os.fsencode(directory)) if n.endswith((b".ftx-part", b".ftx-journal")))


def test_refusing_a_later_file_of_several_keeps_the_session(tmp_path, receiver):
    """Issue #11 item 3: a refused b.bin crashed the sender (KeyError) and stranded c.bin's partial."""
    src = tmp_path / "src"
    a = write_random(src / "a.bin", 300_000, seed=1)
    write_random(src / "b.bin", 300_000, seed=2)
    c = write_random(src / "c.bin", 300_000, seed=3)
    d = write_random(src / "d.bin", 400_000, seed=4)
    theirs = write_random(receiver.dir / "src" / "b.bin", 123_456, seed=9)  # a different b.bin
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 1, err
    assert "Traceback" not in err and "KeyError" not in err
    assert report is not None, err
    status = {f["path"]: f["status"] for f in report["files"]}
    assert status == {"src": "ok", "src/a.bin": "ok", "src/b.bin": "exists", "src/c.bin": "ok", "src/d.bin": "ok"}
    assert (receiver.dir / "src" / "a.bin").read_bytes() == a
    assert (receiver.dir / "src" / "b.bin").read_bytes() == theirs
    assert (receiver.dir / "src" / "c.bin").read_bytes() == c
    assert (receiver.dir / "src" / "d.bin").read_bytes() == d
    assert _leftovers(receiver.dir / "src") == []
    assert "b.bin" in err and "differs" in err


def test_non_utf8_names_with_refusals_keep_the_session(tmp_path, receiver):
    """Issue #11 item 4: a refusal naming a non-UTF-8 file raised UnicodeEncodeError and aborted every file."""
    src = os.fsencode(tmp_path / "src")
    dst = os.fsencode(receiver.dir / "src")
    os.makedirs(src)
    os.makedirs(dst)
    files = {}
    for name in (b"a\xff.bin", b"b\xfe.bin", b"c\xfd.bin", b"s\xfc.txt", b"ok.bin"):
        data = os.urandom(200_000 if name != b"s\xfc.txt" else 100)
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
        files[name] = data
    # the receiver refuses a\xff (other size), the sender skips b\xfe (same size, other content): both
    # refusals carry the name in their message; c\xfd and ok.bin must still arrive
    with open(os.path.join(dst, b"a\xff.bin"), "wb") as f:
        f.write(b"x" * 1000)
    with open(os.path.join(dst, b"b\xfe.bin"), "wb") as f:
        f.write(b"y" * 200_000)
    with open(os.path.join(dst, b"s\xfc.txt"), "wb") as f:
        f.write(b"z" * 10)
    rc, report, err = run_send(os.fsdecode(src), receiver.dest)
    assert rc == 1, err
    assert "Traceback" not in err and "UnicodeEncodeError" not in err
    status = {os.fsencode(f["path"]): f["status"] for f in report["files"]}
    assert status == {b"src": "ok", b"src/a\xff.bin": "exists", b"src/b\xfe.bin": "exists",
                      b"src/s\xfc.txt": "exists", b"src/c\xfd.bin": "ok", b"src/ok.bin": "ok"}, err
    for name in (b"c\xfd.bin", b"ok.bin"):
        with open(os.path.join(dst, name), "rb") as f:
            assert f.read() == files[name]
    # the messages name the file readably (the odd byte escaped), on both sides
    assert "a\\xff.bin" in err or "b\\xfe.bin" in err, err
    assert _leftovers(dst) == []
    ev = receiver.events_until("session")
    assert ev[-1]["complete"] and not ev[-1]["error"], ev[-1]


def _raw_session(port: int, frames: bytes, timeout: float = 10.0) -> list:
    """Send a HELLO and ``frames`` from a bare socket; return the frames the receiver answers until it closes."""
    from ftx.core.frames import FrameDecoder, FrameType, encode_frame
    from ftx.core.messages import ROLE_SENDER, Hello

    decoder = FrameDecoder(max_payload=1 << 22)
    got = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 1 << 22).encode()) + frames)
        while data := s.recv(65536):
            decoder.feed(data)
            while (f := decoder.next_frame()) is not None:
                got.append(f)
    return got


@pytest.mark.parametrize("size,mode", [(2**63, 0o644), (2**64 - 1, 0o644), (1000, 0o100644)])
def test_out_of_range_offer_is_a_protocol_error_not_a_crash(tmp_path, receiver, size, mode):
    """Issue #11 item 5: an OFFER size >= 2**63 reached posix_fallocate and raised OverflowError."""
    from ftx.core.frames import FrameType, encode_frame
    from ftx.core.manifest import ENTRY
    from ftx.core.messages import ErrorMessage
    from ftx.errors import ErrorCode

    entry = ENTRY.pack(0, 1, 0, 0, mode, 0, size, 1 << 20, 5, 0) + b"huge!"
    got = _raw_session(receiver.port, encode_frame(FrameType.OFFER, entry))
    errors = [ErrorMessage.decode(f.payload) for f in got if f.type == FrameType.ERROR]
    assert len(errors) == 1 and errors[0].code == ErrorCode.PROTOCOL, got
    assert "size" in errors[0].message or "mode" in errors[0].message
    ev = receiver.events_until("session")
    assert not ev[-1]["complete"] and ev[-1]["error"]
    assert not os.path.lexists(receiver.dir / "huge!") and _leftovers(receiver.dir) == []
    write_random(tmp_path / "after.bin", 100_000)  # and it keeps serving
    assert run_send(str(tmp_path / "after.bin"), receiver.dest)[0] == 0
    receiver.stop()
    assert "Traceback" not in receiver.stderr, receiver.stderr
