"""Progress hooks.  The library calls a ``Progress``; the CLI passes ``Bars`` (tqdm).

``Bars`` draws one total bar -- bytes and files done, the rate of the bytes
actually moving, and an ETA from the bytes still to go -- and, for a sender,
one more bar while a file large enough to watch is streamed (``BIG_FILE``).
A tree of 5 000 small files is one line that redraws at most every
``REDRAW`` seconds, not 5 000 bars.

The total comes from ``count``: an iterable of the sizes of the files to come
(a second, counting-only walk of the sender's tree), consumed by a background
thread with nothing kept but two counters; until it is done the bar shows what
is done and what is counted so far ("≥"), without a percentage.  The count
gives up after ``COUNT_LIMIT`` items or ``COUNT_SECONDS``: a huge tree shows
files and bytes done without a percentage rather than walking twice to the end.

While bars are drawn, log lines and ``ftx: ...`` messages go above them
(``tqdm.write``), never into a bar's line.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Iterable

BIG_FILE = 8 << 20  # a file this large gets its own bar while it is sent
REDRAW = 0.2  # seconds between redraws, at most
COUNT_LIMIT = 2_000_000  # items the counting walk looks at, at most
COUNT_SECONDS = 30.0  # and seconds it may take
FALLBACK_COLUMNS, FALLBACK_ROWS = 80, 24  # a terminal that reports no size (script(1), a fresh pty)


class Progress:
    """Hooks for a progress display; the default does nothing."""

    def start_file(self, path: str, size: int, resumed: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def end_file(self, report) -> None: ...

    def end_files(self, run) -> None:
        """``end_file`` for each report of a run (receiving.RunReport) that settled together."""
        for report in run:
            self.end_file(report)

    def close(self) -> None: ...


class SoFar(Progress):
    """What was sent so far, counted from the hooks (passed on to ``inner``): an interrupted sender
    reports it (``ftx send --json`` after SIGTERM or Ctrl-C), where no SendReport came back."""

    def __init__(self, inner: Progress | None = None) -> None:
        self.inner = inner or Progress()
        self.files = self.failed = self.identical = 0
        self.bytes = self.bytes_sent = self.bytes_resumed = 0

    def start_file(self, path: str, size: int, resumed: int) -> None:
        self.bytes_resumed += resumed
        self.inner.start_file(path, size, resumed)

    def advance(self, nbytes: int) -> None:
        self.bytes_sent += nbytes
        self.inner.advance(nbytes)

    def ended_ok(self, size: int, files: int = 1) -> None:
        """``end_file`` of a file that arrived, known by its size alone (or of ``files`` files of
        ``size`` bytes in all): for a sender whose ``inner`` draws nothing per file, which then
        makes no report object for it."""
        self.files += files
        self.bytes += size

    def end_file(self, report) -> None:
        self.files += 1
        self.bytes += getattr(report, "size", 0)
        self.identical += getattr(report, "status", "") == "identical"
        self.failed += not getattr(report, "ok", True)
        self.inner.end_file(report)

    def close(self) -> None:
        self.inner.close()


def _human(n: float) -> str:
    from .units import human_bytes

    return human_bytes(n).replace(" ", "")


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.999)  # 0.4 s left reads 00:01, not 00:00
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class _AboveBars:
    """A stream for the log handler and ``say`` while bars are drawn: each line above them."""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        for line in text.rstrip("\n").split("\n"):
            tqdm.write(line, file=sys.stderr)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


_lines_taken: set[int] = set()  # terminal lines (tqdm positions) the open Bars draw on
_above_users = 0  # Bars open (a receiver may have several): the log goes above them while any is


class Count:
    """Files and bytes to come, counted by a background thread from an iterable of sizes."""

    def __init__(self, sizes: Iterable[int], limit: int = COUNT_LIMIT, seconds: float = COUNT_SECONDS) -> None:
        self.files = self.bytes = 0
        self.done = False  # counted to the end: the totals are known
        self.gave_up = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(sizes, limit, seconds), name="ftx-count",
                                        daemon=True)
        self._thread.start()

    def _run(self, sizes, limit, seconds) -> None:
        deadline = time.monotonic() + seconds
        try:
            for i, size in enumerate(sizes):
                if self._stop:
                    return
                if i >= limit or (i % 256 == 0 and time.monotonic() > deadline):
                    self.gave_up = True
                    return
                if size is not None:
                    self.files += 1
                    self.bytes += size
            self.done = True
        except Exception:  # noqa: BLE001 - an unreadable directory: the send itself reports it
            self.gave_up = True

    def stop(self) -> None:
        self._stop = True


class Bars(Progress):
    """tqdm bars on stderr: one total bar (and, with ``file_bars``, one for a large file being sent).

    ``count``: sizes of the files to come (None for each item that is not a file), for the total;
    without it the bar counts up with no percentage (the receiver: one bar per session)."""

    def __init__(self, label: str = "total", position: int = 0, *, count: Iterable[int] | None = None,
                 file_bars: bool = False) -> None:
        from tqdm import tqdm

        from .terminal import printable, use_stream

        try:  # a terminal that reports no size (script(1), a fresh pty) still gets bars
            size = os.get_terminal_size(sys.stderr.fileno())
            columns, rows = size.columns, size.lines
        except OSError:
            columns = rows = 0
        sizing = {"dynamic_ncols": True} if columns and rows else {"ncols": columns or FALLBACK_COLUMNS,
                                                                   "nrows": rows or FALLBACK_ROWS}
        self._tqdm = lambda **kw: tqdm(file=sys.stderr, mininterval=REDRAW, miniters=1, **sizing, **kw)
        lines = 2 if file_bars else 1
        while any(p in _lines_taken for p in range(position, position + lines)):
            position += 1  # another session's bar (a receiver serves several senders at once)
        self._lines = set(range(position, position + lines))
        _lines_taken.update(self._lines)
        self._position = position
        self._label = printable(label)
        self._file_bars = file_bars
        self.count = Count(count) if count is not None else None
        self.start = time.monotonic()
        self.done_bytes = 0  # settled, resumed or sent: what no longer has to go
        self.moved = 0  # bytes actually sent or received (the rate)
        self.files = 0
        self._rate = 0.0
        self._last = (self.start, 0)  # (time, moved) of the last rate sample
        self._file = None  # the large file's bar
        self._file_path = None
        self._file_size = self._file_done = 0
        self._current = None  # the file the next advance() belongs to
        self.total = self._tqdm(position=position, leave=True, total=None, bar_format="{desc}")
        self._refresh(force=True)
        global _above_users
        _above_users += 1
        use_stream(_AboveBars())

    # -- the hooks the sending and receiving sessions call -------------------------
    def start_file(self, path: str, size: int, resumed: int) -> None:
        from .terminal import printable

        self._current = path
        self.done_bytes += resumed
        if self._file_bars and size >= BIG_FILE and self._file is None:
            self._file_path, self._file_size, self._file_done = path, size, resumed
            self._file_name = printable(path if len(path) <= 24 else "…" + path[-23:])
            self._file = self._tqdm(position=self._position + 1, leave=False, total=None, bar_format="{desc}")
        self._refresh()

    def advance(self, nbytes: int) -> None:
        self.done_bytes += nbytes
        self.moved += nbytes
        if self._file is not None and self._current == self._file_path:
            self._file_done += nbytes
        self._refresh()

    def end_file(self, report) -> None:
        kind = getattr(report, "kind", "file")
        if kind == "file":
            self.files += 1
            counted = getattr(report, "bytes_resumed", 0) + getattr(report, "bytes_sent",
                                                                     getattr(report, "bytes_received", 0))
            self.done_bytes += max(0, report.size - counted)  # identical, skipped or failed: nothing more to go
        if self._file is not None and report.path == self._file_path:
            self._file.close()
            self._file = self._file_path = None
        self._refresh()

    def close(self) -> None:
        if self.total is None:
            return
        if self.count is not None:
            self.count.stop()
        if self._file is not None:
            self._file.close()
            self._file = None
        self._refresh(force=True)
        self.total.close()
        self.total = None
        _lines_taken.difference_update(self._lines)
        global _above_users
        _above_users -= 1
        if _above_users <= 0:
            from .terminal import use_stream

            _above_users = 0
            use_stream(None)

    # -- drawing ------------------------------------------------------------------
    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last[0] < REDRAW:
            return
        dt = now - self._last[0]
        if dt > 0:  # a moving average of the bytes that moved over the last few redraws
            sample = (self.moved - self._last[1]) / dt
            self._rate = sample if self._rate == 0 else 0.7 * self._rate + 0.3 * sample
        self._last = (now, self.moved)
        self.total.set_description_str(f"{self._label}: {self.text(now)}", refresh=False)
        self.total.refresh()
        if self._file is not None:
            size, done = self._file_size, self._file_done
            pct = 100.0 * done / size if size else 100.0
            eta = _clock((size - done) / self._rate) if self._rate > 0 else "--:--"
            self._file.set_description_str(f"  {self._file_name}: {pct:3.0f}% {self._bar(pct)}{_human(done)}/"
                                           f"{_human(size)}  ETA {eta}", refresh=False)
            self._file.refresh()

    def text(self, now: float) -> str:
        """``42% 1.2GiB/2.9GiB  1234/5000 files  85.3MiB/s  ETA 00:21`` (what the total bar shows)."""
        c = self.count
        if c is not None and c.done:
            total, files = max(c.bytes, self.done_bytes), max(c.files, self.files)
            pct = 100.0 * self.done_bytes / total if total else 100.0
            left = total - self.done_bytes
            eta = ("ETA " + _clock(left / self._rate)) if left > 0 and self._rate > 0 else (
                "ETA --:--" if left > 0 else "")
            return (f"{pct:3.0f}% {self._bar(pct)}{_human(self.done_bytes)}/{_human(total)} {self.files}/{files} "
                    f"files {_human(self._rate)}/s {eta}").rstrip()
        if c is not None and not c.gave_up:  # still counting: what is known so far
            return (f"{_human(self.done_bytes)}/≥{_human(max(c.bytes, self.done_bytes))} "
                    f"{self.files}/≥{max(c.files, self.files)} files {_human(self._rate)}/s "
                    f"{_clock(now - self.start)}")
        return f"{_human(self.done_bytes)} {self.files} files {_human(self._rate)}/s {_clock(now - self.start)}"

    def _bar(self, pct: float, width: int = 12) -> str:
        filled = int(width * min(pct, 100.0) / 100)
        return "|" + "█" * filled + " " * (width - filled) + "| "


def summary_line(report, transfer_id: str = "") -> str:
    """The sender's last line, as rsync --stats or croc: what was sent, skipped, failed; how much and how fast.

    ``sent 5000 items (4980 transferred, 20 identical, 0 failed), 1.2 GiB in 3.4 s; 1.1 GiB of data
    sent (330.0 MiB/s), 100.0 MiB resumed; transfer 1a2b...``"""
    from .units import human_bytes

    moved = report.file_count - report.identical - report.failed
    seconds = max(report.seconds, 1e-3)
    parts = [f"sent {report.file_count} item{'s' if report.file_count != 1 else ''} ({moved} transferred, "
             f"{report.identical} identical, {report.failed} failed), {human_bytes(report.bytes)} in {seconds:.1f} s",
             f"{human_bytes(report.bytes_sent)} of data sent ({human_bytes(report.bytes_sent / seconds)}/s)"
             + (f", {human_bytes(report.bytes_resumed)} resumed" if report.bytes_resumed else "")]
    if transfer_id:
        parts.append(f"transfer {transfer_id}")
    return "; ".join(parts)
