"""The sender's transfer identity: a random id kept in the user's state directory.

A receiver lets a new connection take over a partial file that another
connection is still writing only when both carry the same identity (HELLO's
sender id, protocol.md section 6.1) and, unless --insecure, were authenticated
with the same key or client certificate (the id alone is not a credential).  A re-run of a killed ``ftx send`` by the
same user therefore resumes at once; another user -- behind the same NAT or
not -- is told BUSY and cannot abort the transfer in progress.

The id lives in ``$XDG_STATE_HOME/ftx/sender-id`` (default
``~/.local/state/ftx/sender-id``) as 32 hex digits, created on first use with
mode 0600.  If it cannot be read or written, this run gets a fresh random id:
it still works, but cannot take over partials of earlier runs.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("ftx.identity")
ID_BYTES = 16


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ftx")


def sender_id() -> bytes:
    """This user's sender id, created on first use."""
    path = os.path.join(state_dir(), "sender-id")
    try:
        return _read(path)
    except (OSError, ValueError):
        pass
    new = os.urandom(ID_BYTES)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, new.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces an id another run created meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        return _read(path)
    except (OSError, ValueError) as exc:
        log.info("cannot keep a sender id in %s (%s); a re-run will not take over this transfer at once",
                 path, getattr(exc, "strerror", None) or exc)
        return new


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        text = os.read(fd, 256)
    finally:
        os.close(fd)
    value = bytes.fromhex(text.decode("ascii").strip())
    if len(value) != ID_BYTES:
        raise ValueError("sender id has the wrong length")
    return value
