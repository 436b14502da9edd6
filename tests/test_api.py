"""The Python API (ftx/api.py): ``ftx.Receiver`` in an asyncio program, ``ftx.send`` / ``send_async``.

Real sockets on loopback, real files, both transports, every authentication mode.
"""

from __future__ import annotations

import asyncio
import time
import os
import socket
from pathlib import Path

import pytest

import ftx
from ftx import credentials as cr

from .tls_pki import CA

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 45.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


FILES = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(300_000), "sub/deeper/c": b""}


def same(src: Path, dst: Path) -> None:
    for name, data in FILES.items():
        assert (dst / name).read_bytes() == data, name


async def collect_until_session(r: ftx.Receiver) -> list[dict]:
    seen = []
    async for event in r.events():
        seen.append(event)
        if event["event"] == "session":
            return seen
    raise AssertionError(f"events ended without a session: {seen}")


def keys(tmp_path: Path) -> tuple[str, str, str]:
    """(receiver identity, sender identity, authorized_keys listing the sender)."""
    rid, sid = str(tmp_path / "rid"), str(tmp_path / "sid")
    cr.create_identity(rid, "receiver")
    sender = cr.create_identity(sid, "sender")
    ak = tmp_path / "authorized_keys"
    ak.write_text(cr.public_line(cr.raw_public(sender.key), "sender") + "\n")
    return rid, sid, str(ak)


def test_tcp_keys_send_async_and_events(tmp_path):
    src = tree(tmp_path / "src", FILES)
    dst = tmp_path / "dst"
    rid, sid, ak = keys(tmp_path)
    called = []

    async def main():
        async with ftx.Receiver(dst, mkdir=True, identity=rid, authorized_keys=ak, udp=False,
                                on_event=called.append) as r:
            assert r.port > 0 and r.fingerprint.startswith("SHA256:") and r.udp_port is None
            events = asyncio.ensure_future(collect_until_session(r))
            report = await ftx.send_async([src / "a.txt", src / "sub"], f"127.0.0.1:{r.port}", identity=sid,
                                          expect_fingerprint=r.fingerprint)
            return report, await events

    report, events = run(main())
    assert isinstance(report, ftx.SendReport) and report.ok and report.transport == "tcp"
    assert report.file_count >= 3 and report.failed == 0
    assert (dst / "a.txt").read_bytes() == FILES["a.txt"] and (dst / "sub/b.bin").read_bytes() == FILES["sub/b.bin"]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "listening" and "file" in kinds and kinds[-1] == "session"
    assert events[0]["auth"] == "key" and events[0]["transport"] == ["tcp"]
    sender = [e for e in events if e["event"] == "sender"]
    assert len(sender) == 1 and sender[0]["identity"] == "key"
    assert sender[0]["fingerprint"] == cr.load_identity(sid, create=False).fingerprint
    assert events[-1]["ok"] is True and events[-1]["transport"] == "tcp"
    assert {e["path"] for e in events if e["event"] == "file"} >= {"a.txt", "sub/b.bin"}
    assert called[:len(events)] == events  # the callback saw the same events, in order


def test_udp_insecure_send_in_a_thread(tmp_path):
    src = tree(tmp_path / "src", FILES)
    dst = tmp_path / "dst"
    dst.mkdir()

    async def main():
        async with ftx.Receiver(dst, insecure=True) as r:
            assert r.udp_port == r.port and r.fingerprint == ""
            events = asyncio.ensure_future(collect_until_session(r))
            report = await asyncio.to_thread(ftx.send, [src / "a.txt", src / "sub"], "127.0.0.1", port=r.port,
                                             udp=True, insecure=True)
            return report, await events

    report, events = run(main())
    assert report.ok and report.transport == "udp"
    same(src, dst)
    assert events[0]["auth"] == "insecure" and events[-1]["transport"] == "udp" and events[-1]["ok"]


@pytest.mark.parametrize("udp", [False, True])
def test_tls(tmp_path, udp):
    src = tree(tmp_path / "src", FILES)
    dst = tmp_path / "dst"
    dst.mkdir()
    ca = CA(tmp_path / "pki")
    server = ca.issue("receiver", ["127.0.0.1"], stem="srv")
    client = ca.issue("sender", client=True, stem="cli")

    async def main():
        async with ftx.Receiver(dst, tls_cert=str(server.cert), tls_key=str(server.key), tls_ca=str(ca.path),
                                identity=str(tmp_path / "rid")) as r:
            events = asyncio.ensure_future(collect_until_session(r))
            report = await ftx.send_async([src / "a.txt", src / "sub"], "127.0.0.1", port=r.port, udp=udp,
                                          tls_ca=str(ca.path), tls_cert=str(client.cert), tls_key=str(client.key),
                                          identity=str(tmp_path / "sid"))
            return report, await events

    report, events = run(main())
    assert report.ok, report.error
    same(src, dst)
    assert events[0]["auth"] == "tls" and events[-1]["ok"]


def test_code_mode_asks_and_declines(tmp_path):
    src = tree(tmp_path / "src", FILES)
    dst = tmp_path / "dst"
    dst.mkdir()
    offers = []

    async def ask(peer: str, offer: str) -> bool:
        offers.append((peer, offer))
        return len(offers) == 1  # the first offer is accepted, the second declined

    async def main():
        async with ftx.Receiver(dst, code=True, ask=ask, identity=str(tmp_path / "rid")) as r:
            first = r.code
            assert first and "-" in first
            ok = await ftx.send_async([src / "a.txt"], "127.0.0.1", port=r.port, code=first,
                                      identity=str(tmp_path / "sid"))
            assert r.code != first  # a code is good for one transfer
            declined = await ftx.send_async([src / "sub"], "127.0.0.1", port=r.port, code=r.code,
                                            identity=str(tmp_path / "sid"))
            return ok, declined

    ok, declined = run(main())
    assert ok.ok and (dst / "a.txt").read_bytes() == FILES["a.txt"]
    assert not declined.ok and "declined" in declined.error and not (dst / "sub").exists()
    assert len(offers) == 2 and offers[0][0].startswith("127.0.0.1:") and "a.txt" in offers[0][1]


def test_unread_events_do_not_stop_5000_files(tmp_path):
    """Nobody reads events(): the bounded queue drops and counts, the transfer completes."""
    src = tmp_path / "src" / "many"
    src.mkdir(parents=True)
    for i in range(5000):
        (src / f"{i:04d}").write_bytes(b"%d" % i)
    dst = tmp_path / "dst"
    dst.mkdir()

    async def main():
        async with ftx.Receiver(dst, insecure=True, udp=False, max_events=50) as r:
            report = await ftx.send_async(src, "127.0.0.1", port=r.port, insecure=True)
            seen, files, missed = [], 0, 0
            async for event in r.events():  # read late: the oldest events, and counts of what was dropped
                seen.append(event)
                files += event["event"] == "file"
                missed += event["events"] if event["event"] == "dropped" else 0
                if files + missed >= 5000:  # every file event was delivered or counted
                    break
            return report, seen, files, missed

    report, seen, files, missed = run(main(), timeout=55)
    assert report.ok and report.file_count == 5001
    assert len(os.listdir(dst / "many")) == 5000 and (dst / "many" / "4999").read_bytes() == b"4999"
    assert seen[0]["event"] == "listening" and seen[-1]["event"] == "dropped"
    assert files < 50 and missed >= 5000 - 50 and len(seen) <= 50 + 2


def test_refusal_event(tmp_path):
    """A sender over max_per_host is turned away: it fails, and the program gets a "refusal" event."""
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "big").write_bytes(bytes(4 << 20))
    dst = tmp_path / "dst"
    dst.mkdir()
    refusals: list[dict] = []

    def on_event(event: dict) -> None:
        if event["event"] == "refusal":
            refusals.append(event)

    async def main():
        async with ftx.Receiver(dst, insecure=True, udp=False, limits=ftx.Limits(max_per_host=1),
                                on_event=on_event) as r:
            slow = asyncio.ensure_future(asyncio.to_thread(  # holds the one place for 16 s (until the close)
                ftx.send, tmp_path / "big", "127.0.0.1", port=r.port, insecure=True, max_rate=256 << 10))
            try:
                errors = []
                deadline = time.monotonic() + 12  # the slow one holds its place for 16 s
                while time.monotonic() < deadline:  # its HELLO settled its place once its data lands
                    state = dst / ".ftx"
                    if state.is_dir() and any(state.iterdir()):
                        break
                    await asyncio.sleep(0.02)
                while not refusals and time.monotonic() < deadline:  # until one of the two is refused
                    # (usually this one, once the other's HELLO has settled its place; the slow
                    # sender's thread may take a while to connect on a loaded machine)
                    report = await ftx.send_async(tmp_path / "f", "127.0.0.1", port=r.port, insecure=True,
                                                  idle_timeout=5)
                    errors.append(report.error)
                    if not refusals:
                        await asyncio.sleep(0.02)
            finally:
                r.close()  # the slow sender fails at once
            slow_error = (await slow).error
            return errors, slow_error

    errors, slow_error = run(main())
    assert any("busy" in e for e in errors + [slow_error]), (errors, slow_error)
    assert refusals[0]["host"] == "127.0.0.1" and "max-per-host" in refusals[0]["reason"]


def test_bad_arguments_raise_typed_errors(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ftx.ArgumentError):
        ftx.send([tmp_path / "f"], "127.0.0.1:notaport", insecure=True)
    with pytest.raises(ftx.ArgumentError):
        ftx.send([tmp_path / "f"], "[::1", insecure=True)
    with pytest.raises(ValueError):  # ArgumentError is a ValueError too
        ftx.send([], "127.0.0.1", insecure=True)
    with pytest.raises(ftx.ArgumentError):
        ftx.send([tmp_path / "f"], "127.0.0.1", insecure=True, code="7-a-b-c")
    with pytest.raises(ftx.ArgumentError):
        ftx.send([tmp_path / "f"], "127.0.0.1", code="not a code")
    with pytest.raises(ftx.StorageError):
        ftx.send([tmp_path / "missing"], "127.0.0.1", insecure=True)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(ftx.TransportError):
        ftx.send([tmp_path / "f"], "127.0.0.1", port=closed, insecure=True)
    with pytest.raises(ftx.TransportError):
        ftx.send([tmp_path / "f"], "127.0.0.1", port=closed, insecure=True, udp=True)
    with pytest.raises(ftx.ArgumentError):
        ftx.Receiver(tmp_path, insecure=True, authorized_keys="k")
    with pytest.raises(ftx.ArgumentError):
        ftx.Receiver(tmp_path, tls_cert="c.pem")  # neither a CA nor tls_any_client

    async def missing_dir():
        async with ftx.Receiver(tmp_path / "nope", insecure=True):
            pass

    with pytest.raises(ftx.ArgumentError, match="no such directory"):
        run(missing_dir())
    assert not (tmp_path / "nope").exists()

    async def listen(**options):
        async with ftx.Receiver(tmp_path, insecure=True, **options):
            pass

    with pytest.raises(ftx.ArgumentError, match="not an address"):
        run(listen(listen="a" * 64 + ".example"))  # refused before any resolver is asked (label too long)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ftx.TransportError, match="in use"):
            run(listen(port=taken.getsockname()[1]))


def test_once_and_wait_closed(tmp_path):
    (tmp_path / "f").write_bytes(b"once")
    dst = tmp_path / "dst"
    dst.mkdir()

    async def main():
        r = ftx.Receiver(dst, insecure=True, once=True)
        await r.start()
        await ftx.send_async(tmp_path / "f", "127.0.0.1", port=r.port, insecure=True)
        await r.wait_closed()  # without close(): once ends it
        kinds = [e["event"] async for e in r.events()]  # the queue is drained, then the iterator ends
        return r.result, kinds

    result, kinds = run(main())
    assert result is True and kinds[0] == "listening" and kinds[-1] == "session"
    assert (dst / "f").read_bytes() == b"once"


def test_typed_package():
    root = Path(ftx.__file__).parent
    assert (root / "py.typed").exists()
    assert '"py.typed", "*.pyi"' in (root.parent / "pyproject.toml").read_text()
    stub = (root / "__init__.pyi").read_text()
    assert all(f" as {name}" in stub for name in ftx.__all__ if not name.startswith("_") and name != "DEFAULT_PORT")
    assert set(ftx.__all__) <= set(dir(ftx))
    for name in ftx.__all__:
        assert getattr(ftx, name) is not None


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_close_ends_every_reported_sender_with_a_session_event(tmp_path, udp):
    """A session cut by ``Receiver.close()`` still ends with its ``session`` event (complete: false)."""
    from .helpers import start_send, write_random

    write_random(tmp_path / "slow.bin", 4 << 20)
    dst = tmp_path / "dst"
    dst.mkdir()

    async def main():
        async with ftx.Receiver(dst, insecure=True) as r:
            sender = start_send(str(tmp_path / "slow.bin"), f"127.0.0.1:{r.port}", "--insecure",
                                "--max-rate", "1M", "--chunk-size", "256K", *(["--udp"] if udp else []))
            seen = []
            try:
                async for event in r.events():
                    seen.append(event)
                    if event["event"] == "sender":
                        r.close()
            finally:
                sender.kill()
                sender.communicate(timeout=10)
            return seen

    events = run(main())
    kinds = [e["event"] for e in events]
    assert "sender" in kinds, kinds
    after = kinds[kinds.index("sender"):]
    assert "session" in after, kinds
    session = next(e for e in events if e["event"] == "session")
    assert session["complete"] is False and session["ok"] is False and session["error"], session
    assert session["transport"] == ("udp" if udp else "tcp")


def test_a_library_receiver_takes_areas_from_a_config_file(tmp_path):
    """``ftx.Receiver(config=PATH)``: the file's [areas] (per-sender directories, quotas) and a reload."""
    src = tree(tmp_path / "src", {"a.txt": b"alpha\n"})
    rid, sid, ak = keys(tmp_path)
    fp = cr.load_identity(sid, create=False).fingerprint
    config = tmp_path / "receive.toml"
    config.write_text(f'dir = "ignored"\n[areas.s]\nkey = "{fp}"\ndir = "senders/s"\nquota = "1K"\n')
    dst = tmp_path / "dst"

    async def main():
        async with ftx.Receiver(dst, mkdir=True, identity=rid, authorized_keys=ak, udp=False,
                                config=str(config)) as r:
            report = await ftx.send_async([src / "a.txt"], f"127.0.0.1:{r.port}", identity=sid,
                                          expect_fingerprint=r.fingerprint)
            assert report.ok
            config.write_text(f'[areas.s]\nkey = "{fp}"\ndir = "other"\n')
            r.reload()
            report2 = await ftx.send_async([src / "a.txt"], f"127.0.0.1:{r.port}", identity=sid,
                                           expect_fingerprint=r.fingerprint)
            return report2

    report2 = run(main())
    assert report2.ok
    assert (dst / "senders" / "s" / "a.txt").read_bytes() == b"alpha\n"
    assert (dst / "other" / "a.txt").read_bytes() == b"alpha\n"
    assert not (dst / "a.txt").exists()
    config.write_text("[areas.s]\nkye = 1\n")
    with pytest.raises(ftx.FtxError, match="kye"):
        run(ftx.Receiver(dst, identity=rid, authorized_keys=ak, config=str(config)).start())
    config.write_text(f'[areas.s]\nkey = "{fp}"\n')
    with pytest.raises(ftx.FtxError, match="areas need"):
        run(ftx.Receiver(dst, insecure=True, config=str(config)).start())


@pytest.mark.parametrize("dest", ["a" * 64 + ".example", "a..b", ".example", "b\u00fccher\udcff.example"])
def test_a_destination_the_resolver_cannot_take_is_a_bad_argument(tmp_path, dest):
    """Checked before any connection, without the idna codec for plain ASCII names (check_host)."""
    with pytest.raises(ftx.ArgumentError, match="bad destination"):
        run(ftx.send_async([tmp_path], f"{dest}:1", insecure=True))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "example.com.", "b\u00fccher.example", "a" * 63])
def test_check_host_takes_what_the_resolver_takes(host):
    from ftx.transport.sockets import check_host

    check_host(host)
