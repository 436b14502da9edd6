"""TCP driver: non-blocking sockets on the asyncio loop, one task per connection.

``TcpLink`` writes with ``sendmsg`` (header and chunk bytes in one call, no
copy in Python) and reads with ``recv_into`` straight into the frame decoder's
buffer.  ``connect`` opens a sender's link; ``serve`` accepts receivers' links
and runs any number of them side by side on one loop.

Sealed (after ``ftx.securing.run_handshake``): ``install_keys`` makes ``send``
seal its buffers into records (ftx/core/secure/records.py) in one reused
output buffer, written with one call per batch; ``handshake_done`` makes
``feed`` read records and open each straight into the frame decoder's buffer
(``open_into``), so chunk bytes are copied once from the kernel, then once by
the AEAD into their final place: that reading half is ``SealedFeed``
(tcp_sealed.py).
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
from ..core.secure import Established
from ..core.secure.records import RecordOpener, RecordSealer
from ..errors import ErrorCode, LocalProtocolError, TransportError
from .quiet import IDLE_TRIM, give_back
from .sockets import bound_socket, connect_error, host_of, resolve
from .tcp_sealed import SealedFeed

log = logging.getLogger("ftx.tcp")
IOV_MAX = 512
SOCKET_BUFFER = 4 * 1024 * 1024
RCVLOWAT_MAX = 1024 * 1024


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpLink(SealedFeed):
    transport = "tcp"

    def __init__(self, sock: socket.socket) -> None:
        _tune(sock)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self.last_recv = self.last_send = time.monotonic()
        self.busy = 0
        self.bytes_in = self.bytes_out = 0  # bytes that crossed the socket, records and handshake included
        self._lowat = 1
        self._rest: memoryview | None = None  # plaintext conn could not take yet (it paused: --max-memory)
        self.on_established = None  # called once when the peer's HELLO has arrived (Admission)
        self._keys: Established | None = None
        self._sealer: RecordSealer | None = None  # set by install_keys: what we send is sealed
        self._opener: RecordOpener | None = None  # set by handshake_done: what we read is sealed
        try:
            self.peer = sock.getpeername()
        except OSError:
            self.peer = None

    @classmethod
    def taking_over(cls, head) -> "TcpLink":
        """The link of the connection a send's head start opened and began (head_start.BlockingLink):
        its records go on where the head start's left off -- the same keys, the next record
        numbers, what it read and has not opened yet -- and its byte counts go on too."""
        link = cls(head.sock)
        link._keys, link._sealer, link._opener, link._rest = head._keys, head._sealer, head._opener, head._rest
        link.bytes_in, link.bytes_out = head.bytes_in, head.bytes_out
        return link

    @property
    def sending(self) -> bool:
        return self._send_lock.locked()

    # -- the handshake (ftx/securing.py) ------------------------------------------
    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    async def recv_raw(self) -> bytes:
        """The next bytes of the stream before ``handshake_done`` (b"" at end of stream)."""
        if self._opener is not None:
            raise LocalProtocolError("recv_raw after handshake_done")
        try:
            data = await self._loop.sock_recv(self.sock, 65536)
        except OSError as exc:
            raise TransportError(f"connection lost: {exc.strerror or exc}") from exc
        self.last_recv = time.monotonic()
        self.bytes_in += len(data)
        return data

    # -- sending ---------------------------------------------------------------------
    async def send(self, bufs: list) -> None:
        """Write ``bufs`` in order; sealed once ``install_keys`` was called."""
        if not bufs:
            return
        async with self._send_lock:
            await self._write(bufs)

    async def send_paced(self, bufs: list, pacer) -> None:
        """``send`` at ``pacer``'s rate (``--max-rate``): slice after slice, each paced, all under
        one hold of the send lock (no other frame, such as a PING, lands inside a DATA frame)."""
        async with self._send_lock:
            self.pacing = True
            try:
                for part, size in pacer.slices(bufs):
                    await self._write(part)
                    await pacer.pace(size)
            finally:
                self.pacing = False

    async def _write(self, bufs: list) -> None:
        if self._sealer is not None:
            for view in self._sealer.seal_buffers(bufs):
                await self._send_all(view)
            return
        await self._sendmsg(bufs)

    async def send_plain(self, bufs: list) -> None:
        """Write ``bufs`` unsealed even after ``install_keys``: a handshake refusal (protocol.md)."""
        async with self._send_lock:
            await self._sendmsg(bufs)

    async def _sendmsg(self, bufs: list) -> None:
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
            self.bytes_out += n
            while n:
                size = len(views[i])
                if n >= size:
                    n -= size
                    i += 1
                else:
                    views[i] = views[i][n:]
                    n = 0

    async def _send_all(self, view: memoryview) -> None:
        sock = self.sock
        while view:
            try:
                n = sock.send(view)
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError as exc:
                raise TransportError(f"connection lost while sending: {exc.strerror or exc}") from exc
            self.last_send = time.monotonic()
            self.bytes_out += n
            view = view[n:]

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
        self.bytes_in += n
        return n

    # -- what the transport-neutral layers call -----------------------------------
    own_liveness = False  # the Watchdog pings and times out for us
    pacing = False  # send_paced holds the link (for seconds, at a low --max-rate)
    file_bytes_in = 0  # chunks travel in frames: conn.file_data_moved counts them (UDP: chunks apart)

    async def feed(self, conn) -> None:
        """Move whatever arrives next into ``conn`` (zero-copy into its frame buffer).

        While a large frame is being filled, SO_RCVLOWAT keeps the loop from
        waking for every 64 KiB segment: fewer wake-ups, larger reads.  While
        nothing arrives no buffer region is held, and after ``IDLE_TRIM``
        seconds the connection gives its buffer memory back.
        """
        if self._opener is not None:
            return await self._feed_sealed(conn)
        await self._feed_plain(conn)
        if self.on_established is not None and conn.peer is not None:
            callback, self.on_established = self.on_established, None
            callback()

    def _wake_at(self, wanted: int, room: int) -> None:
        """SO_RCVLOWAT for a read into ``room`` bytes that wants ``wanted``: when more than 64 KiB
        are wanted, wake only once ``room`` (at most 1 MiB) has come; else for any byte.  Set
        only when the one set is above that or more than 1/8 below (never waits for more than
        ``wanted``; saves a system call per read when sizes differ a little)."""
        lowat = min(wanted, room, RCVLOWAT_MAX) if wanted > 65536 else 1
        if not lowat - (lowat >> 3) <= self._lowat <= lowat:  # within 1/8 below is as good: no call
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                self._lowat = lowat
            except OSError:
                pass

    def _established(self, conn) -> None:
        if self.on_established is not None and conn.peer is not None:
            callback, self.on_established = self.on_established, None
            callback()

    async def _readable(self, conn, trim: bool = True) -> None:
        fut = self._loop.create_future()
        fd = self.sock.fileno()
        self._loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        timer = self._loop.call_later(IDLE_TRIM, self._trim, conn) if trim else None
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()
            self._loop.remove_reader(fd)

    def _trim(self, conn) -> None:
        if self._opener is not None:
            self._opener.trim()
        if self._sealer is not None and not self._send_lock.locked():  # not under a send in progress
            self._sealer.trim()
        give_back(conn, self._loop)

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

    async def aclose(self) -> None:
        self.close()


async def connect(host: str, port: int, timeout: float = 15.0) -> TcpLink:
    loop = asyncio.get_running_loop()
    try:
        infos = await resolve(host, port, socket.SOCK_STREAM)  # a numeric address without a thread
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
    raise connect_error(host, port, last)


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
                host = host_of(addr)
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
