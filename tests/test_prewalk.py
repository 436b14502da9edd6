"""The sender's tree listed ahead (prewalk.Prewalk) while ``ftx send`` starts up.

A resend of an unchanged tree then lists again only what its report names (the first
FILES_LISTED items); the digests it checks are the walk's own; a directory changed
since it was listed ahead is sent as it is now; unusual directories and everything past
the bound are left to the walk, which sends the same groups either way.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import ftx.api as ftx_api
import ftx.prewalk
import ftx.source
from ftx.cli import main
from ftx.core.tree import ListingHasher
from ftx.prewalk import Prewalk
from ftx.source import walk_groups

from .helpers import run_send
from .test_tree_check import _many_small, shm_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(ftx.prewalk._c_prewalk is None, reason="the C helper is not built")


def _groups(src: Path, prewalk: Prewalk | None = None) -> list[tuple]:
    """Every group of a walk, as (wire, digest, count, items) with its items listed."""
    out = []
    for g in walk_groups([str(src)], prewalk=prewalk):
        count = g.count
        out.append((g.dir.wire if g.dir else None, g.digest(), count, list(g.items)))
    return out


def _listed_ahead(src: Path) -> dict:
    """Everything a Prewalk of ``src`` lists, left to finish first."""
    ahead = Prewalk([str(src)])
    ahead.wait()
    return ahead.known(os.fsencode(src))


def _odd_tree(root: Path) -> Path:
    src = root / "odd"
    for d in ("a", "a/deep/er", "b", "c", "empty", "own", "fifo", "links/sub"):
        (src / d).mkdir(parents=True, exist_ok=True)
    for rel, size in (("top.bin", 5), ("a/x", 1), ("a/deep/y", 2), ("a/deep/er/z", 3), ("b/w", 0),
                      ("c/" + "n" * 255, 4), ("links/sub/f", 6)):
        (src / rel).write_bytes(b"z" * size)
    (src / "own" / ".ftx-0123.part").write_bytes(b"p")  # a receiver's own name: the walk skips it
    os.mkfifo(src / "fifo" / "pipe")
    os.symlink("../top.bin", src / "links" / "to-top")
    os.chmod(src / "b", 0o750)
    return src


def test_the_directories_listed_ahead_give_the_walks_own_groups(tmp_path):
    src = _odd_tree(tmp_path)
    plain = _groups(src)
    assert _groups(src, Prewalk([str(src)])) == plain
    # listed ahead: the plain directories; not those holding a link, a FIFO or a receiver's own
    # name, nor anything below them ("links/sub" is the walk's)
    entries = _listed_ahead(src)
    assert set(entries) == {b"", b"a", b"a/deep", b"a/deep/er", b"b", b"c", b"empty"}
    by_wire = {wire: (digest, count) for wire, digest, count, _ in plain}
    for rel, entry in entries.items():  # each one's digest and count are the walk's
        wire = b"odd/" + rel if rel else b"odd"
        assert (ListingHasher(entry[4]).digest(), entry[3]) == by_wire[wire], rel
    assert entries[b""][5:7] == (1, 5) and entries[b"a"][5:7] == (1, 1)  # files and their bytes
    assert entries[b""][7][:2] == ((b"a", os.lstat(src / "a").st_mode), (b"b", os.lstat(src / "b").st_mode))


def test_past_the_bound_the_walk_lists_the_rest_itself(tmp_path, monkeypatch):
    src, _ = _many_small(tmp_path, 12, 10)
    plain = _groups(src)
    monkeypatch.setattr(ftx.prewalk, "PREWALK_ENTRIES", 45)  # the root's 12 entries and three directories of 10
    assert sorted(_listed_ahead(src)) == [b"", b"d000", b"d001", b"d002"]
    assert _groups(src, Prewalk([str(src)])) == plain


def test_a_walk_not_done_when_it_is_needed_ends_there_and_the_walk_lists_the_rest(tmp_path):
    src, _ = _many_small(tmp_path, 12, 10)
    plain = _groups(src)
    stopped = ftx.prewalk._c_prewalk(os.fsencode(src), 1 << 15, 64, 4096, 4096, bytearray(b"\x01"))
    assert [entry[0] for entry in stopped] == [b""]  # the named directory, listed before the flag is looked at
    assert _groups(src, Prewalk([str(src)])) == plain  # however far it got when known() stopped it
    assert len(_listed_ahead(src)) == 13  # (done before it was needed: all of it)


def _slow_prewalk(monkeypatch, seconds: float) -> list:
    """``_c_prewalk`` as one that lists for ``seconds`` (checking its stop flag each ms) and then
    gives everything, or what it had (the named directory alone) when stopped; the calls' flags."""
    real, calls = ftx.prewalk._c_prewalk, []

    def slow(root, budget, depth, max_wire, max_local, stop):
        calls.append(stop)
        found = real(root, budget, depth, max_wire, max_local, bytearray(1))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if stop[0]:
                return found[:1]
            time.sleep(0.001)
        return found

    monkeypatch.setattr(ftx.prewalk, "_c_prewalk", slow)
    return calls


def test_a_walk_ahead_about_to_end_is_waited_for_not_stopped(tmp_path, monkeypatch):
    # a re-send asked ~1 ms before the thread was done, and listed up to 3 700 entries itself
    src, _ = _many_small(tmp_path, 12, 10)
    calls = _slow_prewalk(monkeypatch, ftx.prewalk.PREWALK_WAIT / 5)
    ahead = Prewalk([str(src)])
    known = ahead.known(os.fsencode(src))
    assert len(known) == 13 and not calls[0][0]  # all of it, never told to stop


def test_a_walk_ahead_that_takes_too_long_is_stopped_after_the_wait(tmp_path, monkeypatch):
    src, _ = _many_small(tmp_path, 12, 10)
    plain = _groups(src)
    calls = _slow_prewalk(monkeypatch, 30.0)
    t0 = time.monotonic()
    ahead = Prewalk([str(src)])
    known = ahead.known(os.fsencode(src))
    waited = time.monotonic() - t0
    assert list(known) == [b""] and calls[0][0]  # stopped: the walk lists the rest
    assert ftx.prewalk.PREWALK_WAIT <= waited < ftx.prewalk.PREWALK_WAIT + 5.0
    monkeypatch.undo()
    assert _groups(src, Prewalk([str(src)])) == plain


def _send_in_process(*args: str) -> dict:
    result = CliRunner().invoke(main, ["send", *args, "--json", "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.mark.timeout(60)
def test_an_unchanged_resend_lists_again_only_what_its_report_names(shm_dir, receiver_factory, monkeypatch):  # noqa: F811
    receiver = receiver_factory(directory=shm_dir / "dst")
    src, _ = _many_small(shm_dir, 30, 100)  # 3 000 files; the report names the first 1 000 items
    assert run_send(str(src), receiver.dest)[0] == 0
    listed = []
    real = ftx.source._entries

    def entries(local, *args):  # the real listing, counted
        listed.append(local)
        return real(local, *args)

    monkeypatch.setattr(ftx.source, "_entries", entries)
    real_known = ftx.prewalk.Prewalk.known

    def known(self, local):  # the walk ahead left to finish first, as where a core is free for it
        self.wait()
        return real_known(self, local)

    monkeypatch.setattr(ftx.prewalk.Prewalk, "known", known)
    report = _send_in_process(str(src), receiver.dest)
    assert report["identical"] == 3030 and report["bytes_sent"] == 0 and report["failed"] == 0
    assert len(report["files"]) == 1000
    # the top directory and the ten of the report's first 1 000 items; 31 before (each one)
    assert len(listed) <= 12, len(listed)


@pytest.mark.timeout(60)
def test_a_directory_changed_since_it_was_listed_ahead_is_sent_as_it_is_now(shm_dir, receiver_factory):  # noqa: F811
    receiver = receiver_factory("--overwrite", directory=shm_dir / "dst")
    src, _ = _many_small(shm_dir, 3, 5)
    assert run_send(str(src), receiver.dest)[0] == 0
    ftx.prewalk.start_prewalk([str(src)])
    ftx.prewalk._started.wait()
    changed = src / "d001" / "f002"
    changed.write_bytes(b"new content, another size")  # after the listing ahead, before the check
    (src / "d002" / "g-new").write_bytes(b"a new file")
    report = ftx_api.send([str(src)], receiver.dest)
    assert report.ok, report.error
    assert (shm_dir / "dst" / "tree" / "d001" / "f002").read_bytes() == b"new content, another size"
    assert (shm_dir / "dst" / "tree" / "d002" / "g-new").read_bytes() == b"a new file"
    status = {f.path: f.status for f in report.files}
    assert status["tree/d001/f002"] == "ok" and status["tree/d002/g-new"] == "ok"
    assert status["tree/d000/f000"] == status["tree/d001/f000"] == "identical"
    assert report.bytes_sent == len(b"new content, another size") + len(b"a new file")
    assert ftx.prewalk._started is None  # taken by that send
