"""A run of small files as one unit: decoded in one pass (FrameDecoder.small_run, ReceiverConnection
with small_runs=True), stored by one call (Destination.write_small_run, fileops.link_run), settled
together (files_ok, RunReport, cli_output.emit_run) -- each tested to agree with the file-by-file path."""

from __future__ import annotations

import io
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ftx import claims, cli_output, fileops, receiving
from ftx.core import events as ev
from ftx.core.checksum import file_digest
from ftx.core.config import Config
from ftx.core.frames import BufferBudget, FrameDecoder, FrameType, encode_frame, READAHEAD
from ftx.core.manifest import FileEntry
from ftx.core.messages import OfferSummary, SmallFile
from ftx.core.receiver import ReceiverConnection
from ftx.core.sender import SenderConnection
from ftx.errors import ErrorCode, FtxError, RemoteProtocolError, StorageError
from ftx.limits import Limits
from ftx.storage import Destination

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
            if run:
                out = dest.write_small_run(entries, datas, digests)
            else:
                out = []
                for e, d, g in zip(entries, datas, digests):
                    try:
                        out.append(dest.write_small(e, d, g))
                    except (FtxError, OSError) as exc:
                        out.append(exc)
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


def test_write_small_run_min_free_refuses_exactly_as_one_by_one(tmp_path, flavour):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    dest = Destination(str(tmp_path), limits=Limits(min_free=free - 3000))  # room for ~3000 bytes
    try:
        entries = [FileEntry(b"f%d" % i, size=1000, mode=0o644, mtime_ns=MTIME) for i in range(6)]
        out = dest.write_small_run(entries, [b"x" * 1000] * 6, [file_digest(b"x" * 1000)] * 6)
    finally:
        dest.close()
    ok = [o is ErrorCode.OK for o in out]
    assert ok[0] and not ok[-1]  # the first fit, the last not
    assert all(isinstance(o, StorageError) and "--min-free" in str(o) for o in out if o is not ErrorCode.OK)
    assert sorted(os.listdir(tmp_path)) == sorted(f"f{i}" for i, k in enumerate(ok) if k)
