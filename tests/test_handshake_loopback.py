"""Both handshakes over a real loopback TCP connection, pumped by the loop that the
``Handshake`` docstring gives the driver (ftx/core/secure/__init__.py): the sender's last
flight goes out, and the first bytes after the handshake are left over, not consumed."""

from __future__ import annotations

import asyncio

import pytest

from ftx.core.secure import AuthError

from .handshake_pair import pake_pair, sigma_pair

pytestmark = pytest.mark.timeout(30)


async def drive(hs, reader, writer, first_sealed: bytes):
    """The documented driver loop; ``first_sealed`` is written once keys are installed."""
    installed = False
    data, used = b"", 0
    try:
        while True:
            out = hs.data_to_send()
            if out:
                writer.write(out)
            if hs.keys_ready and not installed:
                installed = True
                writer.write(first_sealed)  # what a sealed HELLO would be
            await writer.drain()
            if hs.done:
                break
            data = await reader.read(7)  # small reads: messages arrive in pieces
            if not data:
                hs.receive_eof()
            used = hs.receive(data, 0.0)
    except AuthError:
        writer.write(hs.data_to_send())  # the refusal
        await writer.drain()
        raise
    return hs.result, data[used:]


async def run(pair, timeout=10.0):
    client, server = pair
    results = {}
    server_finished = asyncio.Event()

    async def serve(reader, writer):
        try:
            results["server"] = await drive(server, reader, writer, b"server-sealed")
        except Exception as exc:  # judged by the test
            results["server"] = exc
        finally:
            writer.close()
            server_finished.set()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        results["client"] = await asyncio.wait_for(drive(client, reader, writer, b"client-sealed"), timeout)
    except AuthError as exc:
        results["client"] = exc
    await asyncio.wait_for(server_finished.wait(), timeout)
    writer.close()
    srv.close()
    await srv.wait_closed()
    return results


@pytest.mark.parametrize("pair", [sigma_pair, pake_pair], ids=["keys", "code"])
def test_over_loopback_tcp(pair):
    results = asyncio.run(run(pair()))
    (c, c_left), (s, s_left) = results["client"], results["server"]
    assert c.send_secret == s.recv_secret and c.recv_secret == s.send_secret
    assert c.transcript == s.transcript
    # what each side read past the other's handshake is the start of its sealed bytes
    assert b"server-sealed".startswith(c_left) and b"client-sealed".startswith(s_left)


def test_wrong_code_over_loopback_tcp():
    results = asyncio.run(run(pake_pair(server_code="1-wrong-code")))
    assert str(results["server"]) == "wrong code"
    assert str(results["client"]) == "the receiver refused: wrong code"
