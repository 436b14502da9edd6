"""UDP driver: asyncio datagram endpoints around the sans-I/O UDP core.

One socket serves every sender on the receiver (packets are routed by
connection ID); each session gets a ``UdpLink`` whose pump task sends what the
session wants to send, when its pacing and timers say so.  ``UdpLink`` offers
the same calls as ``TcpLink`` to the transport-neutral layers (feed, send,
send_chunk, file_sent), and keeps liveness itself (idle timeout, PING).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Awaitable, Callable

from ..core.checksum import chunk_checksum
from ..core.udp.endpoint import Dialer, Listener
from ..core.udp.session import UdpConfig, UdpSession
from ..errors import ErrorCode, FtxError, RemoteProtocolError, TransportError

log = logging.getLogger("ftx.udp")
SOCKET_BUFFER = 8 * 1024 * 1024


def _random_cid() -> int:
    return int.from_bytes(os.urandom(8), "big")


def _big_buffers(sock: socket.socket) -> None:
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass


class UdpLink:
    transport = "udp"
    own_liveness = True

    def __init__(self, session: UdpSession, sendto: Callable[[bytes], None], peer) -> None:
        self.session = session
        self._sendto = sendto
        self.peer = peer
        self.busy = 0
        self.last_recv = self.last_send = time.monotonic()
        self._wake = asyncio.Event()
        self._cond = asyncio.Condition()
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())
        self.closed_event = asyncio.Event()

    @property
    def sending(self) -> bool:
        return False

    def wake(self) -> None:
        self._wake.set()

    # -- pump: timers and output ---------------------------------------------------------
    async def _pump(self) -> None:
        s = self.session
        try:
            while True:
                now = time.monotonic()
                t = s.next_timer()
                if t is not None and now >= t:
                    s.handle_timer(now)
                for d in s.datagrams_to_send(now):
                    self._sendto(d)
                async with self._cond:
                    self._cond.notify_all()
                if s.closed and not s._close_sends:
                    break
                t = s.next_timer()
                self._wake.clear()
                timeout = None if t is None else max(0.0, t - time.monotonic())
                if timeout is None or timeout > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except asyncio.TimeoutError:
                        pass
        finally:
            self.closed_event.set()
            async with self._cond:
                self._cond.notify_all()

    async def _wait_until(self, pred) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: pred() or self.session.closed)

    def _raise_if_closed(self) -> None:
        s = self.session
        if s.closed:
            if s.close_code == ErrorCode.TIMEOUT:
                raise TransportError(f"connection lost: {s.close_reason}", ErrorCode.TIMEOUT)
            raise TransportError(f"connection closed by peer: {s.close_reason or 'no reason given'}")

    # -- what the transport-neutral layers call ---------------------------------------
    async def send(self, bufs: list) -> None:
        self._raise_if_closed()
        self.session.stream_write(b"".join(bytes(b) for b in bufs))
        self.last_send = time.monotonic()
        self.wake()

    async def feed(self, conn) -> None:
        s = self.session
        await self._wait_until(lambda: s.stream_readable or s._completed)
        chunks = s.take_chunks()
        if chunks:
            self.wake()  # MAX_DATA may now be due
        for fid, index, checksum, data in chunks:
            conn.receive_chunk(fid, index, checksum, data)
        while s.stream_readable:
            buf = conn.get_buffer()
            conn.buffer_updated(s.stream_read_into(buf))
        if not chunks and s.closed:
            if conn.closed:
                return
            self._raise_if_closed()
        self.last_recv = time.monotonic()

    async def send_chunk(self, conn, file_id: int, index: int, data) -> None:
        s = self.session
        await self._wait_until(lambda: s.retained_bytes < s.config.retain_limit)
        self._raise_if_closed()
        checksum = chunk_checksum(data)
        conn.send_chunk(file_id, index, data, checksum, framed=False)
        s.send_chunk(file_id, index, checksum, data)
        self.wake()

    async def file_sent(self, file_id: int) -> None:
        s = self.session
        await self._wait_until(lambda: s.file_acked(file_id))
        self._raise_if_closed()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until our control bytes are acknowledged: a graceful close."""
        try:
            await asyncio.wait_for(self._wait_until(lambda: self.session.stream_all_acked), timeout)
        except asyncio.TimeoutError:
            pass

    def close(self) -> None:
        self.session.close(0, "done")
        self.wake()

    async def aclose(self, drain_timeout: float = 3.0) -> None:
        """Graceful: let the peer acknowledge our last control bytes, then CLOSE."""
        await self.drain(drain_timeout)
        self.close()
        try:
            await asyncio.wait_for(self.closed_event.wait(), 2.0)
        except asyncio.TimeoutError:
            pass
        transport = getattr(self, "_transport", None)
        if transport is not None:
            transport.close()

    @property
    def stats(self) -> dict:
        s = self.session
        return {**s.stats, "srtt_ms": round(s.recovery.rtt.smoothed * 1000, 3), "cc_state": s.cc.state}


class _SenderProtocol(asyncio.DatagramProtocol):
    def __init__(self, dialer: Dialer) -> None:
        self.dialer = dialer
        self.link: UdpLink | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        now = time.monotonic()
        try:
            session = self.dialer.receive_datagram(data, now)
        except RemoteProtocolError as exc:
            if self.link is not None:
                self.link.session.close(ErrorCode.PROTOCOL, str(exc))
                self.link.wake()
            return
        if session is not None and not self.ready.done():
            self.ready.set_result(session)
        if self.link is not None:
            self.link.wake()

    def error_received(self, exc) -> None:
        log.debug("udp error: %s", exc)


async def connect(host: str, port: int, config: UdpConfig | None = None) -> UdpLink:
    config = config or UdpConfig()
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve {host}: {exc.strerror}") from exc
    family, _, _, _, addr = infos[0]
    now = time.monotonic()
    dialer = Dialer(config, _random_cid(), _random_cid(), now)
    transport, proto = await loop.create_datagram_endpoint(lambda: _SenderProtocol(dialer), remote_addr=addr,
                                                           family=family)
    _big_buffers(transport.get_extra_info("socket"))
    try:
        while not proto.ready.done():
            now = time.monotonic()
            if dialer.timed_out(now):
                raise TransportError(f"no answer from {host} port {port} over UDP", ErrorCode.TIMEOUT)
            for d in dialer.datagrams_to_send(now):
                transport.sendto(d)
            t = dialer.next_timer()
            try:
                await asyncio.wait_for(asyncio.shield(proto.ready), max(0.0, (t or now + 0.1) - time.monotonic()))
            except asyncio.TimeoutError:
                pass
    except BaseException:
        transport.close()
        raise
    session = proto.ready.result()
    link = UdpLink(session, transport.sendto, addr)
    proto.link = link
    link._transport = transport
    return link


class _ReceiverProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: Listener, on_session) -> None:
        self.listener = listener
        self.on_session = on_session
        self.links: dict[int, UdpLink] = {}
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        now = time.monotonic()
        try:
            session, new, replies = self.listener.receive_datagram(data, addr, now)
        except RemoteProtocolError as exc:  # valid checksum, bad content: that session ends
            session = None
            log.debug("dropping a session: %s", exc)
            for link in self.links.values():
                if link.session.closed is False and link.peer == addr:
                    link.session.close(ErrorCode.PROTOCOL, str(exc))
                    link.wake()
            replies, new = [], False
        for r in replies:
            self.transport.sendto(r, addr)
        if session is None:
            return
        if new:
            cid = session.local_cid
            link = UdpLink(session, lambda d, cid=cid: self.transport.sendto(d, self.listener.addresses[cid]), addr)
            self.links[cid] = link
            self.on_session(link)
        else:
            link = self.links.get(session.local_cid)
            if link is not None:
                link.wake()

    def forget(self, link: UdpLink) -> None:
        self.links.pop(link.session.local_cid, None)
        self.listener.forget(link.session)

    def error_received(self, exc) -> None:
        log.debug("udp error: %s", exc)


async def serve(host: str | None, port: int, handle: Callable[[UdpLink], Awaitable[None]],
                config: UdpConfig | None = None) -> tuple[asyncio.DatagramTransport, _ReceiverProtocol]:
    """Listen on UDP ``port``; run ``handle(link)`` for each new session."""
    loop = asyncio.get_running_loop()
    config = config or UdpConfig()
    listener = Listener(os.urandom(32), config, _random_cid)
    tasks: set[asyncio.Task] = set()

    def on_session(link: UdpLink) -> None:
        async def run() -> None:
            try:
                await handle(link)  # ends with link.aclose()
            finally:
                if not link.closed_event.is_set():
                    link.close()
                proto.forget(link)

        task = loop.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if host in (None, "", "::", "*"):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        bind = ("::", port)
    else:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        bind = (host, port)
    try:
        sock.bind(bind)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot listen on UDP {bind[0]} port {bind[1]}: {exc.strerror}") from exc
    _big_buffers(sock)
    transport, proto = await loop.create_datagram_endpoint(lambda: _ReceiverProtocol(listener, on_session), sock=sock)
    proto.tasks = tasks
    return transport, proto


__all__ = ["UdpLink", "UdpConfig", "connect", "serve", "FtxError"]
