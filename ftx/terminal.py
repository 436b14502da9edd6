"""What reaches the user's terminal: every line passes ``printable`` (core/secure/handshake.py).

File names come from the peer (the receiver's offers) and from the file system
(the sender's own local names); reasons come from the peer.  Any of them can hold
a line break (forging a line) or an escape sequence (rewriting the terminal).  Rather
than trusting each call site to escape its pieces, the boundary does it: the log
handler escapes every formatted message, ``say`` every line the CLI writes itself,
and the progress bars their labels.  ``printable`` leaves backslashes and printable
text alone, so a text escaped earlier passes unchanged.
"""

from __future__ import annotations

import logging
import sys
import time

from .core.secure.handshake import printable

MAX_LINE = 8192  # characters of one log line or message (a name is at most 4096 bytes)


class EscapingFormatter(logging.Formatter):
    """A formatter whose message is escaped (tracebacks, our own, are left as they are)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message, MAX_LINE)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """``--log-format json``: one JSON object per line -- time, level, message (escaped as in
    text mode) and the event's fields (``extra={"fields": {...}}``)."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: A003 - logging's name
        obj = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
               "level": record.levelname.lower(),
               "message": printable(record.getMessage(), MAX_LINE)}
        obj.update(getattr(record, "fields", None) or {})
        import json  # here: a run that logs text never loads it (start-up)

        from .jsontext import clean

        return json.dumps(clean(obj), default=str)  # paths valid UTF-8, their exact bytes beside them


_json = False  # --log-format json: say() writes JSON objects too


def setup_logging(level: int, name: str | None = None, stream=None, fmt: str = "text") -> None:
    """``ftx: <message>`` lines on stderr (or ``stream``) for logger ``name`` (None: the root), escaped.
    Like ``logging.basicConfig``, it leaves a logger that has other handlers alone."""
    logger = logging.getLogger(name)
    if any(not getattr(h, "ftx_terminal", False) for h in logger.handlers):
        return  # configured by someone else (a test harness, a program using ftx): as logging.basicConfig
    for old in [h for h in logger.handlers if getattr(h, "ftx_terminal", False)]:
        logger.removeHandler(old)  # called again (a second command in one process): one handler, today's stderr
    handler = logging.StreamHandler(stream if stream is not None else _stream or sys.stderr)
    global _json
    _json = fmt == "json"
    handler.setFormatter(JsonFormatter() if _json else EscapingFormatter("ftx: %(message)s"))
    handler.ftx_terminal = True
    logger.addHandler(handler)
    logger.setLevel(level)


_stream = None  # where log lines go instead of sys.stderr (the daemon's LineWriter), if set


def use_stream(stream) -> None:
    """Send the ``ftx`` log lines and ``say`` to ``stream`` (None: back to sys.stderr)."""
    global _stream
    _stream = stream
    for h in logging.getLogger("ftx").handlers + logging.getLogger().handlers:
        if getattr(h, "ftx_terminal", False):
            h.setStream(stream if stream is not None else sys.stderr)


def say(message: str, level: str = "error") -> None:
    """One ``ftx: <message>`` line on stderr, escaped."""
    out = _stream or sys.stderr
    if _json:
        import json  # only --log-format json needs it (start-up)

        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level,
                           "message": printable(message, MAX_LINE)})
    else:
        line = f"ftx: {printable(message, MAX_LINE)}"
    try:
        out.write(line + "\n")
        out.flush()
    except (OSError, ValueError, AttributeError):  # no stderr to write to
        pass


__all__ = ["printable", "setup_logging", "use_stream", "say", "EscapingFormatter", "JsonFormatter"]
