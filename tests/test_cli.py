"""End to end through the real CLI: subprocesses, loopback sockets, files on disk."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from .helpers import FTX, run_send, tree_equal, write_random

pytestmark = pytest.mark.timeout(60)


def test_single_file(tmp_path, receiver):
    data = write_random(tmp_path / "src" / "one.bin", 3 * 1024 * 1024 + 17)
    rc, report, err = run_send(str(tmp_path / "src" / "one.bin"), receiver.dest)
    assert rc == 0, err
    assert (receiver.dir / "one.bin").read_bytes() == data
    assert report["ok"] is True
    assert report["bytes"] == len(data) == report["bytes_sent"]
    assert report["bytes_resumed"] == 0
    assert report["transport"] == "tcp"
    (f,) = report["files"]
    assert f["status"] == "ok" and len(f["digest"]) == 32
    events = receiver.events_until("session")
    files = [e for e in events if e["event"] == "file"]
    assert files[0]["path"] == "one.bin" and files[0]["digest"] == f["digest"]
    assert not [p for p in os.listdir(receiver.dir) if p.startswith(".")], "no partial left behind"


def test_empty_file(tmp_path, receiver):
    (tmp_path / "empty").write_bytes(b"")
    rc, report, err = run_send(str(tmp_path / "empty"), receiver.dest)
    assert rc == 0, err
    assert (receiver.dir / "empty").read_bytes() == b""
    assert report["files"][0]["status"] == "ok"


def test_nested_directory_with_metadata(tmp_path, receiver):
    src = tmp_path / "tree"
    write_random(src / "a" / "b" / "c" / "deep.bin", 2_500_000, seed=1)
    write_random(src / "a" / "small.txt", 10, seed=2)
    (src / "empty-dir" / "also-empty").mkdir(parents=True)
    script = src / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    os.utime(src / "a" / "small.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 0, err
    got = receiver.dir / "tree"
    assert tree_equal(src, got)
    assert stat.S_IMODE(os.stat(got / "run.sh").st_mode) == 0o750
    assert os.stat(got / "a" / "small.txt").st_mtime_ns == 1_600_000_000_123_456_789
    assert (got / "empty-dir" / "also-empty").is_dir()
    assert report["file_count"] == 9  # tree, a, a/b, a/b/c, 2 files, 2 dirs, run.sh


def test_many_small_files(tmp_path, receiver):
    src = tmp_path / "many"
    for i in range(600):
        write_random(src / f"d{i % 7}" / f"f{i}.txt", i % 300, seed=i)
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 0, err
    assert tree_equal(src, receiver.dir / "many")


def test_several_paths_and_default_port_syntax(tmp_path, receiver):
    write_random(tmp_path / "x.bin", 1000)
    write_random(tmp_path / "d" / "y.bin", 2000)
    rc, report, err = run_send(str(tmp_path / "x.bin"), str(tmp_path / "d"), receiver.dest)
    assert rc == 0, err
    assert (receiver.dir / "x.bin").exists() and (receiver.dir / "d" / "y.bin").exists()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback(tmp_path, receiver_factory):
    r = receiver_factory(host="::1")
    data = write_random(tmp_path / "v6.bin", 1_500_000)
    assert r.dest.startswith("[::1]:")
    rc, report, err = run_send(str(tmp_path / "v6.bin"), r.dest)
    assert rc == 0, err
    assert (r.dir / "v6.bin").read_bytes() == data


def test_identical_destination_is_skipped(tmp_path, receiver):
    write_random(tmp_path / "same.bin", 2_000_000)
    assert run_send(str(tmp_path / "same.bin"), receiver.dest)[0] == 0
    rc, report, err = run_send(str(tmp_path / "same.bin"), receiver.dest)
    assert rc == 0, err
    assert report["files"][0]["status"] == "identical"
    assert report["bytes_sent"] == 0


def test_differing_destination_is_not_replaced(tmp_path, receiver):
    write_random(tmp_path / "f.bin", 200_000, seed=1)
    theirs = write_random(receiver.dir / "f.bin", 200_000, seed=2)
    rc, report, err = run_send(str(tmp_path / "f.bin"), receiver.dest)
    assert rc == 1
    assert "differs" in err and "--overwrite" in err
    assert report["files"][0]["status"] == "exists"
    assert (receiver.dir / "f.bin").read_bytes() == theirs
    # a small file and a different size take other code paths: same promise
    write_random(tmp_path / "s.txt", 10, seed=3)
    theirs_small = write_random(receiver.dir / "s.txt", 10, seed=4)
    assert run_send(str(tmp_path / "s.txt"), receiver.dest)[0] == 1
    assert (receiver.dir / "s.txt").read_bytes() == theirs_small


def test_overwrite_replaces(tmp_path, receiver_factory):
    r = receiver_factory("--overwrite")
    ours = write_random(tmp_path / "f.bin", 300_000, seed=1)
    write_random(r.dir / "f.bin", 100, seed=2)
    rc, report, err = run_send(str(tmp_path / "f.bin"), r.dest)
    assert rc == 0, err
    assert (r.dir / "f.bin").read_bytes() == ours


def test_symlinks(tmp_path, receiver):
    src = tmp_path / "t"
    write_random(src / "real.bin", 5000)
    (src / "inside").symlink_to("real.bin")
    (src / "outside").symlink_to("/etc/hostname")
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 0, err
    got = receiver.dir / "t"
    assert not (got / "inside").is_symlink() and (got / "inside").read_bytes() == (src / "real.bin").read_bytes()
    assert not os.path.lexists(got / "outside")  # never followed out of the tree
    rc, report, err = run_send(str(src), receiver.dest, "--links")
    # with --links, inside-tree links travel as links; the existing regular file differs -> refused
    assert rc == 1


def test_symlinks_as_links(tmp_path, receiver):
    src = tmp_path / "t"
    write_random(src / "real.bin", 5000)
    (src / "inside").symlink_to("real.bin")
    (src / "outside").symlink_to("../../etc/passwd")
    rc, report, err = run_send(str(src), receiver.dest, "--links")
    assert rc == 0, err
    assert os.readlink(receiver.dir / "t" / "inside") == "real.bin"
    assert not os.path.lexists(receiver.dir / "t" / "outside")


def test_connection_refused_exit_code(tmp_path):
    write_random(tmp_path / "f", 10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        rc, report, err = run_send(str(tmp_path / "f"), f"127.0.0.1:{port}")
    assert rc == 3
    assert "cannot connect" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_source_exit_code(tmp_path, receiver):
    rc, report, err = run_send(str(tmp_path / "nope"), receiver.dest)
    assert rc == 5 and "no such file" in err


def test_bad_destination_is_usage_error(tmp_path):
    write_random(tmp_path / "f", 10)
    rc, _, err = run_send(str(tmp_path / "f"), "[::1:80")
    assert rc == 2


def test_receive_once_exits_after_one_transfer(tmp_path, receiver_factory):
    r = receiver_factory("--once")
    write_random(tmp_path / "f", 100)
    assert run_send(str(tmp_path / "f"), r.dest)[0] == 0
    assert r.proc.wait(20) == 0


def test_receiver_serves_senders_one_after_another_and_at_once(tmp_path, receiver):
    from .helpers import start_send

    for i in range(3):
        write_random(tmp_path / f"s{i}.bin", 1_000_000 + i, seed=i)
        assert run_send(str(tmp_path / f"s{i}.bin"), receiver.dest)[0] == 0
    procs = []
    for i in range(4):
        write_random(tmp_path / f"c{i}" / "data.bin", 4_000_000, seed=10 + i)
        procs.append(start_send(str(tmp_path / f"c{i}"), receiver.dest))
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for i in range(4):
        assert (receiver.dir / f"c{i}" / "data.bin").read_bytes() == (tmp_path / f"c{i}" / "data.bin").read_bytes()


def test_help_and_version():
    import subprocess

    out = subprocess.run(FTX + ["--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "send" in out.stdout and "receive" in out.stdout
    out = subprocess.run(FTX + ["--version"], capture_output=True, text=True, timeout=30)
    assert "ftx" in out.stdout
