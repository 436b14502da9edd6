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

Where the checks cover the whole tree and the named paths are directories, it waits for the
answers too (``ANSWER_WAIT`` at most): if the receiver holds every directory as we listed it (a
re-send of an unchanged tree), it finishes the send itself -- the items counted identical, the
named directories offered, END, the results and DONE -- and the command never loads asyncio
or the session (~10 ms of CPU that the receiver's listing had to share the two cores with).
At the first answer of a directory that differs it hands over, with what it read
(``HeadState.events``, which the session handles first).

It waits for the receiver's HELLO at most ``HELLO_WAIT`` seconds; a receiver slower than that
is left to the session, whose watchdog and messages are the usual ones (``Handover``: between
records, nothing half read).  Nothing here loads asyncio (tests/test_startup.py).  Errors are
those of a send without a head start; one after our HELLO is the session's to report, as its
read loop would have (``HeadState.failure``).  TCP only, authenticated by key or --insecure (a
pairing code's receiver asks its user first; TLS loads ssl), without --checksum or a receipt
(no directory checks).
"""

from __future__ import annotations

import os
import select
import time

from .core.events import DirStateReceived, FileResolved, HandshakeComplete, PeerFailed, SessionComplete
from .core.manifest import Kind
from .core.messages import DIR_SAME
from .core.sender import SenderConnection
from .errors import FtxError, PeerError, TransportError
from .prewalk import take_prewalk
from .securing import run_handshake_blocking, run_now
from .send_report import FileSendReport, SendReport, Tally, finished, settle
from .source import AHEAD_ITEMS, CHECKS_AHEAD, arguments, nonfile_entry, walk_groups
from .transport.sockets import connect_blocking
from .transport.tcp_sealed import SealedFeed

HELLO_WAIT = 1.0  # seconds the head start waits for the receiver's HELLO before the session takes over
ANSWER_WAIT = 1.0  # ... and for the answers to its checks, where it sent them all


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
        self.walked = False  # the walk ended within ``ahead``: every directory was checked
        self.events: list = []  # taken from ``conn`` here: the session handles them first, in order
        self.failure: FtxError | None = None  # after our HELLO: the session fails with it
        self.report: SendReport | None = None  # the send's, where it was done here (an unchanged tree)
        self.started = time.monotonic()  # (the report's seconds, where it is done here)
        self.local = True  # the receiver runs on this machine (same_host)


def eligible(plan) -> bool:
    return (not plan.udp and plan.config.quick_check and plan.receipt is None
            and plan.auth.mode in ("key", "insecure"))


def begin(plan) -> HeadState | None:
    """The head start of a send planned as ``plan`` (send_args.SendPlan), where it has one
    (``eligible``); None otherwise: connected, authenticated, HELLOs exchanged, the first
    checks sent.  Raises what a send without it raises before its session: bad arguments or
    credentials (before connecting), cannot connect, the handshake failed."""
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
    state.local = same_host(sock)
    _until_handover(state, _hello_and_checks, plan, state)
    return state


def conclude(plan, state: HeadState, progress=None) -> None:
    """Where the checks sent cover the whole tree: wait for their answers, and if the receiver
    holds every directory as we listed it, do the rest of the send here (``state.report``;
    ``progress``: as the session's).  Otherwise the session goes on from what was read."""
    if state.failure is None and not state.conn.closed:
        _until_handover(state, _conclude, plan, state, progress)


def same_host(sock) -> bool:
    """Whether the receiver runs on this machine, as far as its address tells: a loopback
    address, or the one we connected from.  Then it lists on the cores this process has, and
    the send waits for its answers (``conclude``) before it loads anything more (cli.send)."""
    try:
        peer, own = sock.getpeername()[0], sock.getsockname()[0]
    except (OSError, IndexError):
        return True
    return peer == own or peer.startswith(("127.", "::ffff:127.")) or peer == "::1"


def _until_handover(state: HeadState, step, *args) -> None:
    """``step(*args)``; a ``Handover`` leaves the rest to the session, as does an error after our
    HELLO: as the session's read loop, the peer is told (the core queued an ERROR frame) and the
    session fails with it when it takes over (``HeadState.failure``)."""
    try:
        step(*args)
    except Handover:
        pass
    except FtxError as exc:
        state.failure = exc
        _tell_peer(state)


def _tell_peer(state: HeadState) -> None:
    """Send what the core queued after an error of ours (its ERROR frame), if the link still takes it."""
    try:
        run_now(state.link.send(state.conn.data_to_send()))
    except FtxError:
        pass


def _hello_and_checks(plan, state: HeadState) -> None:
    conn, link = state.conn, state.link
    run_now(link.send(conn.data_to_send()))  # our HELLO
    link.deadline = time.monotonic() + min(HELLO_WAIT, plan.idle_timeout)
    while not conn.events_pending and not conn.closed:  # until the receiver's HELLO (or ERROR)
        run_now(link.feed(conn))
    if conn.quick_check and not conn.closed:
        _check_ahead(plan, state)


def _conclude(plan, state: HeadState, progress) -> None:
    if _answered_same(plan, state):
        state.report = _finish_unchanged(plan, state, progress)


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
            state.walked = True
            break
        did = None
        if group.checkable:
            did = conn.check_dir(group.dir.wire, group.count, group.digest())
        state.ahead.append((group, did))
        items += group.count
    run_now(link.send(conn.data_to_send()))


def _answered_same(plan, state: HeadState) -> bool:
    """Whether the receiver holds every directory of the tree as we listed it: the walk ended
    within the checks sent, the named arguments are directories, and every answer is DIR_SAME.
    Waits for the answers until the first other one or event, or ANSWER_WAIT (``Handover``);
    what it reads stays in ``state.events`` for the session."""
    if not state.walked or not state.ahead:
        return False
    (first, _), rest = state.ahead[0], state.ahead[1:]  # first: the named arguments' group
    if first.dir is not None or any(item.kind != Kind.DIR for item in first.items) \
            or any(did is None for _group, did in rest):
        return False
    conn, link = state.conn, state.link
    wanted = {did for _group, did in rest}
    link.deadline = time.monotonic() + min(ANSWER_WAIT, plan.idle_timeout)
    while True:
        while (ev := conn.next_event()) is not None:
            state.events.append(ev)
            if ev.__class__ is DirStateReceived and ev.state == DIR_SAME:
                wanted.discard(ev.dir_id)
            elif ev.__class__ is not HandshakeComplete:  # a directory that differs, an ERROR, ...
                return False
        if not wanted:
            return True
        if conn.closed:
            return False
        if conn.pending_output:  # (a PONG)
            run_now(link.send(conn.data_to_send()))
        run_now(link.feed(conn))


def _finish_unchanged(plan, state: HeadState, progress) -> SendReport | None:
    """The rest of a send whose every directory the receiver holds as we listed it, as the
    session does it (sending.SendSession) but with nothing to stream: each directory's items
    counted identical (``Tally.unchanged``), the named directories offered (their modes and
    mtimes are set again), END; then their results and SESSION_COMPLETE.  None, with nothing
    sent: a directory listed again for the report changed since its check (the session sends
    it).  Errors from here on end the send with its report, as the session's do."""
    conn, link, tally = state.conn, state.link, Tally()
    (first, _), rest = state.ahead[0], state.ahead[1:]
    for group, _did in rest:
        group.state = DIR_SAME
    for group, _did in rest:
        if not tally.unchanged(group, tally.add):
            return None
    if progress is not None:
        for report in tally.listed:
            progress.end_file(report)
    offered = {}
    failure = None
    try:
        for item in first.items:
            fid = conn.offer(nonfile_entry(item, plan.config.chunk_size))
            offered[fid] = FileSendReport(os.fsdecode(item.wire), "dir", 0)
        conn.finish()
        run_now(link.send(conn.data_to_send()))
        timeout = plan.idle_timeout
        done = False
        while not done:
            link.deadline = link.last_recv + timeout  # (as the session's Watchdog: the receiver's silence)
            try:
                run_now(link.feed(conn))
            except Handover:
                raise TransportError.silent(timeout) from None
            while (ev := conn.next_event()) is not None:
                if ev.__class__ is FileResolved:
                    report = offered.pop(ev.result.file_id, None)
                    if report is not None:
                        settle(report, ev.result)
                        tally.add(report)
                        if progress is not None:
                            progress.end_file(report)
                elif ev.__class__ is SessionComplete:
                    done = True
                elif ev.__class__ is PeerFailed:
                    raise PeerError.of_receiver(ev.message, ev.code)
            if conn.pending_output:  # (a PONG)
                run_now(link.send(conn.data_to_send()))
    except FtxError as exc:
        failure = exc
        _tell_peer(state)  # why, as the session's read loop does
    except Exception as exc:  # a bug (or a named directory gone): reported, as the session does
        failure = FtxError(f"internal error: {exc!r}")
    finally:
        link.close()
    report = tally.final(offered.values(), "tcp", round(time.monotonic() - state.started, 6), failure)
    return finished(report, link, state.established)
