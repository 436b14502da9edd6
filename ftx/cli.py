"""The ``ftx`` command line: parse options, run the library, map errors to exit codes.

Exit codes (also in README.md):
  0 success · 1 some files failed · 2 usage error · 3 connection failed or lost
  4 protocol error from the peer, or authentication failed · 5 local file error · 130 interrupted (SIGINT)
  143 terminated (SIGTERM; the sender -- a receiver stops cleanly with 0)
"""

from __future__ import annotations

import atexit
import functools
import gc
import logging
import os
import sys
import time

_collecting = gc.isenabled()
gc.disable()  # while this module and click load (enabled again at its end; see _paused_collection)

import click  # noqa: E402

from . import DEFAULT_PORT, __version__  # noqa: E402
from .errors import ArgumentError, ErrorCode, FtxError, PeerError, ProtocolError, StorageError, TransportError, UnsafePath  # noqa: E402
from .cli_output import emit as _emit, emit_streamed as _emit_streamed  # noqa: F401,E402
from .cli_options import (EXIT_CONNECTION, EXIT_FILES, EXIT_INTERRUPTED, EXIT_LOCAL, EXIT_OK,  # noqa: E402,F401
                          EXIT_PROTOCOL, EXIT_TERMINATED, EXIT_USAGE, verbosity)
from .cli_options import die as _die, rate_value as _rate, size_value as _size  # noqa: E402
from .cli_options import with_options as _with  # noqa: E402
from .cli_help import MAIN_EPILOG, SEND_EPILOG  # noqa: E402
# ``receive`` (cli_receive.py) and ``keygen`` (cli_keygen.py) are defined where they are named: building
# a command's click options costs start-up, and ``ftx send`` is the one whose start-up the user waits for


# At exit the interpreter's last garbage collections walk, and then free one by one, every
# class, function and module the run loaded: about 35 ms of a one-file send, more than its
# whole transfer.  Frozen, that heap is left to the OS as the process ends.  Nothing else
# changes: atexit handlers, the joining of threads and the flushing of stdout and stderr run
# as before; every file ftx writes is closed (and synced) before it reports; only objects in
# reference cycles get no __del__ at exit, which Python never promised them anyway.
atexit.register(gc.freeze)

log = logging.getLogger("ftx")
events_log = logging.getLogger("ftx.events")  # the receiver's default lines: one per event (README "Logs")


def _paused_collection(command):
    """Run ``command`` with the cyclic garbage collector paused until ``_loaded()``.

    A command's start imports some hundred modules (asyncio, cryptography, the core) and builds
    their classes and functions: the collector ran 20 to 40 times over those young objects
    (about 3 % of a one-file send's instructions) and found nothing to free.  Once they are all
    loaded, ``_loaded`` freezes them (no later collection walks them again: a long-running
    receiver's collections look at its sessions' objects only) and collects as usual from then on."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        global _resume_collection
        enabled = _resume_collection = gc.isenabled() or _parsing_paused
        gc.disable()
        try:
            return command(*args, **kwargs)
        finally:
            _resume_collection = False
            if enabled:
                gc.enable()

    run.pauses_collection = True  # (_Commands.get_command)
    return run


_resume_collection = False  # whether _loaded enables the collector (it was on when the command started)
_parsing_paused = False  # _Commands.main paused it while click parses (and loads the named command)


def _loaded() -> None:
    """The command has imported what it runs with; its event loop starts (see _paused_collection)."""
    global _resume_collection
    if _resume_collection:
        _resume_collection = False
        gc.freeze()
        gc.enable()


def _exit_code(exc: BaseException) -> int:
    from .core.secure import AuthError
    from .credentials import CredentialError
    from .security_setup import SetupError

    if isinstance(exc, (CredentialError, SetupError, ArgumentError)):
        return EXIT_USAGE
    if isinstance(exc, (TransportError, PeerError)):
        return EXIT_CONNECTION
    if isinstance(exc, (ProtocolError, AuthError)):
        return EXIT_PROTOCOL
    if isinstance(exc, (StorageError, UnsafePath, OSError)):
        return EXIT_LOCAL
    return EXIT_FILES


def _report_exit_code(report) -> int:
    """Exit code of a session that failed as a whole: by the class of its error."""
    from .core.secure import AuthError

    failure = getattr(report, "failure", None)
    if isinstance(failure, StorageError):  # a local file (the receipt) could not be written: exit 5, as documented
        return EXIT_LOCAL
    if isinstance(failure, (ProtocolError, AuthError)):  # the peer's bytes broke the protocol or its seal
        return EXIT_PROTOCOL
    if isinstance(failure, PeerError) and failure.code in (ErrorCode.PROTOCOL, ErrorCode.CHECKSUM,
                                                             ErrorCode.VERSION, ErrorCode.TOO_LARGE,
                                                             ErrorCode.AUTH):
        return EXIT_PROTOCOL  # the peer said our bytes broke it
    return EXIT_CONNECTION


def _setup_logging(verbose: int, quiet: int, fmt: str = "text", events: int | None = None) -> None:
    """``ftx`` logs at WARNING (-v INFO, -vv DEBUG, -q ERROR).  ``events``: the daemon's event lines
    (logger ``ftx.events``: listening, senders, session summaries; per-file lines one step lower)
    are shown at their own level, by default INFO."""
    from .terminal import setup_logging

    setup_logging(max(logging.DEBUG, logging.WARNING + 10 * (quiet - verbose)), fmt=fmt)  # every line escaped
    if events is not None:
        events_log.setLevel(max(logging.DEBUG, events))


def _fit_descriptors(limits):
    from .daemon import fit_descriptors

    return fit_descriptors(limits, _tell)  # the notice is shown even without -v


def _asyncio_without_ssl() -> None:
    """Import asyncio without the ssl module (3-4 ms of every send and receive): this process's
    event loop never opens an SSL transport -- TLS mode is sans-I/O over ssl.MemoryBIO
    (core/secure/tls.py, tlsconfig.py), which imports ssl where it is used.  asyncio binds
    ``ssl = None`` as on a Python built without it.  The CLI's own process only: ftx.api leaves a
    program's asyncio as it finds it."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # import ssl raises ImportError meanwhile
    try:
        __import__("asyncio")
    finally:
        del sys.modules["ssl"]


def _prepare_json() -> None:
    """Import the json module (~1.5 ms) where the send's own thread does not wait for it."""
    from .cli_output import _json

    _json()


def _show_progress(no_progress: bool, as_json: bool) -> bool:
    return not no_progress and sys.stderr.isatty()


def _tell(message: str) -> None:
    """A notice on stderr: 'ftx: ...', or a JSON object with --log-format json (escaped either way)."""
    from .terminal import say

    say(message, "warning" if message.startswith("WARNING") else "info")


_program = False  # main() took its arguments from sys.argv: this process is the ftx command


def _finished(code: int) -> None:
    """The command is done and has written everything: where ftx is the program, end it now
    (os._exit) instead of tearing the interpreter down -- its modules and every object they hold
    freed one by one, ~5 ms of every send.  Log handlers and stdout/stderr are flushed first; the
    transfer's files were closed (and synced by the receiver) before it reported."""
    if not _program:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the descriptor was closed when Python started (cron, >&-)
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class _Commands(click.Group):
    """The ``ftx`` group.  The commands defined in other modules are imported when named (or when a
    listing such as ``ftx --help`` shows them): ``ftx send`` and ``ftx receive`` do not load them."""

    def main(self, args=None, *rest, **kwargs):
        global _program, _parsing_paused
        _program = args is None  # (a caller that passes the arguments, e.g. CliRunner, gets click's exit)
        # paused while click parses and builds the named command (its options, its module: see
        # get_command), then by the command itself until its event loop starts (_paused_collection)
        paused = _parsing_paused = gc.isenabled()
        gc.disable()
        try:
            return super().main(args, *rest, **kwargs)
        finally:
            _parsing_paused = False
            if paused:
                gc.enable()

    ELSEWHERE = {"receive": "cli_receive", "keygen": "cli_keygen", "impair": "impair_cli", "relay": "impair_cli",
                 "verify-receipt": "receipt_cli"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.ELSEWHERE})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.ELSEWHERE:
            import importlib

            module = importlib.import_module(f".{self.ELSEWHERE[cmd_name]}", __package__)  # (collection paused: main)
            self.add_command(getattr(module, cmd_name.replace("-", "_")), cmd_name)
        command = super().get_command(ctx, cmd_name)
        global _parsing_paused
        if _parsing_paused and not getattr(getattr(command, "callback", None), "pauses_collection", False):
            _parsing_paused = False  # a command that does not resume collection itself (impair: a long
            gc.enable()  # relay) runs with it on, as before
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]}, epilog=MAIN_EPILOG)
@click.version_option(__version__, prog_name="ftx")
def main() -> None:
    """Send files and directories between machines; interrupted transfers resume."""


@main.command(epilog=SEND_EPILOG, short_help="Send files and directories to a receiver.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.argument("dest")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help=f"Port when DEST names none (default {DEFAULT_PORT}).")
@click.option("--no-resume", is_flag=True, help="Discard partial data on the receiver and start over.")
@click.option("--links", is_flag=True, help="Send symlinks as symlinks (inside the tree only).")
@click.option("--chunk-size", default="1M", show_default=True, metavar="SIZE",
              help="Chunk size, the resume and checksum unit: 4K to 16M (SIZE as in --max-rate, without bits).")
@click.option("--max-rate", default=None, metavar="RATE",
              help="Cap the payload rate.  RATE in bytes/s: 20M = 20MiB = 20*2^20, 20MB = 20*10^6, 500K; or "
                   "bits/s, decimal: 160Mbit, 1Gbit (= 1Gbps); '/s' optional.")
@click.option("--udp", is_flag=True, help="Use the reliable UDP transport (for long, lossy links).")
@click.option("--mtu", type=click.IntRange(1248, 65535), default=1500, show_default=True,
              help="UDP: path MTU; datagrams carry at most MTU-48 bytes (1200 where larger ones do not get through).")
@click.option("--pmtud/--no-pmtud", default=True, show_default=True,
              help="UDP: probe for a larger path MTU than --mtu (RFC 8899), with the don't-fragment bit set.")
@click.option("--code", "code_prompt", is_flag=True,
              help="Pairing-code mode: type the receiver's code at a prompt (or set FTX_CODE, or --code-file).")
@click.option("--code-file", type=click.Path(dir_okay=False), default=None,
              help="Pairing-code mode: read the code from the first line of FILE.")
@click.option("--identity", type=click.Path(dir_okay=False), default=None,
              help="Identity key (default $XDG_CONFIG_HOME/ftx/identity, created on first use).")
@click.option("--expect-fingerprint", default=None, metavar="FP",
              help="Accept only a receiver whose key (or TLS certificate) has this SHA256: fingerprint.")
@click.option("--tls", is_flag=True, help="TLS 1.3: trust the system CAs (or --tls-ca, or --expect-fingerprint).")
@click.option("--tls-ca", type=click.Path(dir_okay=False), default=None,
              help="TLS 1.3: CA certificates (PEM) the receiver's certificate must chain to.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None,
              help="TLS 1.3: client certificate (PEM) for receivers that ask for one.")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None,
              help="TLS 1.3: private key of --tls-cert (if not in the same file).")
@click.option("--receipt", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Ask the receiver for a signed receipt of what landed; check it and write it to FILE.")
@click.option("--insecure", is_flag=True, help="No authentication, no encryption (the receiver must run --insecure too).")
@click.option("--checksum", is_flag=True,
              help="Recognise unchanged files by their digest, not by size and mtime (reads every file on both sides).")
@_with(verbosity)
@_paused_collection
def send(paths, dest, port, no_resume, links, chunk_size, max_rate, udp, mtu, pmtud, code_prompt, code_file,
         identity, expect_fingerprint, tls, tls_ca, tls_cert, tls_key, insecure, checksum, receipt, verbose, quiet,
         as_json, log_format, no_progress, idle_timeout):
    """Send PATH... (files or directories) to a receiver at DEST.

    DEST is HOST, HOST:PORT or [IPv6]:PORT.
    """
    if not checksum and receipt is None:  # each directory's CHECK_DIR digest: listed while we start up
        from .prewalk import start_prewalk

        start_prewalk(paths, _prepare_json if as_json else None, freeze=True)  # (see _loaded)
    _setup_logging(verbose, quiet, log_format)
    from .transport.sockets import check_host, parse_dest

    try:
        host, dport = parse_dest(dest, port or DEFAULT_PORT)
        check_host(host)  # what the resolver will need; e.g. a label over 63 characters fails
    except (ValueError, UnicodeError) as exc:
        raise click.BadParameter(f"bad destination {dest!r}: {exc}" if isinstance(exc, UnicodeError) else str(exc),
                                 param_hint="DEST") from None
    started = time.monotonic()
    transfer_id = os.urandom(8).hex()  # names this session in both sides' logs (HELLO TRANSFER_ID)
    auth = None
    from .progress import SoFar

    so_far = SoFar()  # counts what is sent, for fail()'s --json object

    def fail(message: str, code: int):
        """Every exit after the options are parsed prints the --json object: ok false, the error, the exit code."""
        if as_json:
            from .sending import SendReport

            done = so_far  # what was sent before the failure (an interrupted transfer)
            _emit({**SendReport(False, "udp" if udp else "tcp", round(time.monotonic() - started, 3), done.bytes,
                                done.bytes_sent, done.bytes_resumed, error=message, file_count=done.files,
                                failed=done.failed, identical=done.identical).as_json(),
                   "auth": auth.mode if auth is not None else "insecure" if insecure else "",
                   "fingerprint": "", "transfer_id": transfer_id, "exit": code})
        _die(message, code)

    from .core.manifest import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

    csize = _size(chunk_size, "--chunk-size")
    if not MIN_CHUNK_SIZE <= csize <= MAX_CHUNK_SIZE:
        raise click.BadParameter("must be between 4K and 16M", param_hint="--chunk-size")
    from .credentials import CredentialError, looks_like_code, read_code

    for p in paths:
        if not os.path.lexists(p):
            if looks_like_code(p):
                raise click.UsageError(f"{p!r} looks like a pairing code: codes are never taken from the command "
                                       "line (other users can read it); --code prompts for it, or set FTX_CODE, "
                                       "or use --code-file FILE")
            fail(f"{p}: no such file or directory", EXIT_LOCAL)
    rate = _rate(max_rate, "--max-rate") if max_rate else None
    if rate is not None and rate <= 0:
        raise click.BadParameter("must be positive", param_hint="--max-rate")
    from .security_setup import SenderAuth

    try:
        code = None if insecure else read_code(code_prompt, code_file)
    except CredentialError as exc:
        fail(str(exc), EXIT_USAGE)
    auth = SenderAuth(insecure, identity, expect_fingerprint, code, tls, tls_ca, tls_cert, tls_key)
    if (why := auth.conflict(code_prompt or code_file)) is not None:
        raise click.UsageError(why)
    progress = None
    if _show_progress(no_progress, as_json):
        from .progress import Bars
        from .source import file_sizes

        progress = Bars(count=file_sizes(paths, links), file_bars=True)  # the total: counted by a thread
    so_far.inner = progress or so_far.inner
    from .send_args import plan_send

    try:
        plan = plan_send(list(paths), dest, port=port, udp=udp, identity=identity,
                         expect_fingerprint=expect_fingerprint, code=code, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert,
                         tls_key=tls_key, insecure=insecure, checksum=checksum, max_rate=rate, receipt=receipt,
                         resume=not no_resume, links=links, chunk_size=csize, mtu=mtu, pmtud=pmtud,
                         idle_timeout=idle_timeout, transfer_id=bytes.fromhex(transfer_id))
    except FtxError as exc:
        fail(str(exc), _exit_code(exc))
    terminated = []
    try:
        # connected, authenticated, the first checks sent: the receiver lists them meanwhile
        head = _head_start(plan, so_far)
        if head is not None and head.report is not None:  # an unchanged tree: sent and reported
            report = head.report
        else:
            _asyncio_without_ssl()
            import asyncio

            from .client import send_over_network

            _loaded()
            report = asyncio.run(_until_signalled(send_over_network(plan, so_far, head), terminated))
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except _Terminated:
        fail("terminated", EXIT_TERMINATED)
    except FtxError as exc:
        fail(str(exc), _exit_code(exc))
    except BaseException as exc:
        loop_module = sys.modules.get("asyncio")
        if terminated and loop_module is not None and isinstance(exc, loop_module.CancelledError):
            fail("terminated", EXIT_TERMINATED)
        raise
    finally:
        if progress is not None:
            progress.close()
    code = (_report_exit_code(report) if report.error else EXIT_FILES if not report.ok else EXIT_OK)
    if as_json:
        _emit_streamed({**report.as_json(lazy_files=True), "auth": auth.mode,
                        "fingerprint": getattr(report, "peer_fingerprint", ""), "transfer_id": transfer_id,
                        "exit": code}, "files")
    if report.error:
        _die(report.error, code)
    from .progress import summary_line

    line = summary_line(report, transfer_id)
    if progress is not None and not quiet and not as_json:  # on the terminal that showed the bars, as rsync --stats
        _tell(line)
    elif not as_json:  # elsewhere (piped, --no-progress): with -v
        log.info(line, extra={"fields": {"event": "sent", "transfer_id": transfer_id, "files": report.file_count,
                                         "identical": report.identical, "failed": report.failed,
                                         "bytes": report.bytes, "bytes_sent": report.bytes_sent,
                                         "bytes_resumed": report.bytes_resumed, "seconds": report.seconds}})
    if not report.ok:
        first = report.failures[0]
        _die(f"{report.failed} of {report.file_count} items failed; first: {first.path}: "
             f"{first.message or first.status}", code)
    _finished(EXIT_OK)


class _Terminated(BaseException):
    """SIGTERM during the head start (asyncio's handler comes with the loop: _until_signalled)."""


def _head_start(plan, progress):
    """``head_start.begin`` (None where a send has no head start), and ``conclude`` where the
    receiver runs on this machine, SIGTERM raising _Terminated meanwhile.  Such a receiver lists
    on the cores we would load the session on: we wait for its answers, and load the session
    only if they ask for it.  One elsewhere lists on its own: the session loads meanwhile and
    handles the answers as they come, its work on each directory overlapping the listing of the
    next (what it does in the head start only after the last answer: measured slower there)."""
    from .head_start import begin, conclude, eligible

    if not eligible(plan):
        return None
    import signal

    def terminate(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        head = begin(plan)
        if head is not None and head.local:
            conclude(plan, head, progress)
        return head
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _until_signalled(coro, terminated: list):
    """Run ``coro``; SIGTERM cancels it (and is noted in ``terminated``), as SIGINT does in asyncio.run."""
    import asyncio
    import signal

    loop, task = asyncio.get_running_loop(), asyncio.current_task()

    def on_term() -> None:
        terminated.append(True)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def __getattr__(name: str):
    """``ftx.cli.receive`` and ``ftx.cli.keygen``, from their own modules (imported when asked for)."""
    if name in ("receive", "keygen"):
        import importlib

        return getattr(importlib.import_module(f".cli_{name}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if _collecting:  # this module is loaded (see the top); what it and click made lives as long as the
    gc.freeze()  # process: frozen, it is left out of collections (enabled as it was, the first one walked
    gc.enable()  # its ~8 700 objects, ~1 ms of every command)

if __name__ == "__main__":  # pragma: no cover
    main()
