"""What happened to what a receiver received: ``FileReport`` per item (--json "file" lines,
logs, ``ReceiveSession.reports``), ``RunReport`` for a run of small files stored OK together."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileReport:
    """What happened to one received item (for --json lines and logs)."""

    path: str
    kind: str
    size: int
    status: str  # "ok", "identical" or an error code name in lower case
    digest: str = ""
    message: str = ""
    bytes_received: int = 0
    bytes_resumed: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "identical")


class RunReport:
    """Small files that a run stored, all OK (``ReceiveSession``'s ``on_files``): their names,
    sizes and digests (hex) in lists.  Iterating gives each one's FileReport (status "ok", all
    its bytes received), the same as ``on_file`` would have been given."""

    __slots__ = ("paths", "sizes", "digests")

    def __init__(self, paths: list, sizes: list, digests: list) -> None:
        self.paths, self.sizes, self.digests = paths, sizes, digests

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def bytes(self) -> int:
        return sum(self.sizes)

    def __iter__(self):
        new = FileReport.__new__
        for path, size, digest in zip(self.paths, self.sizes, self.digests):
            report = new(FileReport)
            report.__dict__.update(path=path, kind="file", size=size, status="ok", digest=digest, message="",
                                   bytes_received=size, bytes_resumed=0)
            yield report
