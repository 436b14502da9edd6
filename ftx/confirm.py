"""The code-mode receiver's question before it accepts what a sender offers, bounded in time.

``ftx receive --code`` (without ``--yes``) shows what a code holder announced and
asks ``Accept? [y/N]`` on its terminal.  An unanswered question used to hold the
connection, and its sender, forever.  Now:

* the answer must come within ``timeout`` seconds (``--confirm-timeout``, counted
  from the sender's HELLO, including the wait behind another sender's question);
  no answer is "no", and the sender is told ``the receiver did not accept in
  time``;
* one thread reads the terminal for the whole run (a question that timed out
  leaves no reader behind to swallow the next answer); a line typed before a
  question is shown is not taken as its answer; once the terminal is closed
  (end of file) every question is answered "no" at once;
* ``unavailable`` says why a receiver cannot ask at all (standard input closed or
  not a terminal), so that it refuses to start with one line instead of hanging.
"""

from __future__ import annotations

import asyncio
import sys
import threading

from .core.secure.handshake import printable

DECLINED = "the receiver declined what is offered"
TIMED_OUT = "the receiver did not accept in time"
YES = ("y", "yes")


def unavailable(stdin=None) -> str | None:
    """Why there is no terminal to ask on (None: there is one)."""
    stdin = sys.stdin if stdin is None else stdin
    try:
        if stdin is not None and stdin.isatty():
            return None
    except (ValueError, OSError):  # closed under us
        pass
    where = "standard input is closed" if stdin is None or getattr(stdin, "closed", False) else \
        "standard input is not a terminal"
    return (f"--code asks before accepting what a sender offers, and {where}; "
            "add --yes to accept without asking")


class Question:
    """Asks the receiver's user, one question at a time, each bounded by ``timeout`` seconds."""

    def __init__(self, timeout: float, stdin=None, out=None) -> None:
        self.timeout = timeout
        self._stdin = stdin if stdin is not None else sys.stdin
        self._out = out if out is not None else sys.stderr
        self._lines: asyncio.Queue | None = None  # lines read from the terminal, None at its end
        self._closed = False  # the terminal reached end of file
        self._lock: asyncio.Lock | None = None
        self.timed_out = 0  # questions nobody answered in time

    def _start(self) -> None:
        if self._lines is not None:
            return
        self._lines = asyncio.Queue()
        self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        lines = self._lines

        def read() -> None:  # a daemon thread: a pending read never holds up the exit
            while True:
                try:
                    line = self._stdin.readline()
                except (OSError, ValueError):
                    line = ""
                try:
                    loop.call_soon_threadsafe(lines.put_nowait, line or None)
                except RuntimeError:  # the loop is closed: we are exiting
                    return
                if not line:
                    return

        threading.Thread(target=read, name="ftx-question", daemon=True).start()

    async def ask(self, text: str) -> str | None:
        """Show ``text`` and wait for the answer: None when accepted, else the reason for the sender."""
        self._start()
        try:
            return await asyncio.wait_for(self._ask(text), self.timeout)
        except asyncio.TimeoutError:
            self.timed_out += 1
            self._say(f"\nftx: no answer within {self.timeout:g} s (--confirm-timeout): declined\n")
            return TIMED_OUT

    async def _ask(self, text: str) -> str | None:
        async with self._lock:
            while not self._lines.empty():  # typed before this question: not its answer
                if self._lines.get_nowait() is None:
                    self._closed = True
            if self._closed:
                return DECLINED
            self._say(f"{printable(text, None)} [y/N]: ")  # it names what the peer offers
            line = await self._lines.get()
            if line is None:
                self._closed = True
                self._say("\n")
                return DECLINED
            return None if line.strip().lower() in YES else DECLINED

    def _say(self, text: str) -> None:
        try:
            self._out.write(text)
            self._out.flush()
        except (OSError, ValueError):
            pass


__all__ = ["Question", "unavailable", "DECLINED", "TIMED_OUT"]
