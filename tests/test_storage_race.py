"""A local user racing the receiver cannot steer it outside --dir or make it touch their files (issue #13).

Each test runs a real ``ftx receive`` and a real ``ftx send`` while a thread of
the test swaps directories for symlinks the way an attacker with write access
to --dir would: ``rename`` and ``renameat2(RENAME_EXCHANGE)`` (via ctypes).
Nothing may ever appear outside --dir, and no file outside changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import threading
import time

import pytest

from .helpers import FTX, run_send, start_send, wait_for, write_random

pytestmark = pytest.mark.timeout(90)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def exchange(a: bytes, b: bytes) -> bool:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE); False if one is missing."""
    if hasattr(_libc, "renameat2"):
        rc = _libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
    else:  # x86_64 syscall number, for an old glibc
        rc = _libc.syscall(316, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err == 2:
            return False
        raise OSError(err, os.strerror(err))
    return True


class Racer(threading.Thread):
    """Runs ``step`` in a loop until stopped or ``limit`` seconds have passed; counts its rounds."""

    def __init__(self, step, limit: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.step, self.limit = step, limit
        self.rounds = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        try:
            while not self._halt.is_set() and time.monotonic() < deadline:
                if self.step():
                    self.rounds += 1
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        if self.error is not None:
            raise self.error


def _outside_unchanged(outside, before: dict) -> None:
    now = {p.name: (p.stat().st_mode, p.read_bytes()) for p in outside.iterdir()}
    assert now == before, "something outside --dir appeared or changed"


N_RACED = 1500  # small files: at full speed the race runs for a second or more


def test_exchanging_a_received_directory_with_a_symlink_never_writes_outside(tmp_path, receiver):
    """Finding 2: 1500 small files into sub/ and sub/deeper/ while a thread keeps swapping sub with a
    symlink to a directory outside --dir (RENAME_EXCHANGE); the old resolve() checked with lstat and
    then used the path string, and wrote files with the sender's names and contents outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "src" / "sub"
    for i in range(N_RACED):
        write_random(src / ("deeper" if i % 2 else ".") / f"f{i:04d}.txt", 200 + i % 400, seed=i)
    dst = receiver.dir
    sub, link = os.fsencode(dst / "sub"), os.fsencode(dst / "link")
    os.symlink(outside, link)
    seen_outside: list[str] = []

    def swap() -> bool:
        swapped = exchange(sub, link)
        if os.listdir(outside):
            seen_outside.extend(os.listdir(outside))
        return swapped

    proc = start_send(str(tmp_path / "src" / "sub"), receiver.dest)
    wait_for(lambda: os.path.lexists(sub) or proc.poll() is not None, what="sub/ to appear")
    racer = Racer(swap)
    racer.start()
    drain = threading.Thread(target=proc.communicate, daemon=True)  # its --json report must not fill the pipe
    drain.start()
    try:  # until the sender is done, or something shows up outside (then no need to wait for it)
        wait_for(lambda: not drain.is_alive() or seen_outside or os.listdir(outside) or not racer.is_alive(),
                 timeout=60, interval=0.01, what="the sender")
    finally:
        if proc.poll() is None:
            proc.kill()
        drain.join(10)
        racer.stop()
    assert racer.rounds > 10, "the race did not run"
    assert not seen_outside and list(outside.iterdir()) == [], "a file landed outside --dir"
    assert not any(os.path.islink(p) is False and os.path.realpath(p).startswith(str(outside))
                   for p in dst.rglob("*"))
    # what did land is only what the sender sent, under its own names, inside --dir
    for p in dst.rglob("f*.txt"):
        i = int(p.name[1:5])
        assert p.read_bytes() == (src / ("deeper" if i % 2 else ".") / p.name).read_bytes()


def test_a_directory_swapped_for_a_symlink_never_gets_its_mode_applied_outside(tmp_path, receiver):
    """Finding 1: finish_dirs used os.chmod(path), which follows symlinks: a received directory replaced
    by a symlink to a user's 0600 file outside --dir made that file 0777."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"a user's private file\n")
    os.chmod(secret, 0o600)
    t = time.time() - 86400
    os.utime(secret, (t, t))
    before = secret.stat()
    src = tmp_path / "src" / "d"
    for i in range(40):
        write_random(src / f"f{i:02d}.bin", 100_000, seed=i)
    os.chmod(src, 0o777)
    d = receiver.dir / "d"
    proc = start_send(str(src), receiver.dest, "--max-rate", "8M")

    def swap() -> bool:
        if os.path.isdir(d) and not os.path.islink(d):
            os.rename(d, receiver.dir / "d.moved")
            os.symlink(secret, d)
            return True
        return False

    wait_for(lambda: swap() or proc.poll() is not None, what="d/ to appear")
    proc.communicate(timeout=60)
    after = secret.stat()
    assert stat.S_IMODE(after.st_mode) == 0o600, "a file outside --dir got the directory's mode"
    assert after.st_mtime_ns == before.st_mtime_ns
    assert secret.read_bytes() == b"a user's private file\n"


def test_files_with_old_sidecar_names_are_never_touched(tmp_path, receiver):
    """Finding 3: sidecars were opened with O_CREAT but not O_EXCL: a user's .report.pdf.ftx-part was
    deleted, .big.bin.ftx-part truncated, and a hard link at a sidecar name made ftx write the sender's
    bytes into a file outside --dir.  ftx's partials now live in .ftx/ under names nobody can predict."""
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"outside --dir\n" * 100)
    dst = receiver.dir
    users = {
        ".report.pdf.ftx-part": b"the user's own notes\n",
        ".report.pdf.ftx-journal": b"FTXJ and the user's bytes\n",
        ".big.bin.ftx-part": b"x" * 300_000,
        ".big.bin.ftx-journal": b"y" * 1000,
    }
    for name, content in users.items():
        (dst / name).write_bytes(content)
    os.link(outside, dst / ".x.bin.ftx-part")  # a hard link to a file outside, at a sidecar name
    os.link(outside, dst / ".x.bin.ftx-journal")
    src = tmp_path / "src"
    files = {"report.pdf": write_random(src / "report.pdf", 5_000, seed=1),
             "big.bin": write_random(src / "big.bin", 3 * 1024 * 1024, seed=2),
             "x.bin": write_random(src / "x.bin", 2 * 1024 * 1024, seed=3)}
    rc, report, err = run_send(*(str(src / n) for n in files), receiver.dest)
    assert rc == 0, err
    for name, data in files.items():
        assert (dst / name).read_bytes() == data
    for name, content in users.items():
        assert (dst / name).read_bytes() == content, f"the user's {name} changed"
    assert outside.read_bytes() == b"outside --dir\n" * 100
    assert os.stat(dst / ".x.bin.ftx-part").st_ino == os.stat(outside).st_ino
    assert not (dst / ".ftx").exists(), "ftx left its state directory behind"


def test_wire_paths_into_the_state_directory_are_refused(tmp_path):
    from ftx.core.checksum import file_digest
    from ftx.core.manifest import FileEntry
    from ftx.errors import ErrorCode, UnsafePath
    from ftx.storage import Destination

    dest = Destination(tmp_path)
    for path in (b".ftx", b".ftx/j-0123", b".ftx/x/y"):
        with pytest.raises(UnsafePath) as info:
            dest.write_small(FileEntry(path, size=2), b"ok", file_digest(b"ok"))
        assert info.value.code == ErrorCode.BAD_PATH
        with pytest.raises(UnsafePath):
            dest.resolve(path)
    assert dest.write_small(FileEntry(b".ftxx", size=2), b"ok", file_digest(b"ok")) == ErrorCode.OK
    assert list(tmp_path.iterdir()) == [tmp_path / ".ftxx"]
    dest.close()


@pytest.mark.parametrize("kind", ["symlink", "file", "foreign-mode"])
def test_a_state_directory_that_is_not_ftxs_stops_the_receiver(tmp_path, kind):
    import subprocess

    dst, elsewhere = tmp_path / "dst", tmp_path / "elsewhere"
    dst.mkdir()
    elsewhere.mkdir()
    if kind == "symlink":
        os.symlink(elsewhere, dst / ".ftx")
    elif kind == "file":
        (dst / ".ftx").write_bytes(b"a user's file\n")
    else:
        (dst / ".ftx").mkdir(mode=0o777)
        os.chmod(dst / ".ftx", 0o777)
    r = subprocess.run(FTX + ["receive", "--mkdir", "--listen", "127.0.0.1", "--port", "0", "--dir", str(dst), "--once"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftx: ") and ".ftx" in lines[0] and "trust" in lines[0], r.stderr
    assert list(elsewhere.iterdir()) == []


def test_modes_go_only_to_directories_ftx_created(tmp_path, receiver):
    """A directory that was there before keeps its mode and mtime (it used to get the sender's)."""
    src = tmp_path / "src" / "tree"
    write_random(src / "pre" / "a.txt", 100)
    write_random(src / "new" / "b.txt", 100)
    for d in (src, src / "pre", src / "new"):
        os.chmod(d, 0o755)
    t = time.time() - 3 * 86400
    os.utime(src / "new", (t, t))
    pre = receiver.dir / "tree" / "pre"
    pre.mkdir(parents=True)
    os.chmod(pre, 0o711)
    os.utime(pre, (t - 86400, t - 86400))
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 0, err
    assert stat.S_IMODE(pre.stat().st_mode) == 0o711
    new = receiver.dir / "tree" / "new"
    assert stat.S_IMODE(new.stat().st_mode) == 0o755 and abs(new.stat().st_mtime - t) < 1


def test_small_files_are_durable_before_their_results_can_leave(tmp_path):
    """Small files are not fsynced one by one; the session flushes (syncfs) once per batch of events,
    inside ``handle_all``, so nothing it queued for sending reports a file that is not yet on disk."""
    from ftx.core.checksum import file_digest
    from ftx.core.frames import FrameType, encode_frame
    from ftx.core.manifest import FileEntry
    from ftx.core.messages import SmallFile
    from ftx.receiving import ReceiveSession
    from ftx.storage import Destination

    from .test_fuzz_regressions import receiver

    conn = receiver()
    dest = Destination(tmp_path / "dst")
    session = ReceiveSession(conn, dest)
    frames = b"".join(encode_frame(FrameType.SMALL_FILE, SmallFile(i, FileEntry(b"d/f%d" % i, size=2),
                                                                   file_digest(b"ok"), b"ok").encode())
                      for i in range(5))
    conn.receive_data(frames)
    events = list(iter(conn.next_event, None))
    assert len(events) == 5
    session.handle(events[0])  # one by one (as a driver must not): written, not yet flushed
    assert dest.unsynced and (tmp_path / "dst" / "d" / "f0").read_bytes() == b"ok"
    session.handle_all(events[1:])  # a batch: flushed before handle_all returns and RESULTs are sent
    assert not dest.unsynced
    assert [r.status for r in session.reports] == ["ok"] * 5
    dest.close()


def test_sync_waits_for_a_flush_in_progress_that_took_our_files(tmp_path):
    """Two connections share a Destination.  Connection B's ``sync()`` takes every dirty file
    system, A's files too, and runs syncfs; A's ``sync()`` meanwhile finds nothing dirty.  It must
    still wait for B's flush: A's RESULTs go out when it returns (before: it returned at once)."""
    import threading

    from ftx.core.checksum import file_digest
    from ftx.core.manifest import FileEntry
    from ftx.storage import Destination

    dest = Destination(tmp_path / "dst")
    assert dest.write_small(FileEntry(b"f", size=2), b"ok", file_digest(b"ok")).name == "OK"
    flushing, release = threading.Event(), threading.Event()

    def b_flush() -> None:  # B's sync() between taking the dirty set and the end of its syncfs
        with dest._sync_lock:
            with dest._lock:
                dest._dirty = {}
            flushing.set()
            release.wait(10)

    b = threading.Thread(target=b_flush)
    b.start()
    try:
        assert flushing.wait(10)
        a = threading.Thread(target=dest.sync)
        a.start()
        a.join(0.2)  # a negative check: A must still be waiting
        assert a.is_alive(), "sync() returned while the flush holding its files was still running"
    finally:
        release.set()
        b.join(10)
    a.join(10)
    assert not a.is_alive()
    dest.close()


@pytest.fixture
def mounted(tmp_path):
    """``mount(path)`` puts a small tmpfs on ``path`` (another file system below --dir); unmounted after."""
    import subprocess

    done = []

    def mount(path) -> None:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.decode().strip()}")
        done.append(path)

    yield mount
    for path in reversed(done):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _chunked(dest, name: bytes, data: bytes, chunks: range):
    from ftx.core.checksum import chunk_checksum
    from ftx.core.manifest import FileEntry
    from ftx.storage import PartialFile

    mib = 1024 * 1024
    part = PartialFile(dest, FileEntry(name, size=len(data), chunk_size=mib), dest.resolve(name))
    held, _ = part.open(resume=True)
    for i in chunks:
        piece = data[i * mib : (i + 1) * mib]
        part.write_chunk(i, chunk_checksum(piece), piece)
    return part, held


def test_a_mount_point_below_dir_keeps_the_partial_beside_its_file_and_resumes(tmp_path, mounted):
    """The data of a file under a mount point cannot be linked from .ftx (EXDEV): it is made in the
    destination's directory under a random name, resumed from there, and linked into place."""
    import random

    import xxhash

    from ftx.journal import IN_DIR, JournalHeader, journal_name
    from ftx.limits import Limits
    from ftx.storage import Destination

    root = tmp_path / "dst"
    (root / "mnt").mkdir(parents=True)
    mounted(root / "mnt")
    data = random.Random(4).randbytes(3 * 1024 * 1024 + 5)
    dest = Destination(root, limits=Limits(min_free=0))  # the 16 MiB tmpfs is below the default reserve
    part, _ = _chunked(dest, b"mnt/big.bin", data, range(2))
    part.close()  # 2 MiB verified: kept for a resume
    info = JournalHeader.parse((root / ".ftx" / os.fsdecode(journal_name(b"mnt/big.bin"))).read_bytes())
    assert info.where == IN_DIR and (root / "mnt" / os.fsdecode(info.data_name)).exists()
    part, held = _chunked(dest, b"mnt/big.bin", data, range(2, 4))
    assert held.count() == 2, "the partial beside its file was not resumed"
    assert part.finalize(xxhash.xxh3_128_digest(data)) == xxhash.xxh3_128_digest(data)
    assert (root / "mnt" / "big.bin").read_bytes() == data
    assert os.listdir(root / "mnt") == ["big.bin"] and not (root / ".ftx").exists()
    dest.close()


def test_a_mount_that_appears_during_a_transfer_gets_the_file_copied_not_hidden(tmp_path, mounted, monkeypatch):
    """Data in .ftx, then a file system is mounted over the destination's directory: the link fails
    with EXDEV and the file is copied into the mounted directory (where the path leads now)."""
    import random

    import xxhash

    from ftx import helddirs
    from ftx.storage import Destination

    root = tmp_path / "dst"
    (root / "mnt").mkdir(parents=True)
    data = random.Random(5).randbytes(2 * 1024 * 1024 + 7)
    dest = Destination(root)
    part, _ = _chunked(dest, b"mnt/big.bin", data, range(3))
    mounted(root / "mnt")
    monkeypatch.setattr(helddirs, "RECHECK", 0.0)  # as if the recheck interval had passed
    assert part.finalize(xxhash.xxh3_128_digest(data)) == xxhash.xxh3_128_digest(data)
    assert (root / "mnt" / "big.bin").read_bytes() == data  # on the mounted file system
    assert [n for n in os.listdir(root / "mnt") if n != "big.bin"] == []
    assert not (root / ".ftx").exists()
    dest.close()


@pytest.mark.parametrize("runs", [False, True])
def test_a_failed_flush_sends_no_result_of_the_batch(tmp_path, monkeypatch, runs):
    """syncfs fails after a batch of small files was written: their RESULTs (or RESULT_RUN) were
    already queued by then.  None of them may leave (the files are not known to be on disk);
    the sender is told STORAGE instead."""
    from ftx.core.checksum import file_digest
    from ftx.core.frames import FrameDecoder, FrameType, encode_frame
    from ftx.core.manifest import FileEntry
    from ftx.core.messages import Hello, SmallFile
    from ftx.errors import StorageError
    from ftx.receiving import ReceiveSession
    from ftx.storage import Destination

    from .test_fuzz_regressions import receiver

    conn = receiver()
    if runs:  # a second connection whose sender's HELLO takes RESULT_RUN
        from ftx.core.receiver import ReceiverConnection

        conn = ReceiverConnection()
        conn.receive_data(encode_frame(FrameType.HELLO, Hello(1, 1 << 20, result_run=True).encode()))
        assert conn._runs
        list(iter(conn.next_event, None))
    conn.data_to_send()
    dest = Destination(tmp_path / "dst")
    session = ReceiveSession(conn, dest)
    conn.receive_data(b"".join(encode_frame(FrameType.SMALL_FILE, SmallFile(i, FileEntry(b"d/f%d" % i, size=2),
                                                                            file_digest(b"ok"), b"ok").encode())
                               for i in range(5)))
    events = list(iter(conn.next_event, None))

    def broken_sync():
        raise StorageError("cannot flush received files to disk: [Errno 5] Input/output error")

    monkeypatch.setattr(dest, "sync", broken_sync)
    with pytest.raises(StorageError):
        session.handle_all(events)
    sent = b"".join(bytes(b) for b in conn.data_to_send())
    dec = FrameDecoder()
    dec.set_max_payload(1 << 20)
    dec.feed(sent)
    types = [f.type for f in iter(dec.next_frame, None)]
    assert FrameType.RESULT not in types and FrameType.RESULT_RUN not in types, types
    assert types == [FrameType.ERROR]
    dest.close()


def test_the_sender_ends_only_once_directory_modes_are_set(tmp_path, monkeypatch):
    """The receiver's DONE goes out after it set the modes and mtimes of the directories it made
    (SessionComplete): it went out with the last RESULT, so a sender could end, and a user look,
    before the modes were set (test_modes_go_only_to_directories_ftx_created failed now and then)."""
    import asyncio
    import subprocess

    import ftx
    from ftx.storage import Destination

    src = tmp_path / "src" / "tree"
    write_random(src / "new" / "b.txt", 100)
    os.chmod(src / "new", 0o751)
    entered, release = threading.Event(), threading.Event()
    real = Destination.finish_dirs

    def finish_dirs(dirs):  # the real one, held until the test has looked at the sender
        entered.set()
        release.wait(20)
        real(dirs)

    monkeypatch.setattr(Destination, "finish_dirs", staticmethod(finish_dirs))
    port, stop = [], threading.Event()

    async def serve():
        async with ftx.Receiver(tmp_path / "dst", mkdir=True) as r:
            port.append(r.port)
            while not stop.is_set():
                await asyncio.sleep(0.01)

    server = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    server.start()
    deadline = time.monotonic() + 20
    while not port and time.monotonic() < deadline:
        time.sleep(0.01)
    proc = start_send(str(src), f"127.0.0.1:{port[0]}")
    try:
        assert entered.wait(20)
        try:
            proc.wait(timeout=1.0)  # it must not end while the modes are not set yet
            ended = True
        except subprocess.TimeoutExpired:
            ended = False
        release.set()
        out, err = proc.communicate(timeout=20)
        assert not ended, "the sender ended before the receiver set the directory modes"
        assert proc.returncode == 0, err
        assert stat.S_IMODE((tmp_path / "dst" / "tree" / "new").stat().st_mode) == 0o751
    finally:
        release.set()
        stop.set()
        proc.kill()
        server.join(20)
