"""The command line's output channels: ``--json`` lines on stdout, log lines on stderr.

``emit`` queues one JSON line (from any thread) and ``flush`` writes what is queued; a
daemon's stdout and stderr go through ``LineWriter``s (ftx/output.py) between
``start_writers`` and ``stop_writers``, so that a reader who stops reading loses lines
(counted, then reported) and never stalls the receiver.  ``emit_streamed`` writes a
sender's report with a list of any length a thousand items at a time.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections import deque

from .jsontext import clean, path_value

log = logging.getLogger("ftx")
json = None  # the json module, imported on first use: a run without --json never loads it (start-up)


_esc = None  # json.encoder.encode_basestring_ascii, bound with the module


def _json():
    global json, _esc
    if json is None:
        import json as module

        _esc = module.encoder.encode_basestring_ascii

        json = module
    return json

WRITERS_DRAIN = 0.5  # seconds the daemon waits at exit for a slow reader of its output, at most (SIGTERM: exit within 2 s)
_err = None  # the daemon's stderr LineWriter


def start_writers(as_json: bool, bars: bool) -> None:
    """The daemon's stdout (--json) and stderr (log lines) go through LineWriters: a reader that stops
    reading loses lines (counted, then reported), the receiver never waits for it."""
    global _out, _err
    from .output import LineWriter
    from .terminal import use_stream

    _json()
    sys.stdout.flush()
    sys.stderr.flush()
    if as_json:
        _out = LineWriter(sys.stdout.fileno(), dropped=lambda n: json.dumps({"event": "dropped", "lines": n}) + "\n",
                          on_dropped=lambda n: log.warning("%d --json lines dropped: standard output was not read "
                                                           "fast enough", n),
                          on_gone=lambda: log.warning("standard output was closed; no more --json lines"),
                          name="ftx-stdout")
    if not bars:  # progress bars redraw the terminal themselves; log lines then stay in order with them
        _err = LineWriter(sys.stderr.fileno(), dropped=lambda n: f"ftx: warning: {n} log lines dropped: standard "
                          "error was not read fast enough\n", name="ftx-stderr")
        use_stream(_err)


def stop_writers() -> None:
    """Give a slow reader WRITERS_DRAIN seconds at most, then exit without the rest."""
    global _out, _err
    import time

    from .terminal import use_stream

    flush()
    deadline = time.monotonic() + WRITERS_DRAIN
    if _out is not None:
        _out.close(WRITERS_DRAIN)
        _out = None
    if _err is not None:
        use_stream(None)
        _err.close(max(0.0, deadline - time.monotonic()))
        _err = None


_queued: deque[str] = deque()  # --json lines not written yet (appended from worker threads)


def emit(obj: dict, flush: bool = True) -> None:
    """One --json line.  A reader that went away (``| head -1``) ends the output, not the program.

    ``flush=False`` (per-file lines, from any thread) only queues it: ``flush`` writes
    everything queued at once, and so does the next line emitted with ``flush=True``."""
    _queued.append((json or _json()).dumps(clean(obj)) + "\n")
    if flush:
        _write_queued()


_REPORT_FIELDS = ("path", "kind", "size", "status", "digest", "message", "bytes_received", "bytes_resumed")


def emit_report(report) -> None:
    """``emit({"event": "file", **report.__dict__}, flush=False)`` for a receiving.FileReport, byte
    for byte, with no dict and no json.dumps per file (a quarter of the time: the daemon's --json
    line is on its per-file path).  Anything but a FileReport's fields in order takes ``emit``."""
    d = report.__dict__
    if _esc is None:
        _json()
    if tuple(d) != _REPORT_FIELDS or not d["message"].isascii():
        emit({"event": "file", **d}, False)
        return
    path = d["path"]
    _queued.append(
        f'{{"event": "file", "path": {_esc(path) if path.isascii() else path_value("path", path, _esc)}, '
        f'"kind": {_esc(d["kind"])}, "size": {d["size"]:d}, '
        f'"status": {_esc(d["status"])}, "digest": {_esc(d["digest"])}, "message": {_esc(d["message"])}, '
        f'"bytes_received": {d["bytes_received"]:d}, "bytes_resumed": {d["bytes_resumed"]:d}}}\n')


def emit_run(run) -> None:
    """``emit_report`` for each report of a receiving.RunReport (small files stored OK), byte for
    byte, the run's lines built as one string: the fields that are the same for every file of a
    run are in the template, the path the only one escaped per file."""
    if _esc is None:
        _json()
    esc = _esc
    _queued.append("".join([
        f'{{"event": "file", "path": {esc(path) if path.isascii() else path_value("path", path, esc)}, '
        f'"kind": "file", "size": {size:d}, "status": "ok", '
        f'"digest": "{digest}", "message": "", "bytes_received": {size:d}, "bytes_resumed": 0}}\n'
        for path, size, digest in zip(run.paths, run.sizes, run.digests)]))


emit.report = emit_report  # what Service.file_settled calls when ``emit`` is this one (cli.py passes emit)
emit.run = emit_run  # ... and Service.files_settled

STREAM_ITEMS = 1000  # list items encoded per json.dumps call by emit_streamed


def emit_streamed(obj: dict, key: str) -> None:
    """``emit(obj)``, byte for byte, with the list (or iterator) ``obj[key]`` encoded and
    written ``STREAM_ITEMS`` at a time: a report of a million files is never one string."""
    flush()
    out = sys.stdout
    _json()
    try:
        out.write("{")
        for i, (name, value) in enumerate(obj.items()):
            if name != key:
                out.write((", " if i else "") + json.dumps(clean({name: value}))[1:-1])
                continue
            out.write((", " if i else "") + json.dumps(name) + ": [")
            items, first = iter(value), True
            while part := list(itertools.islice(items, STREAM_ITEMS)):
                out.write(("" if first else ", ") + _items(part))
                first = False
            out.write("]")
        out.write("}\n")
        out.flush()
    except BrokenPipeError:
        stdout_gone()


_SENT_FIELDS = ("path", "kind", "size", "status", "digest", "bytes_sent", "bytes_resumed", "message")


def _items(part: list) -> str:
    """``_dumps(part)[1:-1]``, byte for byte: a sender's file report (send_report.FileSendReport's
    fields in order, ASCII text) built by hand, with no json.dumps walk over its dict (half the time
    of a re-send's thousand reports); anything else by ``_dumps``."""
    esc, out = _esc, []
    for d in part:
        if type(d) is dict and tuple(d) == _SENT_FIELDS:
            path, kind, status, digest, message = d["path"], d["kind"], d["status"], d["digest"], d["message"]
            size, sent, resumed = d["size"], d["bytes_sent"], d["bytes_resumed"]
            if type(size) is int and type(sent) is int and type(resumed) is int \
                    and (path + kind + status + digest + message).isascii():
                out.append(f'{{"path": {esc(path)}, "kind": {esc(kind)}, "size": {size:d}, "status": {esc(status)}, '
                           f'"digest": {esc(digest)}, "bytes_sent": {sent:d}, "bytes_resumed": {resumed:d}, '
                           f'"message": {esc(message)}}}')
                continue
        out.append(_dumps(d))
    return ", ".join(out)


def _dumps(value) -> str:
    """``json.dumps(clean(value))``: where the plain encoding escapes no surrogate (``\\ud...``:
    a path that is not UTF-8, or a character outside the BMP), ``clean`` has nothing to change
    and its walk over every string of a thousand file reports (~5 ms of a re-send) is skipped."""
    text = json.dumps(value)
    return text if "\\ud" not in text else json.dumps(clean(value))


_out = None  # the daemon's stdout LineWriter (ftx/output.py): lines never wait for the reader


def flush() -> None:
    """Write the queued lines with one call (on the event loop's thread)."""
    lines = []
    while _queued:
        lines.append(_queued.popleft())
    if not lines:
        return
    if _out is not None:
        _out.write("".join(lines))  # queued for the writer thread, or dropped and counted
        return
    try:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_gone()


_write_queued = flush  # for emit, whose argument is called flush


def stdout_gone() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # later writes and the flush at exit go nowhere
    os.close(devnull)
    log.warning("standard output was closed; no more --json lines")


__all__ = ["emit", "emit_streamed", "flush", "start_writers", "stop_writers"]
