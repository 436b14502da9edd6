"""The receiver's lines about failed handshakes, throttled.

Every failed handshake (a wrong key, garbage, a timeout) used to print one stderr
line: a flood filled the log, and a stderr pipe nobody read stalled the daemon.
Now the first failure from an address prints at once (an operator trying a sender
sees why at once); the next ones from it within ``interval`` seconds are only
counted, and one summary line per address per interval reports them::

    192.0.2.7: 312 failed handshakes in the last 10 s (last: authentication failed: ...)

A flood from many addresses is bounded too: at most ``max_first`` addresses per
interval get their own first line and at most ``max_hosts`` are counted apart;
the rest share one summary line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

OTHERS = "other addresses"


class FailureLog:
    def __init__(self, emit: Callable[[str], None], interval: float = 10.0, *, max_hosts: int = 1024,
                 max_first: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.interval = interval
        self.max_hosts = max_hosts
        self.max_first = max_first
        self.clock = clock
        self._hosts: dict[str, list] = {}  # host -> [window start, failures counted, last text]
        self._first_lines = 0  # first lines printed in the current interval ...
        self._first_since = clock()  # ... which started then

    def failed(self, host: str | None, label: str, text: str) -> None:
        """A handshake from ``host`` (``label``: how to name the peer in a first line) failed."""
        now = self.clock()
        self.flush(now)
        key = host or "?"
        entry = self._hosts.get(key)
        if entry is None:
            if len(self._hosts) < self.max_hosts and self._first_lines < self.max_first:
                self._first_lines += 1
                self._hosts[key] = [now, 0, text]
                self.emit(f"{label}: {text}")
                return
            entry = self._hosts.setdefault(OTHERS, [now, 0, text])
            text = f"{label}: {text}"
        entry[1] += 1
        entry[2] = text

    def flush(self, now: float | None = None, final: bool = False) -> None:
        """Print the summaries whose interval is over (all of them when ``final``)."""
        now = self.clock() if now is None else now
        if now - self._first_since >= self.interval:
            self._first_lines, self._first_since = 0, now
        for key in list(self._hosts):
            start, count, last = self._hosts[key]
            if not final and now - start < self.interval:
                continue
            if count:
                seconds = max(1, round(now - start))
                where = f"{count} failed handshakes from {OTHERS}" if key == OTHERS else \
                    f"{key}: {count} failed handshake{'s' if count > 1 else ''}"
                self.emit(f"{where} in the last {seconds:g} s (last: {last})")
                self._hosts[key] = [now, 0, last]  # a flood that goes on: one line per interval
            else:
                del self._hosts[key]  # quiet for a whole interval: its next failure prints at once
