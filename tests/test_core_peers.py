"""SenderConnection and ReceiverConnection wired together in memory: whole sessions, bytes only."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.core import events as ev
from ftx.core.checksum import EMPTY_DIGEST, chunk_checksum, file_digest
from ftx.core.config import Config
from ftx.core.frames import DATA_HEADER, FrameDecoder, FrameType, encode_data_frame, encode_frame
from ftx.core.manifest import MIN_CHUNK_SIZE, FileEntry, Kind
from ftx.core.messages import (
    DECISION_DISCARDED,
    DECISION_EXISTS,
    HELLO_NO_RESUME,
    HELLO_OVERWRITE,
    HELLO_QUICK_CHECK,
    PROTOCOL_VERSION,
    ROLE_RECEIVER,
    ROLE_SENDER,
    Decision,
    ErrorMessage,
    FileEnd,
    FileNotice,
    Hello,
    Offer,
    Result,
    SmallFile,
)
from ftx.core.ranges import RangeSet
from ftx.core.receiver import ReceiverConnection
from ftx.core.record import replace
from ftx.core.sender import SenderConnection
from ftx.core.states import RECEIVER_TRANSITIONS, SENDER_TRANSITIONS, FileState, In
from ftx.errors import (
    ChecksumMismatch,
    ErrorCode,
    FrameTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
    VersionMismatch,
)

CS = MIN_CHUNK_SIZE  # 4096-byte chunks keep the sessions small
SMALL = 128 * 1024  # max_payload of most test connections (the decoder buffer is 2x that)


def cfg(**kw) -> Config:
    kw.setdefault("chunk_size", CS)
    kw.setdefault("max_payload", SMALL)
    return Config(**kw)


# -- in-memory wiring ------------------------------------------------------------------------
def _own(event):
    """Copy memoryview payloads out of an event (they die at the next get_buffer)."""
    if isinstance(event, (ev.ChunkReceived, ev.SmallFileReceived)) and not isinstance(event.data, bytes):
        return replace(event, data=bytes(event.data))
    return event


class Link:
    """A sender and a receiver; ``pump`` moves bytes both ways until both are quiet."""

    def __init__(self, sender_config=None, receiver_config=None, zero_copy=False, recv_sizes=(65536,)):
        self.s = SenderConnection(sender_config or cfg())
        self.r = ReceiverConnection(receiver_config or cfg())
        self.zero_copy = zero_copy
        self.recv_sizes = list(recv_sizes)
        self._k = 0
        self.s_events: list = []
        self.r_events: list = []

    def _deliver(self, src, dst, sink) -> bool:
        blob = b"".join(bytes(b) for b in src.data_to_send())
        if not blob:
            return False
        if self.zero_copy:
            pos = 0
            while pos < len(blob):
                buf = dst.get_buffer()
                n = min(len(buf), len(blob) - pos, self.recv_sizes[self._k % len(self.recv_sizes)])
                self._k += 1
                buf[:n] = blob[pos : pos + n]
                pos += n
                dst.buffer_updated(n)
                self._drain(dst, sink)
        else:
            dst.receive_data(blob)
        self._drain(dst, sink)
        return True

    @staticmethod
    def _drain(conn, sink) -> None:
        while (e := conn.next_event()) is not None:
            sink.append(_own(e))

    def to_receiver(self) -> bool:
        return self._deliver(self.s, self.r, self.r_events)

    def to_sender(self) -> bool:
        return self._deliver(self.r, self.s, self.s_events)

    def pump(self) -> None:
        for _ in range(1000):
            moved = self.to_receiver()
            moved = self.to_sender() or moved
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def take(self, side: str) -> list:
        lst = self.s_events if side == "s" else self.r_events
        out = list(lst)
        lst.clear()
        return out

    def handshake(self) -> "Link":
        self.pump()
        hs, hr = self.take("s"), self.take("r")
        assert len(hs) == 1 and isinstance(hs[0], ev.HandshakeComplete)
        assert len(hr) == 1 and isinstance(hr[0], ev.HandshakeComplete)
        return self


def linked(**kw) -> Link:
    return Link(**kw).handshake()


def decode_frames(bufs) -> list:
    d = FrameDecoder(max_payload=256 * 1024, copy_payloads=True)
    d.feed(b"".join(bytes(b) for b in bufs))
    out = []
    while (f := d.next_frame()) is not None:
        out.append(f)
    return out


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks_of(data: bytes, cs: int = CS) -> list[bytes]:
    return [data[i : i + cs] for i in range(0, len(data), cs)]


def of_type(events, cls):
    return [e for e in events if isinstance(e, cls)]


def finish_session(link: Link) -> None:
    link.s.finish()
    link.pump()
    assert of_type(link.take("s"), ev.SessionComplete) == [ev.SessionComplete()]
    assert of_type(link.take("r"), ev.SessionComplete) == [ev.SessionComplete()]
    assert link.s.closed and link.r.closed
    link.s.receive_eof()  # after a complete session EOF is fine
    link.r.receive_eof()


def send_file(link: Link, data: bytes, path=b"f", held: RangeSet | None = None):
    """offer -> decision -> chunks -> FILE_END; returns (file id, receiver events)."""
    entry = FileEntry(path, size=len(data), chunk_size=CS, mtime_ns=42, mode=0o640)
    fid = link.s.offer(entry)
    link.pump()
    (offered,) = link.take("r")
    assert offered == ev.FileOffered(fid, entry)
    link.r.decide(fid, held=held)
    link.pump()
    (dec,) = link.take("s")
    assert isinstance(dec, ev.DecisionReceived) and dec.decision.file_id == fid
    for i in dec.held.complement(0, entry.chunks).values():
        link.s.send_chunk(fid, i, chunks_of(data)[i])
    link.s.end_file(fid, file_digest(data))
    link.pump()
    return fid, entry, link.take("r")


# -- handshake -------------------------------------------------------------------------------
def test_handshake_events_and_flags():
    link = Link(
        Config(chunk_size=CS, resume=False, agent="snd/9", max_payload=1 << 20),
        Config(chunk_size=CS, overwrite=True, agent="rcv/8", max_payload=2 << 20),
    )
    link.pump()
    (hs,) = link.take("s")
    (hr,) = link.take("r")
    # both announce QUICK_CHECK: the sender allows it, the receiver takes CHECK_DIR
    assert hs == ev.HandshakeComplete(PROTOCOL_VERSION, "rcv/8", HELLO_OVERWRITE | HELLO_QUICK_CHECK, 2 << 20)
    assert hr == ev.HandshakeComplete(PROTOCOL_VERSION, "snd/9", HELLO_NO_RESUME | HELLO_QUICK_CHECK, 1 << 20)
    assert link.r.resume_allowed is False
    assert link.s.peer.role == ROLE_RECEIVER and link.r.peer.role == ROLE_SENDER


def test_resume_allowed_by_default():
    link = linked()
    assert link.r.resume_allowed is True


def test_hello_is_queued_at_construction():
    s = SenderConnection()
    (f,) = decode_frames(s.data_to_send())
    assert f.type == FrameType.HELLO
    h = Hello.decode(f.payload)
    assert (h.role, h.version, h.max_payload) == (ROLE_SENDER, PROTOCOL_VERSION, Config().max_payload)
    assert s.data_to_send() == [] and s.pending_output == 0


def test_ping_is_answered_with_pong():
    link = linked()
    link.r.receive_data(encode_frame(FrameType.PING, b"12345678"))
    frames = decode_frames(link.r.data_to_send())
    assert [(f.type, f.payload) for f in frames] == [(FrameType.PONG, b"12345678")]
    link.s.receive_data(encode_frame(FrameType.PONG, b"12345678"))  # ignored
    assert link.s.next_event() is None


# -- whole sessions --------------------------------------------------------------------------
def test_small_file_session():
    link = linked()
    data = content(1000)
    entry = FileEntry(b"dir/small.txt", size=len(data), chunk_size=CS)
    fid = link.s.send_small_file(entry, data, file_digest(data))
    assert link.s.file_state(fid) == FileState.ENDED
    link.pump()
    (got,) = link.take("r")
    assert got == ev.SmallFileReceived(fid, entry, file_digest(data), data)
    assert link.r.file_state(fid) == FileState.ENDED
    link.r.file_result(fid, ErrorCode.OK, file_digest(data))
    assert link.r.file_state(fid) is None
    link.pump()
    (res,) = link.take("s")
    assert res == ev.FileResolved(Result(fid, ErrorCode.OK, file_digest(data), ""))
    assert link.s.file_state(fid) is None
    finish_session(link)


def test_empty_small_file():
    link = linked()
    fid = link.s.send_small_file(FileEntry(b"e", size=0, chunk_size=CS), b"", EMPTY_DIGEST)
    link.pump()
    (got,) = link.take("r")
    assert got.file_id == fid and got.data == b"" and got.digest == EMPTY_DIGEST


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("size", [1, CS - 1, CS, CS + 1, 5 * CS + 17])
def test_multi_chunk_file(size, zero_copy):
    link = linked(zero_copy=zero_copy, recv_sizes=[1000, 7, 65536])
    data = content(size, size)
    fid, entry, revents = send_file(link, data, path=b"a/b/c.bin")
    chunks = of_type(revents, ev.ChunkReceived)
    assert [c.index for c in chunks] == list(range(entry.chunks))
    for c in chunks:
        assert c.file_id == fid
        assert c.offset == c.index * CS
        assert c.checksum == chunk_checksum(c.data)
    assert b"".join(c.data for c in chunks) == data
    assert revents[-1] == ev.FileDataComplete(fid, file_digest(data))
    assert len(revents) == len(chunks) + 1
    link.r.file_result(fid, ErrorCode.OK, file_digest(data))
    link.pump()
    (res,) = link.take("s")
    assert res.result.file_id == fid and res.result.ok
    finish_session(link)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 70000), min_size=1, max_size=6),
    file_sizes=st.lists(st.integers(0, 6 * CS), min_size=1, max_size=4),
)
def test_many_files_zero_copy_any_recv_sizes(sizes, file_sizes):
    link = linked(zero_copy=True, recv_sizes=sizes)
    datas = [content(n, i) for i, n in enumerate(file_sizes)]
    fids = [link.s.offer(FileEntry(b"f%d" % i, size=len(d), chunk_size=CS)) for i, d in enumerate(datas)]
    link.pump()
    assert [e.file_id for e in link.take("r")] == fids
    for fid in fids:
        link.r.decide(fid)
    link.pump()
    assert [e.decision.file_id for e in link.take("s")] == fids
    # interleave the files' chunks
    rounds = max(len(chunks_of(d)) for d in datas)
    for i in range(rounds):
        for fid, d in zip(fids, datas):
            if i < len(chunks_of(d)):
                link.s.send_chunk(fid, i, chunks_of(d)[i])
    for fid, d in zip(fids, datas):
        link.s.end_file(fid, file_digest(d))
    link.pump()
    revents = link.take("r")
    rebuilt = {fid: bytearray(len(d)) for fid, d in zip(fids, datas)}
    for e in of_type(revents, ev.ChunkReceived):
        rebuilt[e.file_id][e.offset : e.offset + len(e.data)] = e.data
    assert [e.file_id for e in of_type(revents, ev.FileDataComplete)] == fids
    assert {fid: bytes(b) for fid, b in rebuilt.items()} == {fid: d for fid, d in zip(fids, datas)}
    for fid in fids:
        link.r.file_result(fid, ErrorCode.OK)
    finish_session(link)


def test_empty_file_zero_chunks():
    link = linked()
    entry = FileEntry(b"empty", size=0, chunk_size=CS)
    assert entry.chunks == 0
    fid = link.s.offer(entry)
    link.pump()
    link.take("r")
    link.r.decide(fid)
    link.pump()
    (dec,) = link.take("s")
    assert dec.held == RangeSet()
    with pytest.raises(LocalProtocolError):
        link.s.send_chunk(fid, 0, b"")
    link.s.end_file(fid, EMPTY_DIGEST)
    link.pump()
    assert link.take("r") == [ev.FileDataComplete(fid, EMPTY_DIGEST)]
    link.r.file_result(fid, ErrorCode.OK, EMPTY_DIGEST)
    finish_session(link)


@pytest.mark.parametrize(
    "entry",
    [FileEntry(b"some/dir", Kind.DIR, mode=0o755), FileEntry(b"some/link", Kind.SYMLINK, target=b"../x")],
    ids=["dir", "symlink"],
)
def test_directory_and_symlink_entries(entry):
    link = linked()
    fid = link.s.offer(entry)
    link.pump()
    assert link.take("r") == [ev.FileOffered(fid, entry)]
    with pytest.raises(LocalProtocolError):
        link.r.decide(fid)  # only regular files get a decision
    link.r.file_result(fid, ErrorCode.OK)
    link.pump()
    assert link.take("s") == [ev.FileResolved(Result(fid, ErrorCode.OK))]
    finish_session(link)


def test_resume_decision_arrives_intact():
    link = linked()
    data = content(8 * CS + 5, 3)
    held = RangeSet([(0, 2), (5, 7)])
    entry = FileEntry(b"big", size=len(data), chunk_size=CS)
    fid = link.s.offer(entry)
    link.pump()
    link.take("r")
    existing = file_digest(b"old")
    link.r.decide(fid, held=RangeSet(held), held_digest=0xDEADBEEF, flags=DECISION_EXISTS | DECISION_DISCARDED,
                  existing_digest=existing, message="partial found")
    link.pump()
    (dec,) = link.take("s")
    assert dec.decision == Decision(fid, DECISION_EXISTS | DECISION_DISCARDED, existing, 0xDEADBEEF, held, "partial found")
    assert dec.held == held
    missing = list(held.complement(0, entry.chunks).values())
    assert missing == [2, 3, 4, 7, 8]
    for i in missing:
        link.s.send_chunk(fid, i, chunks_of(data)[i])
    link.s.end_file(fid, file_digest(data))
    link.pump()
    revents = link.take("r")
    assert [e.index for e in of_type(revents, ev.ChunkReceived)] == missing
    assert revents[-1] == ev.FileDataComplete(fid, file_digest(data))


def test_resume_missing_chunk_then_file_end_is_a_violation():
    link = linked()
    data = content(4 * CS, 4)
    fid = link.s.offer(FileEntry(b"f", size=len(data), chunk_size=CS))
    link.pump()
    link.r.decide(fid, held=RangeSet([(0, 2)]))
    link.pump()
    link.s.send_chunk(fid, 2, chunks_of(data)[2])  # chunk 3 never sent
    link.s.end_file(fid, file_digest(data))
    with pytest.raises(RemoteProtocolError, match="before all its chunks"):
        link.pump()
    assert _error_code(link.r) == ErrorCode.PROTOCOL


def test_restart():
    link = linked()
    data = content(3 * CS, 5)
    fid = link.s.offer(FileEntry(b"f", size=len(data), chunk_size=CS))
    link.pump()
    link.take("r")
    link.r.decide(fid, held=RangeSet([(0, 3)]))  # everything held: nothing to send
    link.pump()
    link.take("s")
    link.s.restart_file(fid, "source changed since")
    assert link.s.file_state(fid) == FileState.SENDING
    link.pump()
    assert link.take("r") == [ev.FileRestarted(fid)]
    assert link.r.file_state(fid) == FileState.SENDING
    for i, c in enumerate(chunks_of(data)):
        link.s.send_chunk(fid, i, c)
    link.s.end_file(fid, file_digest(data))
    link.pump()
    revents = link.take("r")
    assert [e.index for e in of_type(revents, ev.ChunkReceived)] == [0, 1, 2]
    assert revents[-1] == ev.FileDataComplete(fid, file_digest(data))


def test_restart_forgets_held_chunks():
    link = linked()
    data = content(2 * CS, 6)
    fid = link.s.offer(FileEntry(b"f", size=len(data), chunk_size=CS))
    link.pump()
    link.r.decide(fid, held=RangeSet([(0, 2)]))
    link.pump()
    link.s.restart_file(fid)
    link.s.end_file(fid, file_digest(data))  # nothing re-sent after the restart
    with pytest.raises(RemoteProtocolError, match="before all its chunks"):
        link.pump()


@pytest.mark.parametrize("how", ["skip", "abort"])
def test_skip_and_abort(how):
    link = linked()
    data = content(3 * CS, 7)
    fid = link.s.offer(FileEntry(b"f", size=len(data), chunk_size=CS))
    link.pump()
    link.take("r")
    link.r.decide(fid)
    link.pump()
    link.take("s")
    if how == "skip":
        link.s.skip_file(fid, ErrorCode.IDENTICAL, "same content")
        code, msg = ErrorCode.IDENTICAL, "same content"
    else:
        link.s.send_chunk(fid, 0, chunks_of(data)[0])
        link.s.abort_file(fid, ErrorCode.SOURCE_CHANGED, "file shrank")
        code, msg = ErrorCode.SOURCE_CHANGED, "file shrank"
    assert link.s.file_state(fid) == FileState.ENDED
    link.pump()
    revents = link.take("r")
    assert revents[-1] == ev.FileWithdrawn(fid, code, msg)
    assert link.r.file_state(fid) == FileState.ENDED
    link.r.file_result(fid, code, message=msg)
    link.pump()
    (res,) = link.take("s")
    assert res.result == Result(fid, code, message=msg)
    finish_session(link)


def test_refused_file():
    link = linked()
    fid = link.s.offer(FileEntry(b"exists", size=10, chunk_size=CS))
    link.pump()
    link.r.file_result(fid, ErrorCode.EXISTS, message="destination exists")
    link.pump()
    (res,) = link.take("s")
    assert res.result == Result(fid, ErrorCode.EXISTS, message="destination exists")
    assert not res.result.ok
    with pytest.raises(LocalProtocolError):
        link.s.send_chunk(fid, 0, bytes(10))
    finish_session(link)


def accepted_file(seed: int):
    """A linked pair with one 4-chunk file offered and accepted, events drained."""
    link = linked()
    data = content(4 * CS, seed)
    fid = link.s.offer(FileEntry(b"f", size=len(data), chunk_size=CS))
    link.pump()
    link.r.decide(fid)
    link.pump()
    link.take("r"), link.take("s")
    return link, data, chunks_of(data), fid


def test_receiver_fails_file_early_in_flight_data_is_dropped():
    link, data, cs, fid = accepted_file(seed=8)
    link.s.send_chunk(fid, 0, cs[0])
    link.to_receiver()
    assert [e.index for e in link.take("r")] == [0]
    # the receiver runs out of disk and fails the file ...
    link.r.file_result(fid, ErrorCode.STORAGE, message="disk full")
    assert link.r.file_state(fid) == FileState.FAILED
    # ... while the sender, not knowing yet, keeps sending
    link.s.send_chunk(fid, 1, cs[1])
    link.s.send_chunk(fid, 2, cs[2])
    link.s.send_chunk(fid, 3, cs[3])
    link.s.end_file(fid, file_digest(data))
    link.to_receiver()
    assert link.take("r") == []  # dropped silently
    assert link.r.file_state(fid) is None  # FILE_END closed it
    link.to_sender()
    assert link.take("s") == [ev.FileResolved(Result(fid, ErrorCode.STORAGE, message="disk full"))]
    finish_session(link)


def test_receiver_fails_file_early_sender_learns_before_finishing():
    link, data, cs, fid = accepted_file(seed=9)
    link.s.send_chunk(fid, 0, cs[0])
    link.r.file_result(fid, ErrorCode.STORAGE, message="disk full")
    link.pump()
    assert link.take("s") == [ev.FileResolved(Result(fid, ErrorCode.STORAGE, message="disk full"))]
    assert link.take("r") == []  # chunk 0 arrived after the failure
    assert link.s.file_state(fid) is None
    with pytest.raises(LocalProtocolError):
        link.s.send_chunk(fid, 1, cs[1])
    with pytest.raises(LocalProtocolError):
        link.s.end_file(fid, file_digest(data))
    with pytest.raises(LocalProtocolError):
        link.r.file_result(fid, ErrorCode.STORAGE)  # the result was already given
    assert link.r.file_state(fid) == FileState.FAILED
    finish_session(link)  # a FAILED file counts as resolved


def test_done_only_after_every_file_has_its_result():
    link = linked()
    d1, d2 = content(CS + 1, 1), content(10, 2)
    f1 = link.s.offer(FileEntry(b"one", size=len(d1), chunk_size=CS))
    f2 = link.s.send_small_file(FileEntry(b"two", size=len(d2), chunk_size=CS), d2, file_digest(d2))
    f3 = link.s.offer(FileEntry(b"three", Kind.DIR))
    link.s.finish()
    link.s.finish()  # idempotent: one DONE frame
    link.pump()
    assert {type(e) for e in link.take("r")} == {ev.FileOffered, ev.SmallFileReceived}
    assert not link.r.closed
    link.r.decide(f1)
    link.r.file_result(f2, ErrorCode.OK)
    link.r.file_result(f3, ErrorCode.OK)
    link.pump()
    assert not of_type(link.take("r"), ev.SessionComplete)
    assert not of_type(link.take("s"), ev.SessionComplete)
    for i, c in enumerate(chunks_of(d1)):
        link.s.send_chunk(f1, i, c)
    link.s.end_file(f1, file_digest(d1))
    link.pump()
    assert of_type(link.take("r"), ev.FileDataComplete) == [ev.FileDataComplete(f1, file_digest(d1))]
    assert not link.r.closed and not link.s.closed
    link.r.file_result(f1, ErrorCode.OK, file_digest(d1))
    assert link.r.closed
    assert link.r.next_event() == ev.SessionComplete()
    assert link.r.next_event() is None
    link.pump()
    s_events = link.take("s")
    assert s_events[-1] == ev.SessionComplete() and len(of_type(s_events, ev.SessionComplete)) == 1
    assert link.s.closed
    with pytest.raises(LocalProtocolError):
        link.s.offer(FileEntry(b"late", size=1, chunk_size=CS))


def test_offer_after_finish_is_local_error():
    link = linked()
    link.s.finish()
    with pytest.raises(LocalProtocolError):
        link.s.offer(FileEntry(b"late", size=1, chunk_size=CS))


def test_empty_session():
    link = linked()
    finish_session(link)


@pytest.mark.parametrize("who", ["sender", "receiver"])
def test_error_frame_becomes_peer_failed(who):
    link = linked()
    a, b = (link.s, link.r) if who == "sender" else (link.r, link.s)
    a.send_error(ErrorCode.STORAGE, "disk full")
    assert a.closed
    a.send_error(ErrorCode.INTERNAL, "again")  # only the first one goes out
    frames = decode_frames(a.data_to_send())
    assert [f.type for f in frames] == [FrameType.ERROR]
    b.receive_data(b"".join(encode_frame(f.type, f.payload) for f in frames))
    assert b.next_event() == ev.PeerFailed(ErrorCode.STORAGE, "disk full")
    assert b.closed
    b.receive_eof()  # the session is over: EOF is expected now
    assert b.data_to_send() == []  # no ERROR answered to an ERROR


def test_nothing_is_processed_after_a_received_error():
    link = linked()
    blob = (
        encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.STORAGE, "x").encode())
        + encode_frame(FrameType.OFFER, Offer(0, FileEntry(b"d", Kind.DIR)).encode())
        + encode_frame(FrameType.PING, b"12345678")
    )
    try:
        link.r.receive_data(blob)
    except LocalProtocolError:
        pass
    assert link.r.next_event() == ev.PeerFailed(ErrorCode.STORAGE, "x")
    assert link.r.next_event() is None
    assert link.r.data_to_send() == []


def test_nothing_is_processed_after_send_error():
    link = linked()
    link.r.send_error(ErrorCode.STORAGE, "disk full")
    try:
        link.r.receive_data(
            encode_frame(FrameType.PING, b"abcdefgh")
            + encode_frame(FrameType.OFFER, Offer(0, FileEntry(b"d", Kind.DIR)).encode())
        )
    except LocalProtocolError:
        pass
    assert [f.type for f in decode_frames(link.r.data_to_send())] == [FrameType.ERROR]
    assert link.r.next_event() is None


def test_peer_failed_with_unknown_code():
    link = linked()
    link.s.receive_data(encode_frame(FrameType.ERROR, ErrorMessage(4242, "future").encode()))
    assert link.s.next_event() == ev.PeerFailed(4242, "future")


# -- protocol violations ---------------------------------------------------------------------
def _error_code(conn):
    """The code of the single ERROR frame conn queued (after its HELLO, if still pending)."""
    frames = [f for f in decode_frames(conn.data_to_send()) if f.type != FrameType.HELLO]
    assert [f.type for f in frames][-1:] == [FrameType.ERROR], frames
    assert len(frames) == 1 or all(f.type != FrameType.ERROR for f in frames[:-1])
    return ErrorMessage.decode(frames[-1].payload).code


def _assert_dead(conn):
    with pytest.raises(LocalProtocolError):
        conn.receive_data(encode_frame(FrameType.PING, b""))
    with pytest.raises(LocalProtocolError):
        conn.get_buffer()
    assert conn.data_to_send() == []  # no second ERROR


def receiver_with_file(size=3 * CS, decided=True):
    link = linked()
    data = content(size, 10)
    fid = link.s.offer(FileEntry(b"f", size=size, chunk_size=CS))
    link.pump()
    link.take("r")
    if decided:
        link.r.decide(fid)
        link.pump()
        link.take("s")
    link.r.data_to_send()
    return link, fid, data


def sender_hello(**kw):
    return encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 1 << 20, **kw).encode())


def receiver_hello(**kw):
    return encode_frame(FrameType.HELLO, Hello(ROLE_RECEIVER, 1 << 20, **kw).encode())


def _remote_violation(conn, blob, match=None, exc=RemoteProtocolError, code=ErrorCode.PROTOCOL):
    with pytest.raises(exc, match=match):
        conn.receive_data(blob)
    assert _error_code(conn) == code
    _assert_dead(conn)


def test_data_for_unknown_file():
    link, fid, data = receiver_with_file()
    _remote_violation(link.r, encode_data_frame(fid + 1, 0, data[:CS]), "unknown file")


def test_data_before_decision():
    link, fid, data = receiver_with_file(decided=False)
    _remote_violation(link.r, encode_data_frame(fid, 0, data[:CS]), "OFFERED")


@pytest.mark.parametrize("index", [3, 4, 2**32, 2**64 - 1])
def test_chunk_index_out_of_range(index):
    link, fid, data = receiver_with_file()
    _remote_violation(link.r, encode_data_frame(fid, index, data[:CS]), "beyond the end")


@pytest.mark.parametrize("index,length", [(0, CS - 1), (0, CS + 1), (0, 0), (2, CS)])
def test_chunk_wrong_length(index, length):
    link, fid, data = receiver_with_file(size=2 * CS + 100)
    _remote_violation(link.r, encode_data_frame(fid, index, bytes(length)), "wrong length")


def test_last_chunk_right_length_accepted():
    link, fid, data = receiver_with_file(size=2 * CS + 100)
    link.r.receive_data(encode_data_frame(fid, 2, bytes(100)))
    (e,) = [link.r.next_event()]
    assert (e.index, e.offset, bytes(e.data)) == (2, 2 * CS, bytes(100))


def test_file_end_before_all_chunks():
    link, fid, data = receiver_with_file()
    link.r.receive_data(encode_data_frame(fid, 0, data[:CS]))
    link.r.receive_data(encode_data_frame(fid, 2, data[2 * CS :]))
    _remote_violation(link.r, encode_frame(FrameType.FILE_END, FileEnd(fid, file_digest(data)).encode()), "before all")


def test_corrupted_chunk_is_a_checksum_error():
    link, fid, data = receiver_with_file()
    bad = bytearray(encode_data_frame(fid, 0, data[:CS]))
    bad[-1] ^= 1
    _remote_violation(link.r, bytes(bad), exc=ChecksumMismatch, code=ErrorCode.CHECKSUM)


def test_offer_before_hello():
    r = ReceiverConnection()
    offer = encode_frame(FrameType.OFFER, Offer(0, FileEntry(b"f", size=1)).encode())
    _remote_violation(r, offer, "before HELLO")


@pytest.mark.parametrize("ftype", [FrameType.DATA, FrameType.PING, FrameType.DONE])
def test_other_frames_before_hello(ftype):
    s = SenderConnection()
    blob = encode_data_frame(0, 0, b"x") if ftype == FrameType.DATA else encode_frame(ftype)
    _remote_violation(s, blob, "before HELLO")


def test_second_hello():
    link = linked()
    _remote_violation(link.r, sender_hello(), "second HELLO")


def test_hello_same_role():
    r = ReceiverConnection()
    _remote_violation(r, receiver_hello(), "same role")


def test_hello_version_zero():
    r = ReceiverConnection()
    _remote_violation(r, sender_hello(version=0), exc=VersionMismatch, code=ErrorCode.VERSION)


def test_hello_newer_version_negotiates_down():
    r = ReceiverConnection()
    r.receive_data(sender_hello(version=PROTOCOL_VERSION + 5, agent="future"))
    e = r.next_event()
    assert e == ev.HandshakeComplete(PROTOCOL_VERSION, "future", 0, 1 << 20)


def test_hello_small_max_payload():
    r = ReceiverConnection()
    blob = encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 64 * 1024 - 1).encode())
    _remote_violation(r, blob, "below 64 KiB")


def test_hello_bad_magic():
    r = ReceiverConnection()
    blob = encode_frame(FrameType.HELLO, b"XXXX" + Hello(ROLE_SENDER, 1 << 20).encode()[4:])
    _remote_violation(r, blob, "magic")


def test_duplicate_file_id():
    link, fid, data = receiver_with_file(decided=False)
    blob = encode_frame(FrameType.OFFER, Offer(fid, FileEntry(b"g", size=5, chunk_size=CS)).encode())
    _remote_violation(link.r, blob, "reused")


def test_duplicate_file_id_via_small_file():
    link, fid, data = receiver_with_file()
    sf = SmallFile(fid, FileEntry(b"g", size=1, chunk_size=CS), file_digest(b"x"), b"x")
    _remote_violation(link.r, encode_frame(FrameType.SMALL_FILE, sf.encode()), "reused")


def test_file_id_reusable_after_done():
    link = linked()
    entry = FileEntry(b"d", Kind.DIR)
    link.r.receive_data(encode_frame(FrameType.OFFER, Offer(7, entry).encode()))
    link.r.file_result(7, ErrorCode.OK)
    link.r.receive_data(encode_frame(FrameType.OFFER, Offer(7, entry).encode()))
    assert [link.r.next_event(), link.r.next_event()] == [ev.FileOffered(7, entry), ev.FileOffered(7, entry)]


def test_offer_after_done():
    link = linked()
    link.r.receive_data(encode_frame(FrameType.OFFER, Offer(0, FileEntry(b"d", Kind.DIR)).encode()))
    link.r.receive_data(encode_frame(FrameType.DONE))
    _remote_violation(link.r, encode_frame(FrameType.OFFER, Offer(1, FileEntry(b"e", Kind.DIR)).encode()), "after DONE")


def test_second_done():
    link = linked()
    link.r.receive_data(encode_frame(FrameType.OFFER, Offer(0, FileEntry(b"d", Kind.DIR)).encode()))
    link.r.receive_data(encode_frame(FrameType.DONE))
    _remote_violation(link.r, encode_frame(FrameType.DONE), "second DONE")


def test_small_file_must_be_a_regular_file():
    link = linked()
    sf = SmallFile(0, FileEntry(b"d", Kind.DIR), EMPTY_DIGEST, b"")
    _remote_violation(link.r, encode_frame(FrameType.SMALL_FILE, sf.encode()), "regular file")


def test_small_file_length_mismatch():
    link = linked()
    good = SmallFile(0, FileEntry(b"g", size=3, chunk_size=CS), file_digest(b"abc"), b"abc").encode()
    _remote_violation(link.r, encode_frame(FrameType.SMALL_FILE, good + b"!"), "does not match")


@pytest.mark.parametrize(
    "ftype",
    [FrameType.DECISION, FrameType.RESULT],
)
def test_receiver_only_frames_sent_to_receiver(ftype):
    link = linked()
    payload = Decision(0).encode() if ftype == FrameType.DECISION else Result(0, ErrorCode.OK).encode()
    _remote_violation(link.r, encode_frame(ftype, payload), "not sent by a sender")


@pytest.mark.parametrize(
    "ftype,payload",
    [
        (FrameType.OFFER, Offer(0, FileEntry(b"f", size=1)).encode()),
        (FrameType.FILE_END, FileEnd(0, EMPTY_DIGEST).encode()),
        (FrameType.SKIP, FileNotice(0).encode()),
        (FrameType.SMALL_FILE, SmallFile(0, FileEntry(b"f"), EMPTY_DIGEST, b"").encode()),
    ],
    ids=lambda x: x.name if isinstance(x, FrameType) else "",
)
def test_sender_only_frames_sent_to_sender(ftype, payload):
    link = linked()
    _remote_violation(link.s, encode_frame(ftype, payload), "not sent by a receiver")


def test_data_sent_to_sender():
    link = linked()
    _remote_violation(link.s, encode_data_frame(0, 0, b"x"), "not sent by a receiver")


def test_decision_for_unknown_file():
    link = linked()
    _remote_violation(link.s, encode_frame(FrameType.DECISION, Decision(5).encode()), "awaits none")


def test_decision_for_directory():
    link = linked()
    fid = link.s.offer(FileEntry(b"d", Kind.DIR))
    _remote_violation(link.s, encode_frame(FrameType.DECISION, Decision(fid).encode()), "awaits none")


def test_second_decision():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", size=CS, chunk_size=CS))
    link.s.receive_data(encode_frame(FrameType.DECISION, Decision(fid).encode()))
    assert isinstance(link.s.next_event(), ev.DecisionReceived)
    _remote_violation(link.s, encode_frame(FrameType.DECISION, Decision(fid).encode()), "SENDING")


def test_decision_holds_chunks_beyond_the_end():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", size=3 * CS, chunk_size=CS))
    blob = encode_frame(FrameType.DECISION, Decision(fid, held=RangeSet([(0, 4)])).encode())
    _remote_violation(link.s, blob, "beyond the end")


def test_decision_holding_all_chunks_is_fine():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", size=3 * CS, chunk_size=CS))
    link.s.receive_data(encode_frame(FrameType.DECISION, Decision(fid, held=RangeSet([(0, 3)])).encode()))
    assert link.s.next_event().held == RangeSet([(0, 3)])


def test_decision_for_small_file():
    link = linked()
    fid = link.s.send_small_file(FileEntry(b"f", size=1, chunk_size=CS), b"x", file_digest(b"x"))
    _remote_violation(link.s, encode_frame(FrameType.DECISION, Decision(fid).encode()), "ENDED")


def test_result_for_unknown_file():
    link = linked()
    _remote_violation(link.s, encode_frame(FrameType.RESULT, Result(3, ErrorCode.OK).encode()), "unknown file")


def test_second_result():
    link = linked()
    fid = link.s.offer(FileEntry(b"d", Kind.DIR))
    link.s.receive_data(encode_frame(FrameType.RESULT, Result(fid, ErrorCode.OK).encode()))
    assert isinstance(link.s.next_event(), ev.FileResolved)
    _remote_violation(link.s, encode_frame(FrameType.RESULT, Result(fid, ErrorCode.OK).encode()), "unknown file")


def test_done_from_receiver_too_early():
    link = linked()
    _remote_violation(link.s, encode_frame(FrameType.DONE), "DONE before")


def test_done_from_receiver_with_file_pending():
    link = linked()
    link.s.offer(FileEntry(b"d", Kind.DIR))
    link.s.finish()
    link.s.data_to_send()
    _remote_violation(link.s, encode_frame(FrameType.DONE), "DONE before")


def test_frame_larger_than_own_limit():
    link = Link(receiver_config=Config(chunk_size=CS, max_payload=100_000)).handshake()
    header = encode_data_frame(0, 0, bytes(100_000))[:16]
    _remote_violation(link.r, header, exc=FrameTooLarge, code=ErrorCode.TOO_LARGE)


@pytest.mark.parametrize("side", ["s", "r"])
def test_eof_mid_session(side):
    link = linked()
    conn = link.s if side == "s" else link.r
    with pytest.raises(TransportError, match="before the transfer finished"):
        conn.receive_eof()
    assert _error_code(conn) == ErrorCode.PROTOCOL


def test_eof_mid_frame():
    link = linked()
    link.r.receive_data(encode_frame(FrameType.PING, b"abcdefgh")[:10])
    with pytest.raises(TransportError, match="middle of a frame"):
        link.r.receive_eof()
    assert _error_code(link.r) == ErrorCode.PROTOCOL


def test_violation_in_zero_copy_path():
    link, fid, data = receiver_with_file()
    blob = memoryview(encode_data_frame(fid, 9, data[:CS]))
    with pytest.raises(RemoteProtocolError, match="beyond the end"):
        while blob:  # region by region, as the TCP driver fills them
            buf = link.r.get_buffer()
            n = min(len(buf), len(blob))
            buf[:n] = blob[:n]
            blob = blob[n:]
            link.r.buffer_updated(n)
    assert _error_code(link.r) == ErrorCode.PROTOCOL
    _assert_dead(link.r)


def test_frames_after_a_violation_are_not_processed():
    link, fid, data = receiver_with_file()
    blob = encode_data_frame(fid + 5, 0, data[:CS]) + encode_data_frame(fid, 0, data[:CS])
    with pytest.raises(RemoteProtocolError):
        link.r.receive_data(blob)
    assert link.r.next_event() is None


# -- local API misuse ------------------------------------------------------------------------
def test_api_before_handshake():
    s, r = SenderConnection(), ReceiverConnection()
    with pytest.raises(LocalProtocolError):
        s.offer(FileEntry(b"f", size=1))
    with pytest.raises(LocalProtocolError):
        s.finish()
    with pytest.raises(LocalProtocolError):
        r.decide(0)
    with pytest.raises(LocalProtocolError):
        r.file_result(0, ErrorCode.OK)


def test_send_small_file_before_handshake():
    s = SenderConnection()
    with pytest.raises(LocalProtocolError):
        s.send_small_file(FileEntry(b"f", size=1), b"x", file_digest(b"x"))


def test_send_chunk_before_decision():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", size=CS, chunk_size=CS))
    with pytest.raises(LocalProtocolError, match="OFFERED"):
        link.s.send_chunk(fid, 0, bytes(CS))
    assert link.s.file_state(fid) == FileState.OFFERED
    assert [f.type for f in decode_frames(link.s.data_to_send())] == [FrameType.OFFER]


def test_end_file_twice():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", size=0, chunk_size=CS))
    link.pump()
    link.r.decide(fid)
    link.pump()
    link.s.end_file(fid, EMPTY_DIGEST)
    with pytest.raises(LocalProtocolError, match="ENDED"):
        link.s.end_file(fid, EMPTY_DIGEST)
    with pytest.raises(LocalProtocolError):
        link.s.send_chunk(fid, 0, b"")
    with pytest.raises(LocalProtocolError):
        link.s.skip_file(fid, ErrorCode.IDENTICAL)


def test_send_chunk_checks():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", size=CS + 10, chunk_size=CS))
    link.pump()
    link.r.decide(fid)
    link.pump()
    link.s.data_to_send()
    for index, data in [(2, bytes(10)), (-1, bytes(CS)), (0, bytes(CS - 1)), (1, bytes(CS))]:
        with pytest.raises(LocalProtocolError):
            link.s.send_chunk(fid, index, data)
    with pytest.raises(LocalProtocolError):
        link.s.send_chunk(fid + 1, 0, bytes(CS))
    assert link.s.data_to_send() == []
    link.s.send_chunk(fid, 1, bytes(10))
    frames = decode_frames(link.s.data_to_send())
    assert [f.type for f in frames] == [FrameType.DATA]


def test_send_chunk_unframed_records_but_sends_nothing():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", size=CS, chunk_size=CS))
    link.pump()
    link.r.decide(fid)
    link.pump()
    link.s.send_chunk(fid, 0, bytes(CS), framed=False)
    assert link.s.data_to_send() == [] and link.s.pending_output == 0
    assert link.s.file_state(fid) == FileState.SENDING
    link.s.send_chunk(fid, 0, bytes(CS), checksum=12345)
    assert link.s.pending_output == 16 + 24 + CS
    blob = b"".join(bytes(b) for b in link.s.data_to_send())
    # the given checksum is what goes on the wire, unchecked by the sender
    assert DATA_HEADER.unpack_from(blob, 16) == (fid, 0, 0, 12345)


def test_send_chunk_with_wrong_given_checksum_is_caught_by_receiver():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", size=CS, chunk_size=CS))
    link.pump()
    link.r.decide(fid)
    link.pump()
    link.s.send_chunk(fid, 0, bytes(CS), checksum=12345)
    with pytest.raises(ChecksumMismatch):
        link.pump()


def test_decide_and_result_misuse():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", size=CS, chunk_size=CS))
    link.pump()
    with pytest.raises(LocalProtocolError):
        link.r.decide(fid + 1)
    link.r.decide(fid)
    with pytest.raises(LocalProtocolError):
        link.r.decide(fid)  # twice
    link.r.file_result(fid, ErrorCode.STORAGE)
    with pytest.raises(LocalProtocolError):
        link.r.file_result(fid, ErrorCode.STORAGE)  # twice
    with pytest.raises(LocalProtocolError):
        link.r.file_result(99, ErrorCode.OK)


def test_offer_chunk_size_above_receivers_limit():
    link = Link(receiver_config=Config(max_payload=64 * 1024)).handshake()
    with pytest.raises(LocalProtocolError, match="frame limit"):
        link.s.offer(FileEntry(b"f", size=1 << 20, chunk_size=1 << 20))
    link.s.offer(FileEntry(b"d", Kind.DIR, chunk_size=1 << 20))  # chunk size is moot for dirs


def test_small_file_misuse():
    link = Link(receiver_config=Config(max_payload=64 * 1024)).handshake()
    with pytest.raises(LocalProtocolError):
        link.s.send_small_file(FileEntry(b"f", size=2), b"x", file_digest(b"x"))
    with pytest.raises(LocalProtocolError):
        link.s.send_small_file(FileEntry(b"d", Kind.DIR), b"", EMPTY_DIGEST)
    with pytest.raises(LocalProtocolError, match="too large"):
        link.s.send_small_file(FileEntry(b"f", size=64 * 1024), bytes(64 * 1024), EMPTY_DIGEST)


# -- handshake limit vs. pipelined frames -----------------------------------------------------------
def test_hello_and_large_small_file_in_one_read():
    s, r = SenderConnection(), ReceiverConnection()
    s.receive_data(b"".join(r.data_to_send()))  # the sender knows the receiver; its HELLO is still queued
    assert isinstance(s.next_event(), ev.HandshakeComplete)
    data = content(64 * 1024, 1)  # a "small" file at the default small_file_limit
    fid = s.send_small_file(FileEntry(b"f", size=len(data)), data, file_digest(data))
    r.receive_data(b"".join(bytes(b) for b in s.data_to_send()))  # HELLO + SMALL_FILE in one read
    assert isinstance(r.next_event(), ev.HandshakeComplete)
    got = r.next_event()
    assert isinstance(got, ev.SmallFileReceived) and got.file_id == fid and bytes(got.data) == data


def test_hello_and_small_frames_in_one_read():
    """The same pipelining with frames under 64 KiB works."""
    s, r = SenderConnection(), ReceiverConnection()
    s.receive_data(b"".join(r.data_to_send()))
    s.next_event()
    data = content(1000, 2)
    fid = s.send_small_file(FileEntry(b"f", size=len(data)), data, file_digest(data))
    fid2 = s.offer(FileEntry(b"g", size=10))
    buf = r.get_buffer()
    blob = b"".join(bytes(b) for b in s.data_to_send())
    buf[: len(blob)] = blob
    r.buffer_updated(len(blob))
    assert isinstance(r.next_event(), ev.HandshakeComplete)
    got = r.next_event()
    assert got.file_id == fid and bytes(got.data) == data
    assert r.next_event().file_id == fid2


# -- the state tables ------------------------------------------------------------------------------
LOCAL = {"r": {In.DECISION, In.RESULT}, "s": {In.CHUNK, In.RESTART, In.END, In.SKIP, In.ABORT}}
TABLES = {"r": RECEIVER_TRANSITIONS, "s": SENDER_TRANSITIONS}


class StateHarness:
    """One file on one side of a connection; other side faked with hand-made frames.

    The file has one chunk, so DATA/FILE_END validity depends on the state alone
    (plus whether chunk 0 is held, which the model tracks).
    """

    FID = 3

    def __init__(self, side: str):
        self.side = side
        self.data = content(CS, 99)
        self.entry = FileEntry(b"f", size=CS, chunk_size=CS)
        if side == "r":
            self.conn = ReceiverConnection(cfg())
            self.conn.receive_data(sender_hello())
            self.conn.receive_data(encode_frame(FrameType.OFFER, Offer(self.FID, self.entry).encode()))
        else:
            self.conn = SenderConnection(cfg())
            self.conn.receive_data(receiver_hello())
            self.fid = self.conn.offer(self.entry)
            assert self.fid == 0
            self.FID = self.fid
        self.conn.data_to_send()
        self.state = FileState.OFFERED
        self.have = False

    def apply(self, inp: In) -> None:
        c, fid = self.conn, self.FID
        if self.side == "r":
            if inp == In.DECISION:
                c.decide(fid, held=RangeSet([(0, 1)]))
            elif inp == In.RESULT:
                c.file_result(fid, ErrorCode.STORAGE)
            elif inp == In.CHUNK:
                c.receive_data(encode_data_frame(fid, 0, self.data))
            elif inp == In.END:
                c.receive_data(encode_frame(FrameType.FILE_END, FileEnd(fid, file_digest(self.data)).encode()))
            else:
                ftype = {In.RESTART: FrameType.RESTART, In.SKIP: FrameType.SKIP, In.ABORT: FrameType.ABORT_FILE}[inp]
                c.receive_data(encode_frame(ftype, FileNotice(fid, ErrorCode.SOURCE_CHANGED).encode()))
        else:
            if inp == In.DECISION:
                c.receive_data(encode_frame(FrameType.DECISION, Decision(fid).encode()))
            elif inp == In.RESULT:
                c.receive_data(encode_frame(FrameType.RESULT, Result(fid, ErrorCode.OK).encode()))
            elif inp == In.CHUNK:
                c.send_chunk(fid, 0, self.data)
            elif inp == In.END:
                c.end_file(fid, file_digest(self.data))
            elif inp == In.RESTART:
                c.restart_file(fid)
            elif inp == In.SKIP:
                c.skip_file(fid, ErrorCode.IDENTICAL)
            else:
                c.abort_file(fid, ErrorCode.SOURCE_CHANGED, "gone")

    def visible(self, state):
        return None if state == FileState.DONE else state

    def step(self, inp: In) -> bool:
        """Feed one input, check it against the table; False once the connection is dead."""
        table = TABLES[self.side]
        key = (self.state, inp)
        ok = key in table
        if self.side == "r" and inp == In.END and self.state == FileState.SENDING and not self.have:
            ok = False  # not a table rule: FILE_END needs every chunk held
        local = inp in LOCAL[self.side]
        self.conn.data_to_send()
        if ok:
            self.apply(inp)
            self.state = table[key]
            if inp in (In.DECISION, In.CHUNK):
                self.have = True
            elif inp == In.RESTART and self.state == FileState.SENDING:
                self.have = False
            assert self.conn.file_state(self.FID) == self.visible(self.state), (key, self.state)
            return True
        if local:
            with pytest.raises(LocalProtocolError):
                self.apply(inp)
            assert self.conn.file_state(self.FID) == self.visible(self.state)
            assert self.conn.data_to_send() == []  # nothing went out
            return True
        with pytest.raises(RemoteProtocolError):
            self.apply(inp)
        assert _error_code(self.conn) == ErrorCode.PROTOCOL
        return False


PATHS = {
    "r": {
        FileState.OFFERED: [],
        FileState.SENDING: [In.DECISION],
        FileState.ENDED: [In.DECISION, In.END],
        FileState.FAILED: [In.DECISION, In.RESULT],
        FileState.DONE: [In.RESULT],
    },
    "s": {
        FileState.OFFERED: [],
        FileState.SENDING: [In.DECISION],
        FileState.ENDED: [In.DECISION, In.END],
        FileState.DONE: [In.RESULT],
    },
}


def test_tables_reach_exactly_these_states():
    for side, table in TABLES.items():
        reached = {FileState.OFFERED} | set(table.values())
        assert reached == set(PATHS[side]), side


@pytest.mark.parametrize("inp", list(In), ids=lambda i: i.name)
@pytest.mark.parametrize(
    "side,state",
    [(side, st_) for side in ("r", "s") for st_ in PATHS[side]],
    ids=lambda x: x if isinstance(x, str) else x.name,
)
def test_every_state_input_pair(side, state, inp):
    h = StateHarness(side)
    for p in PATHS[side][state]:
        assert h.step(p)
    assert h.state == state
    alive = h.step(inp)
    if (state, inp) not in TABLES[side]:
        # a pair outside the table raised (checked in step); the state did not move
        assert h.state == state
        assert alive == (inp in LOCAL[side])


@pytest.mark.parametrize("side", ["r", "s"])
@pytest.mark.parametrize("inp", list(In), ids=lambda i: i.name)
def test_unknown_file_rejects_every_input(side, inp):
    h = StateHarness(side)
    h.FID = 1234  # never offered
    h.state = None
    assert (None, inp) not in TABLES[side]
    h.step(inp)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(side=st.sampled_from(["r", "s"]), seq=st.lists(st.sampled_from(list(In)), max_size=14))
def test_random_input_sequences_follow_the_tables(side, seq):
    h = StateHarness(side)
    for inp in seq:
        if not h.step(inp):
            break


def test_peer_error_text_is_printable_and_capped():
    """The peer's ERROR reason reaches a terminal and logs: no escape sequences, line breaks
    or bidi overrides, and not kilobytes of it."""
    evil = "disk full\n\x1b[2Jftx: done, all ok \u202e" + "B" * 900
    link = linked()
    link.s.receive_data(encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.STORAGE, evil).encode()))
    event = link.s.next_event()
    assert isinstance(event, ev.PeerFailed) and event.message.isprintable(), repr(event)
    assert "\\x1b[2J" in event.message and "\\u202e" in event.message and len(event.message) <= 310
    assert str(link.s._error).isprintable() and len(str(link.s._error)) <= 340
