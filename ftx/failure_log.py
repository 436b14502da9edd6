"""The receiver's lines about failed handshakes, throttled.

Every failed handshake (a wrong key, garbage, a timeout) used to print one stderr
line: a flood filled the log, and a stderr pipe nobody read stalled the daemon.
Now the first failure from an address prints at once (an operator trying a sender
sees why at once); the next ones from it within ``interval`` seconds are only
counted, and one summary line per address per interval reports them (the daemon
passes ``host_key``: an IPv6 /64 is one "address" here)::

    192.0.2.7: 312 failed handshakes in the last 10 s (last: authentication failed: ...)

A flood from many addresses is bounded too: at most ``max_first`` addresses per
interval get their own first line and at most ``max_hosts`` are counted apart;
the rest share one summary line.

``failed`` returns whether the failure got its own line, so that a second
channel (``--json``) can say the same things and no more: its per-failure event
only when this is True, and, from ``on_suppressed(failures, addresses, seconds)``,
one summary per flush of everything held back ("N more failures from M addresses
suppressed"; M counts at most ``max_counted`` addresses: beyond, "at least").
"""

from __future__ import annotations

import time
from collections.abc import Callable

OTHERS = "other addresses"


class FailureLog:
    def __init__(self, emit: Callable[[str], None], interval: float = 10.0, *, max_hosts: int = 1024,
                 max_first: int = 20, max_counted: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.on_suppressed: Callable[[int, int, float], None] | None = None
        self.interval = interval
        self.max_hosts = max_hosts
        self.max_first = max_first
        self.max_counted = max_counted
        self.clock = clock
        self._hosts: dict[str, list] = {}  # host -> [window start, failures counted, last text]
        self._others: set[str] = set()  # addresses counted in the OTHERS entry (at most max_counted)
        self._first_lines = 0  # first lines printed in the current interval ...
        self._first_since = clock()  # ... which started then

    def failed(self, host: str | None, label: str, text: str) -> bool:
        """A handshake from ``host`` (``label``: how to name the peer in a first line) failed.
        True: it got its own line; False: it is counted for a summary."""
        now = self.clock()
        self.flush(now)
        key = host or "?"
        entry = self._hosts.get(key)
        if entry is None:
            if len(self._hosts) < self.max_hosts and self._first_lines < self.max_first:
                self._first_lines += 1
                self._hosts[key] = [now, 0, text]
                self.emit(f"{label}: {text}")
                return True
            entry = self._hosts.setdefault(OTHERS, [now, 0, text])
            if len(self._others) < self.max_counted:
                self._others.add(key)
            text = f"{label}: {text}"
        entry[1] += 1
        entry[2] = text
        return False

    def flush(self, now: float | None = None, final: bool = False) -> None:
        """Print the summaries whose interval is over (all of them when ``final``)."""
        now = self.clock() if now is None else now
        if now - self._first_since >= self.interval:
            self._first_lines, self._first_since = 0, now
        held, hosts, longest = 0, 0, 0
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
                held += count
                hosts += len(self._others) if key == OTHERS else 1
                longest = max(longest, seconds)
                if key == OTHERS:
                    self._others = set()
            else:
                del self._hosts[key]  # quiet for a whole interval: its next failure prints at once
        if held and self.on_suppressed is not None:
            self.on_suppressed(held, hosts, longest)


def suppressed_text(failures: int, addresses: int) -> str:
    return f"{failures} more failure{'s' * (failures != 1)} from {addresses} address{'es' * (addresses != 1)} suppressed"
