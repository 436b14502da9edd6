"""The held-directory layer (helddirs.py): descriptors from --dir down, never through a symlink, bounded."""

from __future__ import annotations

import os
import threading

import pytest

from ftx.errors import ErrorCode, StorageError, UnsafePath
from ftx.helddirs import HeldDirs, pinned


@pytest.fixture
def held(tmp_path):
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dirs = HeldDirs(root, limit=4)
    yield dirs
    dirs.close()
    os.close(root)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_components_are_made_and_their_descriptors_reused(tmp_path, held):
    with pinned(held, b"a/b/c", create=True, mode=0o750) as d:
        assert os.path.samestat(os.fstat(d.fd), os.stat(tmp_path / "a" / "b" / "c"))
        first = d.fd
    assert (tmp_path / "a" / "b" / "c").is_dir() and os.stat(tmp_path / "a").st_mode & 0o777 == 0o750 & ~_umask()
    with pinned(held, b"a/b/c") as d:
        assert d.fd == first, "the held descriptor was not reused"
    with pinned(held, b"a/b/x") as d:
        assert d is None  # missing, not asked to make it: nothing is made
    assert not (tmp_path / "a" / "b" / "x").exists()
    assert held.hold(b"") is held.root


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_a_symlink_or_a_file_on_the_way_is_refused_and_never_followed(tmp_path, held):
    outside = tmp_path.parent / (tmp_path.name + "-outside")
    outside.mkdir()
    os.symlink(outside, tmp_path / "link")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UnsafePath):
        held.hold(b"link/sub", create=True)
    with pytest.raises(StorageError) as info:
        held.hold(b"file/sub", create=True)
    assert info.value.code == ErrorCode.EXISTS
    assert list(outside.iterdir()) == []


def test_the_cache_is_bounded_and_never_closes_a_pinned_descriptor(tmp_path, held):
    base = _fds()
    pinned_one = held.hold(b"keep", create=True)
    for i in range(20):
        with pinned(held, b"d%02d" % i, create=True):
            pass
    assert held.open_count <= 4 and _fds() <= base + 4
    os.fstat(pinned_one.fd)  # still open: it was pinned throughout
    assert os.path.samestat(os.fstat(pinned_one.fd), os.stat(tmp_path / "keep"))
    held.release(pinned_one)


def test_a_held_directory_swapped_for_a_symlink_keeps_writing_into_the_real_one(tmp_path, held):
    outside = tmp_path.parent / (tmp_path.name + "-out2")
    outside.mkdir()
    d = held.hold(b"sub", create=True)
    os.rename(tmp_path / "sub", tmp_path / "moved")
    os.symlink(outside, tmp_path / "sub")
    fd = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=d.fd)
    os.close(fd)
    held.release(d)
    assert (tmp_path / "moved" / "f").exists() and list(outside.iterdir()) == []
    held.forget(b"sub")
    with pytest.raises(UnsafePath):  # once forgotten, the symlink is met -- and refused
        held.hold(b"sub/deeper", create=True)


def test_threads_share_one_descriptor_per_directory(tmp_path, held):
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                with pinned(held, b"t/%d" % (i % 6), create=True) as d:
                    os.fstat(d.fd)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(os.listdir(tmp_path / "t")) == [str(i) for i in range(6)]
    assert held.open_count <= 4


@pytest.mark.parametrize("recheck", [0.0, 1e9])
def test_a_directory_removed_or_renamed_between_transfers_is_not_written_into_again(tmp_path, monkeypatch, recheck):
    """A receiver runs for days: a user who removes or renames a received directory must find the next
    transfer's files at their path again, not in the removed (or renamed) inode ftx still held."""
    import shutil

    from ftx import helddirs
    from ftx.core.checksum import file_digest
    from ftx.core.manifest import FileEntry
    from ftx.errors import ErrorCode
    from ftx.storage import Destination

    dest = Destination(tmp_path)

    def put(path: bytes) -> ErrorCode:
        return dest.write_small(FileEntry(path, size=2), b"ok", file_digest(b"ok"))

    assert put(b"a/x") == ErrorCode.OK and put(b"b/x") == ErrorCode.OK
    shutil.rmtree(tmp_path / "a")
    os.rename(tmp_path / "b", tmp_path / "b-old")
    monkeypatch.setattr(helddirs, "RECHECK", recheck)  # as if that long had passed (0.5 s in the receiver)
    if recheck > 1:  # never looked at again: the old inodes get the files (what the recheck prevents)
        assert put(b"b/y") == ErrorCode.OK and (tmp_path / "b-old" / "y").exists()
        with pytest.raises(StorageError):
            put(b"a/y")  # into a removed directory
        dest.close()
        return
    assert put(b"a/y") == ErrorCode.OK and put(b"b/y") == ErrorCode.OK
    assert (tmp_path / "a" / "y").read_bytes() == b"ok" and (tmp_path / "b" / "y").read_bytes() == b"ok"
    assert sorted(os.listdir(tmp_path / "b-old")) == ["x"]
    dest.close()
