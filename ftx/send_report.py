"""What a send reports: per item (``FileSendReport``), as a whole (``SendReport``, ``ftx send --json``),
and the counters over every item (``Tally``) that keep memory flat with the number of files."""

from __future__ import annotations

from .core.record import field, fields, record

FILES_LISTED = 1000  # per-file reports a SendReport lists (the first ones, and as many failures)


@record(frozen=False)  # (records, not dataclasses: defining these two took ~0.75 ms of every send's start-up)
class FileSendReport:
    """One item sent: its wire ``path``, ``kind`` (file, dir, symlink), ``size``; ``status`` ("ok",
    "identical" when the receiver already held it, else a failure such as "exists" or "storage", with
    ``message``); ``bytes_sent`` on the wire and ``bytes_resumed`` (already on the receiver)."""

    path: str
    kind: str
    size: int
    status: str = "pending"
    digest: str = ""
    bytes_sent: int = 0
    bytes_resumed: int = 0
    message: str = ""

    def __init__(self, path: str, kind: str, size: int, status: str = "pending", digest: str = "",
                 bytes_sent: int = 0, bytes_resumed: int = 0, message: str = "") -> None:
        self.path, self.kind, self.size, self.status, self.digest = path, kind, size, status, digest
        self.bytes_sent, self.bytes_resumed, self.message = bytes_sent, bytes_resumed, message

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "identical")


@record(frozen=False)
class SendReport:
    """What ``ftx.send`` returns (and ``ftx send --json`` prints).  ``ok``: every item arrived;
    ``transport`` "tcp" or "udp"; ``seconds``; ``bytes`` (of all items), ``bytes_sent`` (on the wire),
    ``bytes_resumed`` (already there); ``file_count``, ``identical``, ``failed`` count every item;
    ``files`` lists the first 1000 (and failures beyond them), ``failures`` the first failed ones;
    ``error``: why the session as a whole failed ("" if it did not); ``receipt``: the receipt written
    (``receipt=``); ``transport_stats``; ``peer_fingerprint``: the receiver's proven key or certificate."""

    ok: bool
    transport: str
    seconds: float
    bytes: int
    bytes_sent: int
    bytes_resumed: int
    files: list[FileSendReport] = field(default_factory=list)
    error: str = ""
    transport_stats: dict = field(default_factory=dict)
    receipt: dict = field(default_factory=dict)  # the receipt written: path, fingerprint, entries
    file_count: int = 0  # every item, listed in ``files`` or not
    failed: int = 0
    identical: int = 0
    failures: list[FileSendReport] = field(default_factory=list)  # the first FILES_LISTED failures
    peer_fingerprint = ""  # not a field (not in as_json): set by the sender after its handshake

    def __repr__(self) -> str:
        """Its counters, not its list of up to 2000 file reports: asyncio.run's end builds the repr
        of the task whose result this is (signal.getsignal on its SIGINT handler), ~3 ms each send."""
        return (f"SendReport(ok={self.ok}, transport={self.transport!r}, file_count={self.file_count}, "
                f"failed={self.failed}, identical={self.identical}, bytes={self.bytes}, "
                f"bytes_sent={self.bytes_sent}, files=[{len(self.files)} listed], error={self.error!r})")

    def as_json(self, lazy_files: bool = False) -> dict:
        """What ``dataclasses.asdict`` gives, without its deep copies of every file report.
        ``lazy_files``: "files" is an iterator of the per-file dicts, for a writer that
        encodes them a few at a time."""
        d = {name: getattr(self, name) for name in fields(self) if name != "failures"}
        files = (dict(vars(r)) for r in self.files)
        d["files"] = files if lazy_files else list(files)
        d["files_truncated"] = len(self.files) < self.file_count  # "files" lists at most the first
        return d


class Tally:
    """Counters over every item, and the first reports (memory stays flat with the file count)."""

    def __init__(self) -> None:
        self.count = self.failed = self.identical = 0
        self.bytes = self.bytes_sent = self.bytes_resumed = 0
        self.listed: list[FileSendReport] = []
        self.failures: list[FileSendReport] = []

    def add(self, r: FileSendReport) -> None:
        self.count += 1
        self.bytes += r.size
        self.bytes_sent += r.bytes_sent
        self.bytes_resumed += r.bytes_resumed
        if r.status == "identical":
            self.identical += 1
        if not r.ok:
            self.failed += 1
            if len(self.failures) < FILES_LISTED:
                self.failures.append(r)
        if len(self.listed) < FILES_LISTED:
            self.listed.append(r)
        elif not r.ok and len(self.failures) <= FILES_LISTED:
            self.listed.append(r)  # failures are listed beyond the first files too (up to as many)

    def report(self, transport: str, seconds: float, error: str) -> SendReport:
        """The SendReport of a send whose every item was counted here; ``error``: why it failed as a whole."""
        return SendReport(ok=not error and not self.failed, transport=transport, seconds=seconds, bytes=self.bytes,
                          bytes_sent=self.bytes_sent, bytes_resumed=self.bytes_resumed, files=self.listed,
                          error=error, file_count=self.count, failed=self.failed, identical=self.identical,
                          failures=self.failures)
