"""What a sender can cost the receiver in descriptors, sidecar files and disk (issue #11, items 8-10).

Each test attacks a real ``ftx receive`` subprocess the way a client would: a raw
TCP sender built on the core's ``SenderConnection`` that offers files and then
sends their data (or never does).  Descriptors are counted in /proc/PID/fd,
sidecars in --dir, space with statvfs on a tmpfs of our own.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time

import pytest

from ftx.core.checksum import file_digest
from ftx.core.config import Config
from ftx.core.events import DecisionReceived, FileResolved, PeerFailed
from ftx.core.manifest import FileEntry, Kind
from ftx.core.sender import SenderConnection
from ftx.errors import ErrorCode

from .helpers import SealedSocket
from ftx.helddirs import DIR_CACHE

from .helpers import data_path, journal_path, journal_records, partials, run_send, wait_for, write_random

pytestmark = pytest.mark.timeout(60)

CHUNK = 16 * 1024


class RawSender:
    """The real sender core on a blocking socket, driven by hand (no offer window, no data unless told)."""

    def __init__(self, port: int) -> None:
        self.sock = SealedSocket(port)  # an authorized sender, misbehaving
        self.conn = SenderConnection(Config())
        self.seen: list = []
        self.flush()
        self.collect(lambda evs: any(ev.__class__.__name__ == "HandshakeComplete" for ev in evs))

    def flush(self) -> None:
        for b in self.conn.data_to_send():
            self.sock.sendall(b)

    def collect(self, done, timeout: float = 20.0) -> list:
        """Read until ``done(all events so far)``; return them all."""
        deadline = time.monotonic() + timeout
        while not done(self.seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"no such events in time; last: {self.seen[-3:]}")
            data = self.sock.recv(1 << 20)
            if not data:
                self.conn.receive_eof()
            try:
                self.conn.receive_data(data)
            finally:
                while (ev := self.conn.next_event()) is not None:
                    self.seen.append(ev)
        return self.seen

    def count(self, kind) -> int:
        return sum(isinstance(ev, kind) for ev in self.seen)

    def results(self) -> dict:
        return {ev.result.file_id: ev.result for ev in self.seen if isinstance(ev, FileResolved)}

    def close(self) -> None:
        self.sock.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sidecars(root) -> list[str]:
    """ftx's own files for --dir ``root``: what is in its state directory, and temporaries anywhere."""
    return sorted(str(p.relative_to(root)) for p in [*root.rglob(".ftx*"), *root.glob(".ftx/*")] if p.is_file())


# -- item 8: descriptors and sidecars ------------------------------------------------------

def test_offers_without_data_open_no_descriptor_and_create_no_file(receiver):
    """1000 OFFERs and never a byte of data: no descriptor, no sidecar (was 2 fds + 2 files each)."""
    s = RawSender(receiver.port)
    base = open_fds(receiver.proc.pid)
    for i in range(1000):
        s.conn.offer(FileEntry(b"d%d/f%04d.bin" % (i % 100, i), size=3 * CHUNK, chunk_size=CHUNK))
    s.flush()
    s.collect(lambda evs: sum(isinstance(ev, DecisionReceived) for ev in evs) == 1000)
    assert open_fds(receiver.proc.pid) <= base + 2 + DIR_CACHE  # 100 directories: at most DIR_CACHE held
    assert sidecars(receiver.dir) == []
    s.close()
    ev = receiver.events_until("session")[-1]
    assert ev["complete"] is False
    assert sidecars(receiver.dir) == []


def test_a_client_cannot_leave_sidecars_behind_with_tiny_chunks(receiver):
    """300 files get one 4 KiB chunk each, then the client leaves: those partials are not worth a resume
    (under 1 MiB verified), so all 600 sidecars go with the connection."""
    s = RawSender(receiver.port)
    data = bytes(4096)
    fids = [s.conn.offer(FileEntry(b"t%03d.bin" % i, size=2 * len(data), chunk_size=len(data))) for i in range(300)]
    s.flush()
    s.collect(lambda evs: sum(isinstance(ev, DecisionReceived) for ev in evs) == 300)
    for fid in fids:
        s.conn.send_chunk(fid, 0, data)
    s.flush()
    wait_for(lambda: all(journal_records(receiver.dir, "t%03d.bin" % i) == 1 for i in range(300)),
             what="a chunk of every file journaled")
    s.close()
    assert receiver.events_until("session")[-1]["complete"] is False
    assert sidecars(receiver.dir) == []


def test_files_in_flight_per_session_are_bounded(tmp_path, receiver_factory):
    """Settled items do not count; one unsettled item over --max-files-in-flight is a PROTOCOL error."""
    r = receiver_factory("--max-files-in-flight", "256")
    s = RawSender(r.port)
    for i in range(60):  # directories settle at once: then they no longer count against the bound
        s.conn.offer(FileEntry(b"dir%03d" % i, Kind.DIR, mode=0o755))
    s.flush()
    s.collect(lambda evs: sum(isinstance(ev, FileResolved) for ev in evs) == 60)
    for i in range(256):
        s.conn.offer(FileEntry(b"f%04d.bin" % i, size=2 * CHUNK, chunk_size=CHUNK))
    s.flush()
    s.collect(lambda evs: sum(isinstance(ev, DecisionReceived) for ev in evs) == 256)
    data = b"one too many"
    s.conn.send_small_file(FileEntry(b"small.txt", size=len(data)), data, file_digest(data))
    s.flush()
    ev = s.collect(lambda evs: any(isinstance(ev, PeerFailed) for ev in evs))[-1]
    assert isinstance(ev, PeerFailed) and ev.code == ErrorCode.PROTOCOL
    assert "256 files offered and not yet settled" in ev.message and "--max-files-in-flight" in ev.message
    s.close()
    assert r.events_until("session")[-1]["complete"] is False
    assert sidecars(r.dir) == [] and not (r.dir / "small.txt").exists()
    src = write_random(tmp_path / "after.bin", 300_000, seed=4)
    rc, _report, err = run_send(str(tmp_path / "after.bin"), r.dest)
    assert rc == 0, err
    assert (r.dir / "after.bin").read_bytes() == src


def test_open_partials_are_capped_over_all_senders(tmp_path, receiver_factory):
    """12 files written a chunk at a time, round robin, by two senders: at most --max-open-files partials
    hold descriptors (2 each); the others close and reopen, and every file lands intact."""
    r = receiver_factory("--max-open-files", "4")
    senders = [RawSender(r.port), RawSender(r.port)]
    base = open_fds(r.proc.pid)
    rng = random.Random(8)
    files = []  # (sender, file id, name, data)
    for n in range(12):
        s = senders[n % 2]
        data = rng.randbytes(3 * CHUNK - 100)
        name = f"f{n:02d}.bin"
        fid = s.conn.offer(FileEntry(name.encode(), size=len(data), chunk_size=CHUNK))
        files.append((s, fid, name, data))
    for s in senders:
        s.flush()
        s.collect(lambda evs: sum(isinstance(ev, DecisionReceived) for ev in evs) == 6)
    assert open_fds(r.proc.pid) <= base + 2, "partials were opened before any data arrived"
    for index in range(3):
        for s, fid, name, data in files:
            s.conn.send_chunk(fid, index, data[index * CHUNK : (index + 1) * CHUNK])
            s.flush()
        wait_for(lambda: all(journal_records(r.dir, name) == index + 1 for _s, _f, name, _d in files),
                 what=f"chunk {index} of every file journaled")
        assert open_fds(r.proc.pid) <= base + 2 * 4 + 1  # and ftx's state directory, held
    for s, fid, name, data in files:
        s.conn.end_file(fid, file_digest(data))
    for s in senders:
        s.flush()
        s.collect(lambda evs: sum(isinstance(ev, FileResolved) for ev in evs) == 6)
        assert {res.code for res in s.results().values()} == {ErrorCode.OK}
    for _s, _fid, name, data in files:
        assert (r.dir / name).read_bytes() == data
    assert sidecars(r.dir) == []
    assert open_fds(r.proc.pid) <= base
    for s in senders:
        s.close()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_chunks_kept_back_for_the_digest_are_bounded_over_all_files(receiver):
    """Chunks sent ahead of each file's chunk 0 are kept in memory for the whole-file digest, up to
    64 MiB over all files (it was 32 MiB per file: 6 files here held 168 MiB); the rest is read back."""
    s = RawSender(receiver.port)
    size = 4 << 20
    piece = random.Random(3).randbytes(size)
    fids = [s.conn.offer(FileEntry(b"o%d.bin" % i, size=8 * size, chunk_size=size)) for i in range(6)]
    s.flush()
    s.collect(lambda evs: sum(isinstance(ev, DecisionReceived) for ev in evs) == 6)
    before = rss(receiver.proc.pid)
    for fid in fids:
        for index in range(1, 8):
            s.conn.send_chunk(fid, index, piece)
            s.flush()
    wait_for(lambda: all(journal_records(receiver.dir, "o%d.bin" % i) == 7 for i in range(6)),
             what="chunks 1-7 of every file journaled")
    grown = rss(receiver.proc.pid) - before
    assert grown < 110 << 20, f"receiver grew by {grown >> 20} MiB"
    for fid in fids:
        s.conn.send_chunk(fid, 0, piece)
        s.conn.end_file(fid, file_digest(piece * 8))
        s.flush()
    s.collect(lambda evs: len(s.results()) == 6)
    assert {res.code for res in s.results().values()} == {ErrorCode.OK}
    for i in range(6):
        assert (receiver.dir / f"o{i}.bin").read_bytes() == piece * 8
    s.close()


# -- item 9: disk space -------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """A 64 MiB tmpfs: free space that no other test run on this machine can change."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def used_bytes(path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_offers_reserve_no_space_and_what_cannot_fit_is_refused(tmp_path, tmpfs, receiver_factory):
    """A 10 TiB (or 2^63-1 byte, the largest the wire allows) OFFER is refused with STORAGE; an accepted 40 MiB OFFER takes no space
    until data arrives; a disconnect leaves only partials that hold verified chunks, and those resume."""
    dst = tmpfs / "dst"
    r = receiver_factory("--min-free", "8M", directory=dst)
    src = tmp_path / "big.bin"
    data = write_random(src, 40 * 1024 * 1024, seed=2)
    st = os.stat(src)
    used0 = used_bytes(tmpfs)
    s = RawSender(r.port)
    huge = [s.conn.offer(FileEntry(b"huge%d.bin" % i, size=size)) for i, size in
            enumerate([10 << 40, (1 << 63) - 1])]  # larger is PROTOCOL (test_decode_bounds)
    s.flush()
    s.collect(lambda evs: sum(isinstance(ev, FileResolved) for ev in evs) == 2)
    for fid in huge:
        res = s.results()[fid]
        assert res.code == ErrorCode.STORAGE and "not enough space" in res.message, res
    big = s.conn.offer(FileEntry(b"big.bin", size=st.st_size, mode=0o644, mtime_ns=st.st_mtime_ns))
    idle = s.conn.offer(FileEntry(b"idle.bin", size=8 * 1024 * 1024))
    too_big = s.conn.offer(FileEntry(b"too-big.bin", size=60 * 1024 * 1024))  # 64M - 8M kept free < 60M
    s.flush()
    s.collect(lambda evs: sum(isinstance(ev, DecisionReceived) for ev in evs) == 2 and len(s.results()) == 3)
    assert s.results()[too_big].code == ErrorCode.STORAGE
    assert used_bytes(tmpfs) - used0 < 1024 * 1024, "space was reserved for data that never came"
    s.conn.send_chunk(big, 0, data[: 1024 * 1024])
    s.flush()
    wait_for(lambda: journal_records(dst, "big.bin") == 1, what="the first chunk journaled")
    assert used_bytes(tmpfs) - used0 < 3 * 1024 * 1024
    s.close()
    assert r.events_until("session")[-1]["complete"] is False
    assert partials(dst) == ["big.bin"] and len(sidecars(dst)) == 2  # nothing for idle.bin or the refused
    assert idle is not None
    rc, report, err = run_send(str(src), r.dest)
    assert rc == 0, err
    assert report["bytes_resumed"] == 1024 * 1024
    assert (dst / "big.bin").read_bytes() == data
    assert sidecars(dst) == []


def test_files_accepted_one_by_one_cannot_eat_the_reserve_together(tmpfs, receiver_factory):
    """Two 40 MiB files each fit when offered (56 MiB of room), not both: the second fails with STORAGE
    while the --min-free reserve is still there (it used to run the disk full)."""
    dst = tmpfs / "dst"
    r = receiver_factory("--min-free", "8M", directory=dst)
    s = RawSender(r.port)
    mib = 1024 * 1024
    piece = random.Random(1).randbytes(mib)
    a = s.conn.offer(FileEntry(b"a.bin", size=40 * mib, chunk_size=mib))
    b = s.conn.offer(FileEntry(b"b.bin", size=40 * mib, chunk_size=mib))
    s.flush()
    s.collect(lambda evs: sum(isinstance(ev, DecisionReceived) for ev in evs) == 2)
    for fid in (a, b):
        for index in range(40):
            s.conn.send_chunk(fid, index, piece)
            s.flush()
        s.conn.end_file(fid, file_digest(piece * 40))
        s.flush()
    s.collect(lambda evs: len(s.results()) == 2)
    assert s.results()[a].code == ErrorCode.OK
    assert s.results()[b].code == ErrorCode.STORAGE and "--min-free" in s.results()[b].message
    st = os.statvfs(tmpfs)
    assert st.f_bavail * st.f_frsize >= 6 * mib
    assert (dst / "a.bin").stat().st_size == 40 * mib and not (dst / "b.bin").exists()
    s.close()


def test_small_files_respect_min_free(tmp_path, tmpfs, receiver_factory):
    dst = tmpfs / "dst"
    r = receiver_factory("--min-free", "64M", directory=dst)
    write_random(tmp_path / "src" / "a.txt", 40_000)
    rc, report, err = run_send(str(tmp_path / "src" / "a.txt"), r.dest)
    assert rc == 1
    assert "not enough space" in err
    assert list(dst.iterdir()) == []


# -- item 10: expiry ----------------------------------------------------------------------

DAY = 86400


def _make(path, content: bytes, age: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    t = time.time() - age
    os.utime(path, (t, t))


def _leave_partial(root, name: bytes, age: float) -> list:
    """A real partial of ``root/name`` holding 1 MiB (kept for a resume), its files aged ``age`` s."""
    from ftx.core.checksum import chunk_checksum
    from ftx.storage import Destination, PartialFile

    dest = Destination(root)
    mib = 1024 * 1024
    part = PartialFile(dest, FileEntry(name, size=2 * mib, chunk_size=mib), dest.resolve(name))
    part.open(resume=True)
    piece = bytes(mib)
    part.write_chunk(0, chunk_checksum(piece), piece)
    part.close()
    dest.close()
    files = [journal_path(root, os.fsdecode(name)), data_path(root, os.fsdecode(name))]
    t = time.time() - age
    for p in files:
        os.utime(p, (t, t))
    return files


def test_stale_partials_are_removed_at_start_and_users_files_never(tmp_path, receiver_factory):
    """Expiry looks only in ftx's state directory: its old partials go, anything else stays --
    including files that carry the names older ftx versions used for their sidecars."""
    dst = tmp_path / "dst"
    stale = _leave_partial(dst, b"old.bin", 8 * DAY) + _leave_partial(dst, b"sub/deep/x", 8 * DAY)
    fresh = _leave_partial(dst, b"fresh.bin", DAY)
    orphan = dst / ".ftx" / ("p-" + "ab" * 16)  # data whose journal never got its header (a crash)
    _make(orphan, b"data" * 1000, 8 * DAY)
    stale.append(orphan)
    kept = {
        dst / ".old.bin.ftx-part": b"a user's file with an old sidecar name",
        dst / ".old.bin.ftx-journal": b"FTXJ" + bytes(32),
        dst / "sub" / ".x.ftx-journal": b"FTXJ" + bytes(32),
        dst / "old.txt": b"a user's old file",
    }
    for p, content in kept.items():
        _make(p, content, 8 * DAY)
    r = receiver_factory(directory=dst)
    wait_for(lambda: not any(p.exists() for p in stale), timeout=10, what="stale partials removed")
    for p, content in kept.items():
        assert p.read_bytes() == content
    assert all(p.exists() for p in fresh) and partials(dst) == ["fresh.bin"]
    r.stop()
    assert "removed a stale partial file: old.bin" in r.stderr
    assert "sub/deep/x" in r.stderr


def test_expiry_runs_periodically_and_spares_partials_in_use(tmp_path, receiver_factory):
    r = receiver_factory("--partial-ttl", "2s")
    s = RawSender(r.port)
    data = random.Random(5).randbytes(3 * CHUNK)
    fid = s.conn.offer(FileEntry(b"live.bin", size=len(data), chunk_size=CHUNK))
    s.flush()
    s.collect(lambda evs: any(isinstance(ev, DecisionReceived) for ev in evs))
    s.conn.send_chunk(fid, 0, data[:CHUNK])
    s.flush()
    wait_for(lambda: journal_records(r.dir, "live.bin") == 1, what="the first chunk journaled")
    old = time.time() - 3600
    for p in (journal_path(r.dir, "live.bin"), data_path(r.dir, "live.bin")):
        os.utime(p, (old, old))  # looks stale, but a session is writing it
    later = _leave_partial(r.dir, b"later.bin", 3600)  # after the start-up pass: only a periodic pass finds it
    wait_for(lambda: not any(p.exists() for p in later), timeout=10, what="a periodic expiry pass")
    assert partials(r.dir) == ["live.bin"] and len(sidecars(r.dir)) == 2
    for index in (1, 2):
        s.conn.send_chunk(fid, index, data[index * CHUNK : (index + 1) * CHUNK])
    s.conn.end_file(fid, file_digest(data))
    s.flush()
    s.collect(lambda evs: any(isinstance(ev, FileResolved) for ev in evs))
    assert s.results()[fid].code == ErrorCode.OK
    assert (r.dir / "live.bin").read_bytes() == data
    s.close()


# -- the descriptor budget itself ---------------------------------------------------------

def test_a_partial_being_written_is_never_closed_under_its_writer(tmp_path):
    """Budget of one: a second partial waits while the first is pinned, then takes the place."""
    import threading

    from ftx.core.checksum import chunk_checksum
    from ftx.limits import Limits
    from ftx.storage import Destination, PartialFile

    dest = Destination(tmp_path, limits=Limits(max_open_files=1))
    parts = []
    for name in (b"a.bin", b"b.bin"):
        part = PartialFile(dest, FileEntry(name, size=2 * CHUNK, chunk_size=CHUNK), dest.resolve(name))
        part.open(resume=True)
        parts.append(part)
    a, b = parts
    piece = bytes(CHUNK)
    a.write_chunk(0, chunk_checksum(piece), piece)
    budget = dest.descriptors
    budget.acquire(a)  # as a writer thread would, mid-write
    fd_a = a.fd
    t = threading.Thread(target=b.write_chunk, args=(0, chunk_checksum(piece), piece))
    t.start()
    wait_for(lambda: budget._waiting == 1, what="the second writer to wait")
    assert a.fd == fd_a and b.fd == -1 and budget.open_count == 1
    budget.release(a)
    t.join(10)
    assert a.fd == -1 and b.fd >= 0 and budget.open_count == 1 and budget.peak == 1
    for part in (a, b):
        part.write_chunk(1, chunk_checksum(piece), piece)
        assert part.held.covers(0, 2)
    assert data_path(tmp_path, "a.bin").read_bytes() == bytes(2 * CHUNK)
    assert data_path(tmp_path, "b.bin").read_bytes() == bytes(2 * CHUNK)
    assert budget.open_count == 1 and budget.peak == 1
    for part in (a, b):
        part.close()
    assert budget.open_count == 0
    assert list(tmp_path.iterdir()) == []  # under 1 MiB verified: not kept for a resume


def test_max_open_files_is_fitted_to_the_descriptor_limit(tmp_path):
    """With ``ulimit -n 600`` (hard), 512 partials x 2 + 256 connections + the held directories cannot fit: say so, lower it, serve."""
    import resource

    from .helpers import FTX, LineReader

    proc = subprocess.Popen(FTX + ["receive", "--mkdir", "--listen", "127.0.0.1", "--port", "0", "--dir", str(tmp_path),
                                   "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600)))
    try:
        assert LineReader(proc.stdout).next_json()["event"] == "listening"
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert "--max-open-files lowered from 512 to 122: the descriptor limit (ulimit -n) is 600" in err


def test_small_files_below_min_free_refused_after_room_was_known(tmpfs):
    """The free-space figure's fast case (inline in write_small) still refuses a file that would
    eat into --min-free, once what was written since the figure was read leaves no room."""
    from ftx.errors import StorageError
    from ftx.limits import Limits
    from ftx.storage import Destination

    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    d = Destination(str(tmpfs), limits=Limits(min_free=free - 3000))
    entry = lambda path, n: FileEntry(path, size=n, mode=0o644, mtime_ns=0)  # noqa: E731
    try:
        assert d.write_small(entry(b"a", 1000), b"x" * 1000, file_digest(b"x" * 1000)) == ErrorCode.OK  # reads the figure: room ~3000
        with pytest.raises(StorageError) as info:
            for i in range(10):  # ~1000 bytes each, counted against the figure
                d.write_small(entry(b"b%d" % i, 1000), b"y" * 1000, file_digest(b"y" * 1000))
        assert "--min-free" in str(info.value)
    finally:
        d.close()
