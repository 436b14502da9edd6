"""Per-sender areas: each authenticated sender writes into its own directory below --dir.

Like rsync modules.  The config file (ftx/config_file.py) names them::

    [areas.alice]
    key = "SHA256:..."        # or a list; the fingerprint ftx keygen / authorized_keys show
    subject = "alice"         # or: a TLS client certificate's subject (CN) or its SHA256: fingerprint
    dir = "alice"             # below --dir; made by ftx (0700) if missing
    quota = "10G"             # optional: bytes the area may hold
    max-file-size = "1G"      # optional

A sender's session gets a ``Destination`` rooted at its area's directory (opened
with ``O_NOFOLLOW`` component by component from --dir's descriptor): every path,
quick check (CHECK_DIR) and resume is resolved below it, so no sender sees or
touches another area or the root.  When areas are configured, a sender that
matches none is refused (unless ``default-area`` names one).

Quota: the bytes already in the area are counted once, when the area is first
used (a walk of at most ``WALK_CAP`` entries, on a worker thread), then kept up
to date as data is written: an offer whose missing bytes do not fit is refused
with a RESULT saying "quota", and data past the quota fails its file (the same
checks as ``--min-free``: ``Destination.check_space`` and ``account``).  Nothing
is reserved for data that has not arrived.  Every sender of one area (two
connections with the same key, or sessions from before and after a reload)
shares one ``Usage``.  Replacing a file (``--overwrite``) counts the difference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading

from .core.manifest import check_wire_path
from .core.record import record
from .errors import ErrorCode, FtxError, StorageError
from .limits import parse_size

log = logging.getLogger("ftx.receive")

WALK_CAP = 1_000_000  # entries an area's first count looks at, at most
AREA_DIR_CACHE = 8  # directory descriptors held per area in use (the root's own: helddirs.DIR_CACHE)
AREA_KEYS = ("key", "subject", "dir", "quota", "max-file-size")


class AreaError(ValueError):
    """A bad ``areas`` table: ``key`` is the dotted key it is about (``areas.alice.quota``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@record
class AreaSpec:
    name: str
    keys: frozenset  # SHA256: fingerprints of Ed25519 identities
    subjects: frozenset  # TLS: certificate subject names (CN) or SHA256: fingerprints
    dir: bytes  # below --dir
    quota: int | None = None
    max_file_size: int | None = None


@record
class AreaTable:
    areas: tuple
    default: str | None = None

    def match(self, peer) -> AreaSpec | None:
        """The area of an authenticated peer (``PeerIdentity``), else the default area, else None."""
        kind, fp, name = getattr(peer, "kind", ""), getattr(peer, "fingerprint", ""), getattr(peer, "name", "")
        for area in self.areas:
            if kind == "key" and fp and fp in area.keys:
                return area
            if kind == "tls" and ((fp and fp in area.subjects) or (name and name in area.subjects)):
                return area
        if self.default is not None:
            return next(a for a in self.areas if a.name == self.default)
        return None


def parse_areas(table, default) -> AreaTable:
    """``[areas.NAME]`` tables and ``default-area`` from the config file.  Raises AreaError."""
    if not isinstance(table, dict):
        raise AreaError("areas", "must be a table of [areas.NAME] tables")
    areas = []
    for name, spec in table.items():
        where = f"areas.{name}"
        if not isinstance(spec, dict):
            raise AreaError(where, "must be a table (key, dir, quota, max-file-size)")
        for k in spec:
            if k not in AREA_KEYS:
                raise AreaError(f"{where}.{k}", f"unknown key (an area has {', '.join(AREA_KEYS)})")
        keys, subjects = _strings(spec, "key", where), _strings(spec, "subject", where)
        if not keys and not subjects:
            raise AreaError(where, "needs a key (a SHA256: fingerprint) or a subject (TLS) naming its sender")
        for fp in keys:
            if not fp.startswith("SHA256:"):
                raise AreaError(f"{where}.key", f"{fp!r} is not a key fingerprint (SHA256:..., as ftx keygen shows)")
        d = spec.get("dir", name)
        if not isinstance(d, str) or not d:
            raise AreaError(f"{where}.dir", "must be a directory name below --dir")
        rel = os.fsencode(d.strip("/")) if not d.startswith("/") else b""
        try:
            if not rel:
                raise ValueError("must be relative to --dir (no leading /)")
            if b".." in rel.split(b"/"):
                raise ValueError("must stay below --dir (no ..)")
            check_wire_path(rel)
        except (ValueError, FtxError) as exc:
            raise AreaError(f"{where}.dir", f"{d!r}: {exc}") from None
        if rel.split(b"/")[0] == b".ftx":
            raise AreaError(f"{where}.dir", ".ftx is the receiver's own state directory")
        areas.append(AreaSpec(name, frozenset(keys), frozenset(subjects), rel,
                              _size(spec, "quota", where), _size(spec, "max-file-size", where)))
    for a in areas:  # an area inside another would let the outer one's sender see it
        for b in areas:
            if a is not b and (b.dir == a.dir or b.dir.startswith(a.dir + b"/")):
                raise AreaError(f"areas.{b.name}.dir", f"{os.fsdecode(b.dir)!r} is inside area {a.name!r}'s "
                                                        f"directory: areas must not overlap")
    owner: dict[str, str] = {}
    for a in areas:  # one sender, one area
        for who in sorted(a.keys | a.subjects):
            if who in owner:
                raise AreaError(f"areas.{a.name}", f"{who!r} is also the sender of area {owner[who]!r}: "
                                                    f"a sender has one area")
            owner[who] = a.name
    if default is not None and not any(a.name == default for a in areas):
        raise AreaError("default-area", f"no area is named {default!r}")
    return AreaTable(tuple(areas), default)


def _strings(spec: dict, key: str, where: str) -> list[str]:
    value = spec.get(key, [])
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AreaError(f"{where}.{key}", "must be a string or a list of strings")
    return value


def _size(spec: dict, key: str, where: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("is not a size such as 10G or 1048576")
        n = parse_size(value) if isinstance(value, str) else value
        if n < 0:
            raise ValueError("must not be negative")
    except ValueError as exc:
        raise AreaError(f"{where}.{key}", str(exc)) from None
    return n


# -- accounting -----------------------------------------------------------------------


class Usage:
    """Bytes one area directory holds: counted once, then kept up to date (shared, thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.used = 0
        self.credits: dict[bytes, int] = {}  # path -> bytes of the file a transfer in flight replaces
        self.credit = 0  # their sum
        self.counted = False
        self.capped = False

    def count(self, dir_fd: int) -> None:
        """Count the area's bytes (once): regular files' sizes, partial data (in .ftx) by blocks."""
        with self.lock:
            if self.counted:
                return
            total, seen = 0, 0
            for top, _dirs, files, fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
                in_state = top == "./.ftx" or top.startswith("./.ftx/")
                for name in files:
                    seen += 1
                    if seen > WALK_CAP:
                        break
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        total += min(st.st_size, st.st_blocks * 512) if in_state else st.st_size
                if seen > WALK_CAP:
                    self.capped = True
                    log.warning("area count stopped after %d entries: its quota counts %d bytes at least",
                                seen, total)
                    break
            self.used = total  # (nothing was tracked before: take/give wait for the count, under the lock)
            self.counted = True


class Quota:
    """What one area's Destination enforces: its spec's quota and max-file-size over a shared Usage."""

    def __init__(self, spec: AreaSpec, usage: Usage) -> None:
        self.spec, self.usage = spec, usage

    def check(self, needed: int, size: int | None = None) -> None:
        """At an offer: refuse a file over max-file-size, or whose ``needed`` bytes do not fit."""
        spec = self.spec
        if size is not None and spec.max_file_size is not None and size > spec.max_file_size:
            raise StorageError(f"{size} bytes: larger than the max-file-size of area {spec.name!r} "
                               f"({spec.max_file_size} bytes)", ErrorCode.STORAGE)
        if spec.quota is not None and needed > 0:
            left = spec.quota - self.usage.used
            if needed > left:
                raise StorageError(f"area {spec.name!r} is over its quota: {needed} bytes needed, "
                                   f"{max(left, 0)} left of {spec.quota}", ErrorCode.STORAGE)

    def take(self, nbytes: int) -> None:
        """Before writing ``nbytes``: count them, or fail the file if they would pass the quota (plus
        the files that replacements in flight will free)."""
        spec = self.spec
        with self.usage.lock:
            if not self.usage.counted:  # no quota yet (max-file-size only): the first count will see it
                return
            if spec.quota is not None and nbytes > 0 and self.usage.used + nbytes > spec.quota + self.usage.credit:
                raise StorageError(f"area {spec.name!r} reached its quota of {spec.quota} bytes",
                                   ErrorCode.STORAGE)
            self.usage.used = max(0, self.usage.used + nbytes)

    def credit(self, path: bytes, nbytes: int) -> None:
        """``path`` is being replaced by a file in flight: its ``nbytes`` leave at the rename (0: no more)."""
        with self.usage.lock:
            self.usage.credit += nbytes - self.usage.credits.pop(path, 0)
            if nbytes:
                self.usage.credits[path] = nbytes

    def give(self, nbytes: int) -> None:
        """``nbytes`` left the area (negative: a take of a smaller replacement is undone)."""
        if nbytes:
            with self.usage.lock:
                if self.usage.counted:
                    self.usage.used = max(0, self.usage.used - nbytes)


# -- choosing a sender's destination --------------------------------------------------


class Areas:
    """Picks each authenticated session's Destination: the root, or its area's.

    ``table()`` gives the areas now in force (None: no areas, everyone writes into
    the root); it is read per session, so a reload applies to new sessions while
    running ones keep the Destination (and quota) they started with.
    """

    def __init__(self, root, table, on_refused=None) -> None:
        self.root = root
        self.table = table
        self.on_refused = on_refused  # (link, reason): log and publish the refusal
        self._dests: dict[AreaSpec, object] = {}
        self._usage: dict[bytes, Usage] = {}
        self._lock = asyncio.Lock()
        self._expiry: asyncio.Task | None = None

    async def __call__(self, link):
        """The Destination for this link's sender, or None when it was refused (it was told why)."""
        table = self.table()
        if table is None:
            return self.root
        peer = getattr(getattr(link, "established", None), "peer", None)
        spec = table.match(peer) if peer is not None else None
        if spec is None:
            who = f"{peer.kind} {peer.fingerprint}" if peer is not None and peer.fingerprint else "this sender"
            reason = f"the receiver has no area for {who}"
            await refuse(link, reason)
            if self.on_refused is not None:
                self.on_refused(link, reason)
            return None
        dest = self._dests.get(spec)
        if dest is not None:
            return dest
        async with self._lock:  # one first count per area, however many senders arrive at once
            dest = self._dests.get(spec)
            if dest is None:
                try:
                    dest = await asyncio.to_thread(self._open, spec)
                except (OSError, FtxError) as exc:
                    reason = f"the receiver cannot use area {spec.name!r} (its log says why)"
                    log.warning("area %s: %s", spec.name, getattr(exc, "strerror", None) or exc)  # local paths stay here
                    await refuse(link, reason)
                    if self.on_refused is not None:
                        self.on_refused(link, reason)
                    return None
                live = set(table.areas)  # those of an older table are dropped: their sessions keep theirs
                self._dests = {s: d for s, d in self._dests.items() if s in live}
                self._dests[spec] = dest
                if self._expiry is None:
                    self._expiry = asyncio.get_running_loop().create_task(self._expire())
        log.debug("%s: area %s (%s)", getattr(link, "peer", "?"), spec.name, os.fsdecode(dest.root))
        return dest

    async def _expire(self) -> None:
        """Remove stale partials in the areas in use, as the root's expiry does in --dir/.ftx."""
        from .expiry import interval_for

        ttl = self.root.limits.partial_ttl
        while True:
            await asyncio.sleep(interval_for(ttl))
            for dest in list(self._dests.values()):
                try:
                    removed = await asyncio.to_thread(dest.expire_partials, ttl)
                    if dest.quota is not None:  # their bytes leave the area's quota (counted by take or count)
                        dest.quota.give(sum(size for _path, size, _age in removed))
                except Exception as exc:  # a vanished area must not stop the receiver
                    log.warning("could not expire stale partial files in %s: %s", os.fsdecode(dest.root), exc)

    def _open(self, spec: AreaSpec):
        """A Destination rooted at the area's directory, made (0700) if missing, never through a symlink."""
        from .helddirs import open_dir_at
        from .storage import Destination

        root = self.root
        fd = os.dup(root.root_fd)
        try:
            for name in spec.dir.split(b"/"):
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                sub = open_dir_at(fd, name, root.root + b"/" + spec.dir)
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        dest = Destination(root.root + b"/" + spec.dir, root.overwrite, root.limits, root_fd=fd)
        dest.descriptors, dest.pending = root.descriptors, root.pending  # one budget for all areas
        dest.dirs.limit = AREA_DIR_CACHE
        try:
            dest.expire_partials(root.limits.partial_ttl)  # the root's hourly expiry sees --dir/.ftx only
        except (OSError, FtxError) as exc:
            log.warning("area %s: old partial files not expired: %s", spec.name, exc)
        usage = self._usage.setdefault(spec.dir, Usage())
        if spec.quota is not None or spec.max_file_size is not None:
            usage.count(fd)
            dest.quota = Quota(spec, usage)
        return dest


async def refuse(link, reason: str) -> None:
    """Tell an authenticated sender why it is turned away (an ERROR frame), and close."""
    from .core.frames import FrameType, encode_frame
    from .core.messages import ErrorMessage

    try:
        await asyncio.wait_for(link.send([encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.AUTH, reason).encode())]),
                               1.0)
    except Exception:
        pass
    try:
        await link.aclose()
    except Exception:
        pass


def chooser(root, service=None, admission=None, settings=None) -> Areas:
    """The receiver's ``Areas``: the areas of ``settings`` (a loaded config file, ftx/config_file.py;
    a reload replaces them there), if any; each refusal logged as the connection limits' are
    (``admission.on_refused``) and published as a session."""
    auth = getattr(service, "auth", None)
    if settings is not None and settings.areas is not None and auth is not None \
            and (auth.insecure or getattr(auth, "code_mode", False) or auth.kind not in ("key", "tls")):
        from .security_setup import SetupError

        raise SetupError(f"{settings.path}: areas need senders that prove who they are: keys (authorized-keys) "
                         f"or TLS client certificates, not {'--insecure' if auth.insecure else auth.kind}")

    def table():
        return settings.areas if settings is not None else None

    def on_refused(link, reason: str) -> None:
        from .transport.sockets import host_of, peer_label

        peer = getattr(link, "peer", None)
        host, label = host_of(peer), peer_label(peer)
        if admission is not None and admission.on_refused is not None:
            admission.on_refused(host, reason)
        if service is not None:
            service.publish({"event": "session", "peer": label, "transport": getattr(link, "transport", ""),
                             "complete": False, "ok": False, "files": 0, "error": reason,
                             "auth": getattr(auth, "kind", "")})

    return Areas(root, table, on_refused)


__all__ = ["AreaError", "AreaSpec", "AreaTable", "Areas", "Quota", "Usage", "chooser", "parse_areas", "refuse"]
