#!/usr/bin/env python3
"""The receiver's CPU per small file above the socket: frame decoding in the core
(``ReceiverConnection``), ``ReceiveSession`` (storage, RESULT encoding, the per-file
report), in parts of ``receiving.BATCH`` events as the driver hands them over.

No network, no sealing, one thread: process time per file (min of ``--runs``), so
that the receiver's per-file Python overhead can be compared A/B on a loaded machine.
``--profile`` prints the top of a cProfile of one run.  ``--daemon`` adds what ``ftx receive``
does per file above the session (``ReceiverService._on_file``: the session's counts, the
service's event, as without --json, -v and --metrics).

    python benchmarks/bench_recv_session.py [--files 20000] [--runs 5] [--dir /dev/shm] [--profile] [--daemon]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from bench_small_files import make_files  # noqa: E402

from ftx import receiving, recv_pipeline  # noqa: E402
from ftx.core.receiver import ReceiverConnection  # noqa: E402
from ftx.core.sender import SenderConnection  # noqa: E402
from ftx.storage import Destination  # noqa: E402


def wire(files) -> tuple[bytes, bytes]:
    """(the sender's HELLO, then every file as SMALL_FILE frames and DONE) as one sender sends them."""
    s = SenderConnection()
    hello = b"".join(bytes(b) for b in s.data_to_send())
    s.receive_data(b"".join(bytes(b) for b in ReceiverConnection().data_to_send()))
    while s.next_event() is not None:
        pass
    for entry, data, digest in files:
        s.send_small_file(entry, data, digest)
    s.finish()
    return hello, b"".join(bytes(b) for b in s.data_to_send())


def daemon_on_file(dest: Destination, reports: list):
    """``ftx receive``'s per-file path (ftx/daemon.py ``_handle``'s on_file): no --json, -v or --metrics."""
    from ftx.daemon import ReceiverService, SessionCounts
    from ftx.service import Service

    service = ReceiverService(dest)
    service.svc = Service(None)
    counts = SessionCounts()

    def on_file(report) -> None:
        counts.add(report)
        service._on_file(report)
        reports.append(report)

    def on_files(run) -> None:
        counts.add_run(run)
        service._on_files(run)
        reports.append(run)

    return on_file, on_files


def one_run(hello: bytes, stream: bytes, root: str, reports: list, daemon: bool = False) -> float:
    dest = Destination(root.encode())
    conn = ReceiverConnection(small_runs=True)  # as receive_over makes it
    on_file, on_files = daemon_on_file(dest, reports) if daemon else (reports.append, None)
    session = receiving.ReceiveSession(conn, dest, on_file=on_file, keep_reports=False, on_files=on_files)
    t0 = time.process_time()
    conn.receive_data(hello)
    conn.data_to_send()
    for start in range(0, len(stream), 65536):  # as the TCP driver reads
        conn.receive_data(stream[start : start + 65536])
        events = recv_pipeline._drain(conn)
        for i in range(0, len(events), receiving.BATCH):
            session.handle_all(events[i : i + receiving.BATCH])
            conn.data_to_send()
        reports.clear()
    session.handle_all(recv_pipeline._drain(conn))  # the last RESULT completes the session
    elapsed = time.process_time() - t0
    assert session.complete and not session.failed, (session.complete, session.failed)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--dirs", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--daemon", action="store_true", help="include the receiver service's per-file path")
    args = ap.parse_args()
    hello, stream = wire(make_files(args.files, args.dirs, 2048))
    times = []
    for run in range(args.runs):
        root = tempfile.mkdtemp(prefix="ftx-bench-recv-", dir=args.dir)
        try:
            if args.profile and run == 0:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.runcall(one_run, hello, stream, root, [], args.daemon)
                pstats.Stats(prof).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("TOP", "25")))
                continue
            times.append(one_run(hello, stream, root, [], args.daemon))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if times:
        best = min(times)
        print(f"{args.files} small files: {best * 1e6 / args.files:.1f} us of CPU per file (process time, "
              f"min of {len(times)}; runs {', '.join(f'{t:.2f}' for t in times)} s)")


if __name__ == "__main__":
    main()
