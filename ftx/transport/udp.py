"""UDP driver: non-blocking sockets on the asyncio loop around the sans-I/O UDP core.

Throughput in Python is bounded by calls per datagram, so this driver batches:

* receive: on each readiness event it drains the socket (up to ``READ_BATCH``
  reads), and with ``UDP_GRO`` each read returns many datagrams coalesced by
  the kernel, split here by the segment size in the control message;
* send: a session's datagrams go out in ``UDP_SEGMENT`` (GSO) batches -- one
  ``sendmsg`` for up to 64 equal-sized datagrams -- where the kernel supports
  it, else one ``sendto`` each.  A full socket buffer queues, never drops.

One socket serves every sender on the receiver (packets are routed by
connection ID).  Each session gets a ``UdpLink`` whose pump task sends what
the session wants when pacing and timers allow; ``UdpLink`` offers the calls
of ``TcpLink`` to the transport-neutral layers and keeps liveness itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import errno
import gc
import ipaddress
import logging
import os
import socket
import struct
import time
from typing import Awaitable, Callable

from ..core.checksum import chunk_checksum
from ..core.udp import burst
from ..core.udp.endpoint import Dialer, Listener
from ..core.udp.packets import MIN_INITIAL_SIZE
from ..core.udp.reassembly import MemoryBudget
from ..core.udp.session import UdpConfig, UdpSession
from ..core.secure import AuthError, Established, datagrams
from ..errors import ErrorCode, TransportError
from .sockets import bound_socket

log = logging.getLogger("ftx.udp")
if os.environ.get("FTX_PURE_PYTHON"):
    burst.use(accelerated=False)  # measure or test the reference loops
    datagrams.use(accelerated=False)
SOCKET_BUFFER = 16 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux values
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
PMTUDISC_PROBE = 3  # IP_PMTUDISC_PROBE / IPV6_PMTUDISC_PROBE: set DF, ignore the kernel's path MTU
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
READ_BATCH = 32  # reads (each up to 64 KiB with GRO) per readiness event
SO_ATTACH_FILTER, SO_DETACH_FILTER = 26, 27  # Linux
SHIELD_PASS = 8  # of the token-less INITIALs a socket filter drops, 1 in this many reaches the Listener
SHIELD_HOLD = 2.0  # seconds a shield stays before it is lifted to see whether it is still needed
BUSY_LIMIT = 1000  # busy IPv4 addresses in the socket filter (2 of the 4 096 instructions allowed each)
BUSY_REFRESH = 0.5  # seconds between two looks at which addresses are busy
SEND_BATCH = 256  # datagrams a link hands to the socket per turn of its pump
PACING_QUANTUM = 0.002  # seconds: the longest a paced sender naps between bursts


def _format_addr(addr) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
    return str(addr)


def _ipv4(host: str) -> int | None:
    """An IPv4 address as a 32-bit number (as a socket filter loads it), else None."""
    try:
        return int(ipaddress.IPv4Address(host))
    except ValueError:
        return None


def _random_cid() -> int:
    return int.from_bytes(os.urandom(8), "big")


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim_fn = _malloc_trim()
TRIM_INTERVAL = 1.0  # seconds: the least time between two heap trims
TRIM_COST_RATIO = 20  # and at least this many times as long as the last trim took (5 % of the CPU at most)


def _initial_filter(pass_one_in: int, busy: list[int], everyone: bool) -> bytes:
    """A classic BPF socket filter for a UDP socket (offset 0 is the UDP header): an INITIAL
    without a token from an IPv4 source in ``busy`` (addresses as 32-bit numbers) -- or from
    anyone, with ``everyone`` -- is dropped except 1 in ``pass_one_in`` chosen at random
    (a power of two); every other datagram passes."""
    payload, net = 8, -0x100000  # SKF_NET_OFF: offsets from the IP header
    prog: list = [
        (0x30, 0, 0, payload),  # ldb: packet type
        (0x15, 1, 0, 0x01),  # jeq INITIAL: go on
        "accept",
        (0x28, 0, 0, payload + 18 + 8),  # ldh: token length, after the header and scid
        (0x15, 1, 0, 0),  # jeq 0: go on
        "accept",
    ]
    if busy:
        prog += [
            (0x30, 0, 0, (net + 0) & 0xFFFFFFFF),  # ldb: IP version and header length
            (0x74, 0, 0, 4),  # rsh 4
            (0x15, 1, 0, 4),  # jeq IPv4: go on
            ("ja", "others"),
            (0x20, 0, 0, (net + 12) & 0xFFFFFFFF),  # ld: IPv4 source address
        ]
        for address in busy:
            prog += [(0x15, 0, 1, address), ("ja", "sample")]  # jeq address: sample
    prog += [("at", "others"), ("ja", "sample") if everyone else "accept",
             ("at", "sample"),
             (0x20, 0, 0, (-0x1000 + 56) & 0xFFFFFFFF),  # ld rand (SKF_AD_OFF + SKF_AD_RAND)
             (0x54, 0, 0, pass_one_in - 1),  # and
             (0x15, 0, 1, 0),  # jeq 0: accept
             "accept", (0x06, 0, 0, 0)]  # drop
    # ("at", name) marks a place, ("ja", name) jumps there (32-bit offset: jeq's are 8-bit)
    code, places = [], {}
    for ins in prog:
        if ins[0] == "at":
            places[ins[1]] = len(code)
        else:
            code.append(ins)
    out = []
    for i, ins in enumerate(code):
        if ins == "accept":
            ins = (0x06, 0, 0, 0x40000)
        elif ins[0] == "ja":
            ins = (0x05, 0, 0, places[ins[1]] - i - 1)
        out.append(struct.pack("=HBBI", *ins))
    return b"".join(out)


class DatagramSocket:
    """Batched datagram I/O on one non-blocking socket (GRO in, GSO out, with fallbacks)."""

    def __init__(self, sock: socket.socket, on_read: Callable[[memoryview, int, object], None],
                 on_drained: Callable[[], None] | None = None, gso: bool = True) -> None:
        self.sock = sock
        sock.setblocking(False)
        for force, opt in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:  # beyond net.core.rmem_max where we may (CAP_NET_ADMIN), else up to it
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                except OSError:
                    pass
        self.drops = 0  # datagrams the kernel dropped because our receive buffer was full
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        except OSError:
            pass
        self.gro = self.gso = False
        if gso:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
            try:
                sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
                self.gso = True
            except OSError:
                pass
        self.on_read = on_read
        self.on_drained = on_drained
        self._rbuf = bytearray(65536)
        self._rview = memoryview(self._rbuf)
        self._loop = asyncio.get_running_loop()
        self._queue: list[tuple[list, object]] = []
        self._cmsg_space = 2 * socket.CMSG_SPACE(4)
        self._loop.add_reader(sock.fileno(), self._readable)
        self.closed = False

    def _readable(self) -> None:
        """Drain the socket (a bounded number of reads, so ACKs and timers get their turn):
        each read goes to ``on_read(data, segment size, address)`` at once, into one
        reused buffer -- ``data`` is valid only during the call."""
        sock, buf, view, on_read = self.sock, self._rbuf, self._rview, self.on_read
        try:
            for _ in range(READ_BATCH):
                n, anc, _flags, addr = sock.recvmsg_into([buf], self._cmsg_space)
                seg = n
                for level, kind, value in anc:
                    if level == SOL_UDP and kind == UDP_GRO:
                        seg = struct.unpack("=i", value[:4])[0] or n
                    elif level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                        self.drops = struct.unpack("=I", value[:4])[0]
                try:
                    on_read(view[:n], seg, addr)
                except Exception:  # a bug in handling one read must not stall the socket
                    log.exception("udp: error handling a datagram from %s", addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # e.g. ICMP port unreachable reported on a connected socket
            log.debug("udp receive error: %s", exc)
        if self.on_drained is not None:
            self.on_drained()

    def send(self, bursts: list[tuple[bytes, int]], addr=None) -> None:
        """Send ``(buffer, size)`` bursts: datagrams of ``size`` bytes laid end to end."""
        if not bursts:
            return
        if self._queue:
            self._queue.append((bursts, addr))
            return
        rest = self._send_now(bursts, addr)
        if rest:
            self._queue.append((rest, addr))
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def send_datagrams(self, datagrams: list[bytes], addr=None) -> None:
        """Send separate datagrams, joining runs of equal size into bursts where GSO works."""
        bursts, i, n = [], 0, len(datagrams)
        while i < n:
            size = len(datagrams[i])
            j, total = i + 1, size
            if self.gso:
                while (j < n and j - i < GSO_MAX_SEGMENTS and len(datagrams[j]) <= size
                       and total + len(datagrams[j]) <= GSO_MAX_BYTES):
                    total += len(datagrams[j])
                    j += 1
                    if len(datagrams[j - 1]) < size:
                        break  # only the last segment may be shorter
            bursts.append((datagrams[i] if j == i + 1 else b"".join(datagrams[i:j]), size))
            i = j
        self.send(bursts, addr)

    def _send_now(self, bursts: list, addr) -> list:
        """Send what the socket takes; return what it would not take now."""
        sock, i = self.sock, 0
        try:
            while i < len(bursts):
                buf, seg = bursts[i]
                if len(buf) <= seg:
                    try:
                        if addr is None:
                            sock.send(buf)
                        else:
                            sock.sendto(buf, addr)
                    except OSError as exc:
                        if exc.errno != errno.EMSGSIZE:
                            raise
                        # larger than the local link allows (a path MTU probe, with DF set): it
                        # is lost, as on a path that drops it
                elif self.gso:
                    anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))]
                    if addr is None:
                        sock.sendmsg([buf], anc)
                    else:
                        sock.sendmsg([buf], anc, 0, addr)
                else:
                    view = memoryview(buf)
                    for off in range(0, len(buf), seg):
                        try:
                            if addr is None:
                                sock.send(view[off : off + seg])
                            else:
                                sock.sendto(view[off : off + seg], addr)
                        except (BlockingIOError, InterruptedError):
                            bursts[i] = (bytes(view[off:]), seg)
                            raise
                i += 1
        except (BlockingIOError, InterruptedError):
            return bursts[i:]
        except OSError as exc:
            if exc.errno in (5, 22, 90, 95) and self.gso:  # EIO/EINVAL/EMSGSIZE/EOPNOTSUPP: no GSO here
                self.gso = False
                return self._send_now(bursts[i:], addr)
            log.debug("udp send error: %s", exc)  # the loss is repaired like any other
            return self._send_now(bursts[i + 1 :], addr) if i + 1 < len(bursts) else []
        return []

    def _writable(self) -> None:
        while self._queue:
            bursts, addr = self._queue[0]
            rest = self._send_now(bursts, addr)
            if rest:
                self._queue[0] = (rest, addr)
                return
            self._queue.pop(0)
        self._loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            if self._queue:
                self._loop.remove_writer(self.sock.fileno())
            self.sock.close()


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
        self._cond = asyncio.Condition()
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
                    await asyncio.sleep(max(quantum, s._pace_next - time.monotonic()))
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
        finally:
            self.closed_event.set()
            for fn in self._on_close:
                fn()
            async with self._cond:
                self._cond.notify_all()

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
        if s.close_code == ErrorCode.AUTH:
            raise AuthError(s.close_reason)
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

    # -- what the transport-neutral layers call ---------------------------------------
    async def send(self, bufs: list) -> None:
        self._raise_if_closed()
        self.session.stream_write(b"".join(bytes(b) for b in bufs))
        self.last_send = time.monotonic()
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
        await self._wait_until(lambda: s.stream_readable or s._completed or self._leftover)
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
        while s.stream_readable:  # conn.get_buffer() keeps the payloads of queued events intact
            buf = conn.get_buffer()
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
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve {host}: {exc.strerror}") from exc
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if config.pmtud:  # probes must not be fragmented on the way, or every one "succeeds"
        level, opt = (socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) if family == socket.AF_INET6 else \
            (socket.IPPROTO_IP, IP_MTU_DISCOVER)
        try:
            sock.setsockopt(level, opt, PMTUDISC_PROBE)
        except OSError as exc:
            sock.close()
            raise TransportError(f"--pmtud needs the don't-fragment socket option: {exc.strerror}") from exc
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

    dsock = DatagramSocket(sock, on_read, on_drained)
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
    except BaseException:
        dsock.close()
        raise
    link = UdpLink(ready.result(), dsock.send, addr)
    link._on_close.append(dsock.close)
    holder["link"] = link
    return link


class UdpServer:
    """The receiver's UDP socket: the Listener routes, each new session gets a link."""

    def __init__(self, sock: socket.socket, listener: Listener, on_session: Callable[[UdpLink], None]) -> None:
        self.listener = listener
        self.on_session = on_session
        self.links: dict[int, UdpLink] = {}
        self._woken: set[UdpLink] = set()
        self._drops = 0
        self._trimmed_at = 0.0
        self._trim_handle: asyncio.TimerHandle | None = None
        self.dsock = DatagramSocket(sock, self._on_read, self._on_drained)
        self.shielded = False  # an INITIAL flood: most token-less INITIALs dropped in the kernel
        self.shield_periods = 0
        self.busy: list[str] = []  # addresses whose token-less INITIALs the kernel mostly drops
        self._filtering = False  # a socket filter is attached
        self._unanswered = 0
        self._overflowed = False  # since INITIALs last went unanswered
        self._lifted = False  # the filter was lifted since the last read
        self._shield_handle: asyncio.TimerHandle | None = None
        self._busy_handle: asyncio.TimerHandle | None = None

    def _on_read(self, data, seg: int, addr) -> None:
        for session, new, replies in self.listener.receive_burst(data, seg, addr, time.monotonic()):
            if replies:
                self.dsock.send_datagrams(replies, addr)
            if session is None:
                continue
            if new:
                cid = session.local_cid
                link = UdpLink(session, lambda ds, cid=cid: self._send_to(cid, ds), addr)
                self.links[cid] = link
                self.on_session(link)
            else:
                link = self.links.get(session.local_cid)
            if link is not None:
                self._woken.add(link)

    def _on_drained(self) -> None:
        if self.listener.evicted:  # sessions closed to make room: let their pumps end them
            for session in self.listener.evicted:
                link = self.links.get(session.local_cid)
                if link is not None:
                    self._woken.add(link)
            self.listener.evicted.clear()
        if self.dsock.drops != self._drops and (self._filtering or self._lifted):
            # the kernel counts what the socket filter drops as drops too: no overflow to tell
            # (and the first read after the filter is lifted may still report some)
            self._drops = self.dsock.drops
        self._lifted = False
        overflow = self.dsock.drops != self._drops
        self._overflowed |= overflow
        unanswered = self.listener.stats["initials_unanswered"]
        if unanswered != self._unanswered:  # more INITIALs than the Listener answers: a flood
            self._unanswered = unanswered
            if self._overflowed and not self.shielded:  # ... that the receiver cannot keep up with
                self._shield_on()
            self._overflowed = False
            if self._busy_handle is None:
                self._refresh_busy()
        if overflow:  # our socket overflowed: every session must slow down
            self._drops = self.dsock.drops
            now = time.monotonic()
            for link in self.links.values():
                link.session.on_overflow(now)
                self._woken.add(link)
        for link in self._woken:
            link.wake()
        self._woken.clear()

    def _refresh_busy(self) -> None:
        """INITIALs go unanswered: the addresses whose own budget is spent (the Listener
        refuses them anyway) have their token-less INITIALs dropped in the kernel, all but 1
        in SHIELD_PASS, which the Listener counts SHIELD_PASS times so that they stay busy
        while they flood.  Reading and refusing 20 000 INITIALs a second took a third of a
        core: now a flood from up to BUSY_LIMIT IPv4 addresses costs the receiver little,
        and other addresses' INITIALs are all read and answered.  Looked at again every
        BUSY_REFRESH seconds while any address is busy.  More busy addresses than the filter
        holds (while it is on, the kernel's drop count cannot tell an overflow): the shield
        for every address, as on an overflow."""
        self._busy_handle = None
        busy = [h for h in self.listener.busy_hosts(time.monotonic(), BUSY_LIMIT + 1) if _ipv4(h) is not None]
        overrun = len(busy) > BUSY_LIMIT
        busy = busy[:BUSY_LIMIT]
        if set(busy) != set(self.busy):
            self.busy = busy
            self._install_filter()
        if overrun and not self.shielded:
            self._shield_on()
        if self.busy:
            self._busy_handle = asyncio.get_running_loop().call_later(BUSY_REFRESH, self._refresh_busy)

    def _shield_on(self) -> None:
        """More INITIALs than the Listener answers, and our socket overflowed: each INITIAL
        still costs a read and a parse, and a flood of them faster than we read fills the
        socket's queue, so that the kernel drops the DATA of the senders already served as
        well.  A socket filter now drops all but 1 in SHIELD_PASS token-less INITIALs from
        any address before they are queued (DATA and INITIALs with a token pass), for
        SHIELD_HOLD seconds at a time; new senders need more attempts meanwhile.  Not for a
        flood we keep up with: the Listener's budgets drop it cheaply, and a new sender is
        answered at once."""
        self.shielded = True
        if not self._install_filter():
            self.shielded = False
            return
        self.shield_periods += 1
        log.info("udp: INITIAL flood beyond what we read: answering 1 in %d new senders' first packets for %g s",
                 SHIELD_PASS, SHIELD_HOLD)
        self._shield_handle = asyncio.get_running_loop().call_later(SHIELD_HOLD, self._shield_lift)

    def _shield_lift(self) -> None:
        """Lift the shield: if the flood still overflows the socket, it comes back at once
        (the kernel's drop count shows it on the next read)."""
        self._shield_handle = None
        if self.shielded:
            self.shielded = False
            self._install_filter()
            log.info("udp: INITIAL flood shield lifted")

    def _install_filter(self) -> bool:
        """Attach the socket filter for the busy addresses and the shield as they are now
        (or detach it if there is neither); False if the kernel would not take it."""
        sock = self.dsock.sock
        if self.busy or self.shielded:
            prog = _initial_filter(SHIELD_PASS, [_ipv4(h) for h in self.busy], self.shielded)
            code = ctypes.create_string_buffer(prog)
            fprog = struct.pack("@HP", len(prog) // 8, ctypes.addressof(code))
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            except OSError as exc:
                log.debug("udp: no socket filter: %s", exc)
                self.busy = []
                self.listener.sampled_hosts = frozenset()
                return False
            self._filtering = True
        elif self._filtering:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            except OSError:
                pass
            self._filtering = False
            self._lifted = True
        self.listener.sampled_hosts = frozenset(self.busy)
        self.listener.sample_weight = SHIELD_PASS
        return True

    def _send_to(self, cid: int, bursts: list) -> None:
        addr = self.listener.addresses.get(cid)
        if addr is not None:  # None: the session was already forgotten
            self.dsock.send(bursts, addr)

    def forget(self, link: UdpLink) -> None:
        self.links.pop(link.session.local_cid, None)
        self.listener.forget(link.session)
        self._trim_heap()

    def _trim_heap(self) -> None:
        """Give freed heap memory back to the kernel, soon after sessions end: glibc keeps
        it otherwise, and a receiver would stay at the peak RSS that senders long gone
        caused.  At most once per TRIM_INTERVAL; a no-op without malloc_trim."""
        if _malloc_trim_fn is None or self._trim_handle is not None:
            return
        wait = self._trimmed_at + TRIM_INTERVAL - time.monotonic()

        def trim() -> None:
            self._trim_handle = None
            start = time.monotonic()
            gc.collect()  # sessions end in reference cycles: free their buffers now, not at some later collection
            _malloc_trim_fn(0)
            # a full collection costs more the more objects there are: while sessions come and
            # go by the hundred (a flood of handshakes) it must not take much of the CPU
            self._trimmed_at = time.monotonic() + TRIM_COST_RATIO * (time.monotonic() - start)
        if wait <= 0:
            trim()
        else:
            self._trim_handle = asyncio.get_running_loop().call_later(wait, trim)

    async def shutdown(self, reason: str, timeout: float = 0.5) -> None:
        """Stopping (SIGTERM): CLOSE every session with ``reason``, so that its sender knows at once
        instead of after its idle timeout; wait (at most ``timeout``) for those to go out; close."""
        links = list(self.links.values())
        for link in links:
            link.session.close(ErrorCode.ABORTED, reason)
            link.wake()
        if links:
            try:
                await asyncio.wait_for(asyncio.gather(*(link.closed_event.wait() for link in links)), timeout)
            except asyncio.TimeoutError:
                pass
        self.close()

    def close(self) -> None:
        for link in list(self.links.values()):
            link.close()
        for handle in (self._trim_handle, self._shield_handle, self._busy_handle):
            if handle is not None:
                handle.cancel()
        self.dsock.close()


async def serve(host: str | None, port: int, handle: Callable[[UdpLink], Awaitable[None]],
                config: UdpConfig | None = None, admission=None, limits=None,
                sock: socket.socket | None = None) -> UdpServer:
    """Listen on UDP ``port`` (or on ``sock``, a bound socket: systemd socket activation);
    run ``handle(link)`` for each new session.

    ``admission`` (``ftx.limits.Admission``, shared with TCP) counts sessions against
    ``--max-connections`` and ``--max-per-host``; ``limits`` (``ftx.limits.Limits``) gives
    the handshake and stall timeouts and the memory all UDP sessions may buffer together
    (``Limits.udp_buffer_bytes``, their share of ``--max-memory``)."""
    loop = asyncio.get_running_loop()
    config = config or UdpConfig()
    budget = None
    if limits is not None:
        budget = MemoryBudget(limits.udp_buffer_bytes)
        if config.handshake_timeout is None:
            config = dataclasses.replace(config, handshake_timeout=limits.handshake_timeout)
        if config.stall_timeout is None:
            config = dataclasses.replace(config, stall_timeout=limits.stall_timeout)
    listener = Listener(os.urandom(32), config, _random_cid, admission=admission, budget=budget)
    tasks: set[asyncio.Task] = set()

    def on_session(link: UdpLink) -> None:
        async def run() -> None:
            try:
                await handle(link)  # ends with link.aclose()
            finally:
                if not link.closed_event.is_set():
                    link.close()
                server.forget(link)

        task = loop.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if sock is None:
        sock = bound_socket(host, port, socket.SOCK_DGRAM)
    server = UdpServer(sock, listener, on_session)
    server.tasks = tasks
    return server


__all__ = ["UdpLink", "UdpConfig", "UdpServer", "DatagramSocket", "connect", "serve"]
