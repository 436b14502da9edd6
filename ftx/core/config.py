"""Tunable knobs of a connection, one record (tests and the CLI set them here)."""

from __future__ import annotations

from .. import __version__
from .manifest import DEFAULT_CHUNK_SIZE
from .record import record

AGENT = f"ftx/{__version__}"


@record(frozen=False)  # (a dataclass took 0.7 ms of every command's start-up to define)
class Config:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Bytes per chunk: the unit of checksumming, journaling and resume."""

    max_payload: int = 4 * 1024 * 1024 + 64 * 1024
    """Largest frame payload this side accepts (announced in HELLO)."""

    small_file_limit: int = 64 * 1024
    """Files up to this size travel whole in one SMALL_FILE frame, with no round trip."""

    offer_window: int = 256
    """Offers a sender may have outstanding (sent, no decision or result yet)."""

    resume: bool = True
    """Sender: use the receiver's verified partial data; False discards it."""

    overwrite: bool = False
    """Receiver: replace destination files whose content differs."""

    max_files_in_flight: int = 1024
    """Receiver: items the sender may have outstanding (OFFER or SMALL_FILE, no RESULT yet);
    one more is a PROTOCOL error (``Limits.max_files_in_flight``)."""

    quick_check: bool = True
    """Sender: an unchanged file is recognised by size and mtime (rsync's quick check) and a
    whole unchanged directory by one CHECK_DIR; False (``--checksum``) compares digests."""

    result_run: bool = True
    """A run of OK results in one RESULT_RUN frame (protocol.md 5.13).  Sender: announce in
    HELLO that it takes them; receiver: send them to a sender that announced it (never with
    a receipt).  False on either side: one RESULT per item, as an older peer."""

    agent: str = AGENT
    """Free text naming the implementation, sent in HELLO."""

    sender_id: bytes = b""
    """Sender: the transfer identity sent in HELLO (empty: anonymous).  A receiver lets a
    new connection take over a partial file only from the same identity."""

    transfer_id: bytes = b""
    """Sender: this session's TRANSFER_ID for HELLO (8 random bytes; empty: none), which both
    sides print in their logs and --json so that one transfer can be found in both."""

    summary: bytes = b""
    """Sender: an OFFER_SUMMARY (``messages.OfferSummary``) to announce in HELLO, so that a
    receiver that asks before accepting (code mode) can show what comes."""
