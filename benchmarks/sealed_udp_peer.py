#!/usr/bin/env python3
"""One end of a library-level UDP transfer, sealed or not, for bench_udp.py --sealed.

    sealed_udp_peer.py server DIR [--plain]       prints {"port": N}, serves one sender
    sealed_udp_peer.py client PORT FILE [--plain] [--mtu N] [--no-pmtud]
                                                   prints {"seconds": s, "stats": {...}}

The real keys handshake (SIGMA-I, ``real_handshakes.keys``: fixed identities, each side
accepting only the other's) runs over the control stream through ``ftx.securing``, as the
CLI runs it; ``--plain`` skips it (the plaintext baseline, the same code path otherwise).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from real_handshakes import keys

from ftx.receiving import receive_over
from ftx.securing import run_handshake
from ftx.sending import send_paths
from ftx.storage import Destination
from ftx.transport import udp
from ftx.core.udp.session import UdpConfig

async def server(dst: str, plain: bool) -> None:
    done = asyncio.get_running_loop().create_future()

    async def handle(link):
        try:
            if not plain:
                await run_handshake(link, keys("server"), 10)
            await receive_over(link, Destination(dst, overwrite=True))
        finally:
            if not done.done():
                done.set_result(None)

    srv = await udp.serve("127.0.0.1", 0, handle)
    print(json.dumps({"port": srv.dsock.sock.getsockname()[1]}), flush=True)
    await done
    await asyncio.sleep(0.2)
    srv.close()


async def client(port: int, path: str, plain: bool, config: UdpConfig) -> None:
    t0 = time.monotonic()
    link = await udp.connect("127.0.0.1", port, config)
    if not plain:
        await run_handshake(link, keys("client"), 10)
    report = await send_paths(link, [path])
    seconds = time.monotonic() - t0
    print(json.dumps({"seconds": seconds, "ok": report.ok, "error": report.error,
                      "stats": link.stats}), flush=True)


def main() -> None:
    role, plain = sys.argv[1], "--plain" in sys.argv
    if role == "server":
        asyncio.run(server(sys.argv[2], plain))
    else:
        args = sys.argv[4:]
        config = UdpConfig(pmtud="--no-pmtud" not in args)  # as ftx send: the search on unless --no-pmtud
        if "--mtu" in args:  # the link MTU, as ftx send --mtu: datagrams of 48 bytes less
            config.max_datagram = int(args[args.index("--mtu") + 1]) - 48
        asyncio.run(client(int(sys.argv[2]), sys.argv[3], plain, config))


if __name__ == "__main__":
    main()
