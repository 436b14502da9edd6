"""Credentials on disk: identity keys, authorized senders, known receivers, pairing codes.

Everything lives in the config directory ``$XDG_CONFIG_HOME/ftx`` (default
``~/.config/ftx``, created with mode 0700):

* ``identity``: this user's Ed25519 private key, PEM PKCS8, mode 0600, created
  on first use (never overwritten); ``identity.pub`` beside it holds its
  public-key line ``ftx-ed25519 <base64 of the 32-byte raw key> <comment>``;
* ``authorized_keys``: the senders a receiver accepts, one public-key line
  each, ``#`` comments and blank lines allowed;
* ``known_hosts``: the receivers a sender has met, ``<host>:<port> SHA256:<fp>``
  per line (trust on first use, as ssh).

A fingerprint is ``SHA256:`` + unpadded base64 of SHA-256 of the raw public
key (what ssh prints); a TLS certificate's is the same over its DER bytes.

Pairing codes (``<number>-<word>-<word>``, ftx/words.py) are made with
``secrets`` and read from a terminal prompt, ``FTX_CODE`` or a file -- never
from the command line, where other local users can read the process list.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import stat

from .core.record import record
from .errors import FtxError

log = logging.getLogger("ftx")

KEY_TYPE = "ftx-ed25519"
CODE_ENV = "FTX_CODE"
MAX_CREDENTIAL_FILE = 1 << 20  # an authorized_keys/known_hosts larger than this is refused
MAX_CODE_FILE = 1024


class CredentialError(FtxError):
    """A credential file is missing, unreadable, malformed or unsafe; or no code was given."""


# -- paths ----------------------------------------------------------------------------


def config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "ftx")


def default_identity() -> str:
    return os.path.join(config_dir(), "identity")


def default_authorized_keys() -> str:
    return os.path.join(config_dir(), "authorized_keys")


def default_known_hosts() -> str:
    return os.path.join(config_dir(), "known_hosts")


# -- keys and fingerprints ------------------------------------------------------------


def fingerprint(raw: bytes) -> str:
    """``SHA256:`` + unpadded base64 of SHA-256 of ``raw`` (a 32-byte public key or a DER certificate)."""
    from .core.secure.keys import sha256  # cryptography's: no second OpenSSL (hashlib) for a send

    return "SHA256:" + base64.b64encode(sha256(raw)).decode().rstrip("=")


def normalize_fingerprint(text: str) -> str:
    """Accept ``SHA256:xxx`` or bare ``xxx`` (ssh's spelling, base64 without padding)."""
    t = text.strip()
    body = t[7:] if t[:7].upper() == "SHA256:" else t
    body = body.rstrip("=")
    if not re.fullmatch(r"[A-Za-z0-9+/]{43}", body):
        raise CredentialError(f"{text!r} is not a fingerprint such as SHA256:{'A' * 43}")
    return "SHA256:" + body


def raw_public(key) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes_raw()  # as public_bytes(Raw, Raw), without importing serialization (start-up)


#: DER of an unencrypted PKCS#8 Ed25519 private key (RFC 8410 §7) before its 32-byte seed: what
#: create_identity writes, read without cryptography's serialization package (~20 ms to import)
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")


def _ed25519_from_pem(data: bytes):
    """The Ed25519 key of a PEM file that is exactly one unencrypted PKCS#8 Ed25519 key, else None
    (then load_pem_private_key reads it, and says what is wrong with it)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    lines = data.strip().splitlines()
    if len(lines) < 3 or lines[0] != b"-----BEGIN PRIVATE KEY-----" or lines[-1] != b"-----END PRIVATE KEY-----":
        return None
    try:
        der = base64.b64decode(b"".join(lines[1:-1]), validate=True)
    except ValueError:
        return None
    if len(der) != len(_ED25519_PKCS8) + 32 or not der.startswith(_ED25519_PKCS8):
        return None
    return Ed25519PrivateKey.from_private_bytes(der[len(_ED25519_PKCS8):])


def public_line(raw: bytes, comment: str = "") -> str:
    line = f"{KEY_TYPE} {base64.b64encode(raw).decode()}"
    return f"{line} {comment}" if comment else line


def parse_public_line(line: str) -> tuple[bytes, str]:
    """(raw 32-byte key, comment) of one ``ftx-ed25519 <base64> [comment]`` line; ValueError if not one."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] != KEY_TYPE:
        raise ValueError(f"expected '{KEY_TYPE} <base64 key> [comment]'")
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ValueError("the key is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"the key is {len(raw)} bytes, not 32")
    return raw, parts[2] if len(parts) > 2 else ""


def _default_comment() -> str:
    import getpass  # only keygen and a first identity need it (it loads termios: start-up)

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "ftx"
    return f"{user}@{socket.gethostname()}"


# -- the identity ---------------------------------------------------------------------


@record(frozen=False)
class Identity:
    key: object  # Ed25519PrivateKey
    path: str
    created: bool = False

    @property
    def public(self) -> bytes:
        return raw_public(self.key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


def create_identity(path: str, comment: str | None = None) -> Identity:
    """Write a new key to ``path`` (0600) and its public-key line to ``path.pub``; never overwrite."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    if os.path.lexists(path):
        raise CredentialError(f"{path} already exists; not overwriting it")
    _make_parent(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    _write_new(path, pem, 0o600)
    line = public_line(raw_public(key), _default_comment() if comment is None else comment) + "\n"
    pub = path + ".pub"
    try:
        _write_new(pub + f".{os.getpid()}.tmp", line.encode(), 0o644)
        os.replace(pub + f".{os.getpid()}.tmp", pub)  # a stale .pub (or a link) is replaced, not followed
    except OSError as exc:
        log.warning("cannot write %s: %s", pub, exc.strerror or exc)
    return Identity(key, path, created=True)


def load_identity(path: str, create: bool = True) -> Identity:
    """The identity at ``path``; created there first if missing and ``create``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            raise CredentialError(f"no identity at {path} (create one with: ftx keygen --identity {path})") from None
        try:
            return create_identity(path)
        except CredentialError:  # another process created it meanwhile
            return load_identity(path, create=False)
        except OSError as exc:
            raise CredentialError(f"cannot create identity {path}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise CredentialError(f"cannot read identity {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(f"identity {path} is not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise CredentialError(f"identity {path} is owned by uid {st.st_uid}, who can read it whatever its "
                                  f"mode; use a key of your own (ftx keygen)")
        if st.st_mode & 0o077:
            raise CredentialError(f"identity {path} is readable by others (mode {st.st_mode & 0o777:04o}); "
                                  f"run: chmod 600 {path}")
        data = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    key = _ed25519_from_pem(data)
    if key is not None:
        return Identity(key, path)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialError(f"identity {path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CredentialError(f"identity {path} is not an Ed25519 key")
    return Identity(key, path)


def _make_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)  # only directories we create get 0700


def _write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def read_trusted(path: str, what: str) -> str | None:
    """The text of a file that grants access (authorized_keys, known_hosts), or None when it
    does not exist.  Refused (as ssh's StrictModes) when someone else could have written
    it -- the file (after symlinks) writable by group or others or owned by another user
    than us or root, or its directory writable by others without the sticky bit (they
    could put another file in its place)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(f"{what} {path} is not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise CredentialError(f"{what} {path} is owned by uid {st.st_uid}, who could add keys to it; "
                                  f"it must belong to this user or root")
        if st.st_mode & 0o022:
            raise CredentialError(f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}), "
                                  f"who could add keys to it; run: chmod go-w {path}")
        parent = os.path.dirname(os.path.realpath(path))
        try:
            dst = os.stat(parent)
        except OSError as exc:
            raise CredentialError(f"cannot check the directory of {what} {path}: {exc.strerror or exc}") from None
        if dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX:
            raise CredentialError(f"{what} {path}: its directory {parent} is writable by others "
                                  f"(mode {stat.S_IMODE(dst.st_mode):04o}), who could replace the file; "
                                  f"run: chmod go-w {parent}")
        data = f.read(MAX_CREDENTIAL_FILE + 1)
    if len(data) > MAX_CREDENTIAL_FILE:
        raise CredentialError(f"{what} {path} is larger than {MAX_CREDENTIAL_FILE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CredentialError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None


# -- the receiver's authorized senders --------------------------------------------------


class AuthorizedKeys:
    """The senders a receiver accepts; re-read when the file changes (no restart needed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple | None = None
        self.keys: dict[bytes, str] = {}
        self.reload()

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode  # (a chmod changes ctime)

    def reload(self, force: bool = False) -> None:
        """Parse the file (if it changed, or ``force``: SIGHUP); a bad line raises one error naming file:line."""
        stamp = self._stat()
        if stamp is not None and stamp == self._stamp and not force:
            return
        text = read_trusted(self.path, "authorized keys")
        keys: dict[bytes, str] = {}
        for number, line in enumerate((text or "").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                raw, comment = parse_public_line(line)
            except ValueError as exc:
                raise CredentialError(f"{self.path}:{number}: {exc}") from None
            keys[raw] = comment
        self.keys, self._stamp = keys, stamp

    def authorize(self, peer) -> str | None:
        """The ``authorize`` policy of the keys handshake: None to accept, else the refusal."""
        try:
            self.reload()
        except CredentialError as exc:
            log.warning("%s (keeping the keys read before)", exc)
        if peer.public in self.keys:
            return None
        return f"key {peer.fingerprint} is not authorized by this receiver"


# -- the sender's known receivers -----------------------------------------------------


def host_label(host: str, port: int) -> str:
    """``host:port`` as known_hosts spells it: one spelling per host, so that another way of
    writing the same address is no first contact (IPv6 canonical and in brackets, names in
    lower case without a trailing dot)."""
    host = host.strip().strip("[]")
    if ":" not in host and "%" not in host:  # an IPv4 address (ipaddress takes only the canonical
        # dotted quad, which this leaves as it is) or a name: no ipaddress import (~1 ms of a send)
        return f"{host.lower().rstrip('.')}:{port}"
    import ipaddress

    try:
        host = ipaddress.ip_address(host.split("%", 1)[0]).compressed + (
            "%" + host.split("%", 1)[1] if "%" in host else "")
    except ValueError:
        host = host.lower().rstrip(".")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class KnownHosts:
    """Trust on first use: remember a receiver's fingerprint, refuse loudly when it changes."""

    def __init__(self, path: str, host: str, port: int, expect: str | None = None) -> None:
        self.path = path
        self.label = host_label(host, port)
        self.expect = normalize_fingerprint(expect) if expect else None
        self.first_contact = False

    def check(self) -> None:
        """Raise CredentialError now (before connecting) if the file is unsafe or unreadable."""
        self.lookup()

    def lookup(self) -> tuple[str, int] | None:
        """(fingerprint, line number) stored for this host, or None.  Refused, as authorized_keys,
        when someone else could have written the file (they could plant a key for this host)."""
        text = read_trusted(self.path, "known hosts")
        for number, line in enumerate((text or "").splitlines(), 1):
            parts = line.split()
            if len(parts) >= 2 and not parts[0].startswith("#") and parts[0] == self.label:
                return parts[1], number
        return None

    def verify(self, peer) -> str | None:
        """The ``verify_server`` policy of the keys handshake: None to accept, else the refusal."""
        fp = peer.fingerprint
        if self.expect is not None:  # pinned: no trust on first use, nothing written
            if fp == self.expect:
                return None
            return f"the receiver's key is {fp}, not the expected {self.expect}"
        try:
            known = self.lookup()
        except CredentialError as exc:
            return str(exc)
        if known is not None:
            if known[0] == fp:
                return None
            return (f"THE RECEIVER'S KEY HAS CHANGED: {self.label} was {known[0]}, now presents {fp}; "
                    f"if that is expected, remove line {known[1]} of {self.path}")
        self.remember(fp)
        return None

    def remember(self, fp: str) -> None:
        try:
            _make_parent(self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, f"{self.label} {fp}\n".encode())
            finally:
                os.close(fd)
            self.first_contact = True
            log.warning("first contact with %s: its key is %s; remembered in %s", self.label, fp, self.path)
        except OSError as exc:
            log.warning("first contact with %s: its key is %s; cannot remember it in %s: %s", self.label, fp,
                        self.path, exc.strerror or exc)


# -- pairing codes ----------------------------------------------------------------------


def new_code() -> str:
    import secrets  # here: a send never makes a code (secrets imports random)

    from .words import MAX_NUMBER, WORDS

    return f"{secrets.randbelow(MAX_NUMBER) + 1}-{secrets.choice(WORDS)}-{secrets.choice(WORDS)}"


def parse_code(text: str) -> str:
    """The canonical code (``7-olive-tiger``) from what a user typed; CredentialError if it is not one."""
    from .words import INDEX, MAX_NUMBER

    parts = re.split(r"[\s-]+", text.strip().lower())
    if (len(parts) == 3 and parts[0].isdigit() and 1 <= int(parts[0]) <= MAX_NUMBER
            and parts[1] in INDEX and parts[2] in INDEX):
        return f"{int(parts[0])}-{parts[1]}-{parts[2]}"
    raise CredentialError("that is not a pairing code such as 7-olive-tiger (a number and two words)")


def looks_like_code(text: str) -> bool:
    try:
        parse_code(text)
    except CredentialError:
        return False
    return True


def read_code(prompt: bool, code_file: str | None, environ=None, isatty=None) -> str | None:
    """The sender's code: ``--code-file``, else ``FTX_CODE``, else a prompt when ``--code``; None for no code mode."""
    import sys

    environ = os.environ if environ is None else environ
    if code_file is not None:
        try:
            with open(code_file, "rb") as f:
                data = f.read(MAX_CODE_FILE)
        except OSError as exc:
            raise CredentialError(f"cannot read --code-file {code_file}: {exc.strerror or exc}") from None
        text = data.decode("utf-8", "replace").splitlines()
        return parse_code(text[0] if text else "")
    if environ.get(CODE_ENV):
        return parse_code(environ[CODE_ENV])
    if not prompt:
        return None
    if not (sys.stdin.isatty() if isatty is None else isatty):
        raise CredentialError(f"--code needs a terminal to type the code at; without one set {CODE_ENV} "
                              f"or use --code-file FILE")
    import click

    return parse_code(click.prompt("pairing code", hide_input=False, err=True))
