"""Runs a sans-I/O ``Handshake`` (ftx/core/secure) over a link, then seals the link.

Transport-neutral: the link gives ``send``, ``recv_raw``, ``install_keys`` and
``handshake_done`` (TcpLink, UdpLink).  The loop is the one in the
``Handshake`` docstring::

    send what the handshake has to say; install keys once our part is all sent;
    stop when the peer's part is consumed; else feed it what arrives.

Besides HANDSHAKE frames, two plaintext frames can arrive where the peer's
handshake should be, and each gets a one-line explanation:

* an ERROR frame: the peer refused us (code AUTH: "unknown key", "wrong code"...)
  or failed otherwise -> ``AuthError`` / ``PeerError`` with its reason;
* a HELLO frame: the peer runs ``--insecure`` -> ``AuthError`` saying plaintext
  needs ``--insecure`` on both sides (and the peer is told why).

Memory: the bytes a peer sends during its handshake may be held (by this pump, by
the handshake, by OpenSSL for a TLS message in progress: a TLS handshake may send
up to 256 KiB), and OpenSSL allocates a message's announced length before its bytes
come (up to ``PREALLOC``: its default max_cert_list, for an encrypted client
Certificate; a ClientHello is checked before, ftx/core/secure/tls.py).  On a
receiver this counts in ``--max-memory``, in the budget of the record openers'
buffers (``BufferBudget``): a connection that has received more than
``HANDSHAKE_FREE`` bytes holds what it received plus ``PREALLOC`` from the budget,
and gives it all back when the handshake ends; one that would exceed the budget
fails with BUSY.  The free allowance is what real handshakes need (their
certificates included), so a flood of stalled large handshakes cannot keep a
legitimate sender out.

The driver reads frame headers only at frame boundaries of the peer's
handshake; a sealed record's header starts with 0x00 or 0x80, so it is never
taken for one of these.

``run_handshake_blocking`` runs the same pump over a link whose calls block (a
send's head start, ftx/head_start.py, before asyncio is loaded).
"""

from __future__ import annotations

import time

from .core.frames import HEADER as FRAME_HEADER
from .core.frames import HEADER_SIZE as FRAME_HEADER_SIZE
from .core.frames import BufferBudget, BufferLimit, FrameDecoder, FrameType, encode_frame
from .core.messages import ErrorMessage
from .core.secure import AuthError, Established, Handshake
from .core.secure.handshake import printable
from .errors import ErrorCode, FtxError, PeerError, RemoteProtocolError, TransportError

HANDSHAKE_FRAME = 0x10  # protocol.md: the HANDSHAKE frame type (reserved range 0x10-0x1F)
MAX_HANDSHAKE_PAYLOAD = 16384
MAX_ERROR_PAYLOAD = 4096
MAX_UNCONSUMED = 4 * (FRAME_HEADER_SIZE + MAX_HANDSHAKE_PAYLOAD)  # bytes of the peer's handshake held at once
HANDSHAKE_FREE = 16 * 1024  # handshake bytes a connection receives before it draws on the memory budget
PREALLOC = 100 * 1024  # what OpenSSL may allocate ahead for one announced message (max_cert_list)

INSECURE_PEER = "the peer runs --insecure; plaintext needs --insecure on both sides"
TOLD_INSECURE_PEER = "this peer requires authentication; plaintext needs --insecure on both sides"


async def run_handshake(link, hs: Handshake, timeout: float, budget: BufferBudget | None = None) -> Established:
    """Authenticate the peer over ``link`` with ``hs`` within ``timeout`` seconds, and seal the link.

    ``budget`` (a receiver's ``--max-memory`` share): what the peer's handshake bytes
    may hold beyond ``HANDSHAKE_FREE``, given back when the handshake ends.

    Raises ``AuthError`` (the peer failed to prove itself, refused us, or runs
    --insecure), ``PeerError`` (the peer failed otherwise), ``TransportError``
    (connection lost; code TIMEOUT when the time ran out), ``BufferLimit`` (the
    budget is spent) or ``RemoteProtocolError`` (malformed handshake).
    """
    import asyncio

    pump = _Pump(link, hs, budget)
    try:
        return await asyncio.wait_for(pump.run(), timeout)
    except asyncio.TimeoutError:
        raise await _timed_out(link, timeout) from None
    finally:
        pump.release()


def run_handshake_blocking(link, hs: Handshake, timeout: float) -> Established:
    """``run_handshake`` over a link whose calls block (``blocking``: ftx/head_start.py's), without
    an event loop: the pump's coroutine never suspends there, so it runs to its end in one step.
    The link raises TimeoutError once ``timeout`` seconds have passed since ``link.deadline``
    was set here; the errors are ``run_handshake``'s."""
    link.deadline = time.monotonic() + timeout
    try:
        return run_now(_Pump(link, hs).run())
    except TimeoutError:
        raise run_now(_timed_out(link, timeout)) from None


async def _timed_out(link, timeout: float) -> TransportError:
    exc = TransportError(f"the handshake did not finish within {timeout:g} s", ErrorCode.TIMEOUT)
    await _tell(link, exc.code, str(exc))
    return exc


def run_now(coro):
    """The result of a coroutine that does not suspend (one that awaits only a blocking link)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a blocking link's coroutine suspended")


async def within(link, aw, seconds: float):
    """``await aw`` for ``seconds`` at most (asyncio.TimeoutError after).  A blocking link bounds
    its own calls (its socket's timeout), and no event loop runs there."""
    if getattr(link, "blocking", False):
        return await aw
    import asyncio

    return await asyncio.wait_for(aw, seconds)


class _Pump:
    def __init__(self, link, hs: Handshake, budget: BufferBudget | None = None) -> None:
        self.link = link
        self.hs = hs
        self.budget = budget
        self.received = 0  # handshake bytes the peer sent
        self.charged = 0  # of them, taken from ``budget``
        self.installed = False
        self.held = bytearray()  # received, not yet consumed by the handshake
        self.scan = 0  # offset in ``held`` past the whole HANDSHAKE frames seen

    async def run(self) -> Established:
        link, hs = self.link, self.hs
        while True:
            await self._flush()
            if hs.done:
                break
            data = await link.recv_raw()
            if not data:
                raise TransportError("the peer closed the connection during the handshake")
            try:
                self._account(len(data))
            except BufferLimit as exc:
                raise await self._fail(exc) from None
            self.held += data
            if len(self.held) > MAX_UNCONSUMED:
                raise await self._fail(RemoteProtocolError("peer handshake message too large"))
            try:
                whole = self._scan()
            except _Mismatch:
                await _tell(link, ErrorCode.AUTH, TOLD_INSECURE_PEER)
                raise AuthError(INSECURE_PEER) from None
            except RemoteProtocolError as exc:
                raise await self._fail(exc) from None
            if not whole:
                continue  # no whole frame yet
            try:
                used = hs.receive(bytes(self.held[:whole]), time.monotonic())
            except FtxError:  # the handshake queued its refusal: send it, then raise
                await self._send_refusal()
                raise
            del self.held[:used]
            self.scan = max(0, self.scan - used)
        await self._flush()
        link.handshake_done(bytes(self.held))
        return hs.result

    def _account(self, n: int) -> None:
        """``n`` more bytes from the peer: beyond ``HANDSHAKE_FREE`` they draw on the budget."""
        self.received += n
        if self.received <= HANDSHAKE_FREE or self.budget is None:
            return
        want = self.received + PREALLOC - self.charged
        if want <= 0:
            return
        if not self.budget.take(want):
            raise self.budget.refusal("handshake memory")
        self.charged += want

    def release(self) -> None:
        """The handshake is over (done or failed): what it held goes back to the budget."""
        if self.budget is not None and self.charged:
            self.budget.give(self.charged)
        self.charged = 0

    async def _flush(self) -> None:
        out = self.hs.data_to_send()
        if out:
            await self.link.send([out])
        if self.hs.keys_ready and not self.installed:
            self.link.install_keys(self.hs.result)
            self.installed = True

    async def _send_refusal(self) -> None:
        """The handshake's refusal: sealed when the peer provably holds our keys (its last
        message opened under the handshake keys: ``refusal_sealable``), so that it knows the
        refusal is ours; else a plaintext ERROR, unsealed even if our keys are installed."""
        out = self.hs.data_to_send()
        if not out:
            return
        if self.installed and getattr(self.hs, "refusal_sealable", False):
            try:
                await within(self.link, self.link.send([out]), 1.0)
            except Exception:
                pass
            return
        await _send_plain(self.link, out)

    def _scan(self) -> int:
        """How many bytes at the start of ``held`` the handshake may see: whole HANDSHAKE
        frames (it never gets half a frame, so frame boundaries stay known here).  Raises
        for a peer's ERROR (once whole) or HELLO at a frame boundary; anything else is
        handed on for the handshake to judge (it consumes nothing past its own part)."""
        held = self.held
        pos = self.scan
        while pos + FRAME_HEADER_SIZE <= len(held):
            ftype, flags, reserved, length, _ = FRAME_HEADER.unpack_from(held, pos)
            if flags or reserved:
                return len(held)
            end = pos + FRAME_HEADER_SIZE + length
            if ftype == HANDSHAKE_FRAME:
                if length > MAX_HANDSHAKE_PAYLOAD:
                    raise RemoteProtocolError(f"HANDSHAKE frame of {length} bytes exceeds {MAX_HANDSHAKE_PAYLOAD}")
                if end > len(held):
                    break
                pos = self.scan = end
                continue
            if pos > 0 and ftype in (FrameType.HELLO, FrameType.ERROR):
                return pos  # the handshake first: on UDP the peer's (already opened) HELLO may follow it
            if ftype == FrameType.HELLO:
                raise _Mismatch(INSECURE_PEER)
            if ftype == FrameType.ERROR and length <= MAX_ERROR_PAYLOAD:
                if end > len(held):
                    break
                raise _peer_error(bytes(held[pos:end]))
            return len(held)
        return pos

    async def _fail(self, exc: FtxError) -> FtxError:
        await _tell(self.link, exc.code, str(exc))
        return exc


class _Mismatch(Exception):
    """A plaintext HELLO where the peer's handshake should be."""


def _peer_error(frame: bytes) -> FtxError:
    """The peer's ERROR frame as our exception (its checksum and layout checked)."""
    decoder = FrameDecoder()
    try:
        decoder.feed(frame)
        msg = ErrorMessage.decode(decoder.next_frame().payload)
    except FtxError as exc:
        return RemoteProtocolError(f"malformed ERROR frame during the handshake: {exc}")
    reason = printable(msg.message)  # from a peer not yet proven: no line breaks or escapes reach a terminal
    if msg.code == ErrorCode.AUTH:
        return AuthError(f"peer refused: {reason}")
    return PeerError(f"peer error: {reason}", msg.code if isinstance(msg.code, ErrorCode) else None)


async def _tell(link, code: ErrorCode, message: str) -> None:
    """Best effort: one ERROR frame to the peer, unsealed.  During the handshake no record of
    ours has gone out yet, so a plaintext ERROR is what the peer can read (protocol.md 18.1)."""
    await _send_plain(link, encode_frame(FrameType.ERROR, ErrorMessage(code, message).encode()))


async def _send_plain(link, frame: bytes) -> None:
    try:
        send = getattr(link, "send_plain", link.send)
        await within(link, send([frame]), 1.0)
    except Exception:
        pass
