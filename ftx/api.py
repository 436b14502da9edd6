"""ftx as a library: ``send`` / ``send_async`` and ``Receiver`` (exported by ``ftx``).

Sending::

    report = ftx.send(["photos/"], "backup.example.net", identity="~/.config/ftx/identity")
    print(report.ok, report.file_count, report.bytes)

Receiving, inside an asyncio program::

    async with ftx.Receiver("/srv/incoming", authorized_keys="keys") as r:
        print("listening on port", r.port, "as", r.fingerprint)
        async for event in r.events():
            if event["event"] == "file":
                print(event["path"], event["status"])

Errors raise the ``ftx.errors`` tree (``FtxError`` and its subclasses; a bad argument is
``ArgumentError``, also a ``ValueError``).  A transfer that ran but in which some files
failed does not raise: ``SendReport.ok`` is False and ``failures`` lists the first of them.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable, Union

from .errors import ArgumentError, FtxError

if TYPE_CHECKING:
    from .limits import Limits
from .progress import Progress
from .sending import SendReport

log = logging.getLogger("ftx.api")

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Event = dict[str, Any]
"""A receiver event: the dict ``ftx receive --json`` prints as one line.  ``event["event"]`` is one of
``listening`` (transport, host, port, udp_port, dir, pid, auth, fingerprint, code in code mode),
``sender`` (peer, transport, identity: key/tls/code/insecure, fingerprint, name: one per authenticated
sender), ``refusal`` (host, reason: a connection turned away by a limit such as max_per_host),
``file`` (path, size, status, ok, bytes_received, ...: one per file a sender settled),
``session`` (peer, transport, complete, ok, files, error, transfer_id: one per sender, also one
per failed authentication), ``code`` (a new pairing code), ``failures_suppressed`` (throttled
authentication failures), ``reloaded``, and ``dropped`` (events: how many the bounded queue
dropped because nobody read them in time)."""
Ask = Callable[[str, str], Union[bool, Awaitable[bool]]]
"""Code mode: ``ask(peer, offer)`` -> True to accept what a code holder offers (may be async)."""

MAX_EVENTS = 10_000  # events queued for ``Receiver.events()`` at most; more are dropped and counted


async def send_async(paths: PathLike | Iterable[PathLike], dest: str, *, port: int | None = None, udp: bool = False,
                     identity: str | None = None, expect_fingerprint: str | None = None, code: str | None = None,
                     tls: bool = False, tls_ca: str | None = None, tls_cert: str | None = None,
                     tls_key: str | None = None, insecure: bool = False, checksum: bool = False,
                     max_rate: int | str | None = None, receipt: str | None = None, progress: Progress | None = None,
                     resume: bool = True, links: bool = False, chunk_size: int | str = 1 << 20, mtu: int = 1500,
                     pmtud: bool = True, idle_timeout: float | None = None,
                     transfer_id: bytes | None = None) -> SendReport:
    """Send ``paths`` (files or directories) to the receiver at ``dest`` (HOST, HOST:PORT or [IPv6]:PORT;
    ``port`` when it names none, default 7431) and return the ``SendReport``.

    Authentication as ``ftx send``: by default this user's identity key (``identity``, created on first use)
    and the receiver's key, optionally pinned by ``expect_fingerprint``; ``code`` (a pairing code such as
    ``7-crossword-apple-zebra``); ``tls`` with ``tls_ca`` (and ``tls_cert``/``tls_key`` for a client
    certificate); or ``insecure`` (no authentication, no encryption; the receiver must agree).
    ``udp``: the reliable UDP transport (``mtu``; ``pmtud``: search for a larger path MTU, on by default).  ``checksum``: recognise unchanged files by
    their digest.  ``max_rate``: bytes per second (an int, or text such as ``"20M"`` = 20 MiB/s).
    ``receipt``: a file to write the receiver's signed receipt to.  ``progress``: a ``ftx.Progress``.
    ``transfer_id``: 8 bytes that name this transfer in both sides' logs (default: random).
    Raises ``ArgumentError`` for bad arguments and the ``ftx.errors`` classes for failures before or of
    the session as a whole; per-file failures are in the report."""
    from .client import send_over_network
    from .send_args import plan_send

    return await send_over_network(plan_send(
        paths, dest, port=port, udp=udp, identity=identity, expect_fingerprint=expect_fingerprint, code=code, tls=tls,
        tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, insecure=insecure, checksum=checksum, max_rate=max_rate,
        receipt=receipt, resume=resume, links=links, chunk_size=chunk_size, mtu=mtu, pmtud=pmtud,
        idle_timeout=idle_timeout, transfer_id=transfer_id), progress)


def send(paths: PathLike | Iterable[PathLike], dest: str, **options: Any) -> SendReport:
    """``send_async`` run on its own event loop (call it where no loop runs, e.g. a thread)."""
    return asyncio.run(send_async(paths, dest, **options))


send.__signature__ = inspect.signature(send_async)  # type: ignore[attr-defined]


class Receiver:
    """A receiver inside an asyncio program: ``async with Receiver(dir, ...) as r``.

    ``r.port`` (TCP; UDP serves the same number), ``r.fingerprint`` (what senders pin), ``r.code``
    (code mode: the current pairing code); ``async for event in r.events()`` (see ``Event``), and/or
    ``on_event(event)`` called on the loop for each event.  The queue behind ``events()`` holds at most
    ``max_events``: a program that does not read loses events (counted in ``r.dropped``, then a
    ``dropped`` event), never memory or receiving speed.  ``r.close()`` stops (as leaving the ``async
    with``); ``await r.wait_closed()`` waits for the end (with ``once``: after the first complete
    transfer; ``r.result`` is then its ``ok``).

    Authentication as ``ftx receive``: by default keys (``identity``; senders listed in
    ``authorized_keys``); TLS with ``tls_cert``/``tls_key`` and ``tls_ca`` (client certificates) or
    ``tls_any_client``; ``code=True`` (a pairing code, ``r.code``; each offer goes to ``ask(peer,
    offer)``, or is accepted without one); ``insecure`` (none).  ``limits``: ``ftx.Limits``.
    ``config``: a TOML file (as ``ftx receive --config``) whose ``[areas]`` and ``default-area`` give
    each authenticated sender its own directory below ``dir``, quota and max-file-size; its other
    keys are not read (give them as arguments); ``r.reload()`` re-reads it."""

    def __init__(self, dir: PathLike, *, listen: str = "127.0.0.1", port: int = 0, udp: bool = True,
                 identity: str | None = None, authorized_keys: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_ca: str | None = None, tls_any_client: bool = False,
                 code: bool = False, ask: Ask | None = None, insecure: bool = False, overwrite: bool = False,
                 mkdir: bool = False, once: bool = False, limits: Limits | None = None,
                 idle_timeout: float | None = None, on_event: Callable[[Event], None] | None = None,
                 max_events: int = MAX_EVENTS, config: PathLike | None = None) -> None:
        from .security_setup import receiver_conflict

        why = receiver_conflict(insecure, code, identity, authorized_keys, tls_cert, tls_key, tls_ca, tls_any_client)
        if why is not None:
            raise ArgumentError(why.replace("--", "").replace("-", "_").replace("tls_ca CA.pem", "tls_ca"))
        if not 0 <= port <= 65535:
            raise ArgumentError(f"port {port} is not between 0 and 65535")
        if ask is not None and not code:
            raise ArgumentError("ask is for code mode (code=True)")
        if max_events < 1:
            raise ArgumentError("max_events must be at least 1")
        self.dir = os.fsdecode(os.fspath(dir))
        self._options: dict[str, Any] = dict(
            listen=listen, port=port, udp=udp, identity=identity, authorized_keys=authorized_keys, tls_cert=tls_cert,
            tls_key=tls_key, tls_ca=tls_ca, code=code, insecure=insecure, overwrite=overwrite, mkdir=mkdir, once=once,
            idle_timeout=idle_timeout)
        if limits is None:
            from .limits import Limits  # (here: a send never loads the receiver's limits)

            limits = Limits()
        self.limits = limits
        self.config = None if config is None else os.fsdecode(os.fspath(config))
        self.on_event = on_event
        self.max_events = max_events
        self.dropped = 0  # events the queue had no room for
        self.result: bool | None = None  # with once: the first complete transfer's ok
        self._user_ask = ask
        self._pending: collections.deque[Event] = collections.deque()  # from any thread, until delivered
        self._queue: collections.deque[Event] = collections.deque()  # for events()
        self._unreported = 0  # dropped since the last "dropped" event
        self._ready: asyncio.Event | None = None
        self._service: Any = None
        self._dest: Any = None
        self._runner: asyncio.Task | None = None
        self._ended = False

    # -- what senders need --------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._service.port if self._service is not None else 0

    @property
    def udp_port(self) -> int | None:
        return self._service.udp_port if self._service is not None else None

    @property
    def fingerprint(self) -> str:
        return self._service.auth.fingerprint if self._service is not None else ""

    @property
    def code(self) -> str | None:
        return self._service.auth.code if self._service is not None else None

    # -- life ---------------------------------------------------------------------------
    async def start(self) -> "Receiver":
        """Bind and serve (``async with`` calls it).  Raises ``ftx.errors`` on a bad setup."""
        from .daemon import ReceiverService, fit_descriptors
        from .security_setup import HandshakeRate, ReceiverAuth
        from .storage import Destination

        if self._service is not None:
            raise ArgumentError("this Receiver was started already")
        o = self._options
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._ready = asyncio.Event()
        settings = None
        if self.config is not None:  # its [areas]: per-sender directories and quotas (reload() re-reads it)
            from .config_file import ConfigError, read

            try:
                settings = read(self.config)
            except ConfigError as exc:
                raise ArgumentError(f"config {exc}") from None
        limits = fit_descriptors(self.limits, log.warning)
        if not os.path.isdir(self.dir):
            if os.path.lexists(self.dir) or not o["mkdir"]:
                raise ArgumentError(f"{self.dir}: " + ("not a directory" if os.path.lexists(self.dir)
                                                       else "no such directory (mkdir=True creates it)"))
        auth = ReceiverAuth(insecure=o["insecure"], identity=o["identity"], authorized_keys=o["authorized_keys"],
                            code=o["code"], tls_cert=o["tls_cert"], tls_key=o["tls_key"], tls_ca=o["tls_ca"],
                            rate=HandshakeRate(limits.code_handshakes_per_host, limits.code_handshakes))
        for notice in auth.notices:
            log.warning("%s", notice)
        try:
            if o["mkdir"]:
                os.makedirs(self.dir, exist_ok=True)
            self._dest = Destination(self.dir, o["overwrite"], limits=limits)
        except OSError as exc:
            from .errors import StorageError

            raise StorageError(f"cannot use {self.dir}: {exc.strerror or exc}") from exc
        service = ReceiverService(self._dest, host=o["listen"], port=o["port"], udp=o["udp"], once=o["once"],
                                  idle_timeout=o["idle_timeout"], limits=limits, auth=auth, emit=self._emit,
                                  flush=self._deliver, tell=log.info, say=_log_say,
                                  ask=self._ask if self._user_ask is not None else None, activation=False,
                                  detail=True, settings=settings)
        self._service = service
        try:
            try:
                await service.start()
            except (socket.gaierror, UnicodeError) as exc:
                raise ArgumentError(f"listen {o['listen']!r} is not an address: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from None
            except OSError as exc:
                from .errors import TransportError

                raise TransportError(f"cannot listen on {o['listen']} port {o['port']}: {exc.strerror or exc}") \
                    from exc
        except BaseException:
            self._dest.close()
            self._end()
            raise
        self._runner = self._loop.create_task(self._run())
        return self

    async def _run(self) -> bool | None:
        try:
            self.result = await self._service.wait()
            return self.result
        finally:
            await self._service.aclose()
            self._dest.close()
            self._end()

    def close(self) -> None:
        """Stop accepting and end the running sessions (partial files are kept for a resume)."""
        if self._service is not None:
            self._service.stop()

    async def wait_closed(self) -> None:
        """Until the receiver has stopped (``close()``, ``once`` done, or a failure, which is raised)."""
        if self._runner is not None:
            await asyncio.shield(self._runner)

    def reload(self) -> None:
        """Read the authorized keys and the ``config`` file's areas again; running sessions go on
        (a file that no longer loads keeps the areas read before, and says why in the log)."""
        if self._service is not None:
            self._service.reload()

    async def __aenter__(self) -> "Receiver":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()

    # -- events -------------------------------------------------------------------------
    def _emit(self, event: Event, flush: bool = True) -> None:
        """From the service, on any thread; per-file events (flush False) are delivered in batches."""
        if len(self._pending) >= self.max_events:
            self.dropped += 1
            self._unreported += 1
        else:
            self._pending.append(event)
        if flush:
            if threading.get_ident() == self._thread:
                self._deliver()
            else:
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody is left to deliver to
                    pass

    def _deliver(self) -> None:
        """On the loop: call ``on_event`` and queue for ``events()``, up to ``max_events``."""
        while self._pending:
            event = self._pending.popleft()
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:  # the program's bug must not stop the receiver
                    log.exception("on_event raised")
            if len(self._queue) >= self.max_events:
                self.dropped += 1
                self._unreported += 1
                continue
            if self._unreported:
                self._queue.append({"event": "dropped", "events": self._unreported})
                self._unreported = 0
            self._queue.append(event)
        if self._ready is not None:
            self._ready.set()

    def _end(self) -> None:
        self._deliver()
        self._ended = True
        if self._ready is not None:
            self._ready.set()

    async def events(self) -> AsyncIterator[Event]:
        """Every event (see ``Event``) until the receiver has stopped."""
        if self._ready is None:
            raise ArgumentError("start the Receiver first (async with)")
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self._unreported:  # the reader caught up: tell it what it missed
                dropped, self._unreported = self._unreported, 0
                yield {"event": "dropped", "events": dropped}
                continue
            if self._ended:
                return
            self._ready.clear()
            await self._ready.wait()

    async def _ask(self, peer: str, offer: str) -> str | None:
        from .confirm import DECLINED, TIMED_OUT

        assert self._user_ask is not None
        try:
            answer = self._user_ask(peer, offer)
            if inspect.isawaitable(answer):
                answer = await asyncio.wait_for(answer, self.limits.confirm_timeout)
        except asyncio.TimeoutError:
            return TIMED_OUT
        except Exception:
            log.exception("ask raised: declined")
            return DECLINED
        return None if answer else DECLINED


def _log_say(message: str, level: str = "error") -> None:
    """Failure and refusal lines of a library receiver: to the ``ftx.receive`` logger."""
    logging.getLogger("ftx.receive").log(logging.INFO if level == "info" else logging.WARNING, "%s", message)


def __getattr__(name: str):
    if name == "Limits":  # exported, imported when asked for (see Receiver)
        from .limits import Limits

        return Limits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["send", "send_async", "Receiver", "Event", "Ask", "SendReport", "Limits", "Progress", "FtxError",
           "MAX_EVENTS"]
