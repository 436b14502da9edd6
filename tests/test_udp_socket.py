"""The driver's datagram socket (ftx/transport/udp_socket.py) on real loopback sockets:
consecutive reads from one address with one segment size reach ``on_read`` as one burst,
and splitting what ``on_read`` gets by its segment size gives back every datagram, in
order, with its sender's address."""

from __future__ import annotations

import asyncio
import socket
import time

from ftx.transport.udp_socket import READ_BATCH, TURN_BYTES, DatagramSocket


def _split(data: bytes, seg: int) -> list[bytes]:
    return [data[i : i + seg] for i in range(0, len(data), seg)]


def test_reads_from_one_address_are_joined_and_split_back_exactly():
    async def main():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        calls: list[tuple[bytes, int, tuple]] = []
        drained = []
        dsock = DatagramSocket(rx, lambda data, seg, addr: calls.append((bytes(data), seg, addr)),
                               lambda: drained.append(1))
        try:
            target = rx.getsockname()
            sent: list[tuple[bytes, tuple]] = []

            def send(s: socket.socket, size: int) -> None:
                d = len(sent).to_bytes(4, "big") * (size // 4) + bytes(size % 4)
                s.sendto(d, target)
                sent.append((d, s.getsockname()))

            for _ in range(20):
                send(a, 1400)
            send(a, 700)  # another size (without GRO, a datagram of its own size): a burst of its own
            for _ in range(3):
                send(a, 1400)
            for _ in range(4):
                send(b, 1400)  # another address: never in a burst with a's
            for _ in range(2):
                send(a, 1400)
            send(a, 1000)  # another size
            send(a, 1000)
            got: list[tuple[bytes, tuple]] = []
            deadline = time.monotonic() + 10
            while len(got) < len(sent):
                assert time.monotonic() < deadline, f"only {len(got)} of {len(sent)} datagrams arrived"
                await asyncio.sleep(0.01)
                got = [(d, addr) for data, seg, addr in calls for d in _split(data, seg)]
            assert got == sent
            sizes = [len(data) // seg + bool(len(data) % seg) for data, seg, _ in calls]
            # the first 20 datagrams came in one burst (a GRO read may also end in the shorter one)
            assert calls[0][1] == 1400 and sizes[0] in (20, 21)
            for data, seg, addr in calls:
                assert all(len(d) == seg for d in _split(data, seg)[:-1])  # only the last may be shorter
            assert len(calls) <= 7 and drained
        finally:
            dsock.close()
            a.close()
            b.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_burst_never_spans_more_reads_than_the_buffer_holds():
    async def main():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        calls: list[tuple[int, int]] = []
        dsock = DatagramSocket(rx, lambda data, seg, addr: calls.append((len(data), seg)), gso=False)
        try:
            n = 3 * READ_BATCH
            for i in range(n):
                tx.sendto(bytes([i % 256]) * 60000, rx.getsockname())
            deadline = time.monotonic() + 10
            while sum(size // seg for size, seg in calls) < n:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert all(size <= len(dsock._rbuf) and size % 60000 == 0 for size, _ in calls)
            assert max(size for size, _ in calls) > 60000  # joined
        finally:
            dsock.close()
            tx.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_backlog_of_reads_leaves_the_loop_a_turn_every_few_hundred_kilobytes():
    """A callback that becomes ready while datagrams wait (a worker thread's batch done, whose
    RESULTs reopen the sender's offer window) waits for about TURN_BYTES of reads, not for
    READ_BATCH full reads (32 x 64 KiB: 1.5 ms of the loop, three times over on its way out)."""
    async def main():
        loop = asyncio.get_running_loop()
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        read = [0]
        ran_after: list[int] = []

        def on_read(data, seg, addr) -> None:
            if not read[0]:
                loop.call_soon(lambda: ran_after.append(read[0]))
            read[0] += len(data)

        dsock = DatagramSocket(rx, on_read, gso=False)
        try:
            n = READ_BATCH
            for i in range(n):  # all queued before the loop looks at the socket
                tx.sendto(bytes([i % 256]) * 60000, rx.getsockname())
            deadline = time.monotonic() + 10
            while read[0] < n * 60000:
                assert time.monotonic() < deadline, f"only {read[0]} bytes arrived"
                await asyncio.sleep(0.01)
            assert ran_after and ran_after[0] <= TURN_BYTES + 60000 < n * 60000
        finally:
            dsock.close()
            tx.close()

    asyncio.run(asyncio.wait_for(main(), 20))
