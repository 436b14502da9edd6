"""A send's head start: before ``ftx send`` loads asyncio and the session (some 15 ms), it
connects, authenticates, exchanges HELLOs and sends the first directory checks with blocking
calls, so that the receiver lists those directories while this process is still loading.

A re-send of an unchanged tree is start-up, handshake and the receiver's listing of every
directory (20 000 entries: ~25 ms of its CPU); begun here, that listing overlaps the rest of
the sender's start.  ``begin`` drives the code the session runs -- the handshake pump
(ftx/securing.py), the connection state machine (core/sender.py), the record layer
(transport/tcp_sealed.py) -- over ``BlockingLink``: the same calls on a blocking socket, whose
coroutines never suspend (``securing.run_now``).  The session takes over where it stopped
(``TcpLink.taking_over``, ``SendSession(head=...)``): the frames on the wire are those of a send
without a head start, in the same order, only sooner (its checks in one write, not 8 a write).

It waits for the receiver's HELLO at most ``HELLO_WAIT`` seconds; a receiver slower than that
is left to the session, whose watchdog and messages are the usual ones (``Handover``: between
records, nothing half read).  Nothing here loads asyncio (tests/test_startup.py).  Errors are
those of a send without a head start; one after our HELLO is the session's to report, as its
read loop would have (``HeadState.failure``).  TCP only, authenticated by key or --insecure (a
pairing code's receiver asks its user first; TLS loads ssl), without --checksum or a receipt
(no directory checks).
"""

from __future__ import annotations

import select
import time

from .core.sender import SenderConnection
from .errors import FtxError, TransportError
from .prewalk import take_prewalk
from .securing import run_handshake_blocking, run_now
from .source import AHEAD_ITEMS, CHECKS_AHEAD, arguments, walk_groups
from .transport.sockets import connect_blocking
from .transport.tcp_sealed import SealedFeed

HELLO_WAIT = 1.0  # seconds the head start waits for the receiver's HELLO before the session takes over


class Handover(Exception):
    """The head start would wait longer for the receiver: the session goes on from here."""


class BlockingLink(SealedFeed):
    """``TcpLink``'s handshake, send and feed calls on a blocking socket (no event loop yet).
    ``deadline``: when a wait for the peer gives up (TimeoutError in the handshake; after it,
    ``Handover``)."""

    blocking = True  # (securing.within: no asyncio.wait_for here)

    def __init__(self, sock, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.bytes_in = self.bytes_out = 0
        self.last_recv = self.last_send = time.monotonic()
        self._keys = self._sealer = self._opener = self._rest = None

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    # -- the handshake (securing._Pump) ------------------------------------------------
    async def recv_raw(self) -> bytes:
        self.sock.settimeout(self._left())
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError as exc:
            raise TransportError(f"connection lost: {exc.strerror or exc}") from exc
        self.last_recv = time.monotonic()
        self.bytes_in += len(data)
        return data

    # -- sending -------------------------------------------------------------------------
    async def send(self, bufs: list) -> None:
        if not bufs:
            return
        if self._sealer is not None:
            for view in self._sealer.seal_buffers(bufs):
                self._send_all(view)
        else:
            self._send_all(b"".join(bufs))

    async def send_plain(self, bufs: list) -> None:
        self._send_all(b"".join(bufs))

    def _send_all(self, data) -> None:
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise TransportError(f"connection lost while sending: {exc.strerror or exc}") from exc
        self.last_send = time.monotonic()
        self.bytes_out += len(data)

    # -- reading after the handshake (SealedFeed's host) ---------------------------------
    async def feed(self, conn) -> None:
        self.sock.setblocking(False)  # a read that would wait goes through _readable
        if self._opener is not None:
            return await self._feed_sealed(conn)
        await self._feed_plain(conn)

    async def _readable(self, conn, trim: bool = True) -> None:
        """Until the socket is readable.  Between records (``trim``): ``Handover`` at the deadline;
        inside a record read into its place, a TransportError (a receiver's HELLO is one small
        record: that is an odd peer)."""
        try:
            ready = select.select([self.sock], [], [], self._left())[0]
        except TimeoutError:
            ready = []
        if ready:
            return
        if trim:
            raise Handover
        raise TransportError("connection lost: the receiver stopped inside a record")

    def _wake_at(self, wanted: int, room: int) -> None:
        """(SO_RCVLOWAT stays the kernel's default, 1 byte, as a new TcpLink expects.)"""

    def _established(self, conn) -> None:
        """(A receiver's admission callback: none on a sender.)"""


class HeadState:
    """Where the head start left the send: the session goes on from here."""

    def __init__(self, link: BlockingLink, conn: SenderConnection, established, top: list) -> None:
        self.link = link
        self.conn = conn
        self.established = established
        self.top = top  # the named arguments (source.arguments)
        self.walk = None  # the walk (source.walk_groups) once begun
        self.ahead: list[tuple] = []  # (DirGroup, dir_id of its CHECK_DIR or None), in walk order
        self.failure: FtxError | None = None  # after our HELLO: the session fails with it


def eligible(plan) -> bool:
    return (not plan.udp and plan.config.quick_check and plan.receipt is None
            and plan.auth.mode in ("key", "insecure"))


def begin(plan) -> HeadState | None:
    """The head start of a send planned as ``plan`` (send_args.SendPlan), where it has one
    (``eligible``); None otherwise.  Raises what a send without it raises before its session:
    bad arguments or credentials (before connecting), cannot connect, the handshake failed."""
    if not eligible(plan):
        return None
    from .security_setup import sender_handshake

    top = arguments(plan.names)  # bad arguments fail before connecting (as client.send_over_network)
    hs = sender_handshake(plan.auth, plan.host, plan.port)  # bad credentials too
    try:
        sock = connect_blocking(plan.host, plan.port, plan.idle_timeout)
    except OSError as exc:  # what connect_blocking does not name itself (as client.send_over_network)
        raise TransportError(f"cannot connect to {plan.host} port {plan.port}: {exc.strerror or exc}") from exc
    try:
        link = BlockingLink(sock, plan.idle_timeout)
        est = run_handshake_blocking(link, hs, plan.idle_timeout) if hs is not None else None
    except BaseException:
        sock.close()
        raise
    conn = SenderConnection(plan.config)
    state = HeadState(link, conn, est, top)
    try:
        run_now(link.send(conn.data_to_send()))  # our HELLO
        link.deadline = time.monotonic() + min(HELLO_WAIT, plan.idle_timeout)
        while not conn.events_pending and not conn.closed:  # until the receiver's HELLO (or ERROR)
            run_now(link.feed(conn))
        if conn.quick_check and not conn.closed:
            _check_ahead(plan, state)
    except Handover:
        pass
    except FtxError as exc:  # as the session's read loop: the peer is told (the core queued an
        state.failure = exc  # ERROR frame), and the session fails with it when it takes over
        try:
            run_now(link.send(conn.data_to_send()))
        except FtxError:
            pass
    return state


def _check_ahead(plan, state: HeadState) -> None:
    """The walk's first groups, each checkable directory's CHECK_DIR made (as the session's
    ``_send_all`` fills its window: at most CHECKS_AHEAD) and all written at once."""
    conn, link = state.conn, state.link
    walk = state.walk = walk_groups(plan.names, plan.links, state.top, take_prewalk(plan.names))
    items = 0
    window = plan.config.offer_window
    while len(state.ahead) < CHECKS_AHEAD and (not state.ahead or items < AHEAD_ITEMS) \
            and conn.checks_in_flight < window:
        group = next(walk, None)
        if group is None:
            break
        did = None
        if group.checkable:
            did = conn.check_dir(group.dir.wire, group.count, group.digest())
        state.ahead.append((group, did))
        items += group.count
    run_now(link.send(conn.data_to_send()))
