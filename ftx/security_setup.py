"""From command-line credentials to the handshake each connection runs.

The sender's options pick one handshake (``sender_handshake``): a pairing code
(SPAKE2), TLS (``--tls-ca``/``--tls-cert``/``--tls``), or, by default, identity
keys checked against ``known_hosts`` (trust on first use) or a pinned
``--expect-fingerprint``.  ``--insecure`` runs none.

The receiver keeps one ``ReceiverAuth`` for its lifetime: its identity, the
authorized senders, the current pairing code (burned after ``CODE_TRIES``
failed guesses, with at most that many guesses in flight, so parallel
connections cannot guess more; and burned as soon as one sender proved it:
one code, one transfer -- a handshake still in flight on a burned code is
refused even if it proves the old code), and per-host failure counting
(``Throttle``; a host is an IPv4 address or an IPv6 /64, ``ftx.core.hosts``): a host
whose credentials failed 5 checks within a minute is turned away before any
handshake work for a minute.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from typing import Callable

from . import credentials as cr
from .core.hosts import host_key
from .core.record import record
from .core.secure import AuthError
from .core.secure.handshake import default_rng
from .errors import FtxError

default_rng[0] = os.urandom  # the handshakes' randoms (what secrets.token_bytes draws, without importing `random`)

log = logging.getLogger("ftx")

CODE_TRIES = 3  # failed guesses a pairing code survives


class SetupError(FtxError):
    """The options do not make a usable credential (bad TLS file, conflicting options...)."""


@record(frozen=False)
class SenderAuth:
    insecure: bool = False
    identity: str | None = None
    expect_fingerprint: str | None = None
    code: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def mode(self) -> str:
        if self.insecure:
            return "insecure"
        if self.code is not None:
            return "code"
        if self.tls or self.tls_ca or self.tls_cert:
            return "tls"
        return "key"

    def conflict(self, code_given) -> str | None:
        """Options that contradict each other (a usage error), or None."""
        if self.insecure and (code_given or self.identity or self.expect_fingerprint or self.tls or self.tls_ca
                              or self.tls_cert):
            return "--insecure takes no credentials"
        if self.code is not None and (self.tls or self.tls_ca or self.tls_cert or self.expect_fingerprint):
            return "a pairing code cannot be combined with TLS or --expect-fingerprint"
        if self.tls_key and not self.tls_cert:
            return "--tls-key needs --tls-cert"
        return None


def receiver_conflict(insecure, code, identity, authorized_keys, tls_cert, tls_key, tls_ca,
                      tls_any_client=False) -> str | None:
    """The receiver's options that contradict each other, or leave senders unauthenticated
    without saying so (a usage error), or None."""
    if insecure and (code or identity or authorized_keys or tls_cert or tls_ca or tls_any_client):
        return "--insecure takes no credentials"
    if code and (tls_cert or authorized_keys):
        return "--code cannot be combined with TLS or --authorized-keys"
    if (tls_key or tls_ca) and not tls_cert:
        return "--tls-key and --tls-ca need --tls-cert"
    if tls_any_client and not tls_cert:
        return "--tls-any-client needs --tls-cert"
    if tls_any_client and tls_ca:
        return "--tls-any-client and --tls-ca contradict each other"
    if tls_cert and not tls_ca and not tls_any_client:
        return ("--tls-cert needs --tls-ca CA.pem (senders must present a client certificate it signed), "
                "or --tls-any-client to accept any sender (anyone who can reach the port can write into --dir)")
    return None


def has_aes_instructions(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AES instructions (x86 AES-NI: "aes" in flags; ARMv8: "aes" in
    Features), from /proc/cpuinfo; where that file does not exist, assume so on x86-64 and
    64-bit ARM, whose current CPUs all have them."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read(1 << 20)
        except OSError:
            import platform

            return platform.machine().lower() in ("x86_64", "amd64", "arm64", "aarch64")
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return "aes" in value.split()
    return False


def cipher_preference() -> list[str]:
    """The AEADs a sender offers, best first: AES-256-GCM with AES instructions, else ChaCha20-Poly1305
    (the receiver takes the first it supports)."""
    from .core.secure.keys import preferred_ciphers

    return preferred_ciphers(has_aes_instructions())


def sender_handshake(auth: SenderAuth, host: str, port: int):
    """The client-side ``Handshake`` for ``auth`` against HOST:PORT (None with --insecure)."""
    mode = auth.mode
    if mode == "insecure":
        return None
    if mode == "code":
        from .core.secure.pake import PakeClient

        return PakeClient(auth.code, ciphers=cipher_preference())
    if mode == "tls":
        from .tlsconfig import TlsConfigError, sender_handshake as tls_handshake

        try:
            return tls_handshake(host, auth.tls_ca, auth.tls_cert, auth.tls_key, auth.expect_fingerprint,
                                 ciphers=cipher_preference())
        except TlsConfigError as exc:
            raise SetupError(str(exc)) from None
    from .core.secure.sigma import SigmaClient

    identity = sender_identity(auth.identity)
    known = cr.KnownHosts(cr.default_known_hosts(), host, port, auth.expect_fingerprint)
    if known.expect is None:
        known.check()  # an unsafe known_hosts is a one-line error before connecting
    return SigmaClient(identity.key, known.verify, ciphers=cipher_preference())


def sender_identity(path: str | None) -> cr.Identity:
    identity = cr.load_identity(path or cr.default_identity())
    if identity.created:
        log.warning("created identity %s; its fingerprint is %s (receivers add %s.pub to their authorized_keys)",
                    identity.path, identity.fingerprint, identity.path)
    return identity


def offer_summary(items) -> bytes:
    """The OFFER_SUMMARY a code-mode sender announces: item count, file bytes, top-level names."""
    import os

    from .core.manifest import Kind
    from .core.messages import OfferSummary

    size, tops, count = 0, [], 0
    for item in items:  # an iterable (the walk, streamed): counted, not held
        count += 1
        if item.kind == Kind.FILE:  # what is sent: a named symlink's (or an in-tree link's) file
            try:
                size += os.stat(item.local).st_size
            except OSError:
                pass
        if b"/" not in item.wire:
            tops.append(os.fsdecode(item.wire))
    return OfferSummary(count, size, tuple(tops[:64]), len(tops)).encode()


def describe_offer(hello) -> str:
    """One line for the receiver's user about what the sender announced."""
    from .core.messages import OfferSummary

    summary = OfferSummary.decode(hello.summary) if hello is not None and hello.summary else None
    if summary is None:
        return "the sender did not say what it will send"
    names = ", ".join(repr(n) for n in summary.names[:10])
    more = summary.name_count - min(len(summary.names), 10)
    return (f"{summary.items} item{'s' * (summary.items != 1)}, {summary.size} bytes: {names}"
            + (f" and {more} more" if more > 0 else ""))


class Throttle:
    """Failed handshakes per source host (``host_key``: an IPv4 address, an IPv6 /64): after ``limit``
    in ``window`` s, refuse it for ``ban`` s.

    Holds at most ``max_hosts`` hosts (the least recently failed are forgotten).
    """

    def __init__(self, limit: int = 5, window: float = 60.0, ban: float = 60.0, max_hosts: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.ban, self.max_hosts, self.clock = limit, window, ban, max_hosts, clock
        self._fails: OrderedDict[str, list[float]] = OrderedDict()  # host -> failure times in window
        self._banned: OrderedDict[str, float] = OrderedDict()  # host -> until

    def refused(self, host: str | None) -> float:
        """Seconds ``host`` is still refused for (0: let it try)."""
        if host is None:
            return 0.0
        host = host_key(host)
        until = self._banned.get(host)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._banned[host]
            return 0.0
        return left

    def failed(self, host: str | None) -> None:
        if host is None or self.limit <= 0:
            return
        host = host_key(host)
        now = self.clock()
        times = [t for t in self._fails.pop(host, []) if now - t < self.window]
        times.append(now)
        if len(times) >= self.limit:
            self._banned[host] = now + self.ban
            self._banned.move_to_end(host)
            log.warning("%s failed %d handshakes within %g s: refused for %g s", host, len(times), self.window,
                        self.ban)
            times = []
        else:
            self._fails[host] = times
        for table in (self._fails, self._banned):
            while len(table) > self.max_hosts:
                table.popitem(last=False)


def takeover_credential(established) -> str | None:
    """What a connection must share with the one writing a destination to take it over
    (besides the SENDER_ID, protocol.md 6.1): the sender's key (``key SHA256:...``) or its TLS
    client certificate (``tls SHA256:...``).  None -- never the same as another -- for a
    pairing-code session (a code is good for one session) or a TLS sender without a
    certificate (--tls-any-client): nothing proves that it is the sender it would replace.
    ``established`` None (--insecure): "", the SENDER_ID alone decides, as it did before
    connections were authenticated."""
    if established is None:
        return ""
    peer = established.peer
    if peer.kind in ("key", "tls") and peer.fingerprint:
        return f"{peer.kind} {peer.fingerprint}"
    return None


def takeover_refusal(new, old) -> str | None:
    """None if receiver session ``new`` may take over the destination that ``old`` (the claim's
    holder: a ``ReceiveSession``, or something else) is writing, else the BUSY text: both must
    carry the same non-empty SENDER_ID (``identity``) and, unless --insecure, be authenticated
    with the same credential (``established``: ``takeover_credential``)."""
    mine = getattr(new, "identity", b"")
    if old is new or not mine or getattr(old, "identity", b"") != mine:
        return ("busy: another sender is sending this file right now (a different transfer identity); "
                "try again when it is done")
    ours, theirs = takeover_credential(new.established), takeover_credential(old.established)
    if ours is not None and ours == theirs:
        return None
    if ours is None:
        what = ("a pairing-code session" if new.established.peer.kind == "code"
                else "a TLS sender without a client certificate")
        return (f"busy: another sender holds this transfer, and {what} cannot take over another "
                "connection's transfer; try again when it is done")
    other = "certificate" if new.established.peer.kind == "tls" else "key"
    return f"busy: another sender holds this transfer (authenticated with a different {other}); try again when it is done"


class HandshakeRate:
    """Token buckets on code-mode handshakes, which cost the receiver SPAKE2 work (about
    10 ms of CPU each) before the sender proves anything: ``per_host`` a minute per host
    (``host_key``: an IPv4 address, an IPv6 /64) and ``total`` a second for all of them, each in bursts of as many.
    A flood is turned away before any work, so it cannot starve transfers in progress.
    Holds at most ``max_hosts`` addresses (the least recently seen are forgotten)."""

    def __init__(self, per_host: int = 10, total: int = 20, max_hosts: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_host, self.total, self.max_hosts, self.clock = per_host, total, max_hosts, clock
        self._hosts: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._all = (float(total), clock())

    @staticmethod
    def _refill(bucket: tuple[float, float], size: int, per_second: float, now: float) -> float:
        tokens, at = bucket
        return min(float(size), tokens + (now - at) * per_second)

    def take(self, host: str | None) -> str | None:
        """None: ``host`` may start a handshake (a token of each bucket is spent); else why not."""
        now = self.clock()
        key = host_key(host)
        mine = self._hosts.get(key)
        tokens = self.per_host if mine is None else self._refill(mine, self.per_host, self.per_host / 60, now)
        if tokens < 1:
            self._hosts[key] = (tokens, now)
            self._hosts.move_to_end(key)
            wait = (1 - tokens) * 60 / self.per_host
            return f"too many pairing attempts from {key}; try again in {max(1, round(wait))} s"
        everyone = self._refill(self._all, self.total, self.total, now)
        if everyone < 1:
            self._all = (everyone, now)
            return "too many pairing attempts right now; try again in a few seconds"
        self._all = (everyone - 1, now)
        self._hosts[key] = (tokens - 1, now)
        self._hosts.move_to_end(key)
        while len(self._hosts) > self.max_hosts:
            self._hosts.popitem(last=False)
        return None


class ReceiverAuth:
    """What a receiver proves and accepts, shared by all its connections."""

    def __init__(self, *, insecure: bool = False, identity: str | None = None, authorized_keys: str | None = None,
                 code: bool = False, tls_cert: str | None = None, tls_key: str | None = None,
                 tls_ca: str | None = None, on_code: Callable[[str], None] | None = None,
                 throttle: Throttle | None = None, rate: HandshakeRate | None = None) -> None:
        self.insecure = insecure
        self.code_mode = code
        self.throttle = throttle or Throttle()
        self.rate = rate or HandshakeRate()
        self.on_code = on_code or (lambda code: None)
        self.code: str | None = None
        self._code_failures = 0
        self._code_inflight = 0
        self.code_generation = 0  # which code a handshake ran against (a burned one admits nobody)
        self.renew_code = True  # a used code is replaced at once (False with --once: see ``code_used``)
        self.tls_factory = None
        self.fingerprint = ""
        self.kind = "insecure"
        self.notices: list[str] = []  # what the operator must see at start
        self.turned_away = 0  # connections refused before any handshake work (``begin``)
        self.ask = False  # ask the user before accepting a session (code mode without --yes)
        self.receipt_identity = None  # what signs receipts: our Ed25519 key, or (TLS) (key, chain)
        if insecure:
            return
        self.identity = cr.load_identity(identity or cr.default_identity())
        if self.identity.created:
            self.notices.append(f"created identity {self.identity.path}; its fingerprint is "
                                f"{self.identity.fingerprint}")
        self.fingerprint = self.identity.fingerprint
        self.receipt_identity = self.identity.key  # what signs receipts (TLS mode: the certificate's key)
        if code:
            self.kind = "code"
            self.new_code()
        elif tls_cert:
            from .tlsconfig import TlsConfigError, certificate_file_fingerprint, receiver_handshakes

            try:
                self.tls_factory = receiver_handshakes(tls_cert, tls_key, tls_ca)
                self.fingerprint = certificate_file_fingerprint(tls_cert)
            except TlsConfigError as exc:
                raise SetupError(str(exc)) from None
            self.kind = "tls"
            from .tlsconfig import receipt_signing_key

            try:  # receipts are signed with the certificate's key, which the sender's handshake proved
                self.receipt_identity = receipt_signing_key(tls_cert, tls_key)
            except TlsConfigError as exc:
                self.receipt_identity = None  # TLS works; receipts are declined
                self.notices.append(f"{exc}; receipts will be declined")
        else:
            self.kind = "key"
            self.authorized = cr.AuthorizedKeys(authorized_keys or cr.default_authorized_keys())
            if not self.authorized.keys:
                self.notices.append(f"no sender is authorized yet: every sender is refused until its public-key "
                                    f"line (its identity.pub) is in {self.authorized.path}")

    # -- pairing codes --------------------------------------------------------------
    def new_code(self) -> str:
        self.code = cr.new_code()
        self._code_failures = 0
        self.code_generation += 1
        self.on_code(self.code)
        return self.code

    def code_used(self) -> None:
        """A sender proved the code: burn it (one code, one transfer).  A new one is printed,
        unless ``renew_code`` is off (--once), where the code is simply gone until ``new_code``."""
        log.info("the pairing code was used: it is burned")
        if self.renew_code:
            self.new_code()
        else:
            self.code = None
            self._code_failures = 0
            self.code_generation += 1

    def begin(self, host: str | None) -> str | None:
        """A connection from ``host`` wants to run a handshake: None to go on, else why not."""
        left = self.throttle.refused(host)
        if left > 0:
            return f"too many failed authentications from {host_key(host)}; try again in {left:.0f} s"
        if self.code_mode:
            if self.code is None:
                return "the pairing code was used; ask the receiver for a new one"
            if self._code_inflight + self._code_failures >= CODE_TRIES:
                return "another attempt at the pairing code is in progress; try again shortly"
            if (why := self.rate.take(host)) is not None:
                return why
            self._code_inflight += 1
        return None

    def end(self, host: str | None, hs, error: BaseException | None, generation: int | None = None) -> str | None:
        """The handshake ``begin`` allowed is over (``error`` None: it succeeded).

        Returns why a handshake that succeeded is refused all the same (None: admitted):
        in code mode, one that ran against a code already burned (``generation``, the
        ``code_generation`` it started under).  An admitted code handshake burns the code.
        """
        stale = self.code_mode and generation is not None and generation != self.code_generation
        if self.code_mode:
            self._code_inflight -= 1
            if error is None:
                if stale:
                    return "the pairing code was already used; ask the receiver for a new one"
                self.code_used()
                return None
        # only a credential that was checked and failed counts (a guess at a code, an unknown
        # key): garbage, a plaintext HELLO or a timeout cost the receiver no crypto, and the
        # admission limits bound them; counting them would let anyone lock an address out
        if error is None or not isinstance(error, AuthError) or getattr(hs, "kind", None) is None:
            return
        self.throttle.failed(host)
        if self.code_mode and not stale:  # a guess at a code already replaced does not wear the new one
            self._code_failures += 1  # a guess was made (the sender's SPAKE2 message arrived)
            if self._code_failures >= CODE_TRIES:
                log.warning("%d wrong attempts at the pairing code: it is burned", CODE_TRIES)
                self.new_code()

    def describe(self, error: BaseException) -> str:
        """The receiver's one line about a failed handshake (more than the peer is told)."""
        text = str(error) or type(error).__name__
        if self.kind == "key" and "not authorized" in text:
            text += f"; to accept it, append the sender's identity.pub line to {self.authorized.path}"
        return f"authentication failed: {text}" if isinstance(error, AuthError) else text

    # -- handshakes -----------------------------------------------------------------
    def handshake(self):
        """A fresh server-side ``Handshake`` for one connection (None with --insecure)."""
        if self.insecure:
            return None
        from .core.secure.handshake import KIND_CODE, KIND_KEYS, KIND_TLS, ServerHandshake

        if self.kind == "code":
            from .core.secure.pake import PakeServer

            code, key = self.code, self.identity.key
            return ServerHandshake({KIND_CODE: lambda: PakeServer(code, key)})
        if self.kind == "tls":
            return ServerHandshake({KIND_TLS: self.tls_factory})
        from .core.secure.sigma import SigmaServer

        key, authorize = self.identity.key, self.authorized.authorize
        return ServerHandshake({KIND_KEYS: lambda: SigmaServer(key, authorize)})


async def authenticate(link, auth: ReceiverAuth, timeout: float, budget=None) -> str | None:
    """Run the receiver's handshake on a new connection: None when the sender proved itself, else why not
    ("" for a connection turned away before any handshake work -- a throttled address, a code
    with its guesses in flight -- which is not worth a line each: a flood would fill the log).

    A refused connection is closed here.  Before the handshake is done nothing
    but the handshake's own bounded state exists for it (no file, no session);
    what it holds beyond a small allowance counts in ``budget`` (--max-memory).
    """
    from .core.secure.handshake import refusal_frame
    from .securing import run_handshake

    from .transport.sockets import host_of

    host = host_of(link.peer)
    why = auth.begin(host)
    if why is not None:
        try:
            await link.send([refusal_frame(why)])
        except (FtxError, OSError):
            pass
        await link.aclose()
        log.debug("%s: turned away: %s", host, why)
        auth.turned_away += 1
        return ""
    generation = auth.code_generation
    hs = auth.handshake()
    log.debug("%s: handshake", host)
    try:
        link.established = await run_handshake(link, hs, timeout, budget)  # receipts are bound to its transcript
    except FtxError as exc:
        auth.end(host, hs, exc, generation)
        await link.aclose()
        return auth.describe(exc)
    except BaseException as exc:  # cancelled (evicted for a newcomer, or shutting down)
        auth.end(host, hs, exc, generation)
        link.close()
        raise
    why = auth.end(host, hs, None, generation)
    if why is not None:  # proved a code that another sender used first: sealed now, so say it sealed
        from .securing import within

        try:
            await within(link, link.send([refusal_frame(why)]), 1.0)
        except Exception:
            pass
        await link.aclose()
        return f"authentication failed: {why}"
    log.debug("%s: authenticated (%s)", host, auth.kind)
    return None
