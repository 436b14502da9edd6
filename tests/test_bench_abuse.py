"""The abuse benchmark keeps working: one cheap attack, end to end, against a real receiver."""

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_abuse.py"


def bench(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "hello-idle", "--fs", "plain", "--legit-size", "1M",
         "--settle", "0.5", "--no-warmup", "--work-dir", str(tmp_path), "--logs", str(tmp_path / "logs"), *args],
        capture_output=True, text=True, timeout=90)


def row_of(out: str, name: str) -> list[str]:
    rows = [line for line in out.splitlines() if line.startswith(name + " ")]
    assert len(rows) == 1, out
    return rows[0].split()


def test_quick_hello_idle_row(tmp_path):
    proc = bench(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = row_of(proc.stdout, "hello-idle")
    before, peak, after = (int(x) for x in row[1].split("/"))  # RSS MB before/peak/after
    assert 0 < before <= peak and after > 0, row
    assert "->" in row[6] and "->" in row[7], row  # legit TCP and UDP times, base->during
    assert row[8] in ("PASS", "FAIL"), row
    assert "20 of 20 connected" in proc.stdout, proc.stdout
    # nothing left behind but the receiver's log
    assert sorted(os.listdir(tmp_path)) == ["logs"]
    assert os.listdir(tmp_path / "logs") == ["receiver-hello-idle.log"]


def test_a_receiver_that_exits_is_reported_not_waited_for(tmp_path):
    # --once: the receiver exits after the first (warm-up) transfer, before the attack
    proc = bench(tmp_path, "--receiver-args=--once")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = row_of(proc.stdout, "hello-idle")
    assert "died" in row[-1], row
    assert "hello-idle: receiver died (exit 0)" in proc.stdout
    assert "udp during: receiver gone" in proc.stdout
