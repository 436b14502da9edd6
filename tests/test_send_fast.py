"""The sender's small-file path: files read by name under the directory's descriptor, no link followed.

Real receiver subprocess, real files swapped between the walk (the listing) and the read.
"""

from __future__ import annotations

import os

import pytest

import ftx
import ftx.source

pytestmark = pytest.mark.timeout(60)


def _swap_after_listing(monkeypatch, dirname: bytes, swap) -> None:
    """Run ``swap`` once the walk has listed ``dirname`` and before its group is sent."""
    real = ftx.source.walk_groups

    def walk_groups(*args, **kwargs):
        for group in real(*args, **kwargs):
            if group.dir is not None and group.dir.wire == dirname:
                swap()
            yield group

    monkeypatch.setattr(ftx.source, "walk_groups", walk_groups)


def test_a_small_file_swapped_for_a_symlink_after_the_listing_is_not_followed(tmp_path, receiver, monkeypatch):
    """The sender opened the listed path again and followed whatever was there: a local user who
    swapped a listed file for a symlink got a file outside the tree sent under its name."""
    src = tmp_path / "src" / "t"
    src.mkdir(parents=True)
    (src / "a.txt").write_bytes(b"inside!")
    (src / "b.txt").write_bytes(b"stays")
    secret = tmp_path / "secret"
    secret.write_bytes(b"SECRET!")  # the same size as a.txt: only the link decides

    def swap():
        os.unlink(src / "a.txt")
        os.symlink(secret, src / "a.txt")

    _swap_after_listing(monkeypatch, b"t", swap)
    report = ftx.send([src], receiver.dest)
    dst = receiver.dir
    assert not report.ok and report.failed == 1
    [bad] = report.failures
    assert bad.path == "t/a.txt" and bad.status == "source_changed", bad
    assert not (dst / "t" / "a.txt").exists()
    assert (dst / "t" / "b.txt").read_bytes() == b"stays"
    assert b"SECRET" not in b"".join(p.read_bytes() for p in dst.rglob("*") if p.is_file())


def test_a_small_file_that_grew_or_vanished_after_the_listing_is_reported(tmp_path, receiver, monkeypatch):
    src = tmp_path / "src" / "t"
    src.mkdir(parents=True)
    for name in ("grows", "gone", "ok"):
        (src / name).write_bytes(b"x" * 10)

    def swap():
        (src / "grows").write_bytes(b"y" * 20)
        os.unlink(src / "gone")

    _swap_after_listing(monkeypatch, b"t", swap)
    report = ftx.send([src], receiver.dest)
    by_path = {r.path: r for r in report.files}
    assert by_path["t/grows"].status == "source_changed"
    assert by_path["t/gone"].status == "storage" and "t/gone" in by_path["t/gone"].message
    assert by_path["t/ok"].status == "ok"
    assert report.failed == 2
    assert not (receiver.dir / "t" / "grows").exists()
    assert (receiver.dir / "t" / "ok").read_bytes() == b"x" * 10
