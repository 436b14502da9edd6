"""What sender and receiver connections share: framing, handshake, errors, output.

Input: ``get_buffer``/``buffer_updated`` (zero-copy, asyncio BufferedProtocol
style) or ``receive_data`` (copying), and ``receive_eof``.  Output:
``data_to_send`` (a list of bytes-like buffers, to be written in order, e.g.
with ``socket.sendmsg``) and ``next_event``.  No I/O, no clock.

After a RemoteProtocolError the connection queues an ERROR frame for the peer,
enters the error state and re-raises; every later call raises too.
"""

from __future__ import annotations

from collections import deque

from ..errors import (
    ErrorCode,
    FtxError,
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
    VersionMismatch,
)
from .config import Config
from .events import Event, HandshakeComplete, PeerFailed
from .frames import (
    FRAME_TYPES,
    HANDSHAKE_MAX_PAYLOAD,
    BufferBudget,
    BufferLimit,
    BufferWait,
    Frame,
    FrameDecoder,
    FrameType,
    PauseInput,
    encode_frame,
)
from .secure import AuthError
from .secure.handshake import printable
from .messages import MAGIC, PROTOCOL_VERSION, ROLE_SENDER, ErrorMessage, Hello
from .record import replace
from .states import FileState, In

HANDSHAKE_FRAME = 0x10  # the first frame of a peer that requires authentication (protocol.md)
SNIFF_BYTES = 64  # how much of a foreign peer's first bytes an error quotes
_SMALL_FILE = FrameType.SMALL_FILE  # (_drain_frames compares by identity)


class Connection:
    role: int = 0
    transitions: dict = {}
    _paused = False  # the receiver's budget cannot take the next frame's small file yet (ReceiverConnection)

    def __init__(self, config: Config | None = None, hello_flags: int = 0,
                 budget: BufferBudget | None = None) -> None:
        self.config = config or Config()
        self._decoder = FrameDecoder(budget=budget)
        self._out: list = []
        self._out_bytes = 0
        self._events: deque[Event] = deque()
        self._views_queued = False  # an event in _events may hold a view into the decoder's buffer
        self._files: dict[int, FileState] = {}
        self.peer: Hello | None = None
        self.closed = False  # DONE exchanged, or an ERROR sent/received
        self._error: FtxError | None = None
        self._head: bytes | None = b""  # the peer's first bytes, until they look like ftx
        self._inbuf: memoryview | None = None
        self._arriving = 0  # see bytes_arriving
        hello = Hello(self.role, self.config.max_payload, hello_flags, self.config.agent,
                      sender_id=self.config.sender_id if self.role == ROLE_SENDER else b"",
                      summary=self.config.summary if self.role == ROLE_SENDER else b"",
                      transfer_id=self.config.transfer_id if self.role == ROLE_SENDER else b"",
                      result_run=self.config.result_run and self.role == ROLE_SENDER)
        self._send_frame(FrameType.HELLO, hello.encode())

    # -- input -------------------------------------------------------------
    def get_buffer(self, want: int = 0) -> memoryview:
        """Where the next input bytes go (``want``: bytes ready to place at once; FrameDecoder).  Events still queued whose payloads are views into
        the input buffer take their own copies first: filling the buffer may move or overwrite
        the bytes under them (the common driver drains every event first, and copies nothing).
        Out of buffer memory: ERROR BUSY is queued, and raised."""
        self._check_usable()
        self._own_queued_views()
        try:
            buf = self._decoder.get_buffer(want)
        except BufferWait:
            raise  # not now (nothing changed): the driver waits for small files to settle, then asks again
        except BufferLimit as exc:
            self._fail_local(exc)
        if self._head is not None:
            self._inbuf = buf
        return buf

    def _own_queued_views(self) -> None:
        if self._views_queued:
            if self._events:
                buf = self._decoder.buffer
                self._events = deque(_owning(e, buf) for e in self._events)
            self._views_queued = False

    @property
    def buffer_budget(self) -> BufferBudget | None:
        """The receiver's --max-memory budget this connection's buffers count in (None: unlimited)."""
        return self._decoder.budget

    def trim_buffers(self) -> None:
        """The peer is quiet: give back buffer memory that pending bytes do not need."""
        self._own_queued_views()
        self._decoder.trim()

    def release_buffers(self) -> None:
        """The connection is over: free the input buffer (and its share of the budget)."""
        self._own_queued_views()
        self._decoder.release()

    @property
    def file_data_moved(self) -> int:
        """Grows whenever file data arrives: bytes of DATA and SMALL_FILE frames, whole or in
        part, and of sealed records still on their way into such a frame (``bytes_arriving``).
        What the stall timeout watches (PINGs and other frames leave it as it is); a measure to
        compare, not a byte count (a sealed record's bytes count once arriving, once opened)."""
        return self._decoder.file_bytes + self._arriving

    def bytes_arriving(self, nbytes: int) -> None:
        """``nbytes`` more of the frame being received arrived but are not in its buffer yet (a
        sealed record read straight into its place, not opened yet): progress if it is file data."""
        if self._decoder.in_file_frame:
            self._arriving += nbytes

    def buffer_updated(self, nbytes: int) -> None:
        self._check_usable()
        if self._head is not None and self._inbuf is not None:
            self._head += bytes(self._inbuf[: min(nbytes, SNIFF_BYTES - len(self._head))])
            self._inbuf = None
            self._decoder.buffer_updated(nbytes)
            self._guard(self._sniff)
        else:
            self._decoder.buffer_updated(nbytes)
        self._drain_frames()

    def input_sealed(self) -> None:
        """The bytes fed from now on were opened from AEAD records (protocol.md 20.2): DATA chunks
        are taken with the checksum their authenticated sender stated, not hashed again."""
        self._decoder.verify_chunks = False

    def receive_data(self, data) -> None:
        """Copying input path: events carry their own copies of chunk bytes."""
        self._check_usable()
        self._decoder.copy_payloads = True
        view = memoryview(data)
        while view:
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def receive_eof(self) -> None:
        """The peer closed its side.  Raises if that cut a frame or the session short.

        That is a lost connection (TransportError), not a protocol violation; a
        peer that only half-closed still reads, so it gets an ERROR saying why.
        """
        if self._error is not None or self.closed:
            return
        try:
            self._decoder.receive_eof()
        except RemoteProtocolError as exc:
            self._fail_local(TransportError(f"peer {exc}", ErrorCode.PROTOCOL))
        when = "before its HELLO" if self.peer is None else "before the transfer finished"
        self._fail_local(TransportError(f"peer closed the connection {when}", ErrorCode.PROTOCOL))

    def _sniff(self) -> None:
        """Refuse a peer that is not ftx by its first bytes, before any frame limit fires.

        An ftx peer's first bytes are a frame header (a defined type, flags 0,
        reserved 0, a length within the 64 KiB handshake limit) and, if it is the
        HELLO it should be, the magic.  An HTTP server's "HTTP/1.1 ...", an SSH
        banner or a TLS record fails on its first byte.  (An ftx frame other than
        HELLO is a protocol error of an ftx peer, reported as such later.)
        """
        head = self._head
        if head[:1] == bytes([HANDSHAKE_FRAME]) and head[1:4] == b"\0\0\0"[: len(head) - 1]:
            if len(head) < 8:
                return  # a HANDSHAKE frame header, so far: wait for its length
            if int.from_bytes(head[4:8], "big") <= HANDSHAKE_MAX_PAYLOAD:
                self._head = None
                self._fail_local(AuthError("the peer requires authentication; this side runs --insecure"))
        ok = not head or head[0] in FRAME_TYPES
        ok = ok and (len(head) < 4 or head[1:4] == b"\0\0\0")
        ok = ok and (len(head) < 8 or int.from_bytes(head[4:8], "big") <= HANDSHAKE_MAX_PAYLOAD)
        why = ""
        if ok and head[:1] == b"\x01" and len(head) >= 20 and head[16:20] != MAGIC:
            ok, why = False, "bad HELLO magic; "
        if not ok:
            self._head = None
            raise RemoteProtocolError(f"peer does not speak ftx ({why}it sent {_quote(head)})")
        if len(head) >= 20 or (head[:1] != b"\x01" and len(head) >= 8):
            self._head = None  # looks like ftx: the frame layer takes over

    def _drain_frames(self) -> None:
        # after an ERROR, sent or received, the session is over: later input is dropped
        try:  # (as _guard, once around the loop rather than twice per frame)
            while self._error is None and not self._paused and (frame := self._decoder.next_frame()) is not None:
                if frame.type is _SMALL_FILE and self.peer is not None:  # many small files: straight on
                    self._on_frame(frame)
                    continue
                # DATA is the one frame whose payload reaches an event as a view (other payloads
                # are decoded into objects of their own, SMALL_FILE's bytes copied)
                if frame.type == FrameType.DATA and not self._decoder.copy_payloads:
                    self._views_queued = True
                self._dispatch(frame)
        except PauseInput:  # (a receiver) no room for its item yet: it is the next frame again
            self._decoder.unread(frame)
            self._paused = True
        except RemoteProtocolError as exc:
            self._fail_local(exc)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except RemoteProtocolError as exc:
            self._fail_local(exc)

    def _fail_local(self, exc: FtxError) -> None:
        """Tell the peer why we give up, then raise ``exc`` to our driver."""
        if self._error is None and not self.closed:
            self._send_frame(FrameType.ERROR, ErrorMessage(exc.code, str(exc)).encode())
        self._error = exc
        raise exc

    def _dispatch(self, frame: Frame) -> None:
        if frame.type == FrameType.ERROR:
            msg = ErrorMessage.decode(frame.payload)
            text = printable(msg.message)  # the peer's words reach terminals and logs: escaped, capped
            self._error = RemoteProtocolError(f"peer error {msg.code}: {text}", ErrorCode.ABORTED)
            self.closed = True
            self._events.append(PeerFailed(msg.code, text))
            return
        if frame.type == FrameType.HELLO:
            if self.peer is not None:
                raise RemoteProtocolError("second HELLO")
            self._on_hello(Hello.decode(frame.payload))
            return
        if self.peer is None:
            raise RemoteProtocolError(f"{frame.type.name} before HELLO")
        if frame.type == FrameType.PING:
            self._send_frame(FrameType.PONG, bytes(frame.payload[:8]))
            return
        if frame.type == FrameType.PONG:
            return
        self._on_frame(frame)

    def _on_hello(self, hello: Hello) -> None:
        expected = 3 - self.role
        if hello.role != expected:
            raise RemoteProtocolError("both peers claim the same role")
        if min(hello.version, PROTOCOL_VERSION) < 1:
            raise VersionMismatch(f"peer speaks protocol version {hello.version}, we need >= 1")
        if hello.max_payload < 64 * 1024:
            raise RemoteProtocolError("peer announced a maximum payload below 64 KiB")
        self.peer = hello
        self._decoder.set_max_payload(self.config.max_payload)
        self._events.append(HandshakeComplete(min(hello.version, PROTOCOL_VERSION), hello.agent, hello.flags, hello.max_payload))

    def _on_frame(self, frame: Frame) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- per-file state ----------------------------------------------------
    def _step(self, file_id: int, inp: In, remote: bool) -> FileState:
        state = self._files.get(file_id)
        try:
            new = self.transitions[state, inp]
        except KeyError:
            where = state.name if state else "unknown file"
            err = RemoteProtocolError if remote else LocalProtocolError
            raise err(f"{inp.value} not allowed for file {file_id} in state {where}") from None
        self._files[file_id] = new
        return new

    def file_state(self, file_id: int) -> FileState | None:
        return self._files.get(file_id)

    # -- output ------------------------------------------------------------
    def _send_frame(self, ftype: FrameType, payload: bytes = b"") -> None:
        frame = encode_frame(ftype, payload)
        self._out.append(frame)
        self._out_bytes += len(frame)

    def _send_buffers(self, *bufs) -> None:
        self._out.extend(bufs)
        self._out_bytes += sum(len(b) for b in bufs)

    def data_to_send(self) -> list:
        out, self._out, self._out_bytes = self._out, [], 0
        return out

    @property
    def pending_output(self) -> int:
        return self._out_bytes

    def next_event(self) -> Event | None:
        """The next event.  A payload in it (chunk or small-file bytes) may be a view into the
        input buffer: it stays valid until the next ``get_buffer`` call after it was taken."""
        return self._events.popleft() if self._events else None

    @property
    def events_pending(self) -> bool:
        return bool(self._events)

    @property
    def paused(self) -> bool:
        """(A receiver) a small file did not fit in the budget: its frame waits in the input buffer
        and no frame is decoded, so the driver should read nothing more; ``resume`` once settling
        (here or on another connection) may have given bytes back."""
        return self._paused

    @property
    def views_pending(self) -> bool:
        """An event still queued may hold a view into the input buffer (a DATA chunk): the
        driver should drain events before it asks for the buffer again, or they are copied."""
        return self._views_queued and bool(self._events)

    def send_error(self, code: ErrorCode, message: str) -> None:
        """Give up on the whole session locally (e.g. out of disk), telling the peer."""
        if self._error is None and not self.closed:
            self._send_frame(FrameType.ERROR, ErrorMessage(code, message).encode())
            self._error = FtxError(message, code)
            self.closed = True

    def _check_usable(self) -> None:
        if self._error is not None and not self.closed:
            raise LocalProtocolError(f"connection already failed: {self._error}")

    def _require_open(self) -> None:
        if self._error is not None or self.closed:
            raise LocalProtocolError("connection is closed")
        if self.peer is None:
            raise LocalProtocolError("handshake not complete")


def _quote(head: bytes) -> str:
    """A peer's first bytes for a one-line message: its first line, oddities escaped."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r") or head
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in line[:40])
    return f"'{text}'" + ("..." if len(line) > 40 else "")


def _owning(event: Event, buf) -> Event:
    """``event``, or a copy of it whose payload no longer lives in ``buf``."""
    data = getattr(event, "data", None)
    if isinstance(data, memoryview) and data.obj is buf:
        return replace(event, data=bytes(data))
    return event
