"""A run of small files as one unit: decoded in one pass (FrameDecoder.small_run, ReceiverConnection
with small_runs=True), stored by one call (Destination.write_small_run, fileops.link_run), settled
together (files_ok, RunReport, cli_output.emit_run) -- each tested to agree with the file-by-file path."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ftx import claims, cli_output, fileops, receiving, recv_pipeline
from ftx.core import events as ev
from ftx.core.checksum import file_digest
from ftx.core.config import Config
from ftx.core.frames import BufferBudget, FrameDecoder, FrameType, encode_frame, READAHEAD
from ftx.core.manifest import FileEntry
from ftx.core.messages import OfferSummary, SmallFile
from ftx.core.receiver import ReceiverConnection
from ftx.core.sender import SenderConnection
from ftx.errors import ErrorCode, FtxError, RemoteProtocolError
from ftx.limits import Limits
from ftx.storage import Destination

from .helpers import run_send

MTIME = 1_600_000_000_123_456_789


def _bytes(bufs) -> bytes:
    return b"".join(bytes(b) for b in bufs)


# -- fileops.link_run: the C loop and its Python reference -----------------------------------------
def _tree(root) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            rel = os.path.relpath(p, root)
            body = open(p, "rb").read() if stat.S_ISREG(st_.st_mode) else None
            out[rel] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), body,
                        st_.st_mtime_ns if stat.S_ISREG(st_.st_mode) else None)
    return out


names_st = st.lists(st.sampled_from([b"a", b"b", b"c", b"dir", b"old", b"x" * 200]), min_size=1, max_size=8)


@pytest.mark.skipif(fileops._c_link_run is None or not fileops.NAMELESS, reason="the C helper is not built")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=names_st, modes=st.lists(st.sampled_from([0o644, 0o600, 0o777, 0o4755, 0o000]), min_size=8, max_size=8),
       mtimes=st.lists(st.integers(-(10**18), 10**18), min_size=8, max_size=8))
def test_link_run_c_matches_the_python_reference(tmp_path_factory, names, modes, mtimes):
    results = []
    for fn in (fileops._c_link_run, None):
        root = tmp_path_factory.mktemp("run")
        (root / "old").write_bytes(b"there")
        os.utime(root / "old", ns=(MTIME, MTIME))
        (root / "dir").mkdir()
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            n = len(names)
            datas = [bytes([i]) * (i * 300) for i in range(n)]
            if fn is None:
                got = fileops.py_link_run(fd, names, datas, modes[:n], mtimes[:n])
            else:
                got = fn(fd, names, datas, modes[:n], mtimes[:n], -1 if fileops.UMASK is None else fileops.UMASK)
        finally:
            os.close(fd)
        results.append((got, _tree(root)))
    assert results[0] == results[1]
    (done, failures, exc), _ = results[0]
    assert done == len(names) and exc is None
    assert all(err in (17, 21) for _, err in failures)  # EEXIST, EISDIR: nothing else touched


@pytest.mark.skipif(fileops._c_link_run is None or not fileops.NAMELESS, reason="the C helper is not built")
def test_link_run_with_and_without_at_empty_path_lands_the_same(tmp_path_factory):
    """The C helper links a file by its descriptor (AT_EMPTY_PATH) where allowed, else through
    /proc/self/fd: the same files, modes, times and failures either way."""
    from ftx import _smallfile

    names = [b"a", b"old", b"dir", b"b", b"a"]
    results = []
    for empty in (True, False):
        was = _smallfile.use_empty_path(empty)
        try:
            root = tmp_path_factory.mktemp("empty")
            (root / "old").write_bytes(b"there")
            os.utime(root / "old", ns=(MTIME, MTIME))
            (root / "dir").mkdir()
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                got = _smallfile.link_run(fd, names, [b"x" * i for i in range(5)], [0o640, 0o600, 0o644, 0o4755, 0o644],
                                          [MTIME] * 5, 0o22)
            finally:
                os.close(fd)
        finally:
            _smallfile.use_empty_path(was)
        results.append((got, _tree(root)))
    assert results[0] == results[1]
    assert results[0][0] == (5, [(1, 17), (2, 17), (4, 17)], None)


def test_link_run_refuses_bad_arguments(tmp_path):
    if fileops._c_link_run is None:
        pytest.skip("the C helper is not built")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError):
            fileops._c_link_run(fd, [b"a"], [], [], [], 0o22)
        with pytest.raises(ValueError):
            fileops._c_link_run(fd, [b"a\0b"], [b""], [0o644], [0], 0o22)
        with pytest.raises(TypeError):
            fileops._c_link_run(fd, ["a"], [b""], [0o644], [0], 0o22)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []


# -- Destination.write_small_run against write_small, file by file ------------------------------------
@pytest.fixture(params=["c", "python", "no-tmpfile"])
def flavour(request, monkeypatch):
    if request.param == "python":  # FTX_PURE_PYTHON=1 / no C helper: the references
        monkeypatch.setattr(fileops, "_c_link_new", None)
        monkeypatch.setattr(fileops, "_c_link_run", None)
    if request.param == "no-tmpfile":
        monkeypatch.setattr(fileops, "_TMPFILE", 0)
        monkeypatch.setattr(fileops, "NAMELESS", False)
    return request.param


def _outcome(x):
    if isinstance(x, ErrorCode):
        return x
    return (type(x).__name__, getattr(x, "code", None), str(x))


def _scenario(root) -> None:
    (root / "same").write_bytes(b"same bytes")
    (root / "other").write_bytes(b"user's")
    (root / "d").mkdir()
    (root / "d" / "dir").mkdir()
    (root / "link").symlink_to("/tmp")
    for p in ("same", "other"):
        os.utime(root / p, ns=(MTIME, MTIME))


CASES = [  # (path, data, digest ok)
    (b"a", b"1", True), (b"d/b", b"22" * 300, True), (b"d/c", b"", True), (b"same", b"same bytes", True),
    (b"other", b"sender's", True), (b"d/dir", b"x", True), (b"bad", b"y", False), (b".ftx/x", b"z", True),
    (b"d/e/f", b"deep", True), (b"link/evil", b"out", True), (b"a", b"1", True), (b"a", b"2", True),
    (b"../up", b"u", True), (b"e", b"e", True),
]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(len(CASES))), take=st.integers(1, len(CASES)))
def test_write_small_run_agrees_with_write_small(tmp_path_factory, flavour, order, take):
    picked = [CASES[i] for i in order[:take]]
    entries = [FileEntry(p, size=len(d), mode=0o640, mtime_ns=MTIME) for p, d, _ in picked]
    datas = [d for _, d, _ in picked]
    digests = [file_digest(d) if ok else b"\0" * 16 for _, d, ok in picked]
    got = []
    for run in (False, True):
        root = tmp_path_factory.mktemp("dst")
        _scenario(root)
        dest = Destination(str(root))
        try:
            out = _outcomes(dest, run, entries, datas, digests)
            assert dest.unsynced or not any(o is ErrorCode.OK for o in out)  # stored: synced before its RESULT
            dest.sync()
        finally:
            dest.close()
        got.append(([_outcome(o) for o in out], _tree(root)))
    assert got[0] == got[1]
    assert not claims._busy  # every claim given back


def test_write_small_run_a_busy_file_fails_alone(tmp_path, flavour):
    dest = Destination(str(tmp_path))
    other = object()
    claims.take(dest.root + b"/d/b", other)  # another connection writes it
    try:
        entries = [FileEntry(p, size=1, mode=0o644, mtime_ns=MTIME) for p in (b"d/a", b"d/b", b"d/c")]
        out = dest.write_small_run(entries, [b"1"] * 3, [file_digest(b"1")] * 3)
    finally:
        claims.give(dest.root + b"/d/b", other)
        dest.close()
    assert out[0] is ErrorCode.OK and out[2] is ErrorCode.OK
    assert isinstance(out[1], claims.Busy) and out[1].code == ErrorCode.BUSY
    assert sorted(os.listdir(tmp_path / "d")) == ["a", "c"]
    assert not claims._busy


@pytest.fixture
def tmpfs_pair(tmp_path):
    """Two 8 MiB tmpfs mounts: free space that nothing else on this machine changes."""
    mounts = []
    for name in ("a", "b"):
        mnt = tmp_path / name
        mnt.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
        if res.returncode != 0:
            for m in mounts:
                subprocess.run(["umount", "-l", str(m)], capture_output=True)
            pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.decode().strip()}")
        mounts.append(mnt)
    try:
        yield mounts
    finally:
        for m in mounts:
            subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_write_small_run_min_free_refuses_exactly_as_one_by_one(tmpfs_pair, flavour):
    outs = []
    for run, root in zip((False, True), tmpfs_pair):
        free = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
        dest = Destination(str(root), limits=Limits(min_free=free - 3000))  # room for ~3000 bytes
        try:
            entries = [FileEntry(b"d/f%d" % i, size=1000, mode=0o644, mtime_ns=MTIME) for i in range(6)]
            datas, digests = [b"x" * 1000] * 6, [file_digest(b"x" * 1000)] * 6
            out = _outcomes(dest, run, entries, datas, digests)
        finally:
            dest.close()
        outs.append(([_outcome(o) for o in out], sorted(os.listdir(root / "d"))))
    assert outs[0] == outs[1]
    ok = [o is ErrorCode.OK for o in outs[1][0]]
    assert ok[0] and not ok[-1]  # the first fit, the last not
    assert all("--min-free" in o[2] for o in outs[1][0] if o is not ErrorCode.OK)


# -- FrameDecoder.small_run: the same frames as next_frame ---------------------------------------------
def _small_frame(i: int, size: int) -> bytes:
    data = bytes([i % 256]) * size
    return encode_frame(FrameType.SMALL_FILE, SmallFile.pack(i, FileEntry(b"f%d" % i, size=size), file_digest(data), data))


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(["small", "ping", "bad", "big"]), min_size=1, max_size=12),
       cut=st.integers(0, 10**6), limit=st.integers(1, 20))
def test_small_run_takes_the_frames_next_frame_would(kinds, cut, limit):
    frames = []
    for i, k in enumerate(kinds):
        if k == "small":
            frames.append(_small_frame(i, i * 37))
        elif k == "ping":
            frames.append(encode_frame(FrameType.PING, b"12345678"))
        elif k == "bad":  # a checksum that does not match: next_frame raises
            f = bytearray(_small_frame(i, 5))
            f[-1] ^= 1
            frames.append(bytes(f))
        else:  # beyond the payload limit
            frames.append(_small_frame(i, 70_000))
    stream = b"".join(frames)
    stream = stream[: cut % (len(stream) + 1)]

    def decode(with_runs: bool):
        d = FrameDecoder()
        buf = d.get_buffer()
        out = []
        pos = 0
        while pos < len(stream):  # as a driver fills the buffer
            buf = d.get_buffer()
            n = min(len(buf), len(stream) - pos)
            buf[:n] = stream[pos : pos + n]
            d.buffer_updated(n)
            pos += n
            del buf
            try:
                while True:
                    if with_runs:
                        out += [("run", p) for p in d.small_run(limit)]
                    f = d.next_frame()
                    if f is None:
                        break
                    out.append((f.type.name, bytes(f.payload)))
            except RemoteProtocolError as exc:
                out.append(("error", type(exc).__name__, str(exc)))
                return out
        return out

    plain, runs = decode(False), decode(True)
    assert [x if x[0] != "run" else ("SMALL_FILE", x[1]) for x in runs] == plain
    assert all(type(x[1]) is bytes for x in runs if x[0] == "run")


def _read_sizes(d: FrameDecoder, stream: bytes, reads: int) -> list:
    """The regions a driver is offered while the kernel always has more than that to give."""
    sizes, pos = [], 0
    for _ in range(reads):
        buf = d.get_buffer()
        n = len(buf)
        sizes.append(n)
        buf[:n] = stream[pos : pos + n]
        pos += n
        del buf
        d.buffer_updated(n)
        while d.small_run(1000) or d.next_frame() is not None:
            pass
    return sizes


def test_reads_grow_while_they_fill_the_buffer_and_not_past_the_budget():
    stream = b"".join(_small_frame(i, 500) for i in range(2000))
    sizes = _read_sizes(FrameDecoder(), stream, 8)
    assert sizes[0] == 4096 and max(sizes) == READAHEAD and sizes == sorted(sizes)
    budget = BufferBudget(16384)  # room for no more than 16 KiB of buffer: reads stay within it
    sizes = _read_sizes(FrameDecoder(budget=budget), stream, 8)
    assert max(sizes) <= 16384 and budget.used <= 16384


def test_a_whole_record_ready_is_offered_room_in_one_region_within_the_budget():
    """A sealed record of many small files' frames (up to 512 KiB) is placed in one region and
    its frames decoded as one run; over the budget the region is as usual (no error)."""
    stream = b"".join(_small_frame(i, 40_000) for i in range(12))  # ~480 KB: one record's worth
    d = FrameDecoder()
    buf = d.get_buffer(len(stream))
    assert len(buf) == len(stream)
    buf[:] = stream
    del buf
    d.buffer_updated(len(stream))
    first = d.next_frame()
    assert first.type is FrameType.SMALL_FILE and len(d.small_run(1000)) == 11 and d.pending_bytes == 0
    budget = BufferBudget(100_000)
    d = FrameDecoder(budget=budget)
    assert len(d.get_buffer(len(stream))) <= READAHEAD and budget.used <= 100_000
    assert len(FrameDecoder().get_buffer(1000)) <= READAHEAD  # a small want: as usual


def test_the_driver_joins_runs_that_follow_one_another():
    def run(*ids):
        return ev.SmallFilesReceived(list(ids), [b"e%d" % i for i in ids], [b"g%d" % i for i in ids],
                                     [b"d%d" % i for i in ids])

    class Queue:
        def __init__(self, events):
            self.events = list(events)

        def next_event(self):
            return self.events.pop(0) if self.events else None

    refused = ev.FileRefused(9, FileEntry(b"x", size=1), "no")
    original = run(1, 2)
    got = recv_pipeline._drain(Queue([original, run(3), run(4, 5), refused, run(6), run(7)]))
    assert [type(e) for e in got] == [ev.SmallFilesReceived, ev.FileRefused, ev.SmallFilesReceived]
    assert (got[0].file_ids, got[0].entries, got[0].datas) == ([1, 2, 3, 4, 5], [b"e1", b"e2", b"e3", b"e4", b"e5"],
                                                              [b"d1", b"d2", b"d3", b"d4", b"d5"])
    assert got[0].digests == [b"g1", b"g2", b"g3", b"g4", b"g5"] and got[2].file_ids == [6, 7]
    assert original.file_ids == [1, 2]  # the core's event is not changed under it


# -- the core: one event per run, the same checks ----------------------------------------------------
def _sender_stream(files, summary=True, done=True):
    """(HELLO, the frames of ``files`` [(path, data)]) as a sender sends them."""
    tops = sorted({p.split(b"/")[0].decode() for p, _ in files})
    s = SenderConnection(Config(summary=OfferSummary(len(files), sum(len(d) for _, d in files), tuple(tops),
                                                     len(tops)).encode()) if summary else None)
    hello = _bytes(s.data_to_send())
    s.receive_data(_bytes(ReceiverConnection().data_to_send()))
    while s.next_event() is not None:
        pass
    for path, data in files:
        s.send_small_file(FileEntry(path, size=len(data), mtime_ns=MTIME), data, file_digest(data))
    if done:
        s.finish()
    return hello, _bytes(s.data_to_send())


def _flat(events):
    out = []
    for e in events:
        if type(e) is ev.SmallFilesReceived:
            out += [("small", i, en.path, g, bytes(d)) for i, en, g, d in zip(e.file_ids, e.entries, e.digests, e.datas)]
        elif type(e) is ev.SmallFileReceived:
            out.append(("small", e.file_id, e.entry.path, e.digest, bytes(e.data)))
        else:
            out.append(type(e).__name__)
    return out


def _receive(stream: bytes, runs: bool, step: int, config=None, budget=None):
    r = ReceiverConnection(config, budget=budget, small_runs=runs)
    r.data_to_send()
    got, error = [], None
    for i in range(0, len(stream), step):
        try:
            r.receive_data(stream[i : i + step])
        except FtxError as exc:
            error = (type(exc).__name__, str(exc))
            break
        finally:
            while (e := r.next_event()) is not None:
                got.append(e)
    return r, got, error


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40), step=st.integers(1, 70_000),
       in_flight=st.integers(1, 50), memory=st.sampled_from([None, 20_000, 200_000]))
def test_runs_and_single_frames_agree(sizes, step, in_flight, memory):
    files = [(b"d%d/f%d" % (i % 3, i), bytes([i]) * n) for i, n in enumerate(sizes)]
    hello, body = _sender_stream(files)
    outs = []
    for runs in (False, True):
        r, got, error = _receive(hello + body, runs, step, Config(max_files_in_flight=in_flight),
                                 BufferBudget(memory) if memory else None)
        outs.append((_flat(got), error, _bytes(r.data_to_send())))
        if runs:
            assert all(len(e.file_ids) <= r.small_run_max for e in got if type(e) is ev.SmallFilesReceived)
    assert outs[0] == outs[1]


def test_the_memory_budget_pauses_at_the_same_file_to_the_byte():
    """--max-memory charges each small file's state and bytes as it is decoded, until its RESULT: a
    run stops at the very file where file by file does, at the budget's exact boundaries; the
    connection then pauses (that frame waits in its buffer) and takes the rest once the files
    decoded are settled.  Only when nothing is being settled is the file refused (BufferLimit)."""
    files = [(b"p%d" % i, b"z" * 50) for i in range(12)]
    hello, body = _sender_stream(files)
    roomy = BufferBudget(1 << 30)
    _receive(hello + body, False, 1 << 20, budget=roomy)
    used = roomy.used  # buffers, and every file's state and bytes
    cost = (used - 4096) // 12  # a file's charge (the 4 KiB buffer holds the whole stream)
    assert cost >= 2048 + len(b"p0") + 50  # its state, its path and its bytes
    for limit in (4096 + cost - 1, used - cost - 1, used - cost, used - 1, used, used + 1):
        outs = []
        for runs in (False, True):
            budget = BufferBudget(limit)
            r, got, error = _receive(hello + body, runs, 1 << 20, budget=budget)
            outs.append((_flat(got), error, budget.used, r.paused))
            if error is None:  # settle what arrived, resume, until every file is in
                while r.paused or got:
                    for e in got:
                        if not isinstance(e, (ev.SmallFilesReceived, ev.SmallFileReceived)):
                            continue
                        for fid, digest in zip(e.file_ids, e.digests) if runs else [(e.file_id, e.digest)]:
                            r.file_result(fid, ErrorCode.OK, digest)
                    r.resume()
                    got = list(iter(r.next_event, None))
                    assert budget.used <= limit
                assert budget.settling == 0 and r.file_state(11) is None  # all twelve settled
        assert outs[0] == outs[1], limit
        if limit < 4096 + cost:  # not even one file, and nothing settling: refused as before
            assert outs[0][1] is not None and "--max-memory" in outs[0][1][1]
        else:
            assert outs[0][1] is None and outs[0][3] == (limit < used), limit


def test_a_run_is_split_by_a_file_beyond_the_announcement():
    files = [(b"f%d" % i, b"x" * 10) for i in range(5)]
    tops = tuple(p.decode() for p, _ in files)
    s = SenderConnection(Config(summary=OfferSummary(3, 10_000, tops, len(tops)).encode()))  # announces 3 items
    hello = _bytes(s.data_to_send())
    s.receive_data(_bytes(ReceiverConnection().data_to_send()))
    while s.next_event() is not None:
        pass
    for path, data in files:
        s.send_small_file(FileEntry(path, size=len(data), mtime_ns=MTIME), data, file_digest(data))
    r, got, error = _receive(hello + _bytes(s.data_to_send()), True, 1 << 20)
    assert error is None
    kinds = [type(e).__name__ for e in got]
    assert kinds == ["HandshakeComplete", "SmallFilesReceived", "FileRefused", "FileRefused"]
    assert got[1].file_ids == [1, 2, 3] or len(got[1].file_ids) == 3


@pytest.mark.parametrize("frame", ["reused", "after-done"])
def test_a_bad_frame_in_a_run_fails_after_the_files_before_it(frame):
    s = SenderConnection()
    hello = _bytes(s.data_to_send())
    s.receive_data(_bytes(ReceiverConnection().data_to_send()))
    while s.next_event() is not None:
        pass
    payloads = [SmallFile.pack(i, FileEntry(b"f%d" % i, size=1), file_digest(b"a"), b"a") for i in range(1, 4)]
    if frame == "reused":
        payloads.append(payloads[0])
        tail = b""
    else:
        tail = encode_frame(FrameType.DONE) + encode_frame(FrameType.SMALL_FILE, SmallFile.pack(
            9, FileEntry(b"late", size=1), file_digest(b"a"), b"a"))
    stream = hello + b"".join(encode_frame(FrameType.SMALL_FILE, p) for p in payloads) + tail
    r, got, error = _receive(stream, True, 1 << 20)
    assert _flat(got)[1:] == [("small", i, b"f%d" % i, file_digest(b"a"), b"a") for i in (1, 2, 3)]
    assert error is not None and error[0] == "RemoteProtocolError"
    assert ("reused" in error[1]) if frame == "reused" else ("after DONE" in error[1])


def test_files_ok_sends_what_file_result_sends():
    files = [(b"f%d" % i, b"y" * i) for i in range(30)]
    hello, body = _sender_stream(files)
    wires = []
    for bulk in (False, True):
        r, got, error = _receive(hello + body, True, 1 << 20)
        r.data_to_send()
        for e in got:
            if type(e) is ev.SmallFilesReceived:
                ids = e.file_ids
                # the fifth fails (a RESULT of its own, in order), the rest OK
                for first, part in enumerate((ids[:5], ids[6:])):
                    if bulk:
                        r.files_ok(part, [e.digests[ids.index(i)] for i in part])
                    else:
                        for i in part:
                            r.file_result(i, ErrorCode.OK, e.digests[ids.index(i)])
                    if not first:
                        r.file_result(ids[5], ErrorCode.STORAGE, message="disk full")
        wires.append((_bytes(r.data_to_send()), r.closed, [type(e).__name__ for e in iter(r.next_event, None)]))
    assert wires[0] == wires[1]
    assert wires[1][1]  # every file settled after DONE: the session is complete


def test_files_ok_settles_in_bulk_on_a_receiver_that_could_sign_a_receipt_nobody_asked_for(monkeypatch):
    """Every ``ftx receive`` with an identity has a receipt signer; a sender that asked for no
    receipt still gets its run settled in bulk (RESULT_RUN), not file by file (found by profiling
    the small set: 2 021 file_result calls for 2 000 files)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ftx.core.secure.receipt import ReceiptSigner

    files = [(b"f%d" % i, b"z" * i) for i in range(20)]
    hello, body = _sender_stream(files)
    r = ReceiverConnection(signer=ReceiptSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32)))),
                           small_runs=True)
    r.data_to_send()
    r.receive_data(hello + body)
    got = list(iter(r.next_event, None))
    assert not r.receipt_requested
    one_by_one = []
    monkeypatch.setattr(r, "file_result", lambda *a, **k: one_by_one.append(a))
    for e in got:
        if type(e) is ev.SmallFilesReceived:
            r.files_ok(e.file_ids, e.digests)
    assert one_by_one == []
    from .test_core_peers import decode_frames

    assert FrameType.RESULT_RUN in [f.type for f in decode_frames(r.data_to_send())]
    assert r.closed  # every file settled after DONE


# -- reports: a run's --json lines, byte for byte ------------------------------------------------------
def test_emit_run_writes_the_lines_emit_report_writes(monkeypatch):
    paths = ["a", "d/é", 'q"uote', "back\\slash", "tab\t", "\udcff-undecodable", "ünï/çødé"]
    run = receiving.RunReport(paths, [0, 1, 22, 333, 4444, 5, 66], ["ab" * 16] * 7)
    lines = []
    cli_output._queued.clear()
    for report in run:
        cli_output.emit_report(report)
    lines.append("".join(cli_output._queued))
    cli_output._queued.clear()
    cli_output.emit_run(run)
    lines.append("".join(cli_output._queued))
    cli_output._queued.clear()
    assert lines[0] == lines[1] and lines[0].count("\n") == 7


def test_parts_cut_runs_to_batch_files():
    def run(n, start=0):
        return ev.SmallFilesReceived(list(range(start, start + n)), [None] * n, [b""] * n, [b""] * n)

    events = [ev.HandshakeComplete(1, "x", 0, 65536), run(300), run(10, 300), ev.SessionComplete(), run(600, 310)]
    parts = list(recv_pipeline._parts(events))
    sizes = [sum(len(e.file_ids) if type(e) is ev.SmallFilesReceived else 1 for e in p) for p in parts]
    assert all(s == recv_pipeline.BATCH for s in sizes[:-1]) and sum(sizes) == 1 + 300 + 10 + 1 + 600
    ids = [i for p in parts for e in p if type(e) is ev.SmallFilesReceived for i in e.file_ids]
    assert ids == list(range(910))


def test_a_real_receiver_writes_each_files_line_as_before(tmp_path, receiver_factory):
    """``ftx receive --json`` over TCP, a tree of small files that arrive as runs: one line per file
    with exactly the fields and values FileReport gives; a file that fails in the middle of a run
    (its destination exists and differs) has its own line, and the session counts every file."""
    receiver = receiver_factory()
    src = tmp_path / "tree"
    names = [f"d{d}/f{i:03d}" for d in range(3) for i in range(120)] + ['q"uote', "é-ünï", "tab\tname"]
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(name.encode() * (len(name) % 5))
    dst = Path(receiver.dir)
    (dst / "tree" / "d1").mkdir(parents=True)
    (dst / "tree" / "d1" / "f050").write_bytes(b"the receiver's own")
    code, report, err = run_send(str(src), receiver.dest)
    assert code != 0  # one file failed
    events = receiver.events_until("session")
    lines = {ev["path"]: ev for ev in events if ev["event"] == "file" and ev["kind"] == "file"}
    assert events[-1]["files"] == len(names) + 3 + 1  # and the directories d0..d2 and the root
    top = src.name
    for name in names:
        line = lines[f"{top}/{name}"]
        data = (src / name).read_bytes()
        if name == "d1/f050":
            assert line["status"] == "exists" and "exists and differs" in line["message"]
            assert (dst / top / name).read_bytes() == b"the receiver's own"  # untouched
            continue
        assert list(line) == ["event", "path", "kind", "size", "status", "digest", "message", "bytes_received",
                              "bytes_resumed"]
        assert line == {"event": "file", "path": f"{top}/{name}", "kind": "file", "size": len(data), "status": "ok",
                        "digest": file_digest(data).hex(), "message": "", "bytes_received": len(data),
                        "bytes_resumed": 0}
        assert (dst / top / name).read_bytes() == data


def _outcomes(dest, run: bool, entries, datas, digests) -> list:
    """Each file's outcome: from one ``write_small_run``, or from ``write_small`` file by file
    (an exception standing for the file it failed)."""
    if run:
        return dest.write_small_run(entries, datas, digests)
    out = []
    for e, d, g in zip(entries, datas, digests):
        try:
            out.append(dest.write_small(e, d, g))
        except (FtxError, OSError) as exc:
            out.append(exc)
    return out
