"""Bounded fuzz runs inside the normal test command.

Each target of tests/fuzz/targets.py runs in its own subprocess (libFuzzer ends the
process when it stops), coverage-guided with atheris where it is installed, else with
the plain mutation loop.  By default a fixed number of runs from a fixed random seed
(``RUNS``: a few seconds each, the same inputs every time, so the suite does not turn
red by chance), capped at ``CAP`` seconds on a slow machine.  Explore for longer, with a
fresh seed each time::

    FTX_FUZZ_SECONDS=600 .venv/bin/python -m pytest -q tests/test_fuzz_targets.py
    .venv/bin/python -m tests.fuzz.run all --seconds 3600 --corpus .fuzz-corpus

A crash fails the test with the traceback; its input is left in the test's tmp dir as
``crash-*`` (replay: ``python -m tests.fuzz.run TARGET FILE``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .fuzz import corpus, targets

SECONDS = float(os.environ["FTX_FUZZ_SECONDS"]) if os.environ.get("FTX_FUZZ_SECONDS") else None
RUNS = {"tcp_receiver": 5000, "tcp_sender": 5000, "tcp_storage": 1500, "udp_receiver": 5000, "udp_sender": 5000,
        "handshake": 3000}
CAP = 30.0
BUDGET = SECONDS if SECONDS is not None else CAP
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seeds():
    return corpus.seeds()


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seeds_reach_deep_and_pass(seeds, name):
    """Seeds are real sessions: every target accepts them all, and they get past the handshake
    to files being resolved (else the fuzzer would start from shallow inputs)."""
    assert len(seeds[name]) >= 6
    for data in seeds[name]:
        targets.TARGETS[name](data)
    # a mutated seed still parses or fails with a typed error
    for data in seeds[name]:
        for pos in range(2, len(data), max(1, len(data) // 4)):
            bad = bytearray(data)
            bad[pos] ^= 0x41
            targets.TARGETS[name](bytes(bad))


def test_seeds_resolve_files():
    """The recorded sessions end with every file resolved on both sides."""
    pair = corpus.tcp_session()
    assert len(pair.sd.resolved) == len(pair.sd.content) and pair.sd.complete and pair.rd.complete
    upair = corpus.udp_session()
    assert upair.sender.drv.complete and upair.receiver.drv.complete
    assert sorted(p for p, _ in upair.receiver.drv.completed) == sorted(p for p, _ in pair.rd.completed)


@pytest.mark.timeout(BUDGET * 2 + 90)
@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_target_bounded_run(tmp_path, name):
    cmd = [sys.executable, "-m", "tests.fuzz.run", name, "--artifacts", str(tmp_path)]
    if SECONDS is not None:
        cmd += ["--seconds", str(SECONDS)]
    else:
        cmd += ["--runs", str(RUNS[name]), "--seed", "1", "--seconds", str(CAP)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BUDGET * 2 + 60)
    out = proc.stdout + proc.stderr
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, f"fuzz target {name} found a crash {crashes}:\n{out[-6000:]}"
    assert "runs" in out  # it did run
