"""tqdm progress bars for the CLI (the library only calls Progress hooks)."""

from __future__ import annotations

from tqdm import tqdm

from .sending import FileSendReport, Progress


class SendBars(Progress):
    """A total bar and a bar for the file being sent, on stderr."""

    def __init__(self) -> None:
        self.total = tqdm(desc="total", unit="B", unit_scale=True, unit_divisor=1024, position=0,
                          leave=True, dynamic_ncols=True, total=0)
        self.file: tqdm | None = None

    def start_file(self, path: str, size: int, resumed: int) -> None:
        self.total.total = (self.total.total or 0) + size
        self.total.update(resumed)
        if self.file is not None:
            self.file.close()
        self.file = tqdm(desc=path[-30:], unit="B", unit_scale=True, unit_divisor=1024, total=size,
                         initial=resumed, position=1, leave=False, dynamic_ncols=True)

    def advance(self, nbytes: int) -> None:
        self.total.update(nbytes)
        if self.file is not None:
            self.file.update(nbytes)

    def end_file(self, report: FileSendReport) -> None:
        pass

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.total.close()
