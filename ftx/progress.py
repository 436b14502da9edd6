"""Progress hooks.  The library calls a ``Progress``; the CLI passes ``Bars`` (tqdm)."""

from __future__ import annotations

import os
import sys


class Progress:
    """Hooks for a progress display; the default does nothing."""

    def start_file(self, path: str, size: int, resumed: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def end_file(self, report) -> None: ...
    def close(self) -> None: ...


class Bars(Progress):
    """tqdm bars on stderr: a total and one for the current file, with rate and ETA."""

    def __init__(self, label: str = "total", position: int = 0) -> None:
        from functools import partial

        from tqdm import tqdm

        try:  # a terminal that reports no width (e.g. a fresh pty) still gets bars
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except OSError:
            width = 0
        sizing = {"dynamic_ncols": True} if width else {"ncols": 100}
        self._tqdm = partial(tqdm, unit="B", unit_scale=True, unit_divisor=1024, **sizing)
        self._position = position
        from .terminal import printable

        self.total = self._tqdm(desc=printable(label), position=position, leave=True, total=0)
        self.file = None

    def start_file(self, path: str, size: int, resumed: int) -> None:
        self.total.total = (self.total.total or 0) + size
        self.total.update(resumed)
        if self.file is not None:
            self.file.close()
        from .terminal import printable

        self.file = self._tqdm(desc=printable(path[-30:]), total=size, initial=resumed, position=self._position + 1,
                               leave=False)

    def advance(self, nbytes: int) -> None:
        self.total.update(nbytes)
        if self.file is not None:
            self.file.update(nbytes)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.total.close()
