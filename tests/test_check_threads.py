"""The receiver answers a run of CHECK_DIRs with two threads listing side by side
(tree_state.check_directories): every answer as one thread would give it, in order."""

from __future__ import annotations

import os
import threading

from ftx import tree_state
from ftx.core.messages import DIR_ABSENT, DIR_DIFFERENT, DIR_SAME
from ftx.source import walk_groups
from ftx.storage import Destination


def test_a_run_of_checks_is_listed_by_two_threads_and_answered_in_order(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for d in range(40):
        for f in range(20):
            (src / f"d{d:02}").mkdir(parents=True, exist_ok=True)
            (src / f"d{d:02}" / f"f{f}").write_bytes(b"x" * (d + f))
    groups = [g for g in walk_groups([str(src)]) if g.dir is not None and g.dir.wire != b"src"]
    dst = tmp_path / "dst"
    dst.mkdir()
    os.rename(src, dst / "src")  # the receiver's copy: the same entries, sizes and mtimes
    (dst / "src" / "d03" / "f1").write_bytes(b"changed")
    (dst / "src" / "d05" / "f0").unlink()
    for f in (dst / "src" / "d07").iterdir():
        f.unlink()  # empty: as absent
    checks = [(g.dir.wire, g.count, g.digest()) for g in groups] + [(b"src/nothing", 1, bytes(16))]
    threads = set()
    real = tree_state.check_directory

    def check_directory(*args):  # the real check, and the thread it ran on
        threads.add(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(tree_state, "check_directory", check_directory)
    dest = Destination(str(dst))
    want = [DIR_SAME] * 40 + [DIR_ABSENT]
    want[3] = want[5] = DIR_DIFFERENT
    want[7] = DIR_ABSENT
    for _ in range(20):  # (the helper may be slow to start: a run where it took none is answered all the same)
        assert tree_state.check_directories(dest, checks) == want
        if len(threads) == 2:
            break
    assert len(threads) == 2


def test_the_sessions_thread_never_waits_for_a_helper_that_is_not_running(tmp_path, monkeypatch):
    """The helper takes a check and then does not run (a busy machine): the run is answered all the
    same, that check listed again by the session's thread, while the helper still holds it."""
    for d in range(6):
        (tmp_path / "dst" / f"d{d}").mkdir(parents=True)
        (tmp_path / "dst" / f"d{d}" / "f").write_bytes(b"x" * d)
    dest = Destination(str(tmp_path / "dst"))
    checks = [(f"d{d}".encode(), 1, bytes(16)) for d in range(6)]
    real = tree_state.check_directory
    session = threading.get_ident()
    holds, release, held_done = threading.Event(), threading.Event(), threading.Event()

    def check_directory(*args):  # the real check; the helper's first one stalls until released
        if threading.get_ident() == session:
            holds.wait(10)  # (the session's thread goes on once the helper surely took one)
        elif not holds.is_set():
            holds.set()
            release.wait(5)
            held_done.set()
        return real(*args)

    monkeypatch.setattr(tree_state, "check_directory", check_directory)
    try:
        states = tree_state.check_directories(dest, checks)
        assert holds.is_set() and not held_done.is_set()  # answered while the helper still held its check
        assert states == [DIR_DIFFERENT] * 6  # (each holds one file, not the claimed digest)
    finally:
        release.set()
