"""Sealed TCP end to end on real loopback sockets: ``run_handshake`` (with the test double of
tests/secure_fakes.py) then ``send_paths``/``receive_over`` over sealed ``TcpLink``s.

A tampering proxy between the peers flips a bit in, drops, duplicates, reorders or
replays one record: the transfer fails with an authentication error and no file lands
under its final name; the receiver serves the next sender.  A capture through the
proxy holds neither a file's content nor its name.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest

from ftx.cli import EXIT_PROTOCOL, _exit_code, _report_exit_code
from ftx.core.frames import FrameType, encode_frame
from ftx.core.messages import ErrorMessage
from ftx.core.receiver import ReceiverConnection
from ftx.core.secure import AuthError
from ftx.core.secure.keys import CHACHA20_POLY1305
from ftx.core.secure.records import OVERHEAD, RecordOpener, RecordSealer
from ftx.core.sender import SenderConnection
from ftx.errors import ErrorCode, PeerError, RemoteProtocolError, TransportError
from ftx.receiving import receive_over
from ftx.securing import run_handshake
from ftx.sending import send_paths
from ftx.storage import Destination
from ftx.transport import tcp, tcp_sealed

from .secure_fakes import FakeHandshake

pytestmark = pytest.mark.timeout(60)
T = 10  # seconds: every network step


class Server:
    """A receiver on an ephemeral loopback port: the handshake, then receive_over."""

    def __init__(self, dest: Destination, make_hs=lambda: FakeHandshake("server"), secure: bool = True) -> None:
        self.dest = dest
        self.make_hs = make_hs
        self.secure = secure
        self.results: list = []  # per connection: the session, or the handshake's exception
        self.links: list = []
        self.done = asyncio.Event()

    async def __aenter__(self):
        self.socks = tcp.listen("127.0.0.1", 0)
        self.port = self.socks[0].getsockname()[1]
        self.task = asyncio.get_running_loop().create_task(tcp.serve(self.socks, self._handle))
        return self

    async def _handle(self, link) -> None:
        self.links.append(link)
        try:
            if self.secure:
                try:
                    await run_handshake(link, self.make_hs(), T)
                except Exception as exc:
                    self.results.append(exc)
                    link.close()
                    return
            self.results.append(await receive_over(link, self.dest, idle_timeout=T))
        finally:
            self.done.set()

    async def wait(self, n: int) -> list:
        while len(self.results) < n:
            self.done.clear()
            await asyncio.wait_for(self.done.wait(), T)
        return self.results

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        for s in self.socks:
            s.close()


async def sealed_send(port: int, paths, hs=None, **kw):
    link = await tcp.connect("127.0.0.1", port)
    try:
        await run_handshake(link, hs or FakeHandshake("client"), T)
    except BaseException:
        link.close()
        raise
    return await asyncio.wait_for(send_paths(link, [str(p) for p in paths], idle_timeout=T, **kw), T * 3)


class Proxy:
    """Forwards loopback TCP to ``port``, recording both directions; ``attack`` may change
    the sender-to-receiver records (``up``) or the receiver-to-sender ones (``down``)."""

    def __init__(self, port: int, attack: str | None = None, record: int = 3, direction: str = "up") -> None:
        self.target = port
        self.attack, self.record, self.direction = attack, record, direction
        self.capture = {"up": bytearray(), "down": bytearray()}
        self.attacked = asyncio.Event()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, creader, cwriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(creader, swriter, "up"), self._pipe(sreader, cwriter, "down"),
                             return_exceptions=True)
        cwriter.close()
        swriter.close()

    async def _pipe(self, reader, writer, direction: str) -> None:
        attack = self.attack if direction == self.direction else None
        try:
            # the handshake frame passes as it is (16-byte header, then its payload)
            head = await reader.readexactly(16)
            body = await reader.readexactly(int.from_bytes(head[4:8], "big"))
            self.capture[direction] += head + body
            writer.write(head + body)
            if attack == "inject":  # a forged plaintext ERROR where the first record belongs
                writer.write(encode_frame(FrameType.ERROR, ErrorMessage(
                    ErrorCode.AUTH, "receiver moved: send to 10.66.66.66 instead").encode()))
                self.attacked.set()
                attack = None
            records: list[bytes] = []
            n = 0
            while True:
                h = await reader.readexactly(4)
                rec = h + await reader.readexactly((int.from_bytes(h, "big") & 0x7FFFFFFF) + OVERHEAD - 4)
                self.capture[direction] += rec
                records.append(rec)
                out = [rec]
                if attack and n == self.record:
                    out = self._tamper(records, rec)
                    self.attacked.set()
                elif attack == "reorder" and n == self.record + 1:
                    out = [rec, records[-2]]  # the held one after its successor
                n += 1
                for r in out:
                    writer.write(r)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass

    def _tamper(self, records: list[bytes], rec: bytes) -> list[bytes]:
        if self.attack == "flip":
            pos = random.Random(1).randrange(len(rec))
            return [rec[:pos] + bytes([rec[pos] ^ 0x10]) + rec[pos + 1 :]]
        if self.attack == "drop":
            return []
        if self.attack == "duplicate":
            return [rec, rec]
        if self.attack == "reorder":
            return []  # held back, sent after the next one
        if self.attack == "replay":
            return [rec, records[1]]
        raise AssertionError(self.attack)


def failed_with_auth(exc_or_report) -> bool:
    failure = getattr(exc_or_report, "failure", exc_or_report)
    if isinstance(failure, AuthError):
        return True
    return isinstance(failure, (PeerError, TransportError)) and getattr(failure, "code", None) == ErrorCode.AUTH


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(7)
    big = src / "big-secret-name.bin"
    big.write_bytes(rng.randbytes(3 * 1024 * 1024 + 5))
    small = src / "small-secret-name.txt"
    small.write_bytes(b"PAY ALICE $100\n" * 20)
    return [big, small]


def run(coro):
    return asyncio.run(coro)


def test_sealed_transfer_and_the_capture_holds_neither_content_nor_names(tmp_path, files):
    async def go():
        async with Server(Destination(tmp_path / "dst")) as server, Proxy(server.port) as proxy:
            report = await sealed_send(proxy.port, files)
            await server.wait(1)
            return report, proxy.capture

    report, capture = run(go())
    assert report.ok, report.error
    for f in files:
        assert (tmp_path / "dst" / f.name).read_bytes() == f.read_bytes()
    wire = bytes(capture["up"] + capture["down"])
    assert len(capture["up"]) > 3 * 1024 * 1024
    for f in files:
        assert f.name.encode() not in wire
        data = f.read_bytes()
        for i in range(0, len(data) - 32, len(data) // 7):
            assert data[i : i + 32] not in wire
    assert b"PAY ALICE" not in wire


@pytest.mark.parametrize("cipher", [CHACHA20_POLY1305])
def test_sealed_transfer_with_chacha(tmp_path, files, cipher):
    async def go():
        async with Server(Destination(tmp_path / "dst"), lambda: FakeHandshake("server", cipher=cipher)) as server:
            report = await sealed_send(server.port, files, FakeHandshake("client", cipher=cipher))
            await server.wait(1)
            return report

    report = run(go())
    assert report.ok, report.error
    assert (tmp_path / "dst" / files[0].name).read_bytes() == files[0].read_bytes()


def test_many_small_files_and_key_updates(tmp_path, monkeypatch):
    """Every record under a new key (update after 1 record), in both directions."""
    from ftx.core.secure import records

    real = records.RecordSealer.__init__

    def tiny_limits(self, keys, max_record=records.MAX_RECORD, update_after=None):
        real(self, keys, max_record=4096, update_after=1)

    monkeypatch.setattr(records.RecordSealer, "__init__", tiny_limits)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        (src / f"f{i}").write_bytes(os.urandom(i * 997))

    async def go():
        async with Server(Destination(tmp_path / "dst")) as server:
            report = await sealed_send(server.port, [src])
            await server.wait(1)
            return report

    report = run(go())
    assert report.ok, report.error
    for i in range(60):
        assert (tmp_path / "dst" / "src" / f"f{i}").read_bytes() == (src / f"f{i}").read_bytes()


@pytest.mark.parametrize("attack", ["flip", "drop", "duplicate", "reorder", "replay"])
@pytest.mark.parametrize("direction", ["up", "down"])
def test_tampering_fails_with_auth_and_lands_nothing(tmp_path, files, attack, direction, caplog):
    dst = tmp_path / "dst"
    record = 4 if direction == "up" else 1  # up: inside the big file's chunks; down: a DECISION/RESULT

    async def go():
        async with Server(Destination(dst)) as server:
            async with Proxy(server.port, attack, record, direction) as proxy:
                report = await sealed_send(proxy.port, files[:1])
                first = (await server.wait(1))[0]
                assert proxy.attacked.is_set()
            clean = await sealed_send(server.port, files[1:])  # the receiver still serves
            return report, first, clean

    report, session, clean = run(go())
    assert not report.ok
    assert failed_with_auth(report), (report.error, type(report.failure))
    if direction == "up":  # the receiver saw the bad record
        assert "did not open" in session.error, session.error
    else:  # the sender did, and told the receiver
        assert isinstance(report.failure, AuthError) and "did not open" in report.error
        assert "sender gave up: a sealed record did not open" in caplog.text
    assert not (dst / files[0].name).exists()  # nothing under the final name
    assert clean.ok, clean.error
    assert _report_exit_code(report) == EXIT_PROTOCOL  # `ftx send` exits 4, as for a protocol error


def test_refusal_is_one_line_on_both_sides(tmp_path, files):
    async def go():
        refuse = "unknown key SHA256:abc; add it to authorized_keys"
        async with Server(Destination(tmp_path / "dst"), lambda: FakeHandshake("server", refuse=refuse)) as server:
            with pytest.raises(AuthError) as info:
                await sealed_send(server.port, files)
            return info.value, (await server.wait(1))[0]

    client, server = run(go())
    assert str(client) == "peer refused: unknown key SHA256:abc; add it to authorized_keys"
    assert _exit_code(client) == EXIT_PROTOCOL
    assert isinstance(server, AuthError) and "unknown key" in str(server)
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").iterdir())


def test_refusal_after_the_client_sealed_reaches_it_in_plaintext(tmp_path, files):
    """Three messages (as SIGMA-I): the client is done and sealed when the server refuses its
    last message; the refusal is a plaintext ERROR before the first record."""
    async def go():
        async with Server(Destination(tmp_path / "dst"),
                          lambda: FakeHandshake("server", token=b"right", rounds=3)) as server:
            report = await sealed_send(server.port, files, FakeHandshake("client", token=b"wrong", rounds=3))
            return report, (await server.wait(1))[0]

    report, server = run(go())
    assert not report.ok
    assert "unknown test token" in report.error, report.error
    assert "not authenticated" in report.error, report.error  # it came in plaintext: anyone could send it
    assert failed_with_auth(report), type(report.failure)
    assert isinstance(server, AuthError)


def test_an_injected_plaintext_error_is_not_presented_as_the_peers(tmp_path, files):
    """An attacker on the path writes a plaintext ERROR where the receiver's first record
    belongs: the sender stops (as a TCP reset would make it), but says the reason is not
    authenticated rather than presenting it as the authenticated receiver's."""
    async def go():
        async with Server(Destination(tmp_path / "dst")) as server:
            async with Proxy(server.port, attack="inject", direction="down") as proxy:
                report = await sealed_send(proxy.port, files)
                return report

    report = run(go())
    assert not report.ok
    assert "not authenticated" in report.error, report.error
    assert "10.66.66.66" in report.error  # the text is still shown, for what it is worth
    assert not (tmp_path / "dst" / files[0].name).exists()


def test_three_rounds_succeed(tmp_path, files):
    async def go():
        async with Server(Destination(tmp_path / "dst"), lambda: FakeHandshake("server", rounds=3)) as server:
            report = await sealed_send(server.port, files, FakeHandshake("client", rounds=3))
            await server.wait(1)
            return report

    report = run(go())
    assert report.ok, report.error


def test_secure_sender_against_an_insecure_receiver(tmp_path, files):
    async def go():
        async with Server(Destination(tmp_path / "dst"), secure=False) as server:
            with pytest.raises(AuthError) as info:
                await sealed_send(server.port, files)
            return info.value, (await server.wait(1))[0]

    client, session = run(go())
    assert str(client) == "the peer runs --insecure; plaintext needs --insecure on both sides"
    assert session.error == "the peer requires authentication; this side runs --insecure"


def test_insecure_sender_against_a_secure_receiver(tmp_path, files):
    async def go():
        async with Server(Destination(tmp_path / "dst")) as server:
            link = await tcp.connect("127.0.0.1", server.port)
            report = await asyncio.wait_for(send_paths(link, [str(f) for f in files], idle_timeout=T), T)
            return report, (await server.wait(1))[0]

    report, server = run(go())
    assert not report.ok
    assert "requires authentication" in report.error and "--insecure on both sides" in report.error, report.error
    assert isinstance(server, AuthError) and "runs --insecure" in str(server)


def test_handshake_timeout(tmp_path, files):
    async def go():
        async with Server(Destination(tmp_path / "dst"), lambda: FakeHandshake("server", silent=True)) as server:
            link = await tcp.connect("127.0.0.1", server.port)
            try:
                with pytest.raises(TransportError) as info:
                    await run_handshake(link, FakeHandshake("client"), 0.3)
            finally:
                link.close()
            return info.value

    exc = run(go())
    assert exc.code == ErrorCode.TIMEOUT and "did not finish within 0.3 s" in str(exc)


def test_a_cut_inside_a_record_is_an_auth_error(tmp_path, files):
    """The proxy forwards half of a record, then closes: the receiver reports the cut."""
    class Cutter(Proxy):
        def _tamper(self, records, rec):
            return [rec[: len(rec) // 2]]

    async def go():
        async with Server(Destination(tmp_path / "dst")) as server:
            async with Cutter(server.port, "cut", 3, "up") as proxy:
                orig = proxy._pipe

                async def pipe(reader, writer, direction):
                    if direction == "up":
                        await orig(_Until(reader, proxy), writer, direction)
                    else:
                        await orig(reader, writer, direction)

                proxy._pipe = pipe
                report = await sealed_send(proxy.port, files[:1])
                return report, (await server.wait(1))[0]

    report, session = run(go())
    assert not report.ok
    assert "middle of a sealed record" in session.error, session.error
    assert not (tmp_path / "dst" / files[0].name).exists()


class Chopper(Proxy):
    """Forwards the sender's sealed records re-cut into writes of random sizes (1 byte to 70 KiB),
    each drained before the next: reads end anywhere in the records."""

    async def _pipe(self, reader, writer, direction: str) -> None:
        if direction != "up":
            return await super()._pipe(reader, writer, direction)
        rng = random.Random(11)
        try:
            head = await reader.readexactly(16)
            writer.write(head + await reader.readexactly(int.from_bytes(head[4:8], "big")))
            while data := await reader.read(1 << 20):
                view = memoryview(data)
                while view:
                    n = rng.choice((1, 3, 4, 5, 17, 4096, 65535, 70000, rng.randrange(1, 70000)))
                    writer.write(bytes(view[:n]))
                    view = view[n:]
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass


def test_chunks_read_direct_from_reads_cut_anywhere(tmp_path, files, monkeypatch):
    """Large records go straight into the receiver's frame buffer and open there, whatever the
    reads look like; the files land byte-identical."""
    direct = []
    read_direct = tcp.TcpLink._read_direct

    async def counting(self, conn, target):
        direct.append(len(target))
        return await read_direct(self, conn, target)

    monkeypatch.setattr(tcp.TcpLink, "_read_direct", counting)

    async def go():
        async with Server(Destination(tmp_path / "dst")) as server, Chopper(server.port) as proxy:
            report = await sealed_send(proxy.port, files)
            return report, (await server.wait(1))[0]

    report, session = run(go())
    assert report.ok, report.error
    assert not session.error, session.error
    for f in files:
        assert (tmp_path / "dst" / f.name).read_bytes() == f.read_bytes()
    assert len(direct) >= 5  # two per MiB chunk of the 3 MiB file, but the first: the frame buffer grows to it

def test_the_receivers_byte_count_includes_records_read_direct(tmp_path, files):
    """``bytes_in`` (the --json reports' transport_stats) counts every byte that crossed the
    socket, the large records read straight into the frame buffer too: the sender's count."""
    async def go():
        async with Server(Destination(tmp_path / "dst")) as server:
            link = await tcp.connect("127.0.0.1", server.port)
            await run_handshake(link, FakeHandshake("client"), T)
            report = await asyncio.wait_for(send_paths(link, [str(p) for p in files], idle_timeout=T), T * 3)
            await server.wait(1)
            return report, link, server.links

    report, sender, links = run(go())
    assert report.ok, report.error
    assert len(links) == 1
    assert links[0].bytes_in == sender.bytes_out > 3 * 1024 * 1024
    assert sender.bytes_in == links[0].bytes_out


class _Until:
    """A reader that reports end of stream once the proxy has attacked."""

    def __init__(self, reader, proxy) -> None:
        self.reader, self.proxy = reader, proxy

    async def readexactly(self, n):
        if self.proxy.attacked.is_set():
            raise asyncio.IncompleteReadError(b"", n)
        return await self.reader.readexactly(n)


# -- the driver on a socket pair, byte by byte -----------------------------------------------
async def _server_side(peer_bytes: list[bytes], hs=None, timeout: float = T):
    """Run the server's handshake on a socket pair while the test writes ``peer_bytes``
    (one write each) on the other end; returns (result or exception, link, the raw peer socket)."""
    a, b = socket.socketpair()
    link = tcp.TcpLink(a)
    b.setblocking(False)
    loop = asyncio.get_running_loop()

    async def peer():
        for chunk in peer_bytes:
            await loop.sock_sendall(b, chunk)
            await asyncio.sleep(0)

    writer = loop.create_task(peer())
    try:
        result = await run_handshake(link, hs or FakeHandshake("server"), timeout)
    except Exception as exc:
        result = exc
    await writer
    return result, link, b


def test_sealed_bytes_behind_the_handshake_in_one_segment_are_kept():
    """A client whose keys are ready at once may send its handshake and its first records in
    one write: they are the ``leftover`` of the server's handshake, opened afterwards."""
    async def go():
        client = FakeHandshake("client")
        first = client.data_to_send()
        hello = SenderConnection().data_to_send()
        sealed = RecordSealer(client.result).seal(b"".join(bytes(x) for x in hello))
        result, link, raw = await _server_side([first + sealed])
        conn = ReceiverConnection()
        await asyncio.wait_for(link.feed(conn), T)
        assert conn.peer is not None  # the sender's HELLO, from the leftover
        await link.send(conn.data_to_send())  # the receiver's HELLO, sealed
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(raw, 65536), T)
        used = client.receive(data, 0.0)
        opened = RecordOpener(client.result).feed(data[used:])
        link.close()
        raw.close()
        return result, opened

    result, opened = run(go())
    assert result.cipher == "aes-256-gcm"
    assert opened[0] == FrameType.HELLO


def test_a_peer_error_split_over_two_reads_is_its_reason():
    frame = encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.AUTH, "wrong code").encode())

    async def go():
        result, link, raw = await _server_side([frame[:10], frame[10:]], FakeHandshake("client"))
        link.close()
        raw.close()
        return result

    result = run(go())
    assert isinstance(result, AuthError) and str(result) == "peer refused: wrong code"


def test_a_peer_error_of_another_code_is_a_peer_error():
    frame = encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.BUSY, "too many connections").encode())

    async def go():
        result, link, raw = await _server_side([frame], FakeHandshake("client"))
        link.close()
        raw.close()
        return result

    result = run(go())
    assert isinstance(result, PeerError) and result.code == ErrorCode.BUSY
    assert str(result) == "peer error: too many connections"


def test_an_oversized_handshake_frame_is_refused_at_its_header():
    header = bytes([0x10, 0, 0, 0]) + (1 << 20).to_bytes(4, "big") + bytes(8)

    async def go():
        result, link, raw = await _server_side([header])
        told = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(raw, 65536), T)
        link.close()
        raw.close()
        return result, told

    result, told = run(go())
    assert isinstance(result, RemoteProtocolError) and "exceeds 16384" in str(result)
    assert told[:1] == bytes([FrameType.ERROR])  # the peer is told why


def test_the_peer_closing_during_the_handshake():
    async def go():
        a, b = socket.socketpair()
        b.close()
        link = tcp.TcpLink(a)
        try:
            with pytest.raises(TransportError, match="closed the connection during the handshake"):
                await run_handshake(link, FakeHandshake("server"), T)
        finally:
            link.close()

    run(go())


def test_resume_over_a_sealed_channel(tmp_path):
    """A sealed transfer cut half-way resumes over a new sealed connection: the receiver keeps
    the verified chunks, the second run sends only the rest."""
    src = tmp_path / "big.bin"
    src.write_bytes(random.Random(3).randbytes(6 * 1024 * 1024))

    class Cut(Proxy):
        def _tamper(self, records, rec):
            return [rec]

    async def go():
        async with Server(Destination(tmp_path / "dst")) as server:
            async with Cut(server.port, "cut", 12, "up") as proxy:  # 12 records: about 4 MiB (three a chunk)
                orig = proxy._pipe

                async def pipe(reader, writer, direction):
                    if direction == "up":
                        await orig(_Until(reader, proxy), writer, direction)
                    else:
                        await orig(reader, writer, direction)

                proxy._pipe = pipe
                first = await sealed_send(proxy.port, [src])
                await server.wait(1)
            second = await sealed_send(server.port, [src])
            await server.wait(2)
            return first, second

    first, second = run(go())
    assert not first.ok
    assert second.ok, second.error
    assert second.bytes_resumed >= 2 * 1024 * 1024, second
    assert second.bytes_sent <= 4 * 1024 * 1024, second
    assert (tmp_path / "dst" / "big.bin").read_bytes() == src.read_bytes()


# -- the plaintext side's view (core, bytes only) ------------------------------------------
from .secure_fakes import handshake_frame  # noqa: E402


@pytest.mark.parametrize("step", [1, 3, 100])
def test_an_insecure_connection_names_a_peer_that_requires_authentication(step):
    conn = ReceiverConnection()
    conn.data_to_send()
    data = handshake_frame(b"\x01\x01" + bytes(40))
    with pytest.raises(AuthError, match="the peer requires authentication; this side runs --insecure"):
        for i in range(0, len(data), step):
            conn.receive_data(data[i : i + step])
    out = b"".join(bytes(b) for b in conn.data_to_send())
    assert out[:1] == bytes([FrameType.ERROR])
    assert ErrorMessage.decode(out[16:]).code == ErrorCode.AUTH


def test_mqtt_is_still_not_ftx():
    """0x10 is also MQTT's CONNECT: only a real HANDSHAKE header (flags and reserved 0) counts."""
    conn = ReceiverConnection()
    with pytest.raises(RemoteProtocolError, match="does not speak ftx"):
        conn.receive_data(b"\x10\x1a\x00\x04MQTT\x04\x02\x00\x3c")


def test_the_read_low_water_mark_never_waits_for_more_than_is_wanted():
    """SO_RCVLOWAT is left as it is when it is at most 1/8 below what a read wants (no system call
    per read), but never above it: a read must not wait for bytes the peer has no reason to send."""
    async def go():
        a, b = socket.socketpair()
        link = tcp.TcpLink(a)
        rng = random.Random(3)
        calls = 0
        for _ in range(300):
            wanted = rng.choice([1, 100, 65536, 65537, 400_000, 520_212, 524_304, 2 << 20])
            wanted -= rng.randrange(0, min(wanted, 20000))
            before = link._lowat
            link._wake_at(wanted, wanted)
            lowat = a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)
            want = min(wanted, tcp.RCVLOWAT_MAX) if wanted > 65536 else 1
            assert want - want // 8 <= lowat <= want, (wanted, lowat)
            calls += lowat != before
        link.close()
        b.close()
        return calls

    assert run(go()) < 300


def test_records_of_small_files_waiting_in_the_socket_are_one_batch_for_the_driver():
    """Small files' records already waiting in the socket are opened in one feed (up to
    tcp_sealed.PILE_RECORDS): one part, one syncfs, one thread hop for the driver, instead of one per
    record; with nothing more waiting the feed returns at once."""
    from ftx.core import events as ev
    from ftx.core.checksum import file_digest
    from ftx.core.manifest import FileEntry

    async def go():
        client = FakeHandshake("client")
        first = client.data_to_send()
        s = SenderConnection()
        sealer = RecordSealer(client.result)
        sealed = sealer.seal(b"".join(bytes(x) for x in s.data_to_send()))
        result, link, raw = await _server_side([first + sealed])
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        conn = ReceiverConnection(small_runs=True)
        await asyncio.wait_for(link.feed(conn), T)
        assert conn.peer is not None
        s.receive_data(b"".join(bytes(x) for x in conn.data_to_send()))
        while s.next_event() is not None:
            pass
        records = []
        for r in range(5):  # five records of ten 30 KB files: the opener holds one whole at a time
            for i in range(10):
                data = bytes([r * 10 + i]) * 30_000
                s.send_small_file(FileEntry(b"f%d" % (r * 10 + i), size=len(data)), data, file_digest(data))
            records.append(sealer.seal(b"".join(bytes(x) for x in s.data_to_send())))
        await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(raw, b"".join(records)), T)
        batches = []
        while sum(batches) < 50:
            await asyncio.wait_for(link.feed(conn), T)  # returns: never waits while events are pending
            batches.append(sum(len(e.file_ids) for e in iter(conn.next_event, None)
                               if type(e) is ev.SmallFilesReceived))
        link.close()
        raw.close()
        return batches

    batches = run(go())
    assert batches[0] >= 20 and sum(batches) == 50, batches  # more than one record's files at once
    assert batches[0] <= 10 * (tcp_sealed.PILE_RECORDS + 1), batches


# -- the chunk checksum on a sealed connection (protocol.md 20.2) ---------------------------
def _wrong_chunk_checksums(monkeypatch) -> None:
    """The sender states a wrong chunk checksum in every DATA frame (the chunk bytes are right)."""
    import ftx.core.sender as core_sender

    real = core_sender.chunk_checksum
    monkeypatch.setattr(core_sender, "chunk_checksum", lambda data: real(data) ^ 1)


def _send_first_sealed(tmp_path, files):
    """The first of ``files`` over sealed TCP into a fresh receiver at tmp_path/dst; the sender's report."""

    async def go():
        async with Server(Destination(tmp_path / "dst")) as server:
            report = await sealed_send(server.port, files[:1])
            await server.wait(1)
            return report

    return run(go())


def test_a_sealed_receiver_does_not_hash_chunks_again(tmp_path, files, monkeypatch):
    """Over a sealed connection the AEAD tag already proves every chunk byte and its checksum are
    what the authenticated sender sent: the receiver records the checksum without hashing the chunk
    a second time (the whole-file digest still verifies what landed).  A sender whose checksums are
    wrong shows it: its file lands, byte-identical."""
    _wrong_chunk_checksums(monkeypatch)

    report = _send_first_sealed(tmp_path, files)
    assert report.ok, report.error
    assert (tmp_path / "dst" / files[0].name).read_bytes() == files[0].read_bytes()


def test_a_plaintext_receiver_still_checks_every_chunk(tmp_path, files, monkeypatch):
    """Without the AEAD (--insecure) the chunk checksum is the only check on the way: a wrong one
    fails the transfer with CHECKSUM and nothing lands."""
    _wrong_chunk_checksums(monkeypatch)

    async def go():
        async with Server(Destination(tmp_path / "dst"), secure=False) as server:
            link = await tcp.connect("127.0.0.1", server.port)
            report = await asyncio.wait_for(send_paths(link, [str(files[0])], idle_timeout=T), T * 3)
            await server.wait(1)
            return report

    report = run(go())
    assert not report.ok
    assert getattr(report.failure, "code", None) == ErrorCode.CHECKSUM, report.failure
    assert not (tmp_path / "dst" / files[0].name).exists()


def test_a_sealed_chunk_changed_after_it_was_hashed_never_lands(tmp_path, files, monkeypatch):
    """The sender's buffer changes between hashing and sealing (its chunk checksum and record are of
    the new bytes, its file digest of the old): the AEAD opens and no chunk check runs, and the
    whole-file digest refuses the file; nothing lands under its name."""
    import ftx.core.sender as core_sender

    real = core_sender.SenderConnection.send_chunk

    def changed(self, file_id, index, data, *a, **kw):
        if index == 1:
            data = bytearray(data)
            data[7] ^= 0x40
        return real(self, file_id, index, data, *a, **kw)

    monkeypatch.setattr(core_sender.SenderConnection, "send_chunk", changed)

    report = _send_first_sealed(tmp_path, files)
    assert not report.ok
    assert not (tmp_path / "dst" / files[0].name).exists()


def test_a_chunk_sent_again_with_other_bytes_never_lands_unverified(tmp_path, files, monkeypatch):
    """DATA may repeat a chunk (protocol.md 5.5): the whole-file digest must cover the bytes that
    landed, not the first copy's.  The sender sends chunk 1 right, then again changed (with the
    chunk checksum of the changed bytes), and a FILE_END digest of the right file: the file on disk
    would differ from what the digest covers, so it must not land under its name."""
    import ftx.core.sender as core_sender

    real = core_sender.SenderConnection.send_chunk

    def twice(self, file_id, index, data, *a, **kw):
        real(self, file_id, index, data, *a, **kw)
        if index == 1:
            changed = bytearray(data)
            changed[7] ^= 0x40
            real(self, file_id, index, changed)

    monkeypatch.setattr(core_sender.SenderConnection, "send_chunk", twice)

    _send_first_sealed(tmp_path, files)
    dst = tmp_path / "dst" / files[0].name
    assert not dst.exists() or dst.read_bytes() == files[0].read_bytes()
