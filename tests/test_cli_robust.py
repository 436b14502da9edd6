"""End to end through the real CLI: refusals, odd names, peers that are not ftx, bad options."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from .helpers import FTX, run_send, write_random

pytestmark = pytest.mark.timeout(60)


def _leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith((".ftx-part", ".ftx-journal")))


def test_refusing_a_later_file_of_several_keeps_the_session(tmp_path, receiver):
    """Issue #11 item 3: a refused b.bin crashed the sender (KeyError) and stranded c.bin's partial."""
    src = tmp_path / "src"
    a = write_random(src / "a.bin", 300_000, seed=1)
    write_random(src / "b.bin", 300_000, seed=2)
    c = write_random(src / "c.bin", 300_000, seed=3)
    d = write_random(src / "d.bin", 400_000, seed=4)
    theirs = write_random(receiver.dir / "src" / "b.bin", 123_456, seed=9)  # a different b.bin
    rc, report, err = run_send(str(src), receiver.dest)
    assert rc == 1, err
    assert "Traceback" not in err and "KeyError" not in err
    assert report is not None, err
    status = {f["path"]: f["status"] for f in report["files"]}
    assert status == {"src": "ok", "src/a.bin": "ok", "src/b.bin": "exists", "src/c.bin": "ok", "src/d.bin": "ok"}
    assert (receiver.dir / "src" / "a.bin").read_bytes() == a
    assert (receiver.dir / "src" / "b.bin").read_bytes() == theirs
    assert (receiver.dir / "src" / "c.bin").read_bytes() == c
    assert (receiver.dir / "src" / "d.bin").read_bytes() == d
    assert _leftovers(receiver.dir / "src") == []
    assert "b.bin" in err and "differs" in err
