"""The abuse benchmark keeps working: one cheap attack, end to end, against a real receiver."""

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_abuse.py"


def test_quick_hello_idle_row(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "hello-idle", "--fs", "plain", "--legit-size", "1M",
         "--settle", "0.5", "--work-dir", str(tmp_path), "--logs", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("hello-idle ")]
    assert len(rows) == 1, proc.stdout
    row = rows[0].split()
    before, peak, after = (int(x) for x in row[1].split("/"))  # RSS MB before/peak/after
    assert 0 < before <= peak and after > 0, rows[0]
    assert "->" in row[6] and "->" in row[7], rows[0]  # legit TCP and UDP times, base->during
    assert row[8] in ("PASS", "FAIL"), rows[0]
    assert "20 of 20 connected" in proc.stdout, proc.stdout
    # nothing left behind but the receiver's log
    assert sorted(os.listdir(tmp_path)) == ["logs"]
    assert os.listdir(tmp_path / "logs") == ["receiver-hello-idle.log"]
