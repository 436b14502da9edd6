"""The receiver as a service: bind, admit, authenticate, receive, report events, stop cleanly.

``ReceiverService`` is what ``ftx receive`` runs and what ``ftx.Receiver`` (ftx/api.py)
wraps.  It owns the listening sockets (TCP, and UDP on the same port number), the
``Admission`` counts, the frame-buffer budget, the systemd/metrics observer (``Service``),
the failure logs and partial-file expiry.  It never prints: every event goes, as the
dict that ``ftx receive --json`` prints, to ``emit(event, flush)``; log lines go to the
``ftx.events`` logger.  It installs no signal handler: its owner calls ``stop()``.

    svc = ReceiverService(Destination(root), host="127.0.0.1", port=0, auth=ReceiverAuth(insecure=True))
    await svc.start()          # bound: svc.port; the "listening" event went out
    ok = await svc.wait()      # until stop() (None), or with once=True the first complete session's outcome
    await svc.aclose()

Each authenticated link gets its Destination from ``destination_for(link)``: the one
place that chooses where a sender's files go.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Awaitable, Callable, Optional

from . import DEFAULT_PORT
from .core.hosts import host_key
from .errors import TransportError
from .limits import Admission, Limits
from .progress import Progress
from .units import human_bytes
from .transport.sockets import host_of, peer_label

events_log = logging.getLogger("ftx.events")  # one line per event (README "Logs")

LINES_DELAY = 0.1  # seconds a per-file event may wait in the sink before ``flush`` is called

Emit = Callable[..., None]  # emit(event: dict, flush: bool = True)
Ask = Callable[[str, str], Awaitable[Optional[str]]]  # ask(peer, offer) -> None to accept, else the reason


def auth_text(auth: Any) -> str:
    if auth.insecure:
        return "INSECURE: senders are not authenticated"
    if auth.code:
        return "pairing code on stderr"
    return f"{auth.kind} {auth.fingerprint}" if auth.fingerprint else str(auth.kind)


def sender_text(link: Any) -> tuple[str, dict]:
    """Who the sender proved to be: text for the log line, fields for --log-format json."""
    est = getattr(link, "established", None)
    peer = getattr(est, "peer", None)
    if peer is None:
        return "not authenticated (--insecure)", {"identity": "insecure"}
    text = {"key": f"key {peer.fingerprint}", "tls": f"certificate {peer.fingerprint}",
            "code": "pairing code"}.get(peer.kind, peer.kind)
    if peer.name and peer.kind != "code":
        text += f" ({peer.name})"
    return text, {"identity": peer.kind, "fingerprint": peer.fingerprint, "name": peer.name}


def fit_descriptors(limits: Limits, tell: Callable[[str], None]) -> Limits:
    """Make room for 2 descriptors per open partial plus the connections (raising ``ulimit -n`` if
    allowed); if there is none, lower ``max_open_files`` and ``tell`` so."""
    import dataclasses

    from .descriptors import raise_descriptor_limit
    from .helddirs import DIR_CACHE

    # sockets, the listeners, stdio, the interpreter's own; the held directories (+ --dir, .ftx, syncfs)
    spare = limits.max_connections + 64 + DIR_CACHE + 4
    soft = raise_descriptor_limit(2 * limits.max_open_files + spare)
    fits = max(1, (soft - spare) // 2)
    if fits < limits.max_open_files:
        tell(f"--max-open-files lowered from {limits.max_open_files} to {fits}: "
             f"the descriptor limit (ulimit -n) is {soft}")
        limits = dataclasses.replace(limits, max_open_files=fits)
    return limits


class SessionCounts:
    """One session's files for its summary line (the reports are counted, not kept)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.files = self.identical = self.failed = self.bytes = self.received = 0

    def add(self, report: Any) -> None:  # on a worker thread, one at a time per session
        self.files += 1
        self.bytes += report.size
        self.received += report.bytes_received
        self.identical += report.status == "identical"
        self.failed += not report.ok

    def add_run(self, run: Any) -> None:
        """``add`` for each of a run of small files stored OK (receiving.RunReport)."""
        nbytes = run.bytes
        self.files += len(run)
        self.bytes += nbytes
        self.received += nbytes

    def log(self, peer: str, transport: str, transfer_id: str, ok: bool, complete: bool, error: str) -> None:
        seconds = max(time.monotonic() - self.start, 1e-6)
        rate = self.received / seconds
        outcome = "" if ok else f"; {error or ('incomplete' if not complete else 'some files failed')}"
        (events_log.info if ok else events_log.warning)(
            "%s: transfer %s over %s: %d files (%d identical, %d failed), %s received in %.2f s (%s/s)%s",
            peer, transfer_id or "-", transport, self.files, self.identical, self.failed, human_bytes(self.received),
            seconds, human_bytes(rate), outcome,
            extra={"fields": {"event": "session", "peer": peer, "transport": transport, "transfer_id": transfer_id,
                              "ok": ok, "complete": complete, "files": self.files, "identical": self.identical,
                              "failed": self.failed, "bytes": self.bytes, "bytes_received": self.received,
                              "seconds": round(seconds, 3), "error": error}})


async def bind_both(host: str, port: int, udp: bool, handle_udp: Any, udp_config: Any = None,
                    admission: Admission | None = None, limits: Limits | None = None) -> tuple[list, tuple, Any]:
    """TCP listening sockets and, unless disabled, UDP on the same port number."""
    from .transport import tcp, udp as udp_transport

    for attempt in range(20):
        socks = tcp.listen(host, port)
        bound = socks[0].getsockname()
        if not udp:
            return socks, bound, None
        try:
            return socks, bound, await udp_transport.serve(host, bound[1], handle_udp, udp_config, admission, limits)
        except TransportError:
            for s in socks:
                s.close()
            if port != 0 or attempt == 19:
                raise
    raise AssertionError("unreachable")


class ReceiverService:
    """One receiver: its sockets, its senders, its events.  See the module docstring."""

    def __init__(self, dest: Any, *, host: str = "::", port: int = DEFAULT_PORT, udp: bool = True,
                 once: bool = False, idle_timeout: float | None = None, limits: Limits | None = None,
                 auth: Any = None, metrics_at: tuple[str, int] | None = None, emit: Emit | None = None,
                 flush: Callable[[], None] | None = None, tell: Callable[[str], None] | None = None,
                 say: Callable[..., None] | None = None, progress: Callable[[str], Progress] | None = None,
                 ask: Ask | None = None, activation: bool = True, detail: bool = False, settings: Any = None) -> None:
        """``dest``: the Destination (receive root).  ``emit(event, flush)``: every event as the --json dict
        (``flush=False``: a per-file event, possibly from a worker thread; ``flush()`` is called on the
        loop within LINES_DELAY).  ``tell(text)``: a notice for the operator (the pairing code).
        ``say(text, level)``: the throttled failure and refusal lines (default: terminal.say, stderr).
        ``progress(peer)``: a Progress per session (bars).  ``ask(peer, offer)``: code mode, ask before
        accepting (None: accept).  ``activation``: serve sockets passed by systemd (LISTEN_FDS) if any.
        ``detail``: also emit a "sender" event per authenticated sender and a "refusal" event per
        connection turned away by a limit (the library's receiver; ``ftx receive`` logs them as lines).
        ``settings``: a config file read by ``ftx.config_file.read`` (per-sender areas; SIGHUP re-reads it)."""
        from .security_setup import ReceiverAuth

        self.dest = dest
        self.host, self.requested_port, self.udp, self.once = host, port, udp, once
        self.idle_timeout = idle_timeout
        self.limits = limits or Limits()
        self.auth = auth or ReceiverAuth(insecure=True)
        self.metrics_at = metrics_at
        self.emit, self.flush, self.tell = emit, flush, tell
        from .terminal import say as say_on_stderr

        self.say: Callable[..., None] = say if say is not None else say_on_stderr
        self.progress, self.ask = progress, ask
        self.auth.ask = ask is not None
        self.activation = activation
        self.settings = settings
        self.detail = emit if detail else None  # where "sender" and "refusal" events go
        self.socks: list = []
        self.bound: tuple = ()
        self.udp_server: Any = None
        self.svc: Any = None
        self._tasks: list[asyncio.Task] = []
        self._server: asyncio.Task | None = None
        self._finished: asyncio.Future | None = None
        self._closed = False

    # -- where things are -------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.bound[1] if self.bound else 0

    @property
    def udp_port(self) -> int | None:
        return self.udp_server.dsock.sock.getsockname()[1] if self.udp_server is not None else None

    @property
    def transports(self) -> list[str]:
        return (["tcp"] if self.socks else []) + (["udp"] if self.udp_server else [])

    async def destination_for(self, link: Any) -> Any:
        """The Destination an authenticated link's files go to: the root, or its sender's area
        (``settings``' [areas]); None when it has none (it was told, and it is logged and published)."""
        return await self._areas(link)

    # -- life -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind (or take the sockets systemd passed), publish "listening", start serving."""
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        from .core.frames import BufferBudget
        from .core.udp.session import UdpConfig
        from .service import Service, activation, serve_passed
        from .systemd import PassedSockets

        limits, auth, dest = self.limits, self.auth, self.dest
        self.admission = admission = Admission(limits)  # sessions in total and per host, TCP and UDP together
        # frame buffers and item state of all connections, and of each host's (a connection draws on
        # ``budget.for_host``: one host's connections cannot hold more than its share)
        self.budget = BufferBudget(limits.frame_buffer_bytes, limits.host_frame_buffer_bytes)
        passed = activation() if self.activation else PassedSockets([], [], [])
        self.svc = svc = Service(self.emit, admission=admission, auth=auth, dest_root=dest.root,
                                 metrics_at=self.metrics_at, settings=self.settings)  # the one observer: events,
        from .areas import chooser  # metrics, systemd STATUS

        svc.budget = self.budget  # (--metrics reads its use)
        self._areas = chooser(dest, svc, admission, self.settings)  # refuses areas without authenticated senders
        await svc.start()
        udp_config = UdpConfig(idle_timeout=self.idle_timeout or 15.0)
        self._loop = asyncio.get_running_loop()
        udp_handle = lambda link: self._handle(link, 15.0)  # noqa: E731
        if passed:
            self.socks, self.bound, self.udp_server = await serve_passed(passed, udp_handle, udp_config, admission,
                                                                         limits)
        else:
            self.socks, self.bound, self.udp_server = await bind_both(self.host, self.requested_port, self.udp,
                                                                      udp_handle, udp_config, admission, limits)
        loop = asyncio.get_running_loop()
        bound, transports = self.bound, self.transports
        extra: dict[str, Any] = {"activated": passed.names} if passed else {}
        if svc.metrics is not None:
            extra["metrics"] = "http://%s/metrics" % peer_label(svc.metrics.address)
        if self.emit is not None:
            self.emit({"event": "listening", "transport": transports, "host": bound[0], "port": bound[1],
                       "udp_port": self.udp_port, "dir": os.fsdecode(dest.root), "pid": os.getpid(),
                       "auth": auth.kind, "fingerprint": auth.fingerprint, **({"code": auth.code} if auth.code else {}),
                       **extra})
        events_log.info("listening on %s port %d (%s)%s, receiving into %s; %s", bound[0], bound[1],
                        ", ".join(transports),
                        " (sockets passed by systemd: %s)" % ", ".join(passed.names) if passed else "",
                        os.fsdecode(dest.root), auth_text(auth),
                        extra={"fields": {"event": "listening", "host": bound[0], "port": bound[1],
                                          "transport": transports, "dir": os.fsdecode(dest.root), "auth": auth.kind,
                                          "fingerprint": auth.fingerprint}})
        svc.ready()
        if auth.code:
            self._show_code(auth.code, False)
            auth.on_code = lambda code: self._show_code(code, True)
            auth.renew_code = not self.once  # --once: the used code is not replaced while its transfer may end it all
        self._finished = loop.create_future()
        self._flush_due = False

        from .failure_log import FailureLog, suppressed_text

        self.failures = FailureLog(self.say)  # escaped: the reasons quote what peers sent
        self.refusals = FailureLog(self.say)  # its own throttle: a refusal does not use up an address's auth line
        admission.on_refused = self._refused
        self.failures.on_suppressed = lambda n, hosts, seconds: svc.publish({
            "event": "failures_suppressed", "failures": n, "addresses": hosts, "seconds": seconds,
            "message": suppressed_text(n, hosts)})
        from .expiry import expire_periodically
        from .transport.tcp import serve

        self._server = loop.create_task(serve(self.socks, self._handle, admission) if self.socks
                                        else asyncio.Event().wait())  # UDP only
        self._tasks = [self._server, loop.create_task(expire_periodically(dest, limits.partial_ttl)),
                       loop.create_task(self._summarize_failures()),
                       loop.create_task(svc.run())]  # systemd STATUS= and WATCHDOG=1

    def _refused(self, host: str | None, reason: str) -> None:
        self.refusals.failed(host_key(host), f"refused {host or '?'}", reason)  # throttled per host (a /64)
        if self.detail is not None:
            self.detail({"event": "refusal", "host": host or "", "reason": reason})

    def _show_code(self, code: str, again: bool) -> None:
        if self.tell is not None:
            self.tell(f"{'new ' if again else ''}pairing code: {code}  (the sender runs: ftx send --code ...)")
        if again and self.emit is not None:
            self.emit({"event": "code", "code": code})

    def stop(self) -> None:
        """Stop serving (from the loop's thread): ``wait()`` returns None.  Then ``aclose()``."""
        if self.svc is not None:
            self.svc.stopping()
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    def reload(self) -> None:
        """Read the config file and the authorized keys again (SIGHUP); running sessions go on."""
        if self.svc is not None:
            self.svc.reload()

    async def wait(self) -> bool | None:
        """Until ``stop()`` (None) or, with ``once``, the first complete session (its ``ok``).  A server
        that failed raises its error."""
        assert self._server is not None and self._finished is not None, "start() first"
        done, _ = await asyncio.wait({self._server, self._finished}, return_when=asyncio.FIRST_COMPLETED)
        if self._server in done:
            self._server.result()
        return self._finished.result()

    async def aclose(self) -> None:
        """Tell UDP senders, stop every task, flush the failure lines and events, close the sockets."""
        if self._closed:
            return
        self._closed = True
        if self.udp_server is not None:  # UDP senders are told now, not left to their idle timeout
            await self.udp_server.shutdown("the receiver is shutting down; partial files are kept for a resume")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if hasattr(self, "failures"):
            self.failures.flush(final=True)  # nothing counted is lost at exit
            self.refusals.flush(final=True)
        if self.flush is not None:
            self.flush()  # nor a queued event
        if self.svc is not None:
            self.svc.close()
        for s in self.socks:
            s.close()
        if self.udp_server is not None:
            self.udp_server.close()

    # -- one sender -------------------------------------------------------------------
    def _flush_lines(self) -> None:
        self._flush_due = False
        if self.flush is not None:
            self.flush()

    def _on_file(self, report: Any) -> None:  # usually on the worker thread that handles a batch of events
        # the event is queued, flushed at most LINES_DELAY later (or before the next other
        # event): a write per file from the worker thread, and the loop's wake-ups, cost more
        # than the file did
        self.svc.file_settled(report)  # the "file" event, built only when someone reads events
        if self.flush is not None and not self._flush_due:
            self._flush_due = True
            self._loop.call_soon_threadsafe(self._loop.call_later, LINES_DELAY, self._flush_lines)
        if events_log.isEnabledFor(logging.DEBUG):  # -v: a line per file (by default a summary per session)
            events_log.debug("%s: %s (%d bytes)", report.path, report.status, report.size,
                             extra={"fields": {"event": "file", "path": report.path, "size": report.size,
                                               "status": report.status}})

    def _on_files(self, run: Any) -> None:
        """``_on_file`` for each report of a run (receiving.RunReport), the run's events at once."""
        self.svc.files_settled(run)
        if self.flush is not None and not self._flush_due:
            self._flush_due = True
            self._loop.call_soon_threadsafe(self._loop.call_later, LINES_DELAY, self._flush_lines)
        if events_log.isEnabledFor(logging.DEBUG):
            for report in run:
                events_log.debug("%s: %s (%d bytes)", report.path, report.status, report.size,
                                 extra={"fields": {"event": "file", "path": report.path, "size": report.size,
                                                   "status": report.status}})

    async def _handle(self, link: Any, default_timeout: float = 30.0) -> None:
        from .receiving import receive_over

        auth, svc, limits = self.auth, self.svc, self.limits
        budget = self.budget.for_host(host_key(host_of(link.peer)))  # its host's share of --max-memory
        if not auth.insecure:
            from .security_setup import authenticate

            error = await authenticate(link, auth, limits.handshake_timeout, budget)  # counts in --max-memory
            if error == "":
                return  # turned away quietly (throttled)
            if error is not None:  # one line at once, then one summary per host per interval
                told = self.failures.failed(host_key(host_of(link.peer)), peer_label(link.peer), error)
                if told:  # events are throttled alike (the rest: "failures_suppressed")
                    svc.publish({"event": "session", "peer": peer_label(link.peer), "transport": link.transport,
                                 "complete": False, "ok": False, "files": 0, "error": error, "auth": auth.kind})
                return
        progress = self.progress(peer_label(link.peer)) if self.progress is not None else None
        who = sender_text(link)
        events_log.info("%s: sender over %s, %s", peer_label(link.peer), link.transport, who[0],
                        extra={"fields": {"event": "sender", "peer": peer_label(link.peer),
                                          "transport": link.transport, **who[1]}})
        if self.detail is not None:
            self.detail({"event": "sender", "peer": peer_label(link.peer), "transport": link.transport, **who[1]})
        counts = SessionCounts()

        def on_file_counted(report: Any) -> None:
            counts.add(report)
            self._on_file(report)

        def on_files_counted(run: Any) -> None:
            counts.add_run(run)
            self._on_files(run)

        ask = self.ask
        tally = None
        try:
            if (session_dest := await self.destination_for(link)) is None:
                return  # no area for this sender: told, logged, published
            with svc.session(link.transport, progress) as tally:  # files and bytes in progress (status, metrics)
                session = await receive_over(link, session_dest, on_file=on_file_counted, on_files=on_files_counted,
                                             idle_timeout=self.idle_timeout or default_timeout,
                                             progress=tally, limits=limits, budget=budget,
                                             confirm=(lambda hello: self._ask(ask, link, hello)) if ask else None,
                                             identity=None if auth.insecure else auth.receipt_identity,
                                             established=getattr(link, "established", None),
                                             keep_reports=False)  # on_file tells each: memory flat with the count
        except asyncio.CancelledError:  # the receiver stops (close(), SIGTERM): this sender's session still ends
            error = ("the receiver is shutting down; partial files are kept for a resume" if self._closed
                     else "the receiver ended the connection")  # (an idle one evicted for a newcomer)
            svc.publish({"event": "session", "peer": peer_label(link.peer), "transport": link.transport,
                         "complete": False, "ok": False, "files": counts.files, "error": error,
                         "transport_stats": getattr(link, "stats", {})})
            counts.received += tally.bytes if tally is not None else 0  # files not settled: kept for a resume
            counts.log(peer_label(link.peer), link.transport, "", False, False, error)
            raise
        finally:
            if progress is not None:
                progress.close()
        ok = session.complete and not session.failed
        peer_hello = getattr(getattr(session, "conn", None), "peer", None)
        transfer_id = getattr(peer_hello, "transfer_id", b"").hex()
        svc.publish({"event": "session", "peer": peer_label(link.peer), "transport": link.transport,
                     "complete": session.complete, "ok": ok, "files": session.files, "error": session.error,
                     "transfer_id": transfer_id, "transport_stats": getattr(link, "stats", {})})
        counts.received += tally.bytes if tally is not None else 0  # data of files not settled (kept for a resume)
        counts.log(peer_label(link.peer), link.transport, transfer_id, ok, session.complete, session.error)
        finished = self._finished
        if self.once and session.complete and finished is not None and not finished.done():
            finished.set_result(ok)
        elif auth.code_mode and auth.code is None and finished is not None and not finished.done():
            auth.new_code()  # --once and that session did not complete: the receiver goes on, with a new code

    @staticmethod
    async def _ask(ask: Ask, link: Any, hello: Any) -> str | None:
        from .security_setup import describe_offer

        return await ask(peer_label(link.peer), describe_offer(hello))

    async def _summarize_failures(self) -> None:
        while True:
            await asyncio.sleep(self.failures.interval / 2)
            self.failures.flush()
            self.refusals.flush()


__all__ = ["ReceiverService", "SessionCounts", "bind_both", "fit_descriptors", "peer_label", "events_log", "LINES_DELAY"]
