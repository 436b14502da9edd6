"""A bug in the receiver's handling ends that one connection with a one-line reason, never the
receiver: the sender is told (ERROR INTERNAL) and the next sender is served."""

import asyncio

import pytest

from ftx import receiving
from ftx.receiving import receive_over
from ftx.sending import send_paths
from ftx.storage import Destination
from ftx.transport import tcp


@pytest.mark.timeout(30)
def test_an_unexpected_exception_ends_only_its_connection(tmp_path, monkeypatch):
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello")
    dest = Destination(tmp_path / "dst")
    original = receiving.ReceiveSession._on_small
    calls = []

    def broken_once(self, ev):
        calls.append(ev)
        if len(calls) == 1:
            raise RuntimeError("boom")  # stands for any bug of ours, not a peer's fault
        return original(self, ev)

    monkeypatch.setattr(receiving.ReceiveSession, "_on_small", broken_once)

    async def run():
        socks = tcp.listen("127.0.0.1", 0)
        port = socks[0].getsockname()[1]
        sessions = []

        async def handle(link):
            sessions.append(await receive_over(link, dest))

        server = asyncio.get_running_loop().create_task(tcp.serve(socks, handle))
        try:
            first = await asyncio.wait_for(send_paths(await tcp.connect("127.0.0.1", port), [str(src)]), 10)
            second = await asyncio.wait_for(send_paths(await tcp.connect("127.0.0.1", port), [str(src)]), 10)
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
            for s in socks:
                s.close()
        return first, second, sessions

    first, second, sessions = asyncio.run(run())
    assert not first.ok and "internal error" in first.error and "boom" in first.error
    assert sessions[0].error.startswith("internal error")
    assert second.ok, second.error
    assert (tmp_path / "dst" / "a.txt").read_bytes() == b"hello"
