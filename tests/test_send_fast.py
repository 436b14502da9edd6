"""The sender's small-file path: files read by name under the directory's descriptor, no link followed.

Real receiver subprocess, real files swapped between the walk (the listing) and the read.
"""

from __future__ import annotations

import os

import pytest

import ftx
import ftx.smallrun
import ftx.source

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True, params=["c", "python"] if ftx.smallrun._c_frames is not None else ["python"])
def smallrun_impl(request, monkeypatch):
    """Every test with the C helper that lists directories and reads and frames runs of small
    files, and with its Python reference (as without the helper, or FTX_PURE_PYTHON=1)."""
    if request.param == "python":
        monkeypatch.setattr(ftx.smallrun, "_c_frames", None)
        monkeypatch.setattr(ftx.source, "_c_listing", None)
    return request.param


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


def test_a_small_file_changed_after_the_listing_goes_as_it_is_now(tmp_path, receiver, monkeypatch):
    """Read as listed, with no fstat: a file that grew (even past the small-file limit) or
    shrank since is sent as it is now (stat'ed again); one that vanished or became a FIFO
    is a failure (and the FIFO does not block the sender)."""
    src = tmp_path / "src" / "t"
    src.mkdir(parents=True)
    for name in ("grows", "gone", "ok", "shrinks", "large", "pipe"):
        (src / name).write_bytes(b"x" * 10)
    large = os.urandom(300_000)

    def swap():
        (src / "grows").write_bytes(b"y" * 20)
        (src / "shrinks").write_bytes(b"")
        (src / "large").write_bytes(large)
        os.utime(src / "large", ns=(1, 1_000_000_000))
        os.unlink(src / "gone")
        os.unlink(src / "pipe")
        os.mkfifo(src / "pipe")  # opened and read, it would block a sender for ever

    _swap_after_listing(monkeypatch, b"t", swap)
    report = ftx.send([src], receiver.dest)
    by_path = {r.path: r for r in report.files}
    assert by_path["t/gone"].status == "storage" and "t/gone" in by_path["t/gone"].message
    assert by_path["t/pipe"].status == "source_changed", by_path["t/pipe"]
    assert report.failed == 2
    dst = receiver.dir / "t"
    assert [by_path[f"t/{n}"].status for n in ("grows", "ok", "shrinks", "large")] == ["ok"] * 4
    assert (dst / "grows").read_bytes() == b"y" * 20
    assert (dst / "shrinks").read_bytes() == b""
    assert (dst / "ok").read_bytes() == b"x" * 10
    assert (dst / "large").read_bytes() == large and (dst / "large").stat().st_mtime_ns == 1_000_000_000
    assert (dst / "grows").stat().st_mtime_ns == (src / "grows").stat().st_mtime_ns


def test_a_listed_directory_swapped_for_a_symlink_is_not_walked_into(tmp_path, receiver, monkeypatch):
    """The walk listed a subdirectory by its path again, following a symlink put there since."""
    src = tmp_path / "src" / "t"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "mine").write_bytes(b"mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private").write_bytes(b"PRIVATE")

    def swap():
        os.rename(src / "sub", tmp_path / "moved")
        os.symlink(outside, src / "sub")

    _swap_after_listing(monkeypatch, b"t", swap)
    report = ftx.send([src], receiver.dest)
    assert report.file_count == 2, report.files  # t and t/sub (as the listing saw it), nothing in it
    assert not (receiver.dir / "t" / "sub" / "private").exists()
    assert b"PRIVATE" not in b"".join(p.read_bytes() for p in receiver.dir.rglob("*") if p.is_file())


def _many(root, dirs: int, per_dir: int) -> int:
    total = 0
    for d in range(dirs):
        (root / f"d{d:02d}").mkdir(parents=True)
        for f in range(per_dir):
            data = bytes([f % 251]) * ((d * per_dir + f) % 700)
            (root / f"d{d:02d}" / f"f{f:03d}").write_bytes(data)
            total += len(data)
    return total


def test_beyond_the_listed_files_small_files_are_counted_and_failures_still_named(tmp_path, receiver, monkeypatch):
    """Past the first 1000 reports a small file that arrived is only counted (no report
    object); one that failed there is still listed, by name, and every total is right."""
    src = tmp_path / "src" / "t"
    total = _many(src, 12, 100)
    victim = src / "d11" / "f050"
    lost = victim.stat().st_size
    _swap_after_listing(monkeypatch, b"t/d11", lambda: os.unlink(victim))
    report = ftx.send([src], receiver.dest)
    assert report.file_count == 1 + 12 + 1200 and report.failed == 1
    assert report.bytes == total - lost and report.bytes_sent == total - lost
    # the first 1000 settled, plus the failure if it settled after them (results come in the order
    # they settle, which a deleted file's early failure can change)
    assert len(report.files) == 1000 + (report.files[-1].path == "t/d11/f050" and
                                        "t/d11/f050" not in [f.path for f in report.files[:1000]])
    assert "t/d11/f050" in [f.path for f in report.files]
    assert [f.path for f in report.failures] == ["t/d11/f050"]
    assert sum(1 for p in receiver.dir.rglob("*") if p.is_file()) == 1199


@pytest.mark.parametrize("peer", ["result_run", "one_result_per_file"])
def test_runs_keep_the_senders_bookkeeping_within_the_offer_window(tmp_path, receiver, monkeypatch, peer):
    """A run of small files is one object until its results: what the sender holds for files in
    flight (reports, file states, digests) stays within the offer window however many files go,
    with a receiver that settles them by RESULT_RUN or one RESULT per file (a peer without it)."""
    from ftx.core.config import Config
    from ftx.core.sender import SenderConnection
    from ftx.sending import SendSession

    src = tmp_path / "src" / "t"
    total = _many(src, 15, 100)
    if peer == "one_result_per_file":
        real_init = SenderConnection.__init__

        def init(self, config=None, receipt=None):
            config = config or Config()
            config.result_run = False  # the HELLO asks for no RESULT_RUN: one RESULT per file
            real_init(self, config, receipt)

        monkeypatch.setattr(SenderConnection, "__init__", init)
    peak = {"reports": 0, "runs": 0, "files": 0, "sent": 0}
    real_send_run = SendSession._send_run

    def send_run(self, *args):
        nxt = real_send_run(self, *args)
        conn = self.conn
        for key, n in (("reports", len(self._reports)), ("runs", len({id(r) for r in self._reports.values()})),
                       ("files", len(conn._files)), ("sent", len(conn._sent or ()))):
            peak[key] = max(peak[key], n)
        return nxt

    monkeypatch.setattr(SendSession, "_send_run", send_run)
    runs_settled = []
    real_on_run = SendSession._on_run
    monkeypatch.setattr(SendSession, "_on_run", lambda self, *a: runs_settled.append(a[1]) or real_on_run(self, *a))
    report = ftx.send([src], receiver.dest)
    assert (sum(runs_settled) > 1000) == (peer == "result_run")
    assert report.ok and report.file_count == 1 + 15 + 1500 and report.bytes == total
    window = Config().offer_window
    assert 0 < peak["runs"] <= peak["reports"] <= window and peak["files"] <= window and peak["sent"] <= window, peak
    assert sum(1 for p in receiver.dir.rglob("*") if p.is_file()) == 1500


def test_a_receiver_killed_mid_run_leaves_every_file_sent_reported(tmp_path, receiver, monkeypatch):
    """SIGKILL of the receiver while runs of small files are in flight: the send fails with the
    reason, and every file it framed is in the counts, those without a result as aborted (each
    named, though its run kept no report of its own until then)."""
    from ftx.sending import SendSession

    src = tmp_path / "src" / "t"
    _many(src, 15, 100)
    calls = []
    real_send_run = SendSession._send_run

    def send_run(self, reader, items, start, *args):
        nxt = real_send_run(self, reader, items, start, *args)
        if nxt > start:
            calls.append(items[start:nxt])
            if len(calls) == 3:  # this run is queued, not yet written: its files can have no result
                receiver.kill()
        return nxt

    monkeypatch.setattr(SendSession, "_send_run", send_run)
    report = ftx.send([src], receiver.dest)
    assert not report.ok and report.error
    aborted = [f for f in report.failures if f.status == "aborted"]
    assert aborted and report.failed == len(report.failures) == len(aborted) <= report.file_count
    files = [f for f in aborted if f.kind == "file"]
    assert {i.wire.decode() for i in calls[2]} <= {f.path for f in files}
    assert files and all((src.parent / f.path).is_file() and f.size == (src.parent / f.path).stat().st_size
                         and f.message for f in files)


def test_the_cli_json_summary_counts_every_small_file(tmp_path, receiver):
    from .helpers import run_send

    src = tmp_path / "src" / "t"
    total = _many(src, 11, 100)
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 0, err
    assert report["file_count"] == 1 + 11 + 1100 and report["failed"] == 0 and report["ok"]
    assert report["bytes"] == total and report["bytes_sent"] == total
    assert len(report["files"]) == 1000 and report["files_truncated"]
    assert all(f["status"] == "ok" and len(f["digest"]) == 32 for f in report["files"] if f["kind"] == "file")


def test_an_in_tree_link_to_a_small_file_still_goes_as_that_file(tmp_path, receiver):
    """Not a listed file of its directory (its item names the link's target): read by that path."""
    src = tmp_path / "src" / "t"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "real").write_bytes(b"real bytes")
    (src / "alias").symlink_to("sub/real")
    report = ftx.send([src], receiver.dest)
    assert report.ok, report.failures
    assert (receiver.dir / "t" / "alias").read_bytes() == b"real bytes"
    assert not (receiver.dir / "t" / "alias").is_symlink()


def test_a_directory_named_by_a_symlink_sends_its_small_files(tmp_path, receiver):
    """A named argument is followed (the user asked for it), also by the small-file reader."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "a").write_bytes(b"A")
    (tmp_path / "named").symlink_to(real)
    report = ftx.send([tmp_path / "named"], receiver.dest)
    assert report.ok, report.failures
    assert (receiver.dir / "named" / "a").read_bytes() == b"A"


def test_a_large_file_swapped_for_a_symlink_after_the_listing_is_not_followed(tmp_path, receiver, monkeypatch):
    """Large files of a listed directory are opened under its descriptor too (they were opened
    by path, following whatever was there)."""
    src = tmp_path / "src" / "t"
    src.mkdir(parents=True)
    (src / "big").write_bytes(b"i" * 200_000)
    secret = tmp_path / "secret"
    secret.write_bytes(b"S" * 200_000)

    def swap():
        os.unlink(src / "big")
        os.symlink(secret, src / "big")

    _swap_after_listing(monkeypatch, b"t", swap)
    report = ftx.send([src], receiver.dest)
    [bad] = report.failures
    assert bad.path == "t/big" and bad.status == "source_changed", bad
    assert not (receiver.dir / "t" / "big").exists()


def test_a_large_file_of_a_directory_swapped_for_a_symlink_after_its_listing_is_not_followed(
        tmp_path, receiver, monkeypatch):
    """The listed directory itself became a symlink before its files were read: its reader
    cannot open it (O_NOFOLLOW), and a large file of it was then opened by its path, through
    the symlink, out of the tree."""
    src = tmp_path / "src" / "t"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "big").write_bytes(b"i" * 200_000)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"S" * 200_000)

    def swap():
        os.rename(src / "sub", tmp_path / "moved")
        os.symlink(outside, src / "sub")

    _swap_after_listing(monkeypatch, b"t/sub", swap)
    report = ftx.send([src], receiver.dest)
    assert [f.path for f in report.failures] == ["t/sub/big"], report.files
    assert b"S" * 100 not in b"".join(p.read_bytes() for p in receiver.dir.rglob("*") if p.is_file())


@pytest.mark.parametrize("swap_at", [b"t/sub", b"t/sub/inner"])
def test_a_parent_directory_swapped_for_a_symlink_is_not_walked_through(tmp_path, receiver, monkeypatch, swap_at):
    """O_NOFOLLOW guards only a path's last component: t/sub swapped for a symlink to a directory
    outside that holds an ``inner`` of its own, after t/sub was listed, led the walk (listing
    t/sub/inner by its path) or the reader (opening it) out of the tree."""
    src = tmp_path / "src" / "t"
    (src / "sub" / "inner").mkdir(parents=True)
    (src / "sub" / "inner" / "mine").write_bytes(b"mine")
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "mine").write_bytes(b"PRIVATE")
    (outside / "inner" / "private").write_bytes(b"PRIVATE")
    (outside / "inner" / "big").write_bytes(b"P" * 200_000)

    def swap():
        os.rename(src / "sub", tmp_path / "moved")
        os.symlink(outside, src / "sub")

    _swap_after_listing(monkeypatch, swap_at, swap)
    ftx.send([src], receiver.dest)
    got = b"".join(p.read_bytes() for p in receiver.dir.rglob("*") if p.is_file())
    assert b"PRIVATE" not in got and b"PPPP" not in got
