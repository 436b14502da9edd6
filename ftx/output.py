"""Output that never stalls the daemon.

A receiver's ``--json`` lines (stdout) and log lines (stderr) go to a ``LineWriter``:
a bounded queue that one thread writes to the file descriptor.  Whoever emits a line
(the event loop, a worker thread) only appends to the queue; a reader that stops
reading blocks that thread alone, never the loop, the transfers or SIGTERM.  When the
queue is full, lines are dropped and counted; once the reader has caught up (the queue
is empty again) one line says how many were lost (``dropped(n)``).

The descriptor stays blocking (it is often shared: a terminal, the shell's pipe);
only the writer thread waits on it.  The thread holds nothing the loop needs: the
queue's lock is held for appends and pops, never across a write.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Callable

QUEUE_BYTES = 4 << 20  # lines waiting for a slow reader, at most


class LineWriter:
    """Writes text lines to ``fd`` from a thread, dropping (and counting) what does not fit in ``limit``."""

    def __init__(self, fd: int, limit: int = QUEUE_BYTES, dropped: Callable[[int], str] | None = None,
                 on_dropped: Callable[[int], None] | None = None, on_gone: Callable[[], None] | None = None,
                 name: str = "ftx-output") -> None:
        self.fd = fd
        self.limit = limit
        self._dropped_line = dropped  # the line that reports n lost lines (None: say nothing)
        self._on_dropped = on_dropped  # also told (e.g. a warning on stderr); called on the writer thread
        self._on_gone = on_gone  # told once when the reader has gone away (EPIPE)
        self._cond = threading.Condition()
        self._parts: deque[bytes] = deque()
        self._size = 0  # bytes queued and being written
        self._dropped = 0  # lines dropped since the last report
        self.dropped_total = 0
        self._closed = False
        self.gone = False  # the reader went away (EPIPE): everything later is discarded
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, text: str) -> bool:
        """Queue ``text`` (whole lines); False if it was dropped.  Never blocks on the reader."""
        data = text.encode("utf-8", "backslashreplace")
        with self._cond:
            if self.gone or self._closed:
                return False
            if self._size + len(data) > self.limit:
                n = max(1, text.count("\n"))
                self._dropped += n
                self.dropped_total += n
                return False
            self._parts.append(data)
            self._size += len(data)
            self._cond.notify()
        return True

    def flush(self) -> None:
        """Nothing to do: the thread writes as soon as it can (a stream's method, for ``logging``)."""

    def pending(self) -> int:
        with self._cond:
            return self._size

    def idle(self) -> bool:
        """Nothing queued, being written, or lost and not reported yet."""
        with self._cond:
            return self._size == 0 and not (self._dropped and self._dropped_line is not None)

    def close(self, timeout: float) -> bool:
        """Stop taking lines; wait at most ``timeout`` s for the queue to drain.  True if it did."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the writer thread --------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._parts and not self._closed:
                    if self._dropped and self._dropped_line is not None:
                        break
                    self._cond.wait()
                if self._parts:
                    data = b"".join(self._parts)
                    self._parts.clear()
                    report = 0
                elif self._dropped:  # caught up after a loss: say so once
                    report, self._dropped = self._dropped, 0
                    data = self._dropped_line(report).encode() if self._dropped_line else b""
                    self._size += len(data)
                else:  # closed and drained
                    return
            if not self._write_all(data):
                return
            with self._cond:
                self._size -= len(data)
            if report and self._on_dropped is not None:
                self._on_dropped(report)

    def _write_all(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except InterruptedError:
                continue
            except OSError:  # EPIPE and alike: the reader is gone, for good
                with self._cond:
                    self.gone = True
                    self._parts.clear()
                    self._size = 0
                    self._cond.notify_all()
                if self._on_gone is not None:
                    self._on_gone()
                return False
        return True


__all__ = ["LineWriter", "QUEUE_BYTES"]
