"""The receiver's UDP socket (part of the UDP driver, ``udp.py``): ``UdpServer`` routes
datagrams to sessions through the core's ``Listener`` (one socket serves every
sender; packets are routed by connection ID), admits new ones, shields itself
from INITIAL floods with a socket filter, and gives freed memory back (``quiet.trim_heap_soon``); ``serve``.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import ipaddress
import logging
import os
import socket
import struct
import time
from typing import Awaitable, Callable

from ..core.udp.endpoint import Listener
from ..core.udp.reassembly import MemoryBudget
from ..core.udp.session import UdpConfig
from ..errors import ErrorCode
from .sockets import bound_socket
from .quiet import trim_heap_soon
from .udp_link import UdpLink, _random_cid
from .udp_socket import DatagramSocket

log = logging.getLogger("ftx.udp")
SO_ATTACH_FILTER, SO_DETACH_FILTER = 26, 27  # Linux
SHIELD_PASS = 8  # of the token-less INITIALs a socket filter drops, 1 in this many reaches the Listener
SHIELD_HOLD = 2.0  # seconds a shield stays before it is lifted to see whether it is still needed
BUSY_LIMIT = 1000  # busy IPv4 addresses in the socket filter (2 of the 4 096 instructions allowed each)
BUSY_REFRESH = 0.5  # seconds between two looks at which addresses are busy


def _ipv4(host: str) -> int | None:
    """An IPv4 address as a 32-bit number (as a socket filter loads it), else None."""
    try:
        return int(ipaddress.IPv4Address(host))
    except ValueError:
        return None


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


class UdpServer:
    """The receiver's UDP socket: the Listener routes, each new session gets a link."""

    def __init__(self, sock: socket.socket, listener: Listener, on_session: Callable[[UdpLink], None]) -> None:
        self.listener = listener
        self.on_session = on_session
        self.links: dict[int, UdpLink] = {}
        self._woken: set[UdpLink] = set()
        self._drops = 0
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
        trim_heap_soon(asyncio.get_running_loop(), collect=True)

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
        for handle in (self._shield_handle, self._busy_handle):
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
