"""RESULT_RUN (protocol.md 5.13): one frame settles a run of OK files, negotiated by the sender's
HELLO extension; an old peer on either side gets one RESULT per item; the sender sees the same
per-file events in the same order either way, and rejects a run it cannot settle."""

from __future__ import annotations

import pytest

from ftx.core import events as ev
from ftx.core.checksum import EMPTY_DIGEST, file_digest
from ftx.core.frames import FrameType, encode_frame
from ftx.core.manifest import FileEntry, Kind
from ftx.core.messages import HELLO_RECEIPT, RESULT_RUN, ROLE_RECEIVER, ROLE_SENDER, Hello, Result, SmallFile
from ftx.core.receiver import ReceiverConnection
from ftx.core.sender import SenderConnection
from ftx.errors import ErrorCode, RemoteProtocolError

from .test_core_peers import CS, SMALL, Link, cfg, content, decode_frames, finish_session, of_type, send_file

pytestmark = pytest.mark.timeout(30)


def small_files(link: Link, n: int, start: int = 0) -> list[tuple[int, bytes]]:
    out = []
    for i in range(start, start + n):
        data = content(i % 7 * 100, seed=i)
        fid = link.s.send_small_file(FileEntry(b"f%d" % i, size=len(data), chunk_size=CS), data, file_digest(data))
        out.append((fid, file_digest(data)))
    return out


def r_frames(link: Link) -> list:
    return decode_frames(link.r.data_to_send())


def deliver(link: Link, frames) -> None:
    link.s.receive_data(b"".join(encode_frame(f.type, bytes(f.payload)) for f in frames))
    link.s_events.extend(iter(link.s.next_event, None))


def test_hello_extension_round_trip_and_old_peers_ignore_it():
    h = Hello(ROLE_SENDER, SMALL, 0, "x", result_run=True)
    assert h.encode().endswith(b"\x00\x04\x00\x00") and Hello.decode(h.encode()).result_run
    assert not Hello.decode(Hello(ROLE_SENDER, SMALL).encode()).result_run
    assert not Hello.decode(Hello(ROLE_SENDER, SMALL).encode() + b"\x00\x04\x00\x01x").result_run  # length != 0
    assert Hello.decode(Hello(ROLE_SENDER, SMALL, result_run=True).encode()).agent == "ftx"  # a known peer's view


def test_ok_files_settle_in_one_frame_with_the_same_events():
    link = Link().handshake()
    sent = small_files(link, 40)
    link.to_receiver()
    for e in of_type(link.take("r"), ev.SmallFileReceived):
        link.r.file_result(e.file_id, ErrorCode.OK, e.digest)
    frames = r_frames(link)
    assert [(f.type, RESULT_RUN.unpack(f.payload)) for f in frames] == [(FrameType.RESULT_RUN, (0, 40))]
    deliver(link, frames)
    got = of_type(link.take("s"), ev.FileResolved)
    assert got == [ev.FileResolved(Result(fid, ErrorCode.OK, d, "")) for fid, d in sent]
    assert not link.s._sent  # nothing kept after the run
    finish_session(link)


def test_a_failure_or_a_directory_breaks_the_run_and_order_is_kept():
    link = Link().handshake()
    sent = small_files(link, 3)
    d = link.s.offer(FileEntry(b"d", kind=Kind.DIR, chunk_size=CS))
    sent += small_files(link, 2, start=3)
    big = content(3 * CS)
    link.to_receiver()
    link.take("r")
    ids = [fid for fid, _ in sent]
    link.r.file_result(ids[0], ErrorCode.OK, sent[0][1])
    link.r.file_result(ids[1], ErrorCode.DIGEST_MISMATCH, message="digest mismatch")
    link.r.file_result(ids[2], ErrorCode.OK, sent[2][1])
    link.r.file_result(d, ErrorCode.OK)
    link.r.file_result(ids[4], ErrorCode.OK, sent[4][1])  # out of order: a run of its own
    link.r.file_result(ids[3], ErrorCode.OK, sent[3][1])
    frames = r_frames(link)
    assert [f.type.name for f in frames] == ["RESULT_RUN", "RESULT", "RESULT_RUN", "RESULT", "RESULT_RUN",
                                             "RESULT_RUN"]
    deliver(link, frames)
    got = [(e.result.file_id, e.result.code, e.result.digest) for e in of_type(link.take("s"), ev.FileResolved)]
    assert got == [(ids[0], ErrorCode.OK, sent[0][1]), (ids[1], ErrorCode.DIGEST_MISMATCH, bytes(16)),
                   (ids[2], ErrorCode.OK, sent[2][1]), (d, ErrorCode.OK, bytes(16)),
                   (ids[4], ErrorCode.OK, sent[4][1]), (ids[3], ErrorCode.OK, sent[3][1])]
    fid, _entry, _ = send_file(link, big)  # a chunked file's OK is a run too (its FILE_END digest)
    link.r.file_result(fid, ErrorCode.OK, file_digest(big))
    link.pump()
    assert of_type(link.take("s"), ev.FileResolved) == [ev.FileResolved(Result(fid, ErrorCode.OK, file_digest(big), ""))]
    finish_session(link)


def small_run(link: Link, n: int) -> tuple[int, list]:
    """``n`` small files framed by the driver and queued as one run (send_small_run)."""
    first = link.s.next_file_id
    frames, digests = bytearray(), []
    for i in range(n):
        data = content(i % 5 * 300, seed=i)
        digests.append(file_digest(data))
        entry = FileEntry(b"r%d" % i, size=len(data), mode=0o640, mtime_ns=i, chunk_size=CS)
        frames += encode_frame(FrameType.SMALL_FILE, SmallFile.pack(first + i, entry, digests[-1], data))
    assert link.s.send_small_run(frames, digests) == first
    return first, digests


def test_a_run_sent_whole_settles_as_one_event_per_result_run():
    """send_small_run: the files' bookkeeping per run; with run_events, a RESULT_RUN is one
    RunResolved (its digests in order); a failure between runs still gets its FileResolved."""
    link = Link().handshake()
    link.s.run_events = True
    first, digests = small_run(link, 30)
    more, digests2 = small_run(link, 5)
    assert more == first + 30 and link.s.next_file_id == first + 35
    link.to_receiver()
    got = of_type(link.take("r"), ev.SmallFileReceived)
    assert [(e.file_id, e.digest) for e in got] == list(zip(range(first, first + 35), digests + digests2))
    for e in got:
        if e.file_id == first + 10:
            link.r.file_result(e.file_id, ErrorCode.STORAGE, message="disk said no")
        else:
            link.r.file_result(e.file_id, ErrorCode.OK, e.digest)
    deliver(link, r_frames(link))
    events = [e for e in link.take("s") if isinstance(e, (ev.RunResolved, ev.FileResolved))]
    alld = digests + digests2
    assert events == [ev.RunResolved(first, 10, alld[:10]),
                      ev.FileResolved(Result(first + 10, ErrorCode.STORAGE, bytes(16), "disk said no")),
                      ev.RunResolved(first + 11, 24, alld[11:])]
    assert not link.s._sent and not link.s._entries
    finish_session(link)


def test_a_run_goes_out_before_any_other_frame():
    link = Link().handshake()
    (sent,) = small_files(link, 1)
    fid = link.s.offer(FileEntry(b"big", size=2 * CS, chunk_size=CS))
    link.to_receiver()
    link.take("r")
    link.r.file_result(sent[0], ErrorCode.OK, sent[1])
    assert link.r.pending_output
    link.r.decide(fid)
    assert [f.type.name for f in r_frames(link)] == ["RESULT_RUN", "DECISION"]


@pytest.mark.parametrize("old", ["sender", "receiver"])
def test_an_old_peer_on_either_side_gets_one_result_per_file(old):
    link = Link(sender_config=cfg(result_run=old != "sender"), receiver_config=cfg(result_run=old != "receiver"))
    link.handshake()
    sent = small_files(link, 5)
    link.to_receiver()
    for e in of_type(link.take("r"), ev.SmallFileReceived):
        link.r.file_result(e.file_id, ErrorCode.OK, e.digest)
    frames = r_frames(link)
    assert [f.type for f in frames] == [FrameType.RESULT] * 5
    deliver(link, frames)
    assert of_type(link.take("s"), ev.FileResolved) == [ev.FileResolved(Result(f, ErrorCode.OK, d, "")) for f, d in sent]
    finish_session(link)


def test_no_run_when_a_receipt_is_asked_for():
    r = ReceiverConnection(cfg())
    r.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, SMALL, HELLO_RECEIPT, result_run=True).encode()))
    assert not r._runs
    r2 = ReceiverConnection(cfg())
    r2.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, SMALL, 0, result_run=True).encode()))
    assert r2._runs


# -- the sender's decoder bounds: every bad run is a typed RemoteProtocolError -------------------
def sender_with(n: int, run_events: bool = False) -> tuple[SenderConnection, list]:
    s = SenderConnection(cfg())
    s.run_events = run_events
    s.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_RECEIVER, SMALL).encode()))
    ids = []
    for i in range(n):
        ids.append(s.send_small_file(FileEntry(b"f%d" % i, size=0, chunk_size=CS), b"", EMPTY_DIGEST))
    s.data_to_send()
    while s.next_event() is not None:
        pass
    return s, ids


@pytest.mark.parametrize("payload,why", [
    (RESULT_RUN.pack(0, 0xFFFFFFFF), "only 4 await"),
    (RESULT_RUN.pack(0xFFFFFFFF, 2), "past file id"),
    (RESULT_RUN.pack(0, 0), "of no file"),
    (RESULT_RUN.pack(2, 3), "file 4, which awaits no result"),
    (RESULT_RUN.pack(7, 1), "file 7, which awaits no result"),
    (RESULT_RUN.pack(0, 1) + b"\0", "must be 8 bytes"),
    (b"\0\0\0", "must be 8 bytes"),
])
@pytest.mark.parametrize("run_events", [False, True])
def test_bad_runs_are_protocol_errors(payload, why, run_events):
    s, _ids = sender_with(4, run_events)
    with pytest.raises(RemoteProtocolError, match=why):
        s.receive_data(encode_frame(FrameType.RESULT_RUN, payload))
    assert s.data_to_send()  # the peer is told: an ERROR frame
    assert all(s.file_state(i) is not None for i in range(4)), "nothing settled by a bad run"


def test_overlapping_runs_are_a_protocol_error():
    s, _ = sender_with(4)
    s.receive_data(encode_frame(FrameType.RESULT_RUN, RESULT_RUN.pack(0, 2)))
    with pytest.raises(RemoteProtocolError, match="file 1, which awaits no result"):
        s.receive_data(encode_frame(FrameType.RESULT_RUN, RESULT_RUN.pack(1, 2)))


def test_a_run_for_a_file_without_a_sent_digest_is_a_protocol_error():
    s, _ = sender_with(1)
    fid = s.offer(FileEntry(b"big", size=2 * CS, chunk_size=CS))  # offered, no FILE_END yet
    with pytest.raises(RemoteProtocolError, match=f"file {fid}, which awaits no result"):
        s.receive_data(encode_frame(FrameType.RESULT_RUN, RESULT_RUN.pack(fid, 1)))


def test_a_run_to_a_sender_that_did_not_ask_is_a_protocol_error():
    s = SenderConnection(cfg(result_run=False))
    s.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_RECEIVER, SMALL).encode()))
    s.send_small_file(FileEntry(b"f", size=0, chunk_size=CS), b"", EMPTY_DIGEST)
    with pytest.raises(RemoteProtocolError, match="did not ask"):
        s.receive_data(encode_frame(FrameType.RESULT_RUN, RESULT_RUN.pack(0, 1)))


def test_a_receiver_rejects_a_run():
    r = ReceiverConnection(cfg())
    r.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, SMALL).encode()))
    with pytest.raises(RemoteProtocolError, match="RESULT_RUN is not sent by a sender"):
        r.receive_data(encode_frame(FrameType.RESULT_RUN, RESULT_RUN.pack(0, 1)))


def test_fuzz_seeds_carry_result_runs():
    """The tcp_sender fuzz target starts from receivers' real streams: RESULT_RUN is in them,
    so the fuzzer mutates its fields (counts, ids, overlaps) from there."""
    from .fuzz import corpus

    pair = corpus.tcp_session()
    to_s = corpus._after_hello(b"".join(b for tag, b in pair.log if tag == "r"))
    assert FrameType.RESULT_RUN in [f.type for f in decode_frames([to_s])]
