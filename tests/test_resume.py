"""Resume after real kills: SIGKILL the sender or the receiver half-way, re-send.

The sender is rate-limited (--max-rate) so that "half-way" can be hit by
polling the receiver's journal; the bound checked is the issue's: the resumed
run puts at most 55% of the file on the wire, and the result is byte-identical.
"""

from __future__ import annotations

import os
import signal

import pytest

from .helpers import (
    interrupt_receiver_half_way,
    data_path,
    journal_path,
    journal_records,
    resend_to_new_receiver,
    run_send,
    start_send,
    wait_for,
    write_random,
)

pytestmark = pytest.mark.timeout(90)

SIZE = 24 * 1024 * 1024 + 12345  # 25 chunks of 1 MiB
CHUNKS = 25
RATE = "16M"  # ~1.5 s for the whole file


def _kill_sender_half_way(src, receiver, name="big.bin", *extra):
    proc = start_send(str(src), receiver.dest, "--max-rate", RATE, *extra)
    wait_for(lambda: journal_records(receiver.dir, name) >= CHUNKS // 2, what="half the chunks")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not (receiver.dir / name).exists(), "transfer finished before the kill"
    assert data_path(receiver.dir, name).exists()


def test_sender_killed_resumes(tmp_path, receiver):
    data = write_random(tmp_path / "big.bin", SIZE)
    _kill_sender_half_way(tmp_path / "big.bin", receiver)
    rc, report, err = run_send(str(tmp_path / "big.bin"), receiver.dest)
    assert rc == 0, err
    assert report["bytes_sent"] <= 0.55 * SIZE
    assert report["bytes_resumed"] + report["bytes_sent"] == SIZE
    assert (receiver.dir / "big.bin").read_bytes() == data
    assert not (receiver.dir / ".ftx").exists(), "nothing of the partial is left"


def test_receiver_killed_and_restarted_resumes(tmp_path, receiver_factory):
    data = write_random(tmp_path / "big.bin", SIZE, seed=5)
    dst = tmp_path / "dst"
    rc = interrupt_receiver_half_way(receiver_factory, dst, tmp_path / "big.bin", CHUNKS, lambda r: r.kill(),
                                     "--max-rate", RATE)
    assert rc == 3  # connection lost
    report = resend_to_new_receiver(receiver_factory, dst, tmp_path / "big.bin")
    assert report["bytes_sent"] <= 0.55 * SIZE
    assert (dst / "big.bin").read_bytes() == data


def test_source_changed_size_starts_over(tmp_path, receiver):
    write_random(tmp_path / "big.bin", SIZE, seed=1)
    _kill_sender_half_way(tmp_path / "big.bin", receiver)
    new = write_random(tmp_path / "big.bin", SIZE - 1000, seed=2)
    rc, report, err = run_send(str(tmp_path / "big.bin"), receiver.dest)
    assert rc == 0, err
    assert report["bytes_resumed"] == 0 and report["bytes_sent"] == len(new)
    assert (receiver.dir / "big.bin").read_bytes() == new


def test_source_content_changed_same_size_and_mtime_starts_over(tmp_path, receiver):
    src = tmp_path / "big.bin"
    write_random(src, SIZE, seed=1)
    st = os.stat(src)
    _kill_sender_half_way(src, receiver)
    new = bytearray(src.read_bytes())
    new[100] ^= 0xFF  # first chunk changes; size and mtime restored below
    src.write_bytes(new)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 0, err
    assert "changed" in err  # the user is told why it starts over
    assert report["bytes_resumed"] == 0 and report["bytes_sent"] == SIZE
    assert (receiver.dir / "big.bin").read_bytes() == bytes(new)


def test_no_resume_sends_everything(tmp_path, receiver):
    data = write_random(tmp_path / "big.bin", SIZE, seed=3)
    _kill_sender_half_way(tmp_path / "big.bin", receiver)
    rc, report, err = run_send(str(tmp_path / "big.bin"), receiver.dest, "--no-resume")
    assert rc == 0, err
    assert report["bytes_sent"] == SIZE and report["bytes_resumed"] == 0
    assert (receiver.dir / "big.bin").read_bytes() == data


def test_torn_or_corrupt_partial_chunk_is_resent(tmp_path, receiver):
    data = write_random(tmp_path / "big.bin", SIZE, seed=4)
    _kill_sender_half_way(tmp_path / "big.bin", receiver)
    part = data_path(receiver.dir, "big.bin")
    with open(part, "r+b") as f:  # damage chunk 2 behind the journal's back
        f.seek(2 * 1024 * 1024 + 5)
        f.write(b"\x00garbage\x00")
    journal = journal_path(receiver.dir, "big.bin")
    with open(journal, "ab") as f:  # and leave a torn record at the end
        f.write(b"\x00" * 11)
    held_before = journal_records(receiver.dir, "big.bin")
    rc, report, err = run_send(str(tmp_path / "big.bin"), receiver.dest)
    assert rc == 0, err
    resent = SIZE - report["bytes_resumed"]
    assert report["bytes_sent"] == resent
    assert resent >= SIZE - (held_before - 1) * 1024 * 1024  # the damaged chunk travelled again
    assert (receiver.dir / "big.bin").read_bytes() == data


def test_resume_of_a_directory_skips_finished_files(tmp_path, receiver):
    src = tmp_path / "d"
    files = {f"f{i}.bin": write_random(src / f"f{i}.bin", 3 * 1024 * 1024, seed=i) for i in range(6)}
    proc = start_send(str(src), receiver.dest, "--max-rate", RATE)
    wait_for(lambda: (receiver.dir / "d" / "f2.bin").exists(), what="three files done")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 0, err
    assert report["bytes_sent"] <= 0.55 * sum(len(v) for v in files.values())
    for name, data in files.items():
        assert (receiver.dir / "d" / name).read_bytes() == data


def test_source_modified_during_transfer_is_never_spliced(tmp_path, receiver):
    src = tmp_path / "big.bin"
    write_random(src, SIZE, seed=7)
    proc = start_send(str(src), receiver.dest, "--max-rate", RATE)
    wait_for(lambda: journal_records(receiver.dir, "big.bin") >= 3, what="a few chunks")
    with open(src, "r+b") as f:  # rewrite the start behind the sender's back
        f.write(b"changed" * 1000)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "changed" in err
    assert not (receiver.dir / "big.bin").exists()
    rc, report, err = run_send(str(src), receiver.dest)  # the next run starts over and is right
    assert rc == 0, err
    assert (receiver.dir / "big.bin").read_bytes() == src.read_bytes()


def test_receiver_sigterm_keeps_partial_for_resume(tmp_path, receiver_factory):
    data = write_random(tmp_path / "big.bin", SIZE, seed=8)
    dst = tmp_path / "dst"

    def sigterm(r):
        assert r.stop() == 0  # a clean exit

    rc = interrupt_receiver_half_way(receiver_factory, dst, tmp_path / "big.bin", CHUNKS, sigterm,
                                     "--max-rate", RATE)
    assert rc == 3
    report = resend_to_new_receiver(receiver_factory, dst, tmp_path / "big.bin")
    assert report["bytes_sent"] <= 0.55 * SIZE
    assert (dst / "big.bin").read_bytes() == data
