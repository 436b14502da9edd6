"""``ftx receive --config FILE``: the receiver's options from a TOML file (stdlib ``tomllib``).

Keys are the long options without their dashes (``dir``, ``listen``, ``port``,
``max-connections``, ``min-free``, ...; ``udp = false`` is ``no-udp = true``);
sizes and durations take the options' strings ("256M", "10m") or integers.
``[areas.NAME]`` tables and ``default-area`` give per-sender areas (ftx/areas.py).
Options given on the command line win: the file only sets the command's
``default_map``, from an eager ``--config`` callback (also ``FTX_CONFIG``).

The file grants access, so it is refused (as authorized_keys is) when someone else
could have written it: owned by another user than us or root, or writable by group
or others.  A file never holds a secret: a pairing code, a password or a PEM key is refused
(files name paths to keys: ``identity``, ``tls-key``).  Every mistake is one line,
``ftx: FILE: key 'x': ...``, and exit 2.  SIGHUP re-reads the file
(``Settings.reload``): areas and their quotas change for new sessions, the
authorized keys are read again; options that need a restart say so; a file
that no longer loads keeps what was read before.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click

from .core.record import field, record
from .limits import Limits, parse_duration, parse_size

if TYPE_CHECKING:
    from .areas import AreaTable

log = logging.getLogger("ftx.receive")

#: options that make no sense in a file: interactive, one-off, or the file itself
NOT_IN_FILES = {"config": "the config file cannot name another", "help": "not an option to keep in a file",
                "once": "a one-off run: give it on the command line", "yes": "give it on the command line"}
#: words of a key that would hold a secret (files hold paths to secrets: identity, tls-key)
SECRET_WORDS = ("password", "passphrase", "secret", "token", "private")
EXIT_USAGE = 2


class ConfigError(ValueError):
    def __init__(self, path: str, key: str | None, message: str) -> None:
        super().__init__(f"{path}: key {key!r}: {message}" if key else f"{path}: {message}")


@record(frozen=False)
class Settings:
    """One read of the file: the options (by parameter name, for ``default_map``), its raw keys, its areas."""

    path: str
    options: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    areas: AreaTable | None = None
    params: list | None = field(default_factory=list, repr=False)  # None: areas only (read())
    auth: object = None  # the receiver's authentication (its authorized keys are re-read on reload)

    def reload(self) -> bool:
        """SIGHUP: read the file again; apply its areas (new sessions get them) and say which other
        changes need a restart.  A file that does not load changes nothing (one line).  True if applied."""
        try:
            new = read(self.path, self.params)
        except ConfigError as exc:
            log.warning("reload of %s failed, keeping the settings read before: %s", self.path,
                        str(exc).removeprefix(self.path + ": "))
            return False
        for key in sorted(set(self.raw) | set(new.raw)) if self.params is not None else ():
            if key not in ("areas", "default-area") and self.raw.get(key) != new.raw.get(key):
                log.warning("%s: %s: needs a restart (the running receiver keeps %r)", self.path, key,
                            self.raw.get(key))
        self.areas = new.areas
        log.warning("reloaded %s: %d areas", self.path, len(self.areas.areas) if self.areas else 0)
        return True


def read(path: str, params=None) -> Settings:
    """Read and check FILE against the command's ``params`` (click Parameters).  Raises ConfigError.

    ``params`` None (a library receiver, ``ftx.Receiver(config=...)``): only ``[areas]`` and
    ``default-area`` are read; the other keys (``ftx receive``'s options, the same file may serve
    both) are left in ``raw``, unchecked: the program gives them as arguments."""
    import tomllib  # here, not at the top: --help and TAB completion never read a file

    from .areas import AreaError, parse_areas
    from .credentials import CredentialError, read_trusted

    try:  # it grants access (areas, keys, --insecure): refused if someone else could have written it
        text = read_trusted(path, "config file")
    except CredentialError as exc:
        raise ConfigError(path, None, str(exc).replace(f"config file {path} ", "", 1)) from None
    if text is None:
        raise ConfigError(path, None, "cannot read it: no such file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not TOML: {exc}") from None
    by_key = {}
    for p in params or ():
        for opt in getattr(p, "opts", []):
            if opt.startswith("--"):
                by_key[opt[2:]] = p
    settings = Settings(path, raw=dict(data), params=None if params is None else list(params))
    areas, default = data.get("areas"), data.get("default-area")
    if default is not None and not isinstance(default, str):
        raise ConfigError(path, "default-area", "must be the name of an area")
    if areas is not None or default is not None:
        try:
            settings.areas = parse_areas(areas or {}, default)
        except AreaError as exc:
            raise ConfigError(path, exc.key, str(exc)) from None
    for key, value in data.items():
        if key in ("areas", "default-area") or params is None:
            continue
        name, value = _option(path, key, value, by_key)
        settings.options[name] = value
    return settings


def _option(path: str, key: str, value, by_key: dict):
    """(parameter name, value for default_map) of one key; raises ConfigError."""
    def bad(message: str):
        return ConfigError(path, key, message)

    if key == "code" or any(word in key.lower() for word in SECRET_WORDS):
        raise bad("looks like a secret: a config file holds no secrets (no pairing codes either); "
                  "name a file instead (identity, tls-key, authorized-keys)")
    if isinstance(value, str) and ("-----BEGIN" in value or _looks_like_code(value)):
        raise bad("looks like a secret: a config file holds no secrets, only the path of a file that does")
    if key in NOT_IN_FILES:
        raise bad(NOT_IN_FILES[key])
    if key == "udp":  # the option is --no-udp
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return "no_udp", not value
    param = by_key.get(key)
    if param is None:
        import difflib

        near = difflib.get_close_matches(key, list(by_key) + ["areas", "default-area", "udp"], 1)
        raise bad("unknown key (not an option of ftx receive)" + (f"; did you mean {near[0]!r}?" if near else ""))
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return param.name, value
    kind = _limit_kind(param.name)
    if kind in ("size", "duration"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad(f"must be a {kind} such as {'256M' if kind == 'size' else '10m'}, or a number")
        if not isinstance(value, str) and value <= 0 and (kind == "duration" or value < 0):
            raise bad("must be positive" if kind == "duration" else "must not be negative")
        text = str(value)
        try:
            number = parse_size(text) if kind == "size" else parse_duration(text)
        except ValueError as exc:
            raise bad(str(exc)) from None
        if kind == "duration" and number <= 0:
            raise bad("must be a positive time, such as 30s")
        if number < Limits.least(param.name):
            raise bad(f"must be at least {Limits.least(param.name):g}")
        return param.name, text
    if isinstance(param.type, (click.types.IntParamType,)) or getattr(param, "count", False):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("must be an integer")
    elif isinstance(param.type, click.types.FloatParamType):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("must be a number")
        if not 0 < value < float("inf"):
            raise bad("must be a positive number of seconds")
    elif not isinstance(value, str):
        raise bad("must be a string" + (" (a path)" if isinstance(param.type, click.Path) else ""))
    try:
        param.type.convert(value, param, None)
    except click.BadParameter as exc:
        raise bad(exc.format_message()) from None
    return param.name, value


def _limit_kind(name: str) -> str | None:
    return next((kind for n, kind, _d, _h in Limits.options() if n == name), None)


def _looks_like_code(text: str) -> bool:
    from .credentials import looks_like_code

    return looks_like_code(text)


def _on_config(ctx: click.Context, param, value):
    """Eager: read FILE before the other options, so that they take their defaults from it."""
    if value is None:
        return None
    try:
        settings = read(value, ctx.command.params)
    except ConfigError as exc:
        from .terminal import say

        say(str(exc))
        sys.exit(EXIT_USAGE)
    ctx.default_map = {**(ctx.default_map or {}), **settings.options}
    ctx.meta["ftx.config"] = settings  # what loaded(ctx) gives the command
    return value


def loaded(ctx: click.Context | None = None) -> Settings | None:
    """The settings ``--config`` read for this command (None: no config file)."""
    ctx = ctx or click.get_current_context(silent=True)
    return ctx.meta.get("ftx.config") if ctx is not None else None


def option():
    """The ``--config FILE`` option of ``ftx receive`` (also ``FTX_CONFIG``)."""
    return click.option("--config", type=click.Path(dir_okay=False), envvar="FTX_CONFIG", is_eager=True,
                        expose_value=False, callback=_on_config, metavar="FILE",
                        help="Read options (and per-sender [areas]) from this TOML file; keys are the long "
                             "options (dir, listen, max-connections, ...); the command line wins. "
                             "Also $FTX_CONFIG. SIGHUP re-reads it.")


__all__ = ["ConfigError", "Settings", "loaded", "option", "read"]
