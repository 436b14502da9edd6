"""The receiver's per-file output: a "file" event is built only for someone who reads events."""

from __future__ import annotations

from ftx.receiving import FileReport
from ftx.service import Service


def _report(n: int) -> FileReport:
    return FileReport(f"d/f{n}", "file", 100 + n, "ok", bytes_received=100 + n)


def test_without_readers_files_are_counted_and_no_event_is_built():
    svc = Service(None)
    for n in range(3):
        svc.file_settled(_report(n))
    assert (svc.files_done, svc.bytes_done) == (3, 303)
    assert "3 files" in svc.status_text()


def test_with_json_every_file_is_an_event_and_counted():
    seen = []
    svc = Service(lambda event, flush=True: seen.append((event, flush)))
    for n in range(2):
        svc.file_settled(_report(n))
    assert (svc.files_done, svc.bytes_done) == (2, 201)
    assert seen == [({"event": "file", **_report(n).__dict__}, False) for n in range(2)]
