"""Many small files: how input is batched on its way through the receiver, and what the
batching must not change.

* A sealed TCP feed opens every complete record already read (a batch of small files),
  but stops at a record whose event holds a view into the frame buffer (a DATA chunk).
* The receiver hands events to its worker thread in parts (``receiving.BATCH``) and sends
  each part's RESULTs before it handles the next part: the sender refills its offer window
  while the receiver writes.
* ``ftx receive --json`` still prints one line per item, all before the session line.
"""

from __future__ import annotations

import asyncio
import json
import select
import time

import pytest

from ftx import receiving
from ftx.core.checksum import chunk_checksum, file_digest
from ftx.core.events import ChunkReceived, FileOffered, HandshakeComplete, SmallFileReceived
from ftx.core.frames import FrameDecoder, FrameType
from ftx.core.manifest import MIN_CHUNK_SIZE, FileEntry
from ftx.core.receiver import ReceiverConnection
from ftx.core.secure.records import RecordOpener, RecordSealer
from ftx.core.sender import SenderConnection
from ftx.errors import ErrorCode
from ftx.storage import Destination

from .helpers import run_send, wait_for
from .secure_fakes import FakeHandshake
from .test_sealed_tcp import _server_side

pytestmark = pytest.mark.timeout(60)
T = 10


def _bytes(bufs) -> bytes:
    return b"".join(bytes(b) for b in bufs)


def _drain(conn) -> list:
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def _sender() -> SenderConnection:
    """A sender core that has seen a receiver's HELLO (so that it may offer)."""
    s = SenderConnection()
    s.receive_data(_bytes(ReceiverConnection().data_to_send()))
    _drain(s)
    return s


def test_a_sealed_feed_takes_every_complete_record_but_stops_at_a_chunk():
    async def go():
        client = FakeHandshake("client")
        sealer = RecordSealer(client.result)
        s = SenderConnection()
        blob = [client.data_to_send(), sealer.seal(_bytes(s.data_to_send()))]  # its HELLO
        s.receive_data(_bytes(ReceiverConnection().data_to_send()))
        _drain(s)
        for i in range(40):  # one record each
            data = bytes([i]) * (i * 50)
            s.send_small_file(FileEntry(b"f%02d" % i, size=len(data)), data, file_digest(data))
            blob.append(sealer.seal(_bytes(s.data_to_send())))
        result, link, raw = await _server_side([b"".join(blob)])
        assert not isinstance(result, Exception), result
        conn = ReceiverConnection()
        conn.data_to_send()  # its HELLO: the sender core has one already
        await asyncio.wait_for(link.feed(conn), T)  # one call: all 41 records were read at once
        first = _drain(conn)

        # a file in chunks: its DATA records stop the feed, one chunk per call, never copied
        big = bytes(range(256)) * (2 * MIN_CHUNK_SIZE // 256)
        fid = s.offer(FileEntry(b"big", size=len(big), chunk_size=MIN_CHUNK_SIZE))
        await asyncio.get_running_loop().sock_sendall(raw, sealer.seal(_bytes(s.data_to_send())))
        await asyncio.wait_for(link.feed(conn), T)
        assert [type(ev) for ev in _drain(conn)] == [FileOffered]
        conn.decide(fid)
        s.receive_data(_bytes(conn.data_to_send()))
        _drain(s)
        tail = []
        for index in range(2):
            s.send_chunk(fid, index, big[index * MIN_CHUNK_SIZE : (index + 1) * MIN_CHUNK_SIZE])
            tail.append(sealer.seal(_bytes(s.data_to_send())))
        s.send_small_file(FileEntry(b"after", size=3), b"abc", file_digest(b"abc"))
        tail.append(sealer.seal(_bytes(s.data_to_send())))
        await asyncio.get_running_loop().sock_sendall(raw, b"".join(tail))
        feeds = []
        for _ in range(3):
            await asyncio.wait_for(link.feed(conn), T)
            evs = _drain(conn)
            feeds.append([(type(ev).__name__, getattr(ev, "index", None),
                           isinstance(getattr(ev, "data", None), memoryview)) for ev in evs])
            for ev in evs:
                if isinstance(ev, ChunkReceived):
                    assert chunk_checksum(ev.data) == chunk_checksum(
                        big[ev.index * MIN_CHUNK_SIZE : (ev.index + 1) * MIN_CHUNK_SIZE])
        link.close()
        raw.close()
        return first, feeds

    first, feeds = asyncio.run(go())
    assert isinstance(first[0], HandshakeComplete)
    assert [ev.entry.path for ev in first[1:]] == [b"f%02d" % i for i in range(40)]
    assert all(isinstance(ev, SmallFileReceived) for ev in first[1:])
    assert feeds == [[("ChunkReceived", 0, True)], [("ChunkReceived", 1, True)],
                     [("SmallFileReceived", None, False)]]


def test_results_of_a_part_go_out_before_the_next_part_is_handled(tmp_path):
    """The sender sees RESULTs while the receiver still writes the same batch: at the first
    file of the second part, the first part's RESULTs must be on their way."""
    n = 2 * receiving.BATCH + 10
    client = FakeHandshake("client")
    sealer = RecordSealer(client.result)
    s = SenderConnection()
    hello = sealer.seal(_bytes(s.data_to_send()))
    s.receive_data(_bytes(ReceiverConnection().data_to_send()))
    _drain(s)
    for i in range(n):
        s.send_small_file(FileEntry(b"f%03d" % i, size=0), b"", file_digest(b""))
    s.finish()
    files = sealer.seal(_bytes(s.data_to_send()))  # all of them in one record: one batch
    seen: dict[str, int] = {}

    async def go():
        result, link, raw = await _server_side([client.data_to_send() + hello + files])
        assert not isinstance(result, Exception), result
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(raw, 65536), T)
        opener = RecordOpener(client.result)
        pending = data[client.receive(data, 0.0):]
        reports = []

        frames = FrameDecoder()

        def results_so_far(deadline: float) -> int:  # on the worker thread: read what came back
            nonlocal pending
            got = 0
            while True:
                if pending:
                    frames.feed(opener.feed(pending))
                    pending = b""
                while (frame := frames.next_frame()) is not None:
                    got += frame.type == FrameType.RESULT  # files settled, one by one or a run at once
                    if frame.type == FrameType.RESULT_RUN:
                        got += int.from_bytes(frame.payload[4:8], "big")
                if got or time.monotonic() > deadline:
                    return got
                if select.select([raw], [], [], 0.05)[0]:
                    pending = raw.recv(65536)

        def on_file(report) -> None:
            reports.append(report)
            if len(reports) == receiving.BATCH + 1:
                seen["results"] = results_so_far(time.monotonic() + 5)

        session = await asyncio.wait_for(receive_over_until_done(link, tmp_path, on_file), T * 2)
        raw.close()
        return session

    async def receive_over_until_done(link, path, on_file):
        return await receiving.receive_over(link, Destination(path / "dst"), on_file=on_file, idle_timeout=T)

    session = asyncio.run(go())
    assert seen["results"] >= receiving.BATCH - 1  # the first part: HELLO's event and BATCH - 1 files
    assert session.complete
    assert len(session.reports) == n and all(r.status == "ok" for r in session.reports)
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == [f"f{i:03d}" for i in range(n)]


def test_json_lines_for_every_item_come_before_the_session_line(tmp_path, receiver):
    src = tmp_path / "tree"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(150):
            (src / f"d{d}" / f"f{i:03d}").write_bytes(b"x" * (i % 7))
    code, report, err = run_send(str(src), receiver.dest)
    assert code == 0, err
    events = receiver.events_until("session")
    files = [ev for ev in events if ev["event"] == "file"]
    assert events[-1]["event"] == "session" and events[-1]["files"] == 454
    assert len(files) == 454 == report["file_count"]
    assert {f["path"] for f in files} == {f["path"] for f in report["files"]}
    assert all(f["status"] == "ok" for f in files)


def test_file_lines_are_written_while_the_session_goes_on(tmp_path, receiver_factory):
    """Queued per-file lines do not wait for the session's end: a sender that stops after three
    small files (no DONE) still sees their three lines on the receiver's stdout."""
    import socket

    receiver = receiver_factory("--insecure")
    s = SenderConnection()
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=T) as sock:
        sock.sendall(_bytes(s.data_to_send()))  # our HELLO
        while s.peer is None:  # the receiver's: then the sender core may offer
            s.receive_data(sock.recv(65536))
        for i in range(3):
            s.send_small_file(FileEntry(b"f%d" % i, size=1), b"x", file_digest(b"x"))
        sock.sendall(_bytes(s.data_to_send()))
        lines = [receiver.next_event(timeout=T) for _ in range(3)]
    assert [(ev["event"], ev["path"], ev["status"]) for ev in lines] == [("file", f"f{i}", "ok") for i in range(3)]


@pytest.mark.parametrize("count", [0, 1, 999, 1000, 2001])
def test_the_senders_report_is_written_in_pieces_as_one_json_dumps_would(count, capsys):
    from ftx import cli
    from ftx.sending import FileSendReport, SendReport

    files = [FileSendReport(f'd/f"{i}\n\u00e9', "file", i, "ok", "ab" * 16, i) for i in range(count)]
    report = SendReport(True, "tcp", 1.5, 10, 10, 0, files, transport_stats={"bytes_out": 7}, receipt={"a": {"b": 1}})
    extra = {"auth": "key", "fingerprint": "SHA256:x"}
    cli._emit_streamed({**report.as_json(lazy_files=True), **extra}, "files")
    assert capsys.readouterr().out == json.dumps({**report.as_json(), **extra}) + "\n"


def test_the_senders_file_reports_built_by_hand_are_what_json_dumps_writes(capsys):
    """ASCII reports are built by hand (cli_output._items); any other text goes through json.dumps
    (and jsontext.clean for a name that is not UTF-8): the same bytes either way."""
    from ftx import cli
    from ftx.jsontext import clean
    from ftx.sending import FileSendReport, SendReport

    paths = ["d/plain.bin", 'd/q"uote\\back/sl\nnl\x01\x7f\t', "d/caf\u00e9", "d/caf\udce9", "", "d/\U0001f600"]
    files = [FileSendReport(p, kind, i * 7, status, digest, i, i // 2, message)
             for i, (p, kind, status, digest, message) in enumerate(
                 (p, k, st, dg, m) for p in paths for k in ("file", "dir") for st, dg, m in (
                     ("identical", "", ""), ("ok", "ab" * 16, ""), ("exists", "", 'it "differs"\n'),
                     ("storage", "", "disk \u00e9 full")))]
    report = SendReport(True, "tcp", 0.5, 10, 10, 0, files, file_count=len(files))
    cli._emit_streamed({**report.as_json(lazy_files=True), "exit": 0}, "files")
    assert capsys.readouterr().out == json.dumps(clean({**report.as_json(), "exit": 0})) + "\n"


def test_a_second_sender_is_not_starved_while_one_streams_small_files(tmp_path, receiver_factory):
    """Small files may be stored on the event loop itself (no thread hop); the loop must still
    turn to other connections between parts.  Sender A streams small files with no pause (its
    next files are always in the receiver's socket) and never says DONE; a second sender's file
    goes through meanwhile."""
    import socket
    import threading

    receiver = receiver_factory("--insecure")
    (tmp_path / "b").write_bytes(b"second sender")
    stop = threading.Event()
    sent = [0]
    failures: list[BaseException] = []

    def stream_a() -> None:
        s = SenderConnection()
        try:
            with socket.create_connection(("127.0.0.1", receiver.port), timeout=T) as sock:
                sock.sendall(_bytes(s.data_to_send()))
                while s.peer is None:
                    s.receive_data(sock.recv(65536))
                sock.setblocking(False)
                while not stop.is_set():
                    for _ in range(256):
                        s.send_small_file(FileEntry(b"a/f%07d" % sent[0], size=3), b"abc", file_digest(b"abc"))
                        sent[0] += 1
                    out = memoryview(_bytes(s.data_to_send()))
                    while out and not stop.is_set():
                        try:
                            out = out[sock.send(out):]
                        except BlockingIOError:
                            select.select([], [sock], [], 0.1)
                        try:  # RESULTs: read and forget (keeps the window open)
                            if data := sock.recv(1 << 20):
                                s.receive_data(data)
                                _drain(s)
                        except BlockingIOError:
                            pass
        except BaseException as exc:  # noqa: BLE001 -- reported by the test below
            failures.append(exc)

    a = threading.Thread(target=stream_a, daemon=True)
    a.start()
    try:
        wait_for(lambda: sent[0] >= 2048, timeout=T, what="sender A streaming")
        code, report, err = run_send(str(tmp_path / "b"), receiver.dest, "--insecure", timeout=2 * T)
        still_streaming = a.is_alive() and not failures
    finally:
        stop.set()
        a.join(T)
    assert code == 0, err
    assert report["files"][0]["status"] == "ok"
    assert still_streaming, failures
    assert (receiver.dir / "b").read_bytes() == b"second sender"
