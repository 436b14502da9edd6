"""Small files' bytes count in --max-memory from the moment they are decoded until their RESULT.

Over sealed TCP the receiver piles up to four records (about 2 MiB) of small files per
connection for its storage worker; those bytes are the receiver's memory as much as its
frame buffers are.  A real receiver with a small --max-memory serves several real senders
of many small files at once: the budget's peak (scraped from --metrics) stays within its
limit, and every file lands -- a full budget makes a connection wait, it fails nothing.
"""

from __future__ import annotations

import os
import threading

import pytest

from .helpers import start_send, tree_equal
from .test_metrics import scrape, value

pytestmark = pytest.mark.timeout(120)

SENDERS = 4
FILES = 120  # per sender, 40-63 KiB each (SMALL_FILE carries up to 64 KiB): ~6 MiB a sender
# --max-memory 24M leaves 4.5 MiB for frame buffers and items: four senders' buffers alone take most
# of it, and their piles of small files held ~8.9 MB against it before small files were charged


def _tree(root, seed: int) -> None:
    rnd = __import__("random").Random(seed)
    for i in range(FILES):
        d = root / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.bin").write_bytes(os.urandom(rnd.randrange(40 << 10, 63 << 10)))


def test_small_files_of_many_senders_stay_within_max_memory(tmp_path, receiver_factory):
    r = receiver_factory("--metrics", "127.0.0.1:0", "--max-memory", "24M")
    url = r.listening["metrics"]
    limit = value(scrape(url), "ftx_buffer_memory_limit_bytes")
    assert 0 < limit <= 24 << 20
    sources = []
    for k in range(SENDERS):
        src = tmp_path / f"src{k}" / f"tree{k}"
        _tree(src, k)
        sources.append(src)
    peaks = []
    stop = threading.Event()

    def watch() -> None:  # the gauge of use now, as well as the peak the receiver kept
        while not stop.is_set():
            peaks.append(value(scrape(url), "ftx_buffer_memory_bytes"))
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    senders = [start_send(str(src), r.dest) for src in sources]
    try:
        for proc in senders:
            _out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err  # nothing refused for memory: a full budget waits
    finally:
        stop.set()
        watcher.join(10)
        for proc in senders:
            if proc.poll() is None:
                proc.kill()
    for src in sources:
        assert tree_equal(src, r.dir / src.name)
    samples = scrape(url)
    peak = value(samples, "ftx_buffer_memory_peak_bytes")
    assert 0 < peak <= limit, (peak, limit)
    assert max(peaks) <= limit
    assert value(samples, "ftx_files_total", status="ok") == SENDERS * (FILES + 5)  # files and directories
