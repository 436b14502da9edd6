"""One UDP session on the asyncio loop (part of the UDP driver, ``udp.py``): ``UdpLink``
and the sender's ``connect``.

Each session gets a ``UdpLink`` whose pump task sends what the session wants
when pacing and timers allow; ``UdpLink`` offers the calls of ``TcpLink`` to the
transport-neutral layers and keeps liveness itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from typing import Callable

from ..core.checksum import chunk_checksum
from ..core.udp import burst
from ..core.udp.endpoint import Dialer
from ..core.udp.packets import MIN_INITIAL_SIZE
from ..core.udp.session import UdpConfig, UdpSession
from ..core.secure import AuthError, Established, datagrams
from ..errors import ErrorCode, TransportError
from .quiet import IDLE_TRIM, give_back
from .sockets import resolve
from .udp_socket import DatagramSocket

log = logging.getLogger("ftx.udp")
if os.environ.get("FTX_PURE_PYTHON"):
    burst.use(accelerated=False)  # measure or test the reference loops
    datagrams.use(accelerated=False)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
PMTUDISC_PROBE = 3  # IP_PMTUDISC_PROBE / IPV6_PMTUDISC_PROBE: set DF, ignore the kernel's path MTU
SEND_BATCH = 256  # datagrams a link hands to the socket per turn of its pump
SEND_BUFFER = 2 * 1024 * 1024  # control bytes queued and unacknowledged before send() waits (or a cwnd)
# ... but never more than this: the window follows the path's bandwidth-delay product estimate,
# unbounded (2.885 x 10 GB/s x 100 ms is 2.9 GB).  8 MiB is about what the offer window puts
# in flight on a tree of small files anyway (256 files of 1-64 KiB); held twice at most in
# the session's send buffer (acknowledged bytes leave it in batches).
SEND_BUFFER_MAX = 8 * 1024 * 1024
PACING_QUANTUM = 0.002  # seconds: the longest a paced sender naps between bursts
FEED_BYTES = 512 * 1024  # stream bytes placed in the frame decoder at once, at most (a sender's run of
# small files is up to 480 KiB; the decoder grows to it only while --max-memory allows)


def _format_addr(addr) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
    return str(addr)


def _random_cid() -> int:
    return int.from_bytes(os.urandom(8), "big")


class UdpLink:
    transport = "udp"
    own_liveness = True

    def __init__(self, session: UdpSession, send: Callable[[list[bytes]], None], peer) -> None:
        self.session = session
        self._send = send
        self.peer = peer
        self.busy = 0
        self.last_recv = self.last_send = time.monotonic()
        self._wake = asyncio.Event()
        self._input = asyncio.Event()  # input for the application arrived during a pacing nap
        self._napping = False
        self._cond = asyncio.Condition()
        self._pump_error = ""  # why the pump ended with the session still open (then closed by it)
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())
        self.closed_event = asyncio.Event()
        self._on_close: list[Callable[[], None]] = []
        self._lent: list[bytearray] = []
        self._reading: bytearray | None = None  # see read_buffer
        self._leftover = b""  # stream bytes read past the peer's handshake (handshake_done)
        self._datagram_size = session.max_datagram

    @property
    def sending(self) -> bool:
        return False

    @property
    def file_bytes_in(self) -> int:
        """Chunk bytes that arrived, whole chunks or not (the receiver's --stall-timeout)."""
        return self.session.chunk_bytes_in

    def wake(self) -> None:
        self._wake.set()
        if self._napping:
            s = self.session
            if s.stream_readable or s._completed or s.closed:
                self._input.set()

    # -- pump: timers and output ---------------------------------------------------------
    async def _pump(self) -> None:
        s = self.session
        try:
            while True:
                now = time.monotonic()
                t = s.next_timer()
                if t is not None and now >= t:
                    if self.busy:  # our own slow work (link_busy) is not the sender's stall
                        s.application_busy(now)
                    s.handle_timer(now)
                out = s.transmit(now, SEND_BATCH)
                if out:
                    self._send(out)
                if s.max_datagram != self._datagram_size:
                    self._size_changed(s.max_datagram)
                async with self._cond:
                    self._cond.notify_all()
                if s.closed and not s._close_sends:
                    break
                if out and s.pacing_limited:
                    # Paced: let a quantum of credit build up, undisturbed by ACK wake-ups,
                    # so bursts stay large (GSO, GRO, few ACKs) instead of a packet or two
                    # per wake-up, a mode that costs so much per packet it cannot speed up.
                    quantum = min(PACING_QUANTUM, 32 * s.max_datagram / s.cc.pacing_rate)
                    await self._nap(time.monotonic() + max(quantum, s._pace_next - time.monotonic()))
                    continue
                t = s.next_timer()
                self._wake.clear()
                timeout = None if t is None else t - time.monotonic()
                if timeout is None or timeout > 0.0002:
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except asyncio.TimeoutError:
                        pass
                else:
                    await asyncio.sleep(0)
        except BaseException as exc:
            # the pump is what sends, acknowledges and times out: without it the session is over
            # (a bug of ours, or the task cancelled); anyone waiting on it must hear so, not wait on
            if not s.closed:
                self._pump_error = f"the link stopped: {exc!r}"
                s.close(ErrorCode.INTERNAL, self._pump_error)
            raise
        finally:
            self.closed_event.set()
            for fn in self._on_close:
                fn()
            async with self._cond:
                self._cond.notify_all()

    async def _nap(self, until: float) -> None:
        """Sleep until ``until`` without sending, but let the application have what arrives
        meanwhile (a RESULT that reopens the sender's offer window must not wait for pacing;
        ACKs, the usual wake-ups of a paced sender, do not interrupt the nap)."""
        self._input.clear()
        self._napping = True
        try:
            while (timeout := until - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(self._input.wait(), timeout)
                except asyncio.TimeoutError:
                    return
                self._input.clear()
                async with self._cond:
                    self._cond.notify_all()
        finally:
            self._napping = False

    def _size_changed(self, size: int) -> None:
        old, self._datagram_size = self._datagram_size, size
        peer = _format_addr(self.peer)
        if size < old:
            log.info("udp: %d-byte datagrams do not get through to %s (path MTU below %d?): sending %d-byte "
                     "datagrams and searching for the largest size that does", old, peer, old + 48, size)
        else:
            log.info("udp: the path to %s carries %d-byte datagrams", peer, size)

    async def _wait_until(self, pred) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: pred() or self.session.closed)

    def _raise_if_closed(self) -> None:
        s = self.session
        if s.closed:
            if self._pump_error:
                raise TransportError(f"connection lost: {self._pump_error}", ErrorCode.INTERNAL)
            if s.close_code == ErrorCode.AUTH:
                raise AuthError(s.close_reason)
            if s.close_code == ErrorCode.TIMEOUT:
                raise TransportError(f"connection lost: {s.close_reason}", ErrorCode.TIMEOUT)
            raise TransportError(f"connection closed by peer: {s.close_reason or 'no reason given'}")

    # -- the handshake (ftx/securing.py) -----------------------------------------------
    async def recv_raw(self) -> bytes:
        """The next control-stream bytes, before ``handshake_done``; b"" once the session is over."""
        s = self.session
        await self._wait_until(lambda: s.stream_readable)
        if s.stream_readable:
            buf = bytearray(s.stream_readable)
            n = s.stream_read_into(memoryview(buf))
            self.last_recv = time.monotonic()
            return bytes(buf[:n])
        if s.closed and (s.close_reason or self._pump_error):  # why it ended (a refusal: BUSY and its
            self._raise_if_closed()  # reason, when its CLOSE came after the INITIAL reply), not "closed"
        return b""

    def install_keys(self, est: Established) -> None:
        """Our handshake bytes are all written: seal what we send from now on."""
        self.session.install_keys(est)
        self.wake()

    def handshake_done(self, leftover: bytes) -> None:
        """The peer's handshake is consumed; ``leftover`` (read past it) comes first in ``feed``.
        From now on only sealed packets are taken."""
        try:
            self.session.handshake_done(len(leftover))
        except AuthError as exc:
            self.session.close(ErrorCode.AUTH, str(exc))
            self.wake()
            raise
        self._leftover = bytes(leftover)

    def _send_room(self) -> bool:
        """Room for more control bytes: fewer queued or unacknowledged than a congestion
        window (at least SEND_BUFFER, at most SEND_BUFFER_MAX).  Without a bound the sender read
        a tree of small files ahead as fast as the disk gave it (25 MB more peak RSS than over
        TCP on 2 000 files)."""
        s = self.session
        return s.stream_buffered < min(max(SEND_BUFFER, s.cc.cwnd), SEND_BUFFER_MAX)

    # -- what the transport-neutral layers call ---------------------------------------
    async def send(self, bufs: list) -> None:
        s = self.session
        if not self._send_room():  # as TCP's drain(): the writer waits for the peer
            await self._wait_until(self._send_room)
        self._raise_if_closed()
        # one call (a batch of small files is thousands of pieces), no bytes() copy of each first
        s.stream_write(bufs[0] if len(bufs) == 1 else b"".join(bufs))
        self.last_send = now = time.monotonic()
        if not self._napping:
            # out at once: waking the pump costs a turn of the loop, and on a receiver busy
            # reading that turn held back each RESULT (which reopens the sender's offer window)
            out = s.transmit(now, SEND_BATCH)
            if out:
                self._send(out)
        self.wake()

    async def feed(self, conn) -> None:
        s = self.session
        # Chunk data given to conn.receive_chunk is valid until the next feed() after its
        # event was taken, as on TCP, where it is a view into the frame decoder's buffer.
        # Once every event is taken, those buffers go back to the session for reuse.
        if not conn.events_pending:
            for buf in self._lent:
                s.recycle(buf)
            self._lent.clear()
        def ready():
            return s.stream_readable or s._completed or self._leftover

        if not ready():  # quiet: after IDLE_TRIM the control decoder gives its memory back (as on TCP)
            loop = asyncio.get_running_loop()
            timer = loop.call_later(IDLE_TRIM, give_back, conn, loop)
            try:
                await self._wait_until(ready)
            finally:
                timer.cancel()
        while self._leftover:  # what the handshake read past its end
            buf = conn.get_buffer()
            n = min(len(buf), len(self._leftover))
            buf[:n] = self._leftover[:n]
            self._leftover = self._leftover[n:]
            conn.buffer_updated(n)
        chunks = s.take_chunks()
        self._lent.extend(c[3] for c in chunks)
        if chunks:
            self.wake()  # MAX_DATA may now be due
        for fid, index, checksum, data in chunks:
            conn.receive_chunk(fid, index, checksum, data)
        while s.stream_readable and not conn.paused:  # (paused: no room in --max-memory)
            # conn.get_buffer() keeps the payloads of queued events intact; offered what waits (up
            # to FEED_BYTES), a run of small files is placed in one region and decoded in one go,
            # as a sealed TCP record is, not 64 KiB at a time with its cut frame moved each time
            buf = conn.get_buffer(min(s.stream_readable, FEED_BYTES))
            conn.buffer_updated(s.stream_read_into(buf))
        if conn.peer is not None:
            s.established()  # the handshake timeout no longer applies
        if not chunks and s.closed:
            if conn.closed:
                return
            self._raise_if_closed()
        self.last_recv = time.monotonic()

    def read_buffer(self, shared: memoryview) -> memoryview:
        """Where the sender reads its next chunk: a buffer the session can keep as it is
        (it holds chunks until they are acknowledged), saving a copy per chunk."""
        if self._reading is None or len(self._reading) != len(shared):
            self._reading = self.session.spare_buffer(len(shared))
        return memoryview(self._reading)

    async def send_chunk(self, conn, file_id: int, index: int, data) -> None:
        s = self.session
        await self._wait_until(lambda: s.retained_bytes < s.config.retain_limit)
        self._raise_if_closed()
        checksum = chunk_checksum(data)
        conn.send_chunk(file_id, index, data, checksum, framed=False)
        reading = self._reading
        if isinstance(data, memoryview) and reading is not None and data.obj is reading and len(data) == len(reading):
            self._reading = None
            s.send_chunk(file_id, index, checksum, reading, owned=True)
        else:
            s.send_chunk(file_id, index, checksum, data)
        self.wake()

    async def file_sent(self, file_id: int) -> None:
        s = self.session
        await self._wait_until(lambda: s.file_acked(file_id))
        self._raise_if_closed()

    async def control_delivered(self) -> None:
        """Wait until the peer has every control byte sent so far (chunks travel apart)."""
        await self._wait_until(lambda: self.session.stream_all_acked)
        self._raise_if_closed()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until our control bytes are acknowledged."""
        try:
            await asyncio.wait_for(self._wait_until(lambda: self.session.stream_all_acked), timeout)
        except asyncio.TimeoutError:
            pass

    def close(self) -> None:
        self.session.close(0, "done")
        self.wake()

    async def aclose(self, drain_timeout: float | None = None) -> None:
        """Graceful: let the peer acknowledge our last control bytes (on a very lossy path
        that can take several probe timeouts; at most the idle timeout), then CLOSE."""
        await self.drain(self.session.config.idle_timeout if drain_timeout is None else drain_timeout)
        self.close()
        try:
            await asyncio.wait_for(self.closed_event.wait(), 2.0)
        except asyncio.TimeoutError:
            pass

    @property
    def stats(self) -> dict:
        s = self.session
        return {**s.stats, "spurious_losses": s.recovery.spurious_losses, "max_datagram": s.max_datagram,
                "reordering_threshold": s.recovery.packet_threshold,
                "srtt_ms": round(s.recovery.rtt.smoothed * 1000, 3),
                "min_rtt_ms": round(s.recovery.rtt.min * 1000, 3) if s.recovery.rtt.has_sample else None,
                "cc_state": s.cc.state, "btl_bw_mbps": round(s.cc.btl_bw * 8 / 1e6, 1), "cwnd": s.cc.cwnd}


async def connect(host: str, port: int, config: UdpConfig | None = None) -> UdpLink:
    """Handshake with a receiver (INITIAL, RETRY, INITIAL) and return the link."""
    config = config or UdpConfig()
    loop = asyncio.get_running_loop()
    try:
        infos = await resolve(host, port, socket.SOCK_DGRAM)  # a numeric address without a thread
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve {host}: {exc.strerror}") from exc
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if config.pmtud:  # probes must not be fragmented on the way, or every one "succeeds"
        level, opt = (socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) if family == socket.AF_INET6 else \
            (socket.IPPROTO_IP, IP_MTU_DISCOVER)
        try:
            sock.setsockopt(level, opt, PMTUDISC_PROBE)
        except OSError as exc:  # (a kernel without the option: send as without the search)
            log.warning("no path MTU search: the don't-fragment socket option is refused (%s)", exc.strerror)
            config = dataclasses.replace(config, pmtud=False)
    sock.connect(addr)
    dialer = Dialer(config, _random_cid(), _random_cid(), time.monotonic())
    ready = loop.create_future()
    holder: dict = {}

    def on_read(data, seg: int, _addr) -> None:
        holder["session"] = dialer.receive_burst(data, seg, time.monotonic())

    def on_drained() -> None:
        session = holder.get("session")
        if session is not None and not ready.done():
            ready.set_result(session)
        elif session is None:
            dsock.send_datagrams(dialer.datagrams_to_send(time.monotonic()))  # a RETRY is answered at once
        link = holder.get("link")
        if link is not None:
            link.wake()

    def on_refused(_exc) -> None:  # ICMP port unreachable: nothing listens there, no need to wait it out
        if not ready.done():
            ready.set_exception(TransportError(f"cannot connect to {host} port {port} over UDP: connection refused",
                                               ErrorCode.ABORTED))

    dsock = DatagramSocket(sock, on_read, on_drained, on_refused=on_refused)
    try:
        while not ready.done():
            now = time.monotonic()
            if dialer.timed_out(now):
                raise TransportError(f"no answer from {host} port {port} over UDP (no receiver there, UDP blocked, "
                                     f"or a path that drops {MIN_INITIAL_SIZE}-byte datagrams)", ErrorCode.TIMEOUT)
            dsock.send_datagrams(dialer.datagrams_to_send(now))
            t = dialer.next_timer()
            try:
                await asyncio.wait_for(asyncio.shield(ready), max(0.0, (t or now + 0.1) - time.monotonic()))
            except asyncio.TimeoutError:
                pass
        session = ready.result()  # raises the refusal, whenever it came
        dsock.on_refused = None  # once connected, a stray ICMP error is a loss like any other
    except BaseException:
        dsock.close()
        raise
    link = UdpLink(session, dsock.send, addr)
    link._on_close.append(dsock.close)
    holder["link"] = link
    return link
