"""Re-sending an unchanged tree is nearly free: the quick check, CHECK_DIR / DIR_STATE, --checksum.

Core: the frames' decoders end in typed errors, the negotiation (HELLO flag QUICK_CHECK), the
bounds a check counts in.  Storage side: the receiver's listing digest equals the sender's for
the same directory, and what makes it differ.  End to end (real ``ftx`` processes, sealed keys
mode): an unchanged tree re-sent puts almost nothing on the wire, a changed file is not missed.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.core import events as ev
from ftx.core.frames import FrameType
from ftx.core.manifest import FileEntry, Kind
from ftx.core.messages import (
    DIR_ABSENT,
    DIR_DIFFERENT,
    DIR_SAME,
    HELLO_QUICK_CHECK,
    CheckDir,
    DirState,
)
from ftx.core.tree import MAX_CHECK_ENTRIES, dir_digest, is_ftx_own
from ftx.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ftx.source import walk_groups
from ftx.storage import Destination
from ftx import tree_state
from ftx.tree_state import NotComparable, check_directory, digest_of_directory


def directory_state(path: bytes, count: int, digest: bytes) -> int:
    """The receiver's answer for the directory at ``path`` (below its parent as --dir)."""
    root, _, name = os.fsencode(path).rpartition(b"/")
    return check_directory(Destination(root), name, count, digest)

from .helpers import run_send
from .test_core_peers import CS, Link, cfg, linked, of_type


# -- frames -----------------------------------------------------------------------------------
def test_check_dir_and_dir_state_round_trip_and_every_truncation_is_a_protocol_error():
    c = CheckDir(5, 3, bytes(range(16)), b"a/b")
    assert CheckDir.decode(c.encode()) == c
    d = DirState(5, DIR_ABSENT)
    assert DirState.decode(d.encode()) == d
    for raw, cls in ((c.encode(), CheckDir), (d.encode(), DirState)):
        for n in range(len(raw)):
            with pytest.raises(RemoteProtocolError):
                cls.decode(raw[:n])
        with pytest.raises(RemoteProtocolError):
            cls.decode(raw + b"\0")
    for state in (0, 4, 255):
        with pytest.raises(RemoteProtocolError, match="unknown DIR_STATE"):
            DirState.decode(DirState(1, state).encode())


# -- the state machines ------------------------------------------------------------------------
def test_check_dir_is_answered_and_done_waits_for_every_answer():
    link = linked()
    assert link.s.quick_check
    did = link.s.check_dir(b"d", 2, bytes(16))
    link.s.finish()
    link.pump()
    (req,) = of_type(link.take("r"), ev.DirCheckRequested)
    assert (req.dir_id, req.path, req.count) == (did, b"d", 2)
    assert not link.r.closed  # no DONE while a check awaits its answer
    link.r.dir_state(did, DIR_SAME)
    link.pump()
    states = of_type(link.take("s"), ev.DirStateReceived)
    assert states == [ev.DirStateReceived(did, DIR_SAME)]
    assert link.s.closed and link.r.closed


def test_a_sender_without_quick_check_sends_no_check_and_a_receiver_refuses_one():
    link = linked(sender_config=cfg(quick_check=False))
    assert not link.s.quick_check and not link.r.quick_check
    with pytest.raises(LocalProtocolError):
        link.s.check_dir(b"d", 0, bytes(16))
    link.s._send_frame(FrameType.CHECK_DIR, CheckDir(0, 0, bytes(16), b"d").encode())  # a peer that does anyway
    with pytest.raises(RemoteProtocolError, match="no QUICK_CHECK"):
        link.pump()


def test_an_old_receiver_gets_no_check_dir():
    """A receiver whose HELLO lacks QUICK_CHECK (an older ftx) never sees the new frames."""
    link = Link()
    link.r._out.clear()  # replace its HELLO by one without the flag
    from ftx.core.messages import Hello, ROLE_RECEIVER

    link.r._send_frame(FrameType.HELLO, Hello(ROLE_RECEIVER, link.r.config.max_payload, 0).encode())
    link.handshake()
    assert not link.s.peer.flags & HELLO_QUICK_CHECK and not link.s.quick_check
    with pytest.raises(LocalProtocolError):
        link.s.check_dir(b"d", 0, bytes(16))


def test_dir_state_for_no_check_is_a_protocol_error():
    link = linked()
    link.r._send_frame(FrameType.DIR_STATE, DirState(9, DIR_SAME).encode())
    with pytest.raises(RemoteProtocolError, match="awaits none"):
        link.pump()


def test_check_ids_count_and_claims_are_bounded():
    link = linked(receiver_config=cfg(max_files_in_flight=2))
    link.s.check_dir(b"a", 1, bytes(16))
    link.s.offer(FileEntry(b"f", Kind.FILE, 10, chunk_size=CS))
    link.pump()  # two unsettled items: the limit
    link.s._send_frame(FrameType.CHECK_DIR, CheckDir(1, 1, bytes(16), b"b").encode())
    with pytest.raises(RemoteProtocolError, match="max-files-in-flight"):
        link.pump()
    link = linked()
    link.s.check_dir(b"a", 1, bytes(16))
    link.s._send_frame(FrameType.CHECK_DIR, CheckDir(0, 1, bytes(16), b"b").encode())  # id 0 awaits its answer
    with pytest.raises(RemoteProtocolError, match="reused"):
        link.pump()
    link = linked()
    link.s._send_frame(FrameType.CHECK_DIR, CheckDir(0, MAX_CHECK_ENTRIES + 1, bytes(16), b"b").encode())
    with pytest.raises(RemoteProtocolError, match="at most"):
        link.pump()


def test_quick_check_offer_answered_identical_without_a_decision():
    link = linked()
    fid = link.s.offer(FileEntry(b"f", Kind.FILE, 100_000, chunk_size=CS))
    link.pump()
    link.take("r")
    link.r.file_result(fid, ErrorCode.IDENTICAL)  # what the receiver's quick check answers
    link.pump()
    (res,) = of_type(link.take("s"), ev.FileResolved)
    assert res.result.ok and link.s.file_state(fid) is None


# -- the receiver's listing ---------------------------------------------------------------------
def _tree(root: Path) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "b.bin").write_bytes(os.urandom(3000))
    (src / "sub" / "c").write_bytes(b"")
    os.symlink("a.txt", src / "link")
    return src


def _copy_tree(src: Path, dst: Path) -> None:
    """What a receiver makes of ``src``: same names, applied modes, sizes, mtimes, links."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src.parent)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for n in filenames:
            s, d = Path(dirpath) / n, dst / rel / n
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
                continue
            d.write_bytes(s.read_bytes())
            st = s.stat()
            os.chmod(d, st.st_mode & 0o777)
            os.utime(d, ns=(st.st_mtime_ns, st.st_mtime_ns))


def _groups(src: Path, links=True) -> dict:
    return {g.dir.wire: g for g in walk_groups([str(src)], links) if g.dir is not None}


def test_receiver_listing_digest_equals_the_senders(tmp_path):
    src = _tree(tmp_path)
    dst = tmp_path / "dst"
    _copy_tree(src, dst)
    for wire, g in _groups(src).items():
        path = os.path.join(os.fsencode(dst), wire)
        assert digest_of_directory(path) == (len(g.items), g.digest()), wire
        assert directory_state(path, len(g.items), g.digest()) == DIR_SAME
    (dst / "src" / ".ftx").mkdir()  # ftx's own state and partials are not the user's entries
    (dst / "src" / ".ftx-0123abcd.tmp").write_bytes(b"x")
    (dst / "src" / ".ftx-0123abcd.part").write_bytes(b"x")
    g = _groups(src)[b"src"]
    assert directory_state(os.path.join(os.fsencode(dst), b"src"), len(g.items), g.digest()) == DIR_SAME
    (dst / "src" / ".a.txt.ftx-part").write_bytes(b"x")  # an old ftx's sidecar name: a user's file now
    assert directory_state(os.path.join(os.fsencode(dst), b"src"), len(g.items), g.digest()) == DIR_DIFFERENT


@pytest.mark.parametrize("change", ["mtime", "size", "mode", "extra", "missing", "target", "symlinked", "fifo"])
def test_any_change_makes_the_directory_different(tmp_path, change):
    src = _tree(tmp_path)
    dst = tmp_path / "dst"
    _copy_tree(src, dst)
    d = dst / "src"
    if change == "mtime":
        os.utime(d / "b.bin", ns=(1, 1))
    elif change == "size":
        (d / "a.txt").write_bytes(b"alph")
        st = (src / "a.txt").stat()
        os.utime(d / "a.txt", ns=(st.st_mtime_ns, st.st_mtime_ns))
    elif change == "mode":
        os.chmod(d / "a.txt", 0o600)
    elif change == "extra":
        (d / "new").write_bytes(b"")
    elif change == "missing":
        (d / "b.bin").unlink()
    elif change == "target":
        (d / "link").unlink()
        os.symlink("b.bin", d / "link")
    elif change == "fifo":
        os.mkfifo(d / "zz")
    elif change == "symlinked":  # the directory itself replaced by a link to a copy of it
        os.rename(d, dst / "real")
        os.symlink("real", d)
    g = _groups(src)[b"src"]
    assert directory_state(os.fsencode(d), len(g.items), g.digest()) == DIR_DIFFERENT


def test_absent_and_bounded(tmp_path):
    assert directory_state(os.fsencode(tmp_path / "nope"), 0, dir_digest([])) == DIR_ABSENT
    (tmp_path / "empty").mkdir()  # e.g. made by the session's DIR offer: nothing to compare, send whole
    assert directory_state(os.fsencode(tmp_path / "empty"), 3, bytes(16)) == DIR_ABSENT
    assert directory_state(os.fsencode(tmp_path / "empty"), 0, dir_digest([])) == DIR_SAME
    assert directory_state(os.fsencode(tmp_path / "nope" / "deeper"), 0, dir_digest([])) == DIR_ABSENT
    big = tmp_path / "big"
    big.mkdir()
    for i in range(50):
        (big / str(i)).write_bytes(b"")
    with pytest.raises(NotComparable):  # a claim of 3 entries reads at most 4
        digest_of_directory(os.fsencode(big), 4)
    assert directory_state(os.fsencode(big), 3, dir_digest([])) == DIR_DIFFERENT
    (tmp_path / "file").write_bytes(b"")
    assert directory_state(os.fsencode(tmp_path / "file"), 0, dir_digest([])) == DIR_DIFFERENT


def test_listing_sorts_by_name_bytes_like_the_sender(tmp_path):
    """The receiver holds ``name NUL record`` per entry; its order must be the sender's name order,
    prefixes and high bytes included, or equal trees would never compare SAME."""
    from ftx.core.tree import entry_record

    d = tmp_path / "d"
    d.mkdir()
    names = [b"a", b"ab", b"a\x01", b"a-", b"\xff", b"a b", b"B"]
    records = []
    for n in names:
        path = os.path.join(os.fsencode(d), n)
        with open(path, "wb") as f:
            f.write(n)
        os.chmod(path, 0o644)
        os.utime(path, ns=(10**18, 10**18))
        records.append((n, entry_record(Kind.FILE, n, 0o644, len(n), 10**18)))
    assert digest_of_directory(os.fsencode(d)) == (len(names), dir_digest(records))


def test_listing_memory_is_bounded(tmp_path):
    """Long names and symlink targets: 65 536 of them would hold ~290 MiB; past the byte bound
    the listing is not compared (DIFFERENT: the sender goes item by item), and what it held is freed."""
    from ftx.tree_state import _digest_fd

    d = tmp_path / "links"
    d.mkdir()
    for i in range(40):
        os.symlink("t" * 4000 + str(i), d / ("n" * 200 + str(i)))
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        count, digest = _digest_fd(fd, 100)  # 40 x ~4.3 KB: within the default bound
        assert count == 40
        with pytest.raises(NotComparable, match="larger than"):
            _digest_fd(fd, 100, budget=100_000)
    finally:
        os.close(fd)


def _listing_outcome(fn, fd, limit, budget):
    try:
        return fn(fd, limit, budget)
    except NotComparable:
        return "not comparable"


@pytest.mark.skipif(tree_state._c_dir_digest is None, reason="the C helper is not built here")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(st.sampled_from([b"a", b"ab", b"a\x01", b"\xff", b"B", b".ftx", b".ftx-1.tmp",
                                                   b".ftx-2.part", b".ftx-x", b"z" * 200, b"m", b"dir"]),
                                  st.sampled_from(["file", "dir", "link", "fifo"]), st.integers(0, 3000),
                                  st.sampled_from([0o600, 0o644, 0o755, 0o4755])), max_size=10),
       limit=st.integers(0, 12), budget=st.sampled_from([0, 200, 600, 1000, 2000, 16 << 20]))
def test_the_c_listing_equals_the_python_listing(tmp_path, entries, limit, budget):
    """The receiver's CHECK_DIR listing in C gives the Python listing's answer: the same count and
    digest, or "not comparable" at the same entry and byte bounds; what C leaves to Python (symlinks,
    special files) is judged there."""
    d = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    for name, kind, size, mode in entries:
        path = os.path.join(os.fsencode(d), name)
        if os.path.lexists(path):
            continue
        if kind == "file":
            with open(path, "wb") as f:
                f.write(bytes(size))
            os.chmod(path, mode)
        elif kind == "dir":
            os.mkdir(path, mode & 0o777)
        elif kind == "link":
            os.symlink(b"t" * (size + 1), path)
        else:
            os.mkfifo(path)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        held = sum(2 * len(n) + 54 + (16 if os.path.isfile(os.path.join(os.fsencode(d), n)) else 0)
                   for n in os.listdir(os.fsencode(d)) if not is_ftx_own(n))  # tree_state's count: at the edge too
        for lim, bud in ((limit, budget), (limit + 20, held), (limit + 20, held - 1)):
            got = _listing_outcome(tree_state._listing_digest, fd, lim, bud)
            assert got == _listing_outcome(tree_state.py_listing_digest, fd, lim, bud)
    finally:
        os.close(fd)


# -- end to end ------------------------------------------------------------------------------------
class CountingProxy:
    """A TCP relay on loopback that counts the bytes it carries each way."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.up = self.down = 0
        self.up_reads = 0  # reads of what the sender wrote (at most its writes)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=30)
            for a, b, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, a, b, up: bool) -> None:
        try:
            while data := a.recv(65536):
                self._carry(data, b, up)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _carry(self, data: bytes, b, up: bool) -> None:
        """What was read from one side, to the other (``up``: from the sender)."""
        b.sendall(data)
        with self._lock:
            if up:
                self.up += len(data)
                self.up_reads += 1
            else:
                self.down += len(data)

    def take(self) -> tuple[int, int]:
        with self._lock:
            out, self.up, self.down = (self.up, self.down), 0, 0
        return out

    def close(self) -> None:
        self.sock.close()


def _many_small(root: Path, dirs: int, per_dir: int) -> tuple[Path, int]:
    src = root / "tree"
    total = 0
    for d in range(dirs):
        sub = src / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            data = os.urandom((d * per_dir + f) % 2048)
            (sub / f"f{f:03}").write_bytes(data)
            total += len(data)
    return src, total


@pytest.fixture
def shm_dir():
    """tmpfs where there is one: a thousand files' fsyncs on a shared disk take many seconds."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="ftx-tree-check-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(120)
def test_resending_an_unchanged_tree_puts_under_one_percent_on_the_wire(shm_dir, receiver_factory):
    receiver = receiver_factory(directory=shm_dir / "dst")
    src, content = _many_small(shm_dir, 10, 100)  # 1 000 files, ~1 MB
    proxy = CountingProxy(receiver.port)
    try:
        rc, first, err = run_send(str(src), f"127.0.0.1:{proxy.port}")
        assert rc == 0, err
        up1, _ = proxy.take()
        assert up1 > content and first["identical"] == 0
        rc, again, err = run_send(str(src), f"127.0.0.1:{proxy.port}")
        assert rc == 0, err
        up2, down2 = proxy.take()
    finally:
        proxy.close()
    assert again["file_count"] == first["file_count"] == 1011
    assert again["identical"] == 1010 and again["bytes_sent"] == 0  # all but the top directory
    print(f"wire bytes: first send {up1}, again {up2} + {down2}; content {content}")
    assert up2 + down2 < content / 100, (up2, down2, content)


@pytest.mark.timeout(60)
def test_an_unchanged_tree_is_checked_in_batches_not_one_directory_per_write(shm_dir, receiver_factory):
    """The sender writes its CHECK_DIRs in batches (sending.CHECK_BATCH), so the receiver lists a
    batch per wake-up and answers it in one write: one check per write, answered one per round
    trip, kept both sides alternating (each waiting on the other) instead of working side by side."""
    from ftx.sending import CHECK_BATCH

    receiver = receiver_factory(directory=shm_dir / "dst")
    src, _ = _many_small(shm_dir, 120, 3)
    assert run_send(str(src), receiver.dest)[0] == 0
    proxy = CountingProxy(receiver.port)
    try:
        rc, again, err = run_send(str(src), f"127.0.0.1:{proxy.port}")
    finally:
        proxy.close()
    assert rc == 0 and again["identical"] == 480, err
    # the handshake's and HELLO's few writes, the checks' 120 / CHECK_BATCH and DONE (21 here); with one
    # check per write, 50 or more (reads coalesce writes)
    assert proxy.up_reads <= 12 + 120 // CHECK_BATCH, proxy.up_reads


@pytest.mark.timeout(60)
def test_a_changed_file_is_not_missed_and_checksum_sees_what_the_quick_check_cannot(tmp_path, receiver):
    src = tmp_path / "t"
    (src / "s").mkdir(parents=True)
    (src / "s" / "small").write_bytes(b"one" * 100)
    (src / "s" / "big").write_bytes(os.urandom(200_000))
    (src / "s" / "same").write_bytes(b"unchanged")
    assert run_send(str(src), receiver.dest)[0] == 0
    # a new mtime (same size): the directory differs, the file is offered, the receiver has other bytes
    (src / "s" / "small").write_bytes(b"two" * 100)
    rc, report, err = run_send(str(src), receiver.dest)
    status = {f["path"]: f["status"] for f in report["files"]}
    assert rc == 1 and status["t/s/small"] == "exists" and status["t/s/same"] == "identical", err
    # t is unchanged (its entry s too), t/s is not: s is offered again (its mtime is set again), once
    assert report["file_count"] == len(report["files"]) == 5 and status["t/s"] == "ok"
    assert (receiver.dir / "t" / "s" / "small").read_bytes() == b"one" * 100  # no --overwrite: not replaced
    # same size and the old mtime put back: the quick check cannot tell, --checksum can
    st = (receiver.dir / "t" / "s" / "small").stat()
    os.utime(src / "s" / "small", ns=(st.st_mtime_ns, st.st_mtime_ns))
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 0 and {f["status"] for f in report["files"] if f["kind"] == "file"} == {"identical"}, err
    assert report["file_count"] == 5 and report["identical"] == 4  # all but t, offered as an argument
    rc, report, err = run_send(str(src), receiver.dest, "--checksum")
    status = {f["path"]: f["status"] for f in report["files"]}
    assert rc == 1 and status["t/s/small"] == "exists", err
    assert status["t/s/big"] == status["t/s/same"] == "identical" and report["bytes_sent"] == 0


# -- memory flat with the number of files ------------------------------------------------------
def _send_rss(*args: str) -> tuple[int, dict]:
    """Run ``ftx send --json``; (exit code, report, peak RSS bytes of that process)."""
    import json
    import subprocess

    from .helpers import FTX

    proc = subprocess.Popen(FTX + ["send", *args, "--json", "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return ru.ru_maxrss * 1024, json.loads(out)


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(300)
def test_memory_stays_flat_with_the_number_of_files(shm_dir, receiver_factory):
    """20 000 empty files cost either side no more memory than 2 000 (per-file reports,
    the walk held whole and per-file tables grew ~1 KB a file: 18 MB here)."""
    peaks = {}
    for n in (2_000, 20_000):
        src = shm_dir / f"src{n}"
        for i in range(n):
            d = src / f"d{i % (n // 100):03}"
            if i < n // 100:
                d.mkdir(parents=True)
            (d / f"f{i:05}").touch()
        r = receiver_factory(directory=shm_dir / f"dst{n}")
        send_rss, report = _send_rss(str(src), r.dest)
        events = r.events_until("session", timeout=120)
        assert events[-1]["complete"] and events[-1]["files"] == n + n // 100 + 1
        assert report["file_count"] == n + n // 100 + 1 and len(report["files"]) <= 2000
        peaks[n] = (send_rss, _peak_rss(r.proc.pid))
    grew = [big - small for small, big in zip(peaks[2_000], peaks[20_000])]
    assert max(grew) < 6 << 20, f"peak RSS grew by {[g >> 10 for g in grew]} KiB (send, receive) for 18 000 files"


@pytest.mark.timeout(60)
def test_resending_over_udp_uses_the_same_checks(shm_dir, receiver_factory):
    """The checks ride UDP's control stream like every other frame."""
    receiver = receiver_factory(directory=shm_dir / "dst")
    src, _ = _many_small(shm_dir, 3, 20)
    (src / "d000" / "big").write_bytes(os.urandom(300_000))  # the per-file quick check, above SMALL_FILE
    rc, first, err = run_send(str(src), receiver.dest, "--udp")
    assert rc == 0 and first["identical"] == 0, err
    rc, again, err = run_send(str(src), receiver.dest, "--udp")
    assert rc == 0, err
    assert again["identical"] == again["file_count"] - 1 == 64 and again["bytes_sent"] == 0


class AnswerHoldingProxy(CountingProxy):
    """A plaintext (--insecure) TCP relay that counts the sender's CHECK_DIR frames and holds the
    receiver's first DIR_STATE back until ``want`` checks went up (or ``patience`` s passed): how
    many checks a sender writes before it waits for an answer."""

    def __init__(self, target_port: int, want: int, patience: float = 3.0) -> None:
        self.want, self.patience = want, patience
        self.checks_up = 0
        self.checks_before_answer: int | None = None  # CHECK_DIRs written before the first answer passed
        self._cond = threading.Condition()
        self._held = {True: bytearray(), False: bytearray()}  # each direction's bytes short of a frame
        super().__init__(target_port)

    def _carry(self, data: bytes, b, up: bool) -> None:
        from ftx.core.frames import HEADER, HEADER_SIZE

        held = self._held[up]
        held += data
        while len(held) >= HEADER_SIZE:  # whole frames only, each looked at
            ftype, _, _, length, _ = HEADER.unpack_from(held)
            if len(held) < HEADER_SIZE + length:
                break
            frame = bytes(held[:HEADER_SIZE + length])
            del held[:HEADER_SIZE + length]
            with self._cond:
                if up and ftype == 0x20:
                    self.checks_up += 1
                    self._cond.notify_all()
                elif not up and ftype == 0x21 and self.checks_before_answer is None:
                    self._cond.wait_for(lambda: self.checks_up >= self.want, self.patience)
                    self.checks_before_answer = self.checks_up
            b.sendall(frame)


@pytest.mark.timeout(60)
def test_every_check_of_an_unchanged_tree_goes_out_before_the_sender_waits_for_an_answer(shm_dir, receiver_factory):
    """A re-send's time is the receiver's listing of every directory: the sender writes the checks of
    all of them at once (up to sending.CHECKS_AHEAD), so that the receiver lists them back to back.
    (32 ahead, refilled at 16, the receiver sat idle for a round trip and the sender's refill after
    each batch: ~10 ms of a 100 ms re-send of 200 directories.)"""
    receiver = receiver_factory("--insecure", directory=shm_dir / "dst")
    src, _ = _many_small(shm_dir, 120, 3)
    assert run_send(str(src), receiver.dest, "--insecure")[0] == 0
    proxy = AnswerHoldingProxy(receiver.port, want=121)  # 120 directories and the tree's own
    try:
        rc, again, err = run_send(str(src), f"127.0.0.1:{proxy.port}", "--insecure")
    finally:
        proxy.close()
    assert rc == 0 and again["identical"] == 480, err
    assert proxy.checks_up == 121
    assert proxy.checks_before_answer == 121, proxy.checks_before_answer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "no-overwrite"])
def test_a_touched_file_found_identical_takes_the_senders_mtime(shm_dir, receiver_factory, overwrite):
    """A source file touched (new mtime, same content): its quick check fails, the digests match
    and it is reported identical.  With --overwrite the receiver then gives its file the sender's
    mode and mtime, as a received file has, so that the next re-send finds the directory unchanged
    (it kept the old mtime: every later re-send compared the directory, then hashed the file on both
    sides).  Without --overwrite it touches no file it finds."""
    receiver = receiver_factory(*(["--overwrite"] if overwrite else []), directory=shm_dir / "dst")
    src, _ = _many_small(shm_dir, 2, 3)
    assert run_send(str(src), receiver.dest)[0] == 0
    touched = src / "d001" / "f002"
    touched.chmod(0o640)
    os.utime(touched, ns=(1_600_000_000_123_456_789,) * 2)
    rc, again, err = run_send(str(src), receiver.dest)
    assert rc == 0 and again["failed"] == 0 and again["bytes_sent"] == 0, err
    assert {f["path"]: f["status"] for f in again["files"]}["tree/d001/f002"] == "identical"
    got = os.stat(shm_dir / "dst" / "tree" / "d001" / "f002")
    if overwrite:
        assert (got.st_mtime_ns, got.st_mode & 0o777) == (1_600_000_000_123_456_789, 0o640)
    else:
        assert got.st_mtime_ns != 1_600_000_000_123_456_789 and got.st_mode & 0o777 != 0o640
    touched.chmod(0o604)  # its mode only: the quick check (size, mtime) says identical
    rc, again, err = run_send(str(src), receiver.dest)
    assert rc == 0 and again["failed"] == 0 and again["bytes_sent"] == 0, err
    got = os.stat(shm_dir / "dst" / "tree" / "d001" / "f002")
    assert (got.st_mode & 0o777 == 0o604) == overwrite


def test_a_found_file_changed_after_it_was_hashed_keeps_its_own_mtime(tmp_path):
    """Between the hash that found a file identical and the mtime given to it, another process
    wrote to it: its content is no longer the one hashed, and giving it the sender's mtime would
    make the next quick check call it unchanged.  Its ctime moved (nobody can set that back): left."""
    from ftx.core.manifest import FileEntry

    dest = Destination(str(tmp_path), overwrite=True)
    (tmp_path / "f").write_bytes(b"same")
    entry = FileEntry(b"f", Kind.FILE, 4, 0o600, 1_600_000_000_000_000_000)
    found = dest.existing(dest.resolve(b"f"))
    with open(tmp_path / "f", "r+b") as f:  # (same size, new content)
        f.write(b"SAME")
    mtime = os.stat(tmp_path / "f").st_mtime_ns
    dest.adopt(dest.resolve(b"f"), entry, found)
    assert os.stat(tmp_path / "f").st_mtime_ns == mtime
    found = dest.existing(dest.resolve(b"f"))  # unchanged since found: it takes them
    dest.adopt(dest.resolve(b"f"), entry, found)
    assert os.stat(tmp_path / "f").st_mtime_ns == 1_600_000_000_000_000_000
    dest.close()
