"""A small file in one call (fileops.link_new) and the Temp path it falls back to: same result."""

from __future__ import annotations

import os
import stat

import pytest

from ftx import fileops
from ftx.core.checksum import file_digest
from ftx.core.manifest import FileEntry
from ftx.errors import ErrorCode, FtxError, StorageError
from ftx.storage import Destination

MTIME = 1_600_000_000_123_456_789


@pytest.fixture(params=["nameless", "nameless-python", "no-tmpfile"])
def dest(request, tmp_path, monkeypatch):
    if request.param == "no-tmpfile":  # a file system without O_TMPFILE: random names + link
        monkeypatch.setattr(fileops, "_TMPFILE", 0)
    if request.param == "nameless-python":  # the reference, as without the C helper / FTX_PURE_PYTHON=1
        monkeypatch.setattr(fileops, "_c_link_new", None)
    d = Destination(str(tmp_path))
    yield d
    d.close()


def _write(dest, path: bytes, data: bytes, mode: int = 0o644):
    return dest.write_small(FileEntry(path, size=len(data), mode=mode, mtime_ns=MTIME), data, file_digest(data))


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o777, 0o4755])
def test_small_file_lands_whole_with_mode_and_mtime(dest, tmp_path, mode):
    assert _write(dest, b"d/e/f.bin", b"x" * 1500, mode) == ErrorCode.OK
    dest.sync()
    st = os.stat(tmp_path / "d/e/f.bin")
    assert (tmp_path / "d/e/f.bin").read_bytes() == b"x" * 1500
    assert stat.S_IMODE(st.st_mode) == mode & 0o777  # beyond the umask too (set by fchmod)
    assert st.st_mtime_ns == MTIME
    assert sorted(os.listdir(tmp_path / "d/e")) == ["f.bin"]  # no temporary left behind


def test_empty_small_file(dest, tmp_path):
    assert _write(dest, b"empty", b"") == ErrorCode.OK
    assert (tmp_path / "empty").read_bytes() == b""


def test_existing_file_is_not_touched(dest, tmp_path):
    (tmp_path / "f").write_bytes(b"user's")
    with pytest.raises(StorageError) as err:
        _write(dest, b"f", b"sender's")
    assert err.value.code == ErrorCode.EXISTS
    assert (tmp_path / "f").read_bytes() == b"user's"
    assert _write(dest, b"f", b"user's") == ErrorCode.IDENTICAL  # the same content is identical
    assert os.listdir(tmp_path) == ["f"] or sorted(os.listdir(tmp_path)) == [".ftx", "f"]


def test_directory_in_the_way(dest, tmp_path):
    (tmp_path / "f").mkdir()
    with pytest.raises(StorageError) as err:
        _write(dest, b"f", b"data")
    assert err.value.code == ErrorCode.EXISTS
    assert os.listdir(tmp_path / "f") == []


@pytest.mark.parametrize("mtime_ns", [MTIME, 0, -1, -1_500_000_001])
def test_mtime_before_and_after_1970(dest, tmp_path, mtime_ns):
    data = b"old"
    entry = FileEntry(b"t", size=len(data), mode=0o644, mtime_ns=mtime_ns)
    assert dest.write_small(entry, data, file_digest(data)) == ErrorCode.OK
    assert os.stat(tmp_path / "t").st_mtime_ns == mtime_ns


def test_c_helper_matches_the_python_reference(tmp_path):
    """Where the C helper is built, ``link_new`` is it, and it leaves what ``py_link_new`` leaves."""
    impls = [fileops.py_link_new] + ([fileops.link_new] if fileops._c_link_new is not None else [])
    for i, impl in enumerate(impls):
        d = tmp_path / str(i)
        d.mkdir()
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, data, mode in [(b"a", b"x" * 3000, 0o640), (b"b", b"", 0o4755), (b"c", memoryview(b"yz"), 0o600)]:
                assert impl(fd, name, data, mode, MTIME) is True
            with pytest.raises(FileExistsError):  # never over anything: a user's file stays
                impl(fd, b"a", b"other", 0o644, MTIME)
        finally:
            os.close(fd)
        got = {n: (os.stat(d / n).st_mode, os.stat(d / n).st_mtime_ns, (d / n).read_bytes()) for n in "abc"}
        if i == 0:
            want = got
        assert got == want and sorted(os.listdir(d)) == ["a", "b", "c"]


def test_small_file_refused_while_another_connection_writes_it(dest, tmp_path):
    """write_small claims its destination inline (no claim object): a file another connection
    is writing (a partial's claim) gets BUSY and is left alone; the claim is given back after."""
    from ftx.claims import Busy, claim

    path = dest.root + b"/d/busy.bin"
    holder = object()
    with claim(path, holder):
        with pytest.raises(Busy) as info:
            _write(dest, b"d/busy.bin", b"new")
        assert info.value.holder is holder and info.value.code == ErrorCode.BUSY
        assert not (tmp_path / "d/busy.bin").exists()
        assert not claim.is_free(path)  # still the other connection's
    assert claim.is_free(path)
    assert _write(dest, b"d/busy.bin", b"new") == ErrorCode.OK
    assert claim.is_free(path)  # given back after a write
    with pytest.raises(StorageError):
        _write(dest, b"d/busy.bin", b"different")  # exists and differs
    assert claim.is_free(path)  # and after a refusal


@pytest.mark.parametrize("path", [b".ftx", b".ftx/x", b".ftx/a/b"])
def test_small_file_never_lands_in_the_state_directory(dest, tmp_path, path):
    with pytest.raises(FtxError) as info:
        _write(dest, path, b"x")
    assert info.value.code == ErrorCode.BAD_PATH
    assert not (tmp_path / os.fsdecode(path)).is_file()

