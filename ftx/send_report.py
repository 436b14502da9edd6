"""What a send reports: per item (``FileSendReport``), as a whole (``SendReport``, ``ftx send --json``),
and the counters over every item (``Tally``) that keep memory flat with the number of files."""

from __future__ import annotations

import logging
import os

from .core.manifest import Kind
from .core.messages import DIR_SAME, ZERO_DIGEST
from .core.record import field, fields, record
from .core.secure.handshake import printable
from .errors import ErrorCode

FILES_LISTED = 1000  # per-file reports a SendReport lists (the first ones, and as many failures)

log = logging.getLogger("ftx.send")
_STATUS = {code: code.name.lower() for code in ErrorCode}  # a report's status, per code
_KIND = {kind: kind.name.lower() for kind in Kind}  # (Enum's name is a property lookup per file)


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

    def unchanged(self, group, done) -> bool:
        """The items of ``group`` (source.DirGroup), a directory the receiver holds as we listed it
        (DIR_SAME), identical: the first up to FILES_LISTED reported (``done``: each one's
        FileSendReport, which adds it here), the others counted; the directory's own item too
        where its parent was unchanged (its parent's group left it to this one).  False where it
        was listed ahead and its listing for the report differs (its own item reported, none of
        its entries counted): it changed since its check, and its entries go by OFFER."""
        if group.parent is not None and group.parent.state == DIR_SAME:
            done(FileSendReport(os.fsdecode(group.dir.wire), "dir", 0, "identical"))
        room = max(0, FILES_LISTED - len(self.listed))
        if not room and group.unlisted:  # listed ahead (prewalk.Prewalk): counted, not listed again
            files, size = group.totals()
            self.count += files
            self.identical += files
            self.bytes += size
            return True
        DIR = Kind.DIR
        items = [item for item in group.items if item.kind != DIR]  # a directory's own group reports it
        if group.changed:
            return False
        for item in items[:room]:
            done(FileSendReport(os.fsdecode(item.wire), _KIND[item.kind], item.size, "identical"))
        if len(items) > room:  # only counted: no report object per file
            sizes = [item.size for item in items[room:]]
            self.count += len(sizes)
            self.identical += len(sizes)
            self.bytes += sum(sizes)
        return True

    def final(self, pending, transport: str, seconds: float, failure=None) -> SendReport:
        """The send's report once it is over: ``pending``, the reports of items that had no result
        yet (aborted where the send failed first), are counted too; ``failure``: the FtxError
        that ended it (``SendReport.failure``: the CLI picks its exit code by its class)."""
        error = str(failure) if failure is not None else ""
        for r in pending:
            if r.status == "pending":
                r.status, r.message = "aborted", error or "session ended first"
            self.add(r)
        report = self.report(transport, seconds, error)
        report.failure = failure
        return report

    def report(self, transport: str, seconds: float, error: str) -> SendReport:
        """The SendReport of a send whose every item was counted here; ``error``: why it failed as a whole."""
        return SendReport(ok=not error and not self.failed, transport=transport, seconds=seconds, bytes=self.bytes,
                          bytes_sent=self.bytes_sent, bytes_resumed=self.bytes_resumed, files=self.listed,
                          error=error, file_count=self.count, failed=self.failed, identical=self.identical,
                          failures=self.failures)


def settle(report: FileSendReport, result) -> None:
    """``report`` as the receiver's RESULT says (core.messages.Result): its status, the
    receiver's message (escaped), the digest; a failure is logged."""
    code = result.code
    status = _STATUS.get(code)  # (a table: Enum's name is a property lookup per file)
    report.status = status if status is not None else f"error_{code}"
    if result.message and not report.message:
        report.message = printable(result.message)  # the receiver's words: escaped before we show them
    if status == "ok" or status == "identical":
        if result.digest != ZERO_DIGEST:
            report.digest = result.digest.hex()
    else:
        log.warning("%s: %s", report.path, report.message or report.status)


def finished(report: SendReport, link, established) -> SendReport:
    """``report`` with what the link and the handshake (``established``, None: --insecure) tell:
    bytes on the wire both ways, the receiver's proven fingerprint."""
    report.transport_stats = getattr(link, "stats", {})
    report.peer_fingerprint = established.peer.fingerprint if established is not None else ""
    return report
