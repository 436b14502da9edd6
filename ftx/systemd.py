"""systemd integration without a dependency: ``sd_notify`` and socket activation.

``Notifier`` sends the service manager one datagram per message to
``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace), as
sd_notify(3) does: ``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``RELOADING=1``
and ``WATCHDOG=1``.  Without ``NOTIFY_SOCKET`` every call is a no-op, so the
receiver calls it unconditionally.

``passed_sockets`` is sd_listen_fds(3): when ``LISTEN_PID`` names this process,
descriptors 3 .. 3+``LISTEN_FDS``-1 are listening sockets the manager opened
(named by ``LISTEN_FDNAMES``); the variables are removed so that children do
not take the sockets for theirs.
"""

from __future__ import annotations

import logging
import os
import socket

from .core.record import field, record

log = logging.getLogger("ftx.systemd")

SD_LISTEN_FDS_START = 3
MAX_PASSED = 64  # more than any unit of ours passes; a bogus LISTEN_FDS is refused, not trusted


class Notifier:
    """Messages to the service manager; a no-op when ``NOTIFY_SOCKET`` is unset."""

    def __init__(self, env=None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()  # abstract namespace
        elif path.startswith("/"):
            self.address = path
        elif path:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying", path)
        self._sock: socket.socket | None = None
        self.watchdog_interval: float | None = None  # seconds between WATCHDOG=1, half the manager's period
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``KEY=value`` each) in one datagram; False if it could not be sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # never stall the daemon on a busy manager
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", lines[:1], exc)
            return False

    def ready(self, status: str = "") -> None:
        self.last_status = status
        self.notify("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        """``STATUS=text``, sent only when it changed."""
        text = text.replace("\n", " ")
        if text != self.last_status:
            self.last_status = text
            self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: checkpointing partial files")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def reloaded(self) -> None:
        self.notify("READY=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@record(frozen=False)
class PassedSockets:
    """Listening sockets the service manager passed (socket activation)."""

    stream: list[socket.socket] = field(default_factory=list)
    dgram: list[socket.socket] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.stream or self.dgram)


class ActivationError(Exception):
    """The activation variables are set for us but unusable."""


def passed_sockets(env=None, unset: bool = True) -> PassedSockets:
    """The sockets of ``LISTEN_FDS`` if ``LISTEN_PID`` is this process (else none)."""
    env = os.environ if env is None else env
    pid, count, names = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", ""), env.get("LISTEN_FDNAMES", "")
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if not pid or pid != str(os.getpid()):
        return PassedSockets()
    if not count.isdigit() or not 0 < int(count) <= MAX_PASSED:
        raise ActivationError(f"LISTEN_FDS={count!r} is not a number of sockets (1..{MAX_PASSED})")
    n = int(count)
    labels = names.split(":") if names else []
    out = PassedSockets()
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        try:
            sock = socket.socket(fileno=fd)  # family and type read from the descriptor
        except OSError as exc:
            raise ActivationError(f"passed descriptor {fd} is not a socket: {exc.strerror or exc}") from None
        os.set_inheritable(fd, False)
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            sock.detach()
            raise ActivationError(f"passed descriptor {fd} is not an IP socket (family {sock.family!r})")
        sock.setblocking(False)
        label = labels[i] if i < len(labels) else f"fd{fd}"
        if sock.type == socket.SOCK_STREAM:
            out.stream.append(sock)
        elif sock.type == socket.SOCK_DGRAM:
            out.dgram.append(sock)
        else:
            sock.detach()
            raise ActivationError(f"passed descriptor {fd} is neither a stream nor a datagram socket")
        out.names.append(label)
    return out


__all__ = ["Notifier", "PassedSockets", "ActivationError", "passed_sockets"]
