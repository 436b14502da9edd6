"""What a sender announced (HELLO's OFFER_SUMMARY), held against what it then offers.

A code-mode receiver shows its user the summary and asks before accepting
(protocol.md 6.1); what the user said yes to is also what the session admits.
Each OFFER or SMALL_FILE is checked here before the receiver looks at it: an
item beyond the announced count, a file beyond the announced total bytes, or a
top-level name outside the announced ones is refused (a RESULT **ABORTED**
for that item; nothing is written for it).  Only admitted items are counted.
"""

from __future__ import annotations

from .manifest import FileEntry, Kind
from .messages import OfferSummary, wire_text


def top_name(path: bytes) -> str:
    """The top-level name of a wire path, as a sender's OFFER_SUMMARY spells it."""
    top = bytes(path).split(b"/", 1)[0]
    return wire_text(top.decode("utf-8", "surrogateescape"), 255).decode("utf-8")


class Announced:
    """The admission rule for one session; ``summary`` None admits everything."""

    def __init__(self, summary: OfferSummary | None) -> None:
        self.summary = summary
        self.items = 0
        self.size = 0
        self._listed = frozenset(summary.names) if summary is not None else frozenset()
        # the summary may leave names out (it says how many there are): that many others are admitted
        self._unlisted_room = max(0, summary.name_count - len(summary.names)) if summary is not None else 0
        self._unlisted: set[str] = set()

    def admit(self, entry: FileEntry) -> str | None:
        """Count ``entry`` and return None, or say why it is beyond the announcement (not counted)."""
        s = self.summary
        if s is None:
            return None
        if self.items + 1 > s.items:
            return f"not announced: the sender announced {s.items} item{'s' * (s.items != 1)} and offers more"
        size = entry.size if entry.kind == Kind.FILE else 0
        if self.size + size > s.size:
            return (f"not announced: the sender announced {s.size} bytes in all and this file would make "
                    f"{self.size + size}")
        top = top_name(entry.path)
        fresh = top not in self._listed and top not in self._unlisted
        if fresh and len(self._unlisted) >= self._unlisted_room:
            return f"not announced: {top!r} is not among the top-level names the sender announced"
        if fresh:
            self._unlisted.add(top)
        self.items += 1
        self.size += size
        return None
