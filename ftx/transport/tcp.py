"""TCP driver: non-blocking sockets on the asyncio loop, one task per connection.

``TcpLink`` writes with ``sendmsg`` (header and chunk bytes in one call, no
copy in Python) and reads with ``recv_into`` straight into the frame decoder's
buffer.  ``connect`` opens a sender's link; ``serve`` accepts receivers' links
and runs any number of them side by side on one loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import Awaitable, Callable

from ..core.frames import FrameType, encode_frame
from ..core.messages import ErrorMessage
from ..errors import ErrorCode, TransportError
from .sockets import bound_socket

log = logging.getLogger("ftx.tcp")
IOV_MAX = 512
SOCKET_BUFFER = 4 * 1024 * 1024
RCVLOWAT_MAX = 1024 * 1024
IDLE_TRIM = 1.0  # seconds without input after which a connection gives its buffer memory back


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpLink:
    transport = "tcp"

    def __init__(self, sock: socket.socket) -> None:
        _tune(sock)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self.last_recv = self.last_send = time.monotonic()
        self.busy = 0
        self._lowat = 1
        self.on_established = None  # called once when the peer's HELLO has arrived (Admission)
        try:
            self.peer = sock.getpeername()
        except OSError:
            self.peer = None

    @property
    def sending(self) -> bool:
        return self._send_lock.locked()

    async def send(self, bufs: list) -> None:
        if not bufs:
            return
        async with self._send_lock:
            views = [memoryview(b).cast("B") for b in bufs if len(b)]
            i = 0
            sock = self.sock
            while i < len(views):
                try:
                    n = sock.sendmsg(views[i : i + IOV_MAX])
                except (BlockingIOError, InterruptedError):
                    await self._writable()
                    continue
                except OSError as exc:
                    raise TransportError(f"connection lost while sending: {exc.strerror or exc}") from exc
                self.last_send = time.monotonic()
                while n:
                    size = len(views[i])
                    if n >= size:
                        n -= size
                        i += 1
                    else:
                        views[i] = views[i][n:]
                        n = 0

    async def _writable(self) -> None:
        fut = self._loop.create_future()
        fd = self.sock.fileno()
        self._loop.add_writer(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            self._loop.remove_writer(fd)

    async def recv_into(self, buf: memoryview) -> int:
        try:
            n = await self._loop.sock_recv_into(self.sock, buf)
        except OSError as exc:
            raise TransportError(f"connection lost: {exc.strerror or exc}") from exc
        self.last_recv = time.monotonic()
        return n

    # -- what the transport-neutral layers call -----------------------------------
    own_liveness = False  # the Watchdog pings and times out for us

    async def feed(self, conn) -> None:
        """Move whatever arrives next into ``conn`` (zero-copy into its frame buffer).

        While a large frame is being filled, SO_RCVLOWAT keeps the loop from
        waking for every 64 KiB segment: fewer wake-ups, larger reads.  While
        nothing arrives no buffer region is held, and after ``IDLE_TRIM``
        seconds the connection gives its buffer memory back.
        """
        sock = self.sock
        while True:
            buf = conn.get_buffer()
            lowat = min(len(buf), RCVLOWAT_MAX) if len(buf) > 65536 else 1
            if lowat != self._lowat:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                    self._lowat = lowat
                except OSError:
                    pass
            try:
                n = sock.recv_into(buf)
                break
            except (BlockingIOError, InterruptedError):
                del buf  # hold no region of the buffer while we wait
                await self._readable(conn)
            except OSError as exc:
                raise TransportError(f"connection lost: {exc.strerror or exc}") from exc
        self.last_recv = time.monotonic()
        if n == 0:
            conn.receive_eof()
        conn.buffer_updated(n)
        if self.on_established is not None and conn.peer is not None:
            callback, self.on_established = self.on_established, None
            callback()

    async def _readable(self, conn) -> None:
        fut = self._loop.create_future()
        fd = self.sock.fileno()
        self._loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        trim = self._loop.call_later(IDLE_TRIM, conn.trim_buffers)
        try:
            await fut
        finally:
            trim.cancel()
            self._loop.remove_reader(fd)

    def read_buffer(self, shared: memoryview) -> memoryview:
        """Where the sender reads its next chunk: framed and sent at once, so one buffer serves."""
        return shared

    async def send_chunk(self, conn, file_id: int, index: int, data) -> None:
        conn.send_chunk(file_id, index, data)  # a DATA frame, flushed with the others

    async def file_sent(self, file_id: int) -> None:
        """On TCP, FILE_END simply follows the DATA frames in the stream."""

    async def control_delivered(self) -> None:
        """On TCP, later DATA frames cannot overtake earlier control frames."""

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        try:  # closing with input unread resets the connection, which can destroy our last
            self.sock.recv(65536)  # frame (an ERROR) before the peer reads it: drop what is there
        except OSError:
            pass
        self.sock.close()

    async def aclose(self) -> None:
        self.close()


async def connect(host: str, port: int, timeout: float = 15.0) -> TcpLink:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve {host}: {exc.strerror}") from exc
    last: Exception | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
            return TcpLink(sock)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            last = exc
    reason = getattr(last, "strerror", None) or "timed out"
    raise TransportError(f"cannot connect to {host} port {port}: {reason}", ErrorCode.ABORTED)


def listen(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets: ``None``/``::`` means every address, IPv6 and IPv4."""
    sock = bound_socket(host, port, socket.SOCK_STREAM, reuse_addr=True)
    sock.listen(128)
    sock.setblocking(False)
    return [sock]


def refuse(sock: socket.socket, reason: str) -> None:
    """Turn a connection away at once: one ERROR BUSY frame, then close.  Costs no task."""
    try:
        sock.setblocking(False)
        sock.send(encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.BUSY, reason).encode()))
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)  # the peer's HELLO, if in: closing with unread bytes would reset the ERROR away
    except OSError:
        pass
    finally:
        sock.close()


async def serve(socks: list[socket.socket], handle: Callable[[TcpLink], Awaitable[None]], admission=None) -> None:
    """Accept forever, running ``handle(link)`` for each connection concurrently.

    With an ``Admission`` (ftx/limits.py), a connection over its limits is
    refused with ERROR BUSY before any per-connection state exists.
    """
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    async def run(link: TcpLink, host: str, evict) -> None:
        try:
            await handle(link)
        finally:
            admission.release(host, evict)

    async def accept_loop(lsock: socket.socket) -> None:
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed: %s; retrying", exc.strerror)
                    await asyncio.sleep(0.1)
                    continue
                raise
            if admission is None:
                coro = handle(TcpLink(sock))
            else:
                host = addr[0].removeprefix("::ffff:") if isinstance(addr, tuple) else None
                holder: list[asyncio.Task] = []

                def evict(holder=holder) -> None:  # no HELLO yet, and a newcomer needs the place
                    for t in holder:
                        t.cancel()

                reason = admission.admit(host, evict)
                if reason is not None:
                    log.info("refused %s: %s", host, reason)
                    refuse(sock, reason)
                    continue
                try:
                    link = TcpLink(sock)
                    link.on_established = lambda evict=evict: admission.settled(evict)
                    coro = run(link, host, evict)
                except BaseException:
                    admission.release(host, evict)
                    raise
            task = loop.create_task(coro)
            if admission is not None:
                holder.append(task)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    try:
        await asyncio.gather(*(accept_loop(s) for s in socks))
    finally:
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
