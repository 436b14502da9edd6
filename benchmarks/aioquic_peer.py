#!/usr/bin/env python3
"""A minimal file push over aioquic (QUIC in Python), as a benchmark baseline.

    python aioquic_peer.py server DSTFILE      # prints {"port": N}, exits after one file
    python aioquic_peer.py client HOST PORT SRCFILE   # prints {"seconds": S, "bytes": B}

One bidirectional stream carries the file; the server answers one byte when it
has written everything, so the client's time covers delivery, not just sending.
A throwaway self-signed certificate is made at start (certificate checks off:
this measures transport cost, not trust).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
import sys
import tempfile
import time

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived

ALPN = ["ftx-bench"]
BLOCK = 1 << 20
MAX_BUFFERED = 8 << 20


def self_signed(directory: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


async def run_server(dst: str) -> None:
    done = asyncio.get_running_loop().create_future()
    out = open(dst, "wb")

    class Receiver(QuicConnectionProtocol):
        def quic_event_received(self, event) -> None:
            if isinstance(event, StreamDataReceived):
                out.write(event.data)
                if event.end_stream:
                    out.flush()
                    self._quic.send_stream_data(event.stream_id, b"k", end_stream=True)
                    self.transmit()
                    if not done.done():
                        asyncio.get_running_loop().call_later(0.5, done.set_result, None)

    with tempfile.TemporaryDirectory() as tmp:
        config = QuicConfiguration(is_client=False, alpn_protocols=ALPN, max_data=64 << 20,
                                   max_stream_data=64 << 20)
        config.load_cert_chain(*self_signed(tmp))
        server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Receiver)
        port = server._transport.get_extra_info("sockname")[1]
        print(json.dumps({"port": port}), flush=True)
        await done
        server.close()
    out.close()


async def run_client(host: str, port: int, src: str) -> None:
    config = QuicConfiguration(is_client=True, alpn_protocols=ALPN, verify_mode=ssl.CERT_NONE,
                               max_data=64 << 20, max_stream_data=64 << 20)
    acked = asyncio.get_running_loop().create_future()

    class Sender(QuicConnectionProtocol):
        def quic_event_received(self, event) -> None:
            if isinstance(event, StreamDataReceived) and event.end_stream and not acked.done():
                acked.set_result(None)

    t0 = time.perf_counter()
    size = os.path.getsize(src)
    async with connect(host, port, configuration=config, create_protocol=Sender) as client:
        quic = client._quic
        sid = quic.get_next_available_stream_id()
        with open(src, "rb") as f:
            sent = 0
            while sent < size:
                stream = quic._streams.get(sid)
                while stream is not None and len(stream.sender._buffer) > MAX_BUFFERED:
                    await asyncio.sleep(0.001)
                block = f.read(BLOCK)
                sent += len(block)
                quic.send_stream_data(sid, block, end_stream=sent >= size)
                client.transmit()
                stream = quic._streams.get(sid)
        await asyncio.wait_for(acked, 600)
    print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": size}), flush=True)


def main() -> None:
    if sys.argv[1] == "server":
        asyncio.run(run_server(sys.argv[2]))
    else:
        asyncio.run(run_client(sys.argv[2], int(sys.argv[3]), sys.argv[4]))


if __name__ == "__main__":
    main()
