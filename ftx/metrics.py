"""``ftx receive --metrics HOST:PORT``: Prometheus text via ``prometheus-client``.

One registry of our own (not the library's global one), served by a small
bounded HTTP handler on the receiver's own loop.  ``Metrics.observe`` takes the very
dicts the receiver publishes as ``--json`` lines (``session``, ``file``,
``failures_suppressed``), so the JSON output and the metrics count the same
things; what exists only between events (sessions open now, bytes of files in
progress, refusals by ``Admission``, partial files on disk) is read when a
scrape asks for it.  Label values come from small fixed sets (transport,
outcome, file status, a ``Limits`` field name): a path or an address never
becomes a label, so a series costs nothing per file.
"""

from __future__ import annotations

import asyncio
import os
import stat
import re
import threading
import time
from dataclasses import fields

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .errors import ErrorCode
from .limits import Limits

#: the ``Limits`` options that may appear in a refusal's text, as ``(--option`` or ``receiver's --option``
_LIMIT_OPTION = re.compile(r"--(" + "|".join(f.name.replace("_", "-") for f in fields(Limits)) + r")\b")
#: a file line's status: "ok", "identical" or an ErrorCode name in lower case (anything else: "other")
STATUSES = frozenset({"ok", "identical"} | {code.name.lower() for code in ErrorCode})
MAX_SCRAPERS = 8  # connections served at once by --metrics
REQUEST_MAX = 8192  # bytes of request head
REQUEST_TIMEOUT = 5.0  # seconds to send the request head, and to take the answer
PARTIAL_SCAN_INTERVAL = 2.0  # seconds a scan of --dir for partial files is reused (a scrape flood walks it once)


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT``; a bare port listens on loopback.  Raises ValueError."""
    from .transport.sockets import parse_dest

    text = text.strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, port = parse_dest(text, -1, allow_zero=True)
    if port < 0:
        raise ValueError(f"{text!r} has no port: use HOST:PORT, e.g. 127.0.0.1:9100")
    return host, port


#: refusals whose text does not name their option (shared with the sender's side), by their wording
_UNNAMED = (("the handshake did not finish within", "handshake_timeout"),
            ("the max-file-size of area", "max_file_size"), ("its quota", "quota"), ("has no area for", "area"))  # ftx/areas.py


def refusal_reason(message: str) -> str | None:
    """The ``Limits`` field a refusal names (``"stall_timeout"``), or None: a bounded label value."""
    m = _LIMIT_OPTION.search(message or "")
    if m:
        return m.group(1).replace("-", "_")
    return next((reason for words, reason in _UNNAMED if words in (message or "")), None)


def outcome(session: dict) -> str:
    """A session event's outcome label: ok, files_failed, incomplete, auth_failed or refused."""
    if session.get("ok"):
        return "ok"
    if session.get("complete"):
        return "files_failed"
    if "auth" in session:  # the handshake failed (security_setup.authenticate)
        return "auth_failed" if str(session.get("error", "")).startswith("authentication failed") else "refused"
    return "incomplete"


class Metrics:
    """The receiver's counters in their own registry; ``serve`` exposes them over HTTP."""

    def __init__(self, activity=None, admission=None, auth=None, dest_root: bytes | None = None) -> None:
        self.activity = activity  # the Service: sessions now, and its config file's areas
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions = Counter("ftx_sessions", "Sessions ended, by transport and outcome "
                                "(ok, files_failed, incomplete, auth_failed, refused).",
                                ["transport", "outcome"], registry=r)
        self.retransmitted = Counter("ftx_udp_retransmitted_bytes", "UDP: bytes the receiver sent again.",
                                     registry=r)
        self.lost = Counter("ftx_udp_lost_packets", "UDP: packets of the receiver declared lost.", registry=r)
        self.auth_failures = Counter("ftx_auth_failures", "Handshakes that failed (unknown key, wrong code, bad "
                                     "certificate, or broken off), those told only in a summary line included.",
                                     registry=r)
        self._lock = threading.Lock()
        self.refusals: dict[str, int] = {}  # by Limits field name; with Admission's, one ftx_refusals_total
        # per file: plain integers under one lock (a Counter child costs a lock and a lookup each)
        self.files: dict[str, int] = {}  # by status
        self.bytes = self.resumed = 0
        self._partial = (0.0, 0)
        self._live = _Live(activity, admission, auth, dest_root, self)
        r.register(self._live)
        self.server = None
        self.address: tuple[str, int] | None = None

    # -- the observer ---------------------------------------------------------------
    def observe(self, event: dict) -> None:
        """Count one published event (the dict of a --json line)."""
        kind = event.get("event")
        if kind == "file":
            status = event.get("status")
            status = status if status in STATUSES else "other"
            with self._lock:
                self.files[status] = self.files.get(status, 0) + 1
                self.bytes += event.get("bytes_received", 0)
                self.resumed += event.get("bytes_resumed", 0)
            if event.get("message") and (reason := refusal_reason(event["message"])) is not None:
                self._refused(reason)
        elif kind == "session":
            result = outcome(event)
            self.sessions.labels(event.get("transport", "?"), result).inc()
            if "auth" in event:  # a handshake that failed (its session line carries the mode)
                self.auth_failures.inc()
            if (reason := refusal_reason(event.get("error") or "")) is not None:
                self._refused(reason)
            stats = event.get("transport_stats") or {}
            self.retransmitted.inc(stats.get("retransmitted_bytes", 0))
            self.lost.inc(stats.get("lost_packets", 0))
        elif kind == "failures_suppressed":  # failed handshakes told in one summary line
            self.auth_failures.inc(event.get("failures", 0))

    def _refused(self, reason: str) -> None:
        with self._lock:
            self.refusals[reason] = self.refusals.get(reason, 0) + 1

    # -- HTTP -----------------------------------------------------------------------
    async def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve GET /metrics on ``host``:``port`` on the running loop; return the bound address.

        Bounded for a port someone may reach: MAX_SCRAPERS connections at once (more are
        closed at once), a request of at most REQUEST_MAX bytes read within REQUEST_TIMEOUT,
        the exposition rendered in a worker thread (the partial-file scan walks --dir)."""
        slots = asyncio.Semaphore(MAX_SCRAPERS)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if slots.locked():
                writer.close()
                return
            async with slots:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
                    method, _, rest = head.partition(b" ")
                    path = rest.partition(b" ")[0].partition(b"?")[0]
                    if method not in (b"GET", b"HEAD"):
                        status, body, ctype = b"405 Method Not Allowed", b"GET /metrics\n", b"text/plain"
                    elif path not in (b"/metrics", b"/"):
                        status, body, ctype = b"404 Not Found", b"GET /metrics\n", b"text/plain"
                    else:
                        body = await asyncio.to_thread(generate_latest, self.registry)
                        status, ctype = b"200 OK", CONTENT_TYPE_LATEST.encode()
                    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                                 + (body if method != b"HEAD" else b""))
                    await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
                except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    pass
                finally:
                    writer.close()

        self.server = await asyncio.start_server(client, host, port, limit=REQUEST_MAX, reuse_address=True)
        self.address = (host, self.server.sockets[0].getsockname()[1])
        return self.address

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def partial_bytes(self, root: bytes) -> int:
        """Bytes in ftx's partial files under ``root``, scanned at most every PARTIAL_SCAN_INTERVAL."""
        with self._lock:
            at, value = self._partial
            if time.monotonic() - at < PARTIAL_SCAN_INTERVAL:
                return value
            settings = getattr(self.activity, "settings", None)  # the Service: its config file's areas
            value = _scan_partials(root, settings.areas.areas if settings is not None and settings.areas else ())
            self._partial = (time.monotonic(), value)
            return value


class _Live:
    """What is read at scrape time: sessions now, bytes in progress, refusals, partials."""

    def __init__(self, activity, admission, auth, root, metrics: Metrics) -> None:
        self.activity, self.admission, self.auth, self.root, self.metrics = activity, admission, auth, root, metrics

    def describe(self):
        return []

    def collect(self):
        if self.activity is not None:
            g = GaugeMetricFamily("ftx_sessions_active", "Authenticated sessions being served.",
                                  labels=["transport"])
            for transport, n in sorted(self.activity.active_by_transport().items()):
                g.add_metric([transport], n)
            yield g
            yield GaugeMetricFamily("ftx_files_in_progress", "Files receiving data now.",
                                    value=self.activity.files_in_progress())
            yield GaugeMetricFamily("ftx_receiving_bytes", "Bytes received so far of the files in progress.",
                                    value=self.activity.bytes_in_progress())
        m = self.metrics
        with m._lock:
            counts, files, received, resumed = dict(m.refusals), dict(m.files), m.bytes, m.resumed
        c = CounterMetricFamily("ftx_files", "Items settled, by status (ok, identical, or the error code in lower "
                                "case).", labels=["status"])
        for status, n in sorted(files.items()):
            c.add_metric([status], n)
        yield c
        yield CounterMetricFamily("ftx_received_bytes", "File bytes received and stored (settled files, as the "
                                  "file lines' bytes_received).", value=received)
        yield CounterMetricFamily("ftx_resumed_bytes", "File bytes a resume did not need to receive again.",
                                  value=resumed)
        if self.admission is not None:  # connections turned away with BUSY before any session state
            for reason, n in getattr(self.admission, "refused_by", {}).items():
                counts[reason] = counts.get(reason, 0) + n
        c = CounterMetricFamily("ftx_refusals", "Connections, sessions or files refused or ended by a receiver "
                                "limit, by the limit (a Limits field name: max_per_host is --max-per-host).",
                                labels=["reason"])
        for reason, n in sorted(counts.items()):
            c.add_metric([reason], n)
        yield c
        if self.auth is not None:
            yield CounterMetricFamily("ftx_handshakes_turned_away", "Connections turned away before any handshake "
                                      "work (an address throttled after failures, a pairing code in use).",
                                      value=getattr(self.auth, "turned_away", 0))
        budget = getattr(self.activity, "budget", None)
        if budget is not None:  # --max-memory's frame share: buffers, item state, small files not yet settled
            yield GaugeMetricFamily("ftx_buffer_memory_bytes", "Bytes of the receiver's buffer budget in use now "
                                    "(frame buffers, per-item state and small files' bytes until their RESULT).",
                                    value=budget.used)
            yield GaugeMetricFamily("ftx_buffer_memory_peak_bytes", "The most ftx_buffer_memory_bytes has been.",
                                    value=budget.peak)
            yield GaugeMetricFamily("ftx_buffer_memory_limit_bytes", "What that budget may hold (from --max-memory).",
                                    value=budget.limit)
        if self.root is not None:
            yield GaugeMetricFamily("ftx_partial_bytes", "Bytes in partial files (kept for resume) under --dir.",
                                    value=self.metrics.partial_bytes(self.root))


def _scan_partials(root: bytes, areas=()) -> int:
    """Bytes on disk (not sparse sizes) of the partial data and journals in ftx's state
    directory ``root/.ftx`` (storage.py keeps them there; one directory, never a walk of --dir),
    and in each of ``areas``' (``--config`` [areas], ftx/areas.py).
    Partials kept beside their file under another mount point are not counted."""
    return _scan_state(root) + sum(_scan_state(os.path.join(root, area.dir)) for area in areas)


def _scan_state(root: bytes) -> int:
    try:
        fd = os.open(os.path.join(root, b".ftx"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    total = 0
    try:
        with os.scandir(fd) as it:
            for de in it:
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += st.st_blocks * 512
    finally:
        os.close(fd)
    return total


__all__ = ["Metrics", "parse_address", "refusal_reason", "outcome"]
