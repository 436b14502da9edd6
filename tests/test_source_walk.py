"""The sender's tree walk: deep trees (a 4096-byte wire path allows 2048 levels) do not recurse."""

from __future__ import annotations

import os
import sys

import pytest

from ftx.core.manifest import Kind
from ftx.source import walk

pytestmark = pytest.mark.timeout(60)


def test_walk_is_not_limited_by_the_recursion_limit(tmp_path):
    """A 1 100-level tree made `ftx send` die with RecursionError.  Here: 300 levels under a
    recursion limit of 150, so the tree stays shallow enough for pytest to clean it up."""
    depth = 300
    path = tmp_path / "deep"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        items = list(walk([str(path)]))
    finally:
        sys.setrecursionlimit(old)
    assert [i.kind for i in items] == [Kind.DIR] * (depth + 1) + [Kind.FILE]
    assert items[-1].wire == b"deep/" + b"d/" * depth + b"leaf"
    assert [i.wire for i in items[:3]] == [b"deep", b"deep/d", b"deep/d/d"]  # each directory before its entries


def test_walk_order_is_depth_first_sorted(tmp_path):
    for rel in ["t/b/x", "t/a/z", "t/a/y", "t/c"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"1")
    # one directory at a time (its direct entries, sorted), depth first: each directory before its entries
    assert [i.wire for i in walk([str(tmp_path / "t")])] == [
        b"t", b"t/a", b"t/b", b"t/c", b"t/a/y", b"t/a/z", b"t/b/x"]


def test_file_sizes_counts_what_a_send_offers_and_bounds_what_it_holds(tmp_path):
    """The progress bar's counting walk (ftx.source.file_sizes): sizes of the files, not of
    directories or ftx's own files; more pending directories than allowed is an OverflowError."""
    from ftx.source import file_sizes

    (tmp_path / "t" / "a" / "b").mkdir(parents=True)
    (tmp_path / "t" / "x").write_bytes(b"1" * 10)
    (tmp_path / "t" / "a" / "y").write_bytes(b"2" * 20)
    (tmp_path / "t" / "a" / "b" / "z").write_bytes(b"3" * 30)
    (tmp_path / "t" / "a" / "link").symlink_to(tmp_path / "t" / "x")
    (tmp_path / "single").write_bytes(b"4" * 5)
    assert sorted(file_sizes([str(tmp_path / "t"), str(tmp_path / "single")])) == [5, 10, 10, 20, 30]
    assert sorted(file_sizes([str(tmp_path / "t")], links=True)) == [10, 20, 30]  # a link is sent as a link
    for i in range(5):
        (tmp_path / "wide" / f"d{i}").mkdir(parents=True)
    with pytest.raises(OverflowError):
        list(file_sizes([str(tmp_path / "wide")], max_pending=3))
