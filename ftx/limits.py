"""What one receiver lets its senders cost it: every resource limit, in one dataclass.

Each field is an ``ftx receive`` option of the same name (``max_per_host`` is
``--max-per-host``); the CLI builds those options from this table, so a limit,
its default, its unit and its help text live here and nowhere else.  The
defaults are what a single host on the internet can live with; README lists
them.  ``Admission`` counts sessions against the connection limits, for both
transports.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

from .core.hosts import host_key
from .units import parse_duration, parse_size  # noqa: F401 - re-exported (the one parser: ftx/units.py)


def _opt(kind: str, help: str, least: float = 0) -> dict:
    return {"kind": kind, "help": help, "least": least}


@dataclass
class Limits:
    # -- sessions (both transports) --------------------------------------------------
    max_connections: int = field(default=256, metadata=_opt(
        "count", "Senders served at once, TCP and UDP together; more are refused (BUSY)."))
    max_per_host: int = field(default=16, metadata=_opt(
        "count", "Senders served at once from one host (an IPv4 address, or an IPv6 /64)."))
    handshake_timeout: float = field(default=10.0, metadata=_opt(
        "duration", "Drop a connection that has not completed its handshake in this time."))
    stall_timeout: float = field(default=600.0, metadata=_opt(
        "duration", "Drop a sender that moves no file data and settles no file for this long "
                    "(PINGs alone do not keep a session)."))
    code_handshakes_per_host: int = field(default=10, metadata=_opt(
        "count", "Code mode: pairing handshakes one address (IPv6: one /64) may start per minute, in "
                 "bursts of as many; more are turned away before any work."))
    code_handshakes: int = field(default=20, metadata=_opt(
        "count", "Code mode: pairing handshakes all addresses together may start per second (each costs "
                 "about 10 ms of CPU before the sender proves anything); more are turned away."))
    confirm_timeout: float = field(default=60.0, metadata=_opt(
        "duration", "Code mode without --yes: a question about an offer left unanswered this long "
                    "(from the sender's HELLO) is answered no; the sender is told it was not accepted in time."))
    # -- files and descriptors ----------------------------------------------------
    max_open_files: int = field(default=512, metadata=_opt(
        "count", "Partial files held open at once, all senders together (descriptors).", least=4))
    max_files_in_flight: int = field(default=1024, metadata=_opt(
        "count", "Files one sender may have offered and not yet settled (ftx senders keep "
                 "up to 256; a lower value fails their sessions).", least=256))
    # -- disk ---------------------------------------------------------------------
    min_free: int = field(default=256 << 20, metadata=_opt(
        "size", "Refuse a file that would leave less free space than this in --dir "
                "(and fail one whose data gets there)."))
    partial_ttl: float = field(default=7 * 86400.0, metadata=_opt(
        "duration", "Remove partial files untouched for this long (checked at start and hourly, "
                    "or every TTL/2 if shorter)."))
    # -- memory -------------------------------------------------------------------
    max_memory: int = field(default=256 << 20, metadata=_opt(
        "size", "Memory bound of the receiver: the buffers of all senders together (frame, reassembly, "
                "handshake) get this less 48M for the process itself; the connections of one host hold at "
                "most a quarter of the frame buffers (at least 8M).", least=24 << 20))

    #: what the receiver process needs besides buffers (interpreter, per-session state)
    PROCESS_RESERVE = 48 << 20

    @property
    def buffer_bytes(self) -> int:
        """Bytes all senders' buffers may hold together: ``max_memory`` less the process's
        own share, so that the receiver's RSS stays under ``max_memory``."""
        return self.max_memory - min(self.PROCESS_RESERVE, self.max_memory // 2)

    # How buffer_bytes is shared, so that the shares add up to it and no more.  UDP may
    # commit up to twice its share while a connection holds less than its fair part of it
    # (ftx/core/udp/reassembly.py), hence 1/4 for 1/2 at worst.
    @property
    def frame_buffer_bytes(self) -> int:
        """Frame decoders of all connections (TCP and UDP) and each unsettled item's state: 3/8."""
        return self.buffer_bytes * 3 // 8

    #: a host's share of the frame buffers is never less than this (all of them, if they are less):
    #: one sender at the largest chunk the receiver allows (4 MiB) needs about 4.6 MiB -- its
    #: frame, a sealed record being opened, its items' state -- and two such senders fit
    HOST_SHARE_FLOOR = 8 << 20

    @property
    def host_frame_buffer_bytes(self) -> int:
        """What the connections of one host (an IPv4 address, an IPv6 /64) may hold of the frame
        buffers: a quarter, so that at least four hosts get their whole share at once, and a host
        that holds its share leaves three quarters to the others; at least HOST_SHARE_FLOOR.
        19.5 of 78 MiB by default (--max-memory 256M)."""
        whole = self.frame_buffer_bytes
        return max(whole // 4, min(whole, self.HOST_SHARE_FLOOR))

    @property
    def udp_buffer_bytes(self) -> int:
        """UDP chunk reassembly and control-stream buffers of all UDP sessions: 1/4 (1/2 at worst)."""
        return self.buffer_bytes // 4

    @property
    def digest_buffer_bytes(self) -> int:
        """Chunks that arrived out of order, kept for the whole-file digest (storage): 1/8."""
        return self.buffer_bytes // 8

    @classmethod
    def least(cls, name: str) -> float:
        """The smallest value that still lets a legitimate sender through."""
        return next(f.metadata["least"] for f in fields(cls) if f.name == name)

    @classmethod
    def options(cls):
        """(field name, kind, default, help) for each limit, in declaration order."""
        return [(f.name, f.metadata["kind"], f.default, f.metadata["help"]) for f in fields(cls)]


class Admission:
    """Counts live sessions, in total and per host (``host_key``: an IPv6 /64 is one), against ``Limits``.

    ``admit(host, evict)`` returns a reason string when the session must be refused,
    else ``None`` and the caller owes one ``release(host, evict)``.  A session is
    *pending* until ``settled(evict)`` says its handshake is complete (the ftx HELLO
    arrived).  When a limit is reached and pending sessions hold places, the oldest
    of them (of the same host, for the per-host limit) is evicted -- ``evict()`` is
    called to end it, and its later ``release`` is a no-op -- instead of refusing the
    newcomer: connections that never finish a handshake (a flood of them, from many
    addresses that can answer RETRYs) cannot keep senders that do finish one out.
    A session admitted with ``protected`` (UDP: from an address that has asked for
    little lately, endpoint.py) is evicted only for another protected newcomer, and
    only when no unprotected pending session is left: a flood of handshakes from busy
    addresses cannot push out a new sender before its HELLO arrives.
    Thread-safe: storage work runs in worker threads.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self.total = 0
        self.per_host: dict[str, int] = {}
        self.refused = 0
        self.refused_by = {"max_connections": 0, "max_per_host": 0}  # by the limit that refused (metrics)
        self.evicted = 0
        self._pending: dict[object, tuple[str, bool]] = {}  # evict callback -> (host, protected), oldest first
        self._gone: set = set()  # evicted callbacks whose release is still to come
        self.on_refused = None  # called with (host, reason) for each refusal (the receiver's log)

    def admit(self, host: str | None, evict=None, protected: bool = False) -> str | None:
        reason = self._admit(host, evict, protected)
        if reason is not None and self.on_refused is not None:
            self.on_refused(host, reason)
        return reason

    def _admit(self, host: str | None, evict=None, protected: bool = False) -> str | None:
        key = host_key(host)  # an IPv6 /64 is one host (ftx/core/hosts.py)
        victims = []
        with self._lock:
            if self.total >= self.limits.max_connections:
                victim = self._victim(None, protected)
                if victim is None:
                    self.refused += 1
                    self.refused_by["max_connections"] += 1
                    return (f"receiver busy: {self.total} senders already "
                            f"(--max-connections {self.limits.max_connections})")
                victims.append(self._evict(victim))
            n = self.per_host.get(key, 0)
            if n >= self.limits.max_per_host:
                victim = self._victim(key, protected)
                if victim is None:
                    self.refused += 1
                    self.refused_by["max_per_host"] += 1
                    return f"receiver busy: {n} senders from {key} already (--max-per-host {self.limits.max_per_host})"
                victims.append(self._evict(victim))
            self.total += 1
            self.per_host[key] = self.per_host.get(key, 0) + 1
            if evict is not None:
                self._pending[evict] = (key, protected)
        for victim in victims:  # outside the lock: it may release other things
            victim()
        return None

    def _victim(self, host: str | None, protected: bool):
        """The pending session a newcomer (``protected`` or not) may take the place of: the
        oldest unprotected one (of ``host``; None: of any host), else, for a protected
        newcomer, the oldest protected one; None if there is none (lock held)."""
        fallback = None
        for victim, (h, shielded) in self._pending.items():
            if host is not None and h != host:
                continue
            if not shielded:
                return victim
            if fallback is None and protected:
                fallback = victim
        return fallback

    def _evict(self, victim):
        """Take a pending session's places now (lock held); the caller ends it."""
        key, _ = self._pending.pop(victim)
        self._gone.add(victim)
        self._uncount(key)
        self.evicted += 1
        return victim

    def settled(self, evict) -> None:
        """The session's handshake is complete: it is no longer evicted for newcomers."""
        with self._lock:
            self._pending.pop(evict, None)

    def release(self, host: str | None, evict=None) -> None:
        with self._lock:
            if evict is not None and evict in self._gone:
                self._gone.discard(evict)  # its places went to the session that evicted it
                return
            if evict is not None:
                self._pending.pop(evict, None)
            self._uncount(host_key(host))

    def _uncount(self, key: str) -> None:
        self.total -= 1
        n = self.per_host.get(key, 0) - 1
        if n > 0:
            self.per_host[key] = n
        else:
            self.per_host.pop(key, None)


__all__ = ["Limits", "Admission", "parse_size", "parse_duration"]
