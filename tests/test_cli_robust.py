"""End to end through the real CLI: refusals, odd names, peers that are not ftx, bad options."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading

import pytest

from .helpers import FTX, run_send, write_random

pytestmark = pytest.mark.timeout(60)


def _leftovers(directory) -> list[str]:
    state = os.path.join(os.fsencode(directory), b".ftx")
    return sorted(os.listdir(state)) if os.path.isdir(state) else []


TRANSPORTS = pytest.mark.parametrize("transport", [[], ["--udp"]], ids=["tcp", "udp"])


@TRANSPORTS
def test_refusing_a_later_file_of_several_keeps_the_session(tmp_path, receiver, transport):
    """Issue #11 item 3: a refused b.bin crashed the sender (KeyError) and stranded c.bin's partial."""
    src = tmp_path / "src"
    a = write_random(src / "a.bin", 300_000, seed=1)
    write_random(src / "b.bin", 300_000, seed=2)
    c = write_random(src / "c.bin", 300_000, seed=3)
    d = write_random(src / "d.bin", 400_000, seed=4)
    theirs = write_random(receiver.dir / "src" / "b.bin", 123_456, seed=9)  # a different b.bin
    rc, report, err = run_send(str(src), receiver.dest, *transport)
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


@TRANSPORTS
def test_non_utf8_names_with_refusals_keep_the_session(tmp_path, receiver, transport):
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
    rc, report, err = run_send(os.fsdecode(src), receiver.dest, *transport)
    assert rc == 1, err
    assert "Traceback" not in err and "UnicodeEncodeError" not in err
    status = {base64.b64decode(f["path_b64"]) if "path_b64" in f else f["path"].encode(): f["status"]
              for f in report["files"]}  # (--json: U+FFFD in "path", the exact bytes in "path_b64")
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
    """Send a HELLO and ``frames`` from a hand-driven (authenticated) socket; return the frames the receiver
    answers until it closes."""
    from ftx.core.frames import FrameDecoder, FrameType, encode_frame
    from ftx.core.messages import ROLE_SENDER, Hello

    from .helpers import SealedSocket

    decoder = FrameDecoder(max_payload=1 << 22)
    got = []
    with SealedSocket(port, timeout=timeout) as s:
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


class FakeServer:
    """A TCP server on loopback that is not ftx: greets with ``banner`` or answers the first bytes with ``reply``."""

    def __init__(self, banner: bytes = b"", reply: bytes = b"") -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.banner, self.reply = banner, reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(30)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            if self.banner:
                conn.sendall(self.banner)
            try:
                conn.recv(4096)
                if self.reply:
                    conn.sendall(self.reply)
                    conn.shutdown(socket.SHUT_WR)
                conn.recv(4096)  # until the client hangs up
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


@pytest.mark.parametrize("banner,reply,shown", [
    # (the handshake judges the first 16 bytes, a frame header's worth)
    (b"", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "HTTP/1.1 400 Bad"),
    (b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n", b"", "SSH-2.0-OpenSSH_"),
    # HELLO header, no magic: only a plaintext (--insecure) sender reads that far; an authenticating
    # one takes a HELLO header for a peer that runs --insecure (tests/test_secure_cli.py)
    (b"\x01\x00\x00\x00\x00\x00\x00\x1f" + bytes(8) + b"ftx!", b"", "\\x01\\x00"),
])
def test_a_peer_that_is_not_ftx_is_a_protocol_error(tmp_path, banner, reply, shown):
    """Issue #11 item 6: an HTTP server gave exit 3 and "frame of 791752241 bytes exceeds the limit"."""
    write_random(tmp_path / "f.bin", 1000)
    server = FakeServer(banner, reply)
    extra = ["--insecure"] if banner.startswith(b"\x01") else []
    try:
        rc, report, err = run_send(str(tmp_path / "f.bin"), f"127.0.0.1:{server.port}", *extra, timeout=30)
    finally:
        server.close()
    assert rc == 4, err
    assert "does not speak ftx" in err and shown in err, err
    assert "exceeds the limit" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_receiver_names_a_client_that_is_not_ftx(tmp_path, receiver):
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while s.recv(4096):
            pass
    ev = receiver.events_until("session")[-1]
    assert "does not speak ftx" in ev["error"] and "GET / HTTP/1.1" in ev["error"], ev


def _ftx(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(FTX + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("listen", ["nonsense.invalid", "127.0.0.1:7000", "192.0.2.1", "::1::2"])
def test_bad_listen_address_is_a_one_line_usage_error(tmp_path, listen):
    """Issue #11 item 6: a bad --listen printed a 30-line traceback."""
    out = _ftx("receive", "--mkdir", "--listen", listen, "--port", "0", "--dir", str(tmp_path), "--once")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("ftx: ") and "--listen" in out.stderr


def test_impair_bad_addresses_are_one_line_usage_errors():
    for args in (["--listen", "nonsense.invalid:0", "--to", "127.0.0.1:9"],
                 ["--listen", "127.0.0.1:0", "--to", "nonsense.invalid:9"]):
        out = _ftx("impair", *args, "--duration", "1")
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("value", ["-1", "0", "nan", "abc"])
def test_idle_timeout_must_be_positive(tmp_path, value):
    write_random(tmp_path / "f", 10)
    out = _ftx("send", str(tmp_path / "f"), "127.0.0.1:9", "--idle-timeout", value)
    assert out.returncode == 2 and "--idle-timeout" in out.stderr, out.stderr
    out = _ftx("receive", "--mkdir", "--listen", "127.0.0.1", "--port", "0", "--dir", str(tmp_path), "--idle-timeout", value)
    assert out.returncode == 2 and "--idle-timeout" in out.stderr, out.stderr


def test_listen_port_in_use_is_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as s:
        out = _ftx("receive", "--mkdir", "--listen", "127.0.0.1", "--port", str(s.getsockname()[1]), "--dir", str(tmp_path))
    assert out.returncode == 3 and "in use" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("args", [
    ["send", "{f}", "a" * 300],  # a host name the resolver cannot even encode
    ["send", "{f}", "127.0.0.1:9", "--chunk-size", "1e400"],
    ["send", "{f}", "127.0.0.1:9", "--max-rate", "1e400"],
    ["send", "{f}", "127.0.0.1:9", "--max-rate", "nan"],
    ["receive", "--mkdir", "--listen", "127.0.0.1", "--port", "0", "--dir", "{d}", "--max-memory", "1e400"],
    ["receive", "--mkdir", "--listen", "127.0.0.1", "--port", "0", "--dir", "{d}", "--min-free", "lots"],
    ["receive", "--mkdir", "--listen", "127.0.0.1", "--port", "0", "--dir", "{d}", "--partial-ttl", "inf"],
])
def test_bad_option_values_are_usage_errors_not_tracebacks(tmp_path, args):
    write_random(tmp_path / "f", 10)
    out = _ftx(*[a.format(f=tmp_path / "f", d=tmp_path) for a in args])
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "could not convert" not in out.stderr, out.stderr


def test_receiver_survives_its_json_reader_going_away(tmp_path):
    """`ftx receive --json | head -1`: a closed stdout gave a BrokenPipeError traceback per session."""
    import json

    (tmp_path / "dst").mkdir()
    proc = subprocess.Popen(FTX + ["receive", "--mkdir", "--listen", "127.0.0.1", "--port", "0", "--dir", str(tmp_path / "dst"),
                                   "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = json.loads(proc.stdout.readline())["port"]
        proc.stdout.close()  # the reader is gone
        for i in range(2):
            data = write_random(tmp_path / f"f{i}.bin", 100_000, seed=i)
            rc, report, err = run_send(str(tmp_path / f"f{i}.bin"), f"127.0.0.1:{port}")
            assert rc == 0, err
            assert (tmp_path / "dst" / f"f{i}.bin").read_bytes() == data
        assert proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err



def test_udp_chunk_for_an_unknown_file_gets_an_error_frame(receiver):
    """protocol.md 14.8: the receiver sent no ERROR, only CLOSE 0 "done", so the sender could not learn why."""
    import asyncio

    from ftx.core.checksum import chunk_checksum
    from ftx.core.config import Config
    from ftx.core.events import PeerFailed
    from ftx.core.sender import SenderConnection
    from ftx.errors import ErrorCode, FtxError
    from ftx.transport import udp

    async def rogue() -> list:
        from ftx.securing import run_handshake

        from .helpers import client_handshake

        link = await udp.connect("127.0.0.1", receiver.port, udp.UdpConfig(idle_timeout=10))
        await run_handshake(link, client_handshake(), 10)
        conn, events = SenderConnection(Config()), []
        try:
            await link.send(conn.data_to_send())
            while not any(isinstance(e, PeerFailed) for e in events):
                await link.feed(conn)
                while (ev := conn.next_event()) is not None:
                    events.append(ev)
                if conn.peer is not None and len(events) == 1:  # handshake done: a chunk of no file
                    data = b"x" * 5000
                    link.session.send_chunk(9, 0, chunk_checksum(data), data)
                    link.wake()
        except FtxError:
            pass
        finally:
            await link.aclose(1.0)
        return events

    events = asyncio.run(asyncio.wait_for(rogue(), 30))
    failed = [e for e in events if isinstance(e, PeerFailed)]
    assert failed and failed[0].code == ErrorCode.PROTOCOL and "unknown file" in failed[0].message, events


def test_udp_to_a_broadcast_address_is_a_one_line_error(tmp_path):
    write_random(tmp_path / "f", 10)
    rc, _, err = run_send(str(tmp_path / "f"), "255.255.255.255:9", "--udp", "--idle-timeout", "1")
    assert rc == 3 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cannot connect to 255.255.255.255 port 9" in err
