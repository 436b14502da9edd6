#!/usr/bin/env python3
"""One end of a library-level UDP transfer, sealed or not, for bench_udp.py --sealed.

    sealed_udp_peer.py server DIR [--plain]       prints {"port": N}, serves one sender
    sealed_udp_peer.py client PORT FILE [--plain]  prints {"seconds": s, "stats": {...}}

Until the real handshakes (SIGMA-I, SPAKE2, TLS) are wired into the CLI, a fixed-secret
stand-in (``FixedHandshake``, as in tests/test_sealed_udp.py) gives both ends their traffic
keys over the control stream, and the links are driven as ftx/securing.py drives them; the
packet protection measured is the real one.  ``--plain`` skips it (the plaintext baseline,
the same code path otherwise).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time

from ftx.core.secure import Established, PeerIdentity
from ftx.core.secure.keys import AES_256_GCM
from ftx.receiving import receive_over
from ftx.sending import send_paths
from ftx.storage import Destination
from ftx.transport import udp

MSG = 40


class FixedHandshake:
    """Client sends 40 bytes, server answers 40; secrets from a fixed secret and both."""

    def __init__(self, client: bool, cipher: str = AES_256_GCM) -> None:
        self.client, self.cipher = client, cipher
        self.mine = os.urandom(MSG)
        self.theirs = b""
        self._out = self.mine if client else b""
        self.sent = False
        self.result = None

    done = property(lambda self: self.result is not None)
    keys_ready = property(lambda self: self.result is not None and self.sent)

    def receive(self, data: bytes, now: float) -> int:
        used = min(MSG - len(self.theirs), len(data))
        self.theirs += bytes(data[:used])
        if len(self.theirs) == MSG:
            if not self.client:
                self._out = self.mine
            c, s = (self.mine, self.theirs) if self.client else (self.theirs, self.mine)
            c2s, s2c = (hashlib.sha256(b"bench" + d + c + s).digest() for d in (b"c2s", b"s2c"))
            send, recv = (c2s, s2c) if self.client else (s2c, c2s)
            self.result = Established(self.cipher, send, recv, PeerIdentity("code"))
        return used

    def data_to_send(self) -> bytes:
        out, self._out = self._out, b""
        self.sent = self.sent or bool(out)
        return out


async def handshake(link, hs: FixedHandshake) -> None:
    installed, pending = False, b""
    while True:
        out = hs.data_to_send()
        if out:
            await link.send([out])
        if hs.keys_ready and not installed:
            link.install_keys(hs.result)
            installed = True
        if hs.done:
            break
        pending += await asyncio.wait_for(link.recv_raw(), 10)
        pending = pending[hs.receive(pending, 0.0):]
    link.handshake_done(pending)


async def server(dst: str, plain: bool) -> None:
    done = asyncio.get_running_loop().create_future()

    async def handle(link):
        try:
            if not plain:
                await handshake(link, FixedHandshake(False))
            await receive_over(link, Destination(dst, overwrite=True))
        finally:
            if not done.done():
                done.set_result(None)

    srv = await udp.serve("127.0.0.1", 0, handle)
    print(json.dumps({"port": srv.dsock.sock.getsockname()[1]}), flush=True)
    await done
    await asyncio.sleep(0.2)
    srv.close()


async def client(port: int, path: str, plain: bool) -> None:
    t0 = time.monotonic()
    link = await udp.connect("127.0.0.1", port)
    if not plain:
        await handshake(link, FixedHandshake(True))
    report = await send_paths(link, [path])
    seconds = time.monotonic() - t0
    print(json.dumps({"seconds": seconds, "ok": report.ok, "error": report.error,
                      "stats": link.stats}), flush=True)


def main() -> None:
    role, plain = sys.argv[1], "--plain" in sys.argv
    if role == "server":
        asyncio.run(server(sys.argv[2], plain))
    else:
        asyncio.run(client(int(sys.argv[2]), sys.argv[3], plain))


if __name__ == "__main__":
    main()
