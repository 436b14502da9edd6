"""Text in ftx's JSON output is valid UTF-8; a path that is not gets its exact bytes beside it.

File names are bytes.  ftx holds them as ``os.fsdecode`` strings, in which a
byte that is not UTF-8 is a lone surrogate (``b"caf\\xe9"`` is ``"caf\\udce9"``);
``json.dumps`` would write it as ``"\\udce9"``, which strict parsers reject
or mangle.  So in every ``--json`` object and ``--log-format json`` line:

- a path (the keys in ``PATH_KEYS``) is written as UTF-8 with U+FFFD for each
  byte that is not UTF-8, followed -- only then -- by ``<key>_b64``, the base64
  of its exact bytes, from which a script recovers the name;
- any other string (a message quoting such a name) gets U+FFFD alike.

``clean`` does it to a whole object; ``path_value`` to one path of a line built
by hand (cli_output's per-file lines).  ASCII text, nearly every name, costs one
``str.isascii``.
"""

from __future__ import annotations

import base64

PATH_KEYS = frozenset({"path", "dir"})  # keys whose value is a file-system path


def is_utf8(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a byte that is not UTF-8
        return False
    return True


def exact_bytes(s: str) -> bytes:
    """The bytes an ``os.fsdecode`` string stands for (``os.fsencode``, for any str)."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no byte makes: not a name from the file system
        return s.encode("utf-8", "surrogatepass")


def text(s: str) -> str:
    """``s`` as valid UTF-8: U+FFFD for each byte (surrogate) that is not."""
    return s if is_utf8(s) else exact_bytes(s).decode("utf-8", "replace")


def b64(s: str) -> str:
    return base64.b64encode(exact_bytes(s)).decode("ascii")


def path_value(key: str, s: str, esc) -> str:
    """What follows ``"key": `` in a JSON object built by hand: the string, then ``, "key_b64": ...``
    when ``s`` is not UTF-8; ``esc`` is the JSON string encoder (json.encoder.encode_basestring_ascii)."""
    if is_utf8(s):
        return esc(s)
    return f'{esc(text(s))}, "{key}_b64": "{b64(s)}"'


def clean(value):
    """``value`` (a dict, list or scalar as json.dumps takes it) with every string valid UTF-8 and
    every path in a dict followed by ``<key>_b64`` when it is not; ``value`` itself when nothing
    had to change."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        out = None
        for i, (k, v) in enumerate(value.items()):
            if k in PATH_KEYS and isinstance(v, str) and not is_utf8(v):
                new = {f"{k}_b64": b64(v)}
                v2 = text(v)
            else:
                new = None
                v2 = clean(v)
            if out is None and (new is not None or v2 is not v):
                out = dict(list(value.items())[:i])  # the keys before it, unchanged
            if out is not None:
                out[k] = v2
                if new:
                    out.update(new)
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items = [clean(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    return value


__all__ = ["PATH_KEYS", "b64", "clean", "exact_bytes", "is_utf8", "path_value", "text"]
