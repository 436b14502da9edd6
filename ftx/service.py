"""The receiver as a service: what it is doing, told to systemd and to Prometheus.

``Service`` is the one observer of the daemon: ``publish(event)`` takes every
dict the receiver would print as a ``--json`` line, prints it if asked, and
feeds the same dict to the metrics (ftx/metrics.py) and the activity that makes
systemd's ``STATUS=`` line (ftx/systemd.py).  ``session(transport)`` wraps one
authenticated session and gives the ``Progress`` that counts its files and
bytes in progress (a counter per call, no label per file).  ``run()`` sends
``STATUS=`` at most once a second when it changed, and ``WATCHDOG=1`` at half
the manager's period; ``reload()`` is SIGHUP: the config file (--config: areas, quotas;
ftx/config_file.py) and the authorized keys are read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Callable

from .errors import TransportError
from .progress import Progress
from .systemd import Notifier, PassedSockets, passed_sockets

log = logging.getLogger("ftx.receive")

STATUS_INTERVAL = 1.0


class Tally(Progress):
    """One session's files and bytes in progress; passes every call on to ``then`` (the bars)."""

    def __init__(self, transport: str, then: Progress | None = None) -> None:
        self.transport = transport
        self.then = then or Progress()
        # nothing shows a file's start and bytes: a file that settles in the call that starts it
        # (a small file) need not be started and advanced (it would be added, then taken off)
        self.quiet = type(self.then) is Progress
        self.started: set[str] = set()
        self.bytes = 0  # received in this session for files not settled yet

    def start_file(self, path: str, size: int, resumed: int) -> None:
        self.started.add(path)
        self.then.start_file(path, size, resumed)

    def advance(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.then.advance(nbytes)

    def end_file(self, report) -> None:
        if report.path in self.started:
            self.started.discard(report.path)
            self.bytes = max(0, self.bytes - report.bytes_received)
        self.then.end_file(report)

    def end_files(self, run) -> None:
        if self.quiet and not self.started:  # nothing to take off, nobody to tell
            return
        for report in run:
            self.end_file(report)

    def close(self) -> None:
        self.then.close()


class Service:
    def __init__(self, emit: Callable[[dict], None] | None = None, *, admission=None, auth=None,
                 dest_root: bytes | None = None, metrics_at: tuple[str, int] | None = None, env=None,
                 settings=None) -> None:
        self.emit = emit  # prints a --json line (None: no --json)
        self._emit_report = getattr(emit, "report", None)  # cli_output.emit's per-file line, without a dict
        self._emit_run = getattr(emit, "run", None)  # ... and a run's lines in one go
        self.settings = settings  # the config file read (ftx/config_file.py), or None
        self.auth = auth
        self.notifier = Notifier(env)
        self.tallies: set[Tally] = set()
        self.bytes_done = 0  # bytes received by sessions: settled files' bytes_received, and ended sessions' rest
        self.files_done = 0
        self.metrics = None
        self.budget = None  # the daemon's BufferBudget (--max-memory), for --metrics
        if metrics_at is not None:
            from .metrics import Metrics

            self.metrics = Metrics(self, admission, auth, dest_root)
        self.metrics_at = metrics_at

    async def start(self) -> None:
        """Start serving --metrics (on the running loop)."""
        if self.metrics is not None:
            try:
                await self.metrics.serve(*self.metrics_at)
            except OSError as exc:
                raise TransportError(f"cannot serve --metrics on {self.metrics_at[0]} port {self.metrics_at[1]}: "
                                     f"{exc.strerror or exc}") from exc

    # -- the observer ---------------------------------------------------------------
    def publish(self, event: dict, flush: bool = True) -> None:
        """One event of the daemon: a --json line if asked, and counted by the metrics and the status.
        ``flush=False``: the line may wait in the writer's queue (per-file lines, cli._emit)."""
        if self.emit is not None:
            self.emit(event, flush)
        if event.get("event") == "file":
            self.files_done += 1
            self.bytes_done += event.get("bytes_received", 0)
        if self.metrics is not None:
            self.metrics.observe(event)

    def file_settled(self, report) -> None:
        """One received item (a receiving.FileReport), the per-file hot path: counted for the status,
        and published as a "file" event only when something reads events (--json, --metrics, the
        library's receiver): without them no dict is built per file."""
        if self.emit is None and self.metrics is None:
            self.files_done += 1
            self.bytes_done += report.bytes_received
        elif self.metrics is None and self._emit_report is not None:  # --json: the same line, cheaper
            self.files_done += 1
            self.bytes_done += report.bytes_received
            self._emit_report(report)
        else:
            self.publish({"event": "file", **report.__dict__}, flush=False)

    def files_settled(self, run) -> None:
        """``file_settled`` for each report of a run of small files stored OK (receiving.RunReport):
        counted at once, and its "file" events built together (--json: its lines in one string)."""
        if self.emit is None and self.metrics is None:
            self.files_done += len(run)
            self.bytes_done += run.bytes
        elif self.metrics is None and self._emit_run is not None:
            self.files_done += len(run)
            self.bytes_done += run.bytes
            self._emit_run(run)
        else:
            for report in run:
                self.file_settled(report)

    @contextlib.contextmanager
    def session(self, transport: str, progress: Progress | None = None):
        tally = Tally(transport, progress)
        self.tallies.add(tally)
        try:
            yield tally
        finally:
            self.tallies.discard(tally)
            self.bytes_done += tally.bytes  # data of files not settled (kept for a resume) was received too

    # -- what is going on -----------------------------------------------------------
    def active_by_transport(self) -> dict[str, int]:
        out = {"tcp": 0, "udp": 0}
        for t in list(self.tallies):
            out[t.transport] = out.get(t.transport, 0) + 1
        return out

    def files_in_progress(self) -> int:
        return sum(len(t.started) for t in list(self.tallies))

    def bytes_in_progress(self) -> int:
        return sum(t.bytes for t in list(self.tallies))

    def status_text(self) -> str:
        n = len(self.tallies)
        received = _human_bytes(self.bytes_done + self.bytes_in_progress())
        if not n:
            return f"waiting for senders; {self.files_done} files, {received} received since start"
        return (f"{n} sender{'s' if n != 1 else ''}, {self.files_in_progress()} files in progress, "
                f"{received} received")

    # -- systemd --------------------------------------------------------------------
    def ready(self) -> None:
        """After the listening line: the manager may start what depends on us."""
        self.notifier.ready(self.status_text())

    def stopping(self) -> None:
        self.notifier.stopping()

    def reload(self) -> None:
        """SIGHUP: read the config file and the authorized keys again (running sessions go on with what
        they started with; new ones see the new areas and keys)."""
        self.notifier.reloading()
        settings = self.settings
        if settings is not None:  # --config: areas and quotas for new sessions; the keys below
            settings.reload()
        try:
            if self.auth is not None and getattr(self.auth, "kind", "") == "key":
                self.auth.authorized.reload(force=True)
                log.warning("reloaded %s: %d senders authorized", self.auth.authorized.path,
                            len(self.auth.authorized.keys))
            else:
                log.warning("SIGHUP: nothing to reload in %s mode", getattr(self.auth, "kind", "this"))
        except Exception as exc:  # a bad file keeps the keys read before
            log.warning("reload failed, keeping the keys read before: %s", exc)
        finally:
            self.notifier.reloaded()
            if self.emit is not None:
                self.emit({"event": "reloaded", "pid": os.getpid()})

    async def run(self) -> None:
        """STATUS= when it changed (at most once a second) and WATCHDOG=1, until cancelled."""
        if not self.notifier.enabled:
            return
        loop = asyncio.get_running_loop()
        next_dog = loop.time()
        while True:
            self.notifier.status(self.status_text())
            now = loop.time()
            if self.notifier.watchdog_interval is not None and now >= next_dog:
                self.notifier.watchdog()
                next_dog = now + self.notifier.watchdog_interval
            wait = STATUS_INTERVAL
            if self.notifier.watchdog_interval is not None:
                wait = max(0.01, min(wait, next_dog - now))
            await asyncio.sleep(wait)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.notifier.close()


def activation() -> PassedSockets:
    """The sockets systemd passed (socket activation), or none; a bad setup is a one-line error."""
    from .systemd import ActivationError

    try:
        return passed_sockets()
    except ActivationError as exc:
        raise TransportError(f"socket activation: {exc}") from None


async def serve_passed(passed: PassedSockets, handle_udp, udp_config, admission, limits):
    """(TCP listening sockets, bound address, UDP server or None) from passed sockets, as ``_bind_both``."""
    from .transport import udp as udp_transport

    socks = passed.stream
    for s in socks:
        s.setblocking(False)
    if len(passed.dgram) > 1:
        log.warning("socket activation: %d datagram sockets passed; serving UDP on the first only",
                    len(passed.dgram))
    udp_server = None
    if passed.dgram:
        udp_server = await udp_transport.serve(None, 0, handle_udp, udp_config, admission, limits,
                                               sock=passed.dgram[0])
    bound = (socks[0] if socks else passed.dgram[0]).getsockname()
    return socks, bound, udp_server


def _human_bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


__all__ = ["Service", "Tally", "activation", "serve_passed"]
