"""Sizes, rates and durations as people type them: one parser, one table, for every option.

Sizes (``--chunk-size``, ``--min-free``, ``--max-memory``, ...) and rates (``--max-rate``)
share the suffixes of rsync and of the SI/IEC standards:

=================  ==========================  ====================================
suffix             multiplier                  examples
=================  ==========================  ====================================
(none), B          1                           ``4096``, ``4096B``
K, M, G, T         1024, 1024**2, ...          ``500K``, ``20M`` (ftx's habit, and rsync's)
KiB, MiB, GiB, TiB 1024, 1024**2, ...          ``20MiB`` (the same, said explicitly)
KB, MB, GB, TB     1000, 1000**2, ...          ``20MB`` = 20 000 000 (SI, as disks and rsync)
=================  ==========================  ====================================

Rates also take bits, decimal as network people mean them (``kbit``, ``Mbit``,
``Gbit``, or ``kbps``/``Mbps``/``Gbps``): ``160Mbit`` = 20 000 000 bytes/s, and an
optional ``/s`` (``20M/s``, ``20MB/s``).  Suffixes are case-insensitive, except
that a lone lower-case ``b`` after a prefix (``20Mb``) is refused: it is read as
megabytes by some and megabits by others.  Values are non-negative and finite;
fractions are allowed (``1.5G``).  Every error is a ``ValueError`` whose message
lists the accepted forms.
"""

from __future__ import annotations

import re

_K = {"K": 1, "M": 2, "G": 3, "T": 4}
#: lower-cased suffix -> bytes (sizes and rates)
SIZE_SUFFIXES: dict[str, int] = {"": 1, "b": 1}
for _p, _e in _K.items():
    SIZE_SUFFIXES[_p.lower()] = 1 << (10 * _e)
    SIZE_SUFFIXES[_p.lower() + "ib"] = 1 << (10 * _e)
    SIZE_SUFFIXES[_p.lower() + "b"] = 10 ** (3 * _e)
#: lower-cased suffix -> bytes per second of one unit (rates only)
BIT_SUFFIXES: dict[str, float] = {"bit": 1 / 8, "bps": 1 / 8}
for _p, _e in _K.items():
    BIT_SUFFIXES[_p.lower() + "bit"] = 10 ** (3 * _e) / 8
    BIT_SUFFIXES[_p.lower() + "bps"] = 10 ** (3 * _e) / 8
DURATION_SUFFIXES: dict[str, float] = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0, "d": 86400.0}

SIZE_FORMS = "4096, 500K, 20M or 20MiB (x1024), 20MB (x1000), 1.5G"
RATE_FORMS = "20M or 20MiB (MiB/s), 20MB (10^6 bytes/s), 160Mbit or 1Gbit (bits/s), 500K, optionally with /s"
DURATION_FORMS = "30, 30s, 500ms, 5m, 12h or 7d"

_NUMBER = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*\Z")


def _split(text: str, forms: str, what: str) -> tuple[float, str]:
    m = _NUMBER.match(text or "")
    if m is None:
        raise ValueError(f"{text!r} is not {what}; write {forms}")
    value = float(m.group(1))
    if not 0 <= value < float("inf"):
        raise ValueError(f"{text!r} is not {what}; write {forms}")
    suffix = m.group(2)
    if len(suffix) == 2 and suffix[0].upper() in _K and suffix[1] == "b":
        raise ValueError(f"{text!r} is ambiguous: write {suffix[0]}B for bytes or {suffix[0]}bit for bits")
    return value, suffix.lower()


def parse_size(text: str) -> int:
    """``4096``, ``500K``, ``20M``/``20MiB`` (binary), ``20MB`` (decimal), ``1.5G`` -> bytes."""
    value, suffix = _split(text, SIZE_FORMS, "a size")
    if suffix not in SIZE_SUFFIXES:
        raise ValueError(f"{text!r} is not a size; write {SIZE_FORMS}")
    return int(value * SIZE_SUFFIXES[suffix])


def parse_rate(text: str) -> int:
    """A rate in bytes per second: a size (``20M`` = 20 MiB/s, ``20MB`` = 20 MB/s), or bits
    (``160Mbit``, ``1Gbps`` -- decimal), with an optional ``/s``."""
    t = text.strip()
    if t[-2:].lower() == "/s":
        t = t[:-2]
    value, suffix = _split(t, RATE_FORMS, "a rate")
    if suffix in SIZE_SUFFIXES:
        return int(value * SIZE_SUFFIXES[suffix])
    if suffix in BIT_SUFFIXES:
        return int(value * BIT_SUFFIXES[suffix])
    raise ValueError(f"{text!r} is not a rate; write {RATE_FORMS}")


def parse_duration(text: str) -> float:
    """``30``, ``30s``, ``500ms``, ``5m``, ``12h``, ``7d`` -> seconds."""
    value, suffix = _split(text, DURATION_FORMS, "a duration")
    if suffix not in DURATION_SUFFIXES:
        raise ValueError(f"{text!r} is not a duration; write {DURATION_FORMS}")
    return value * DURATION_SUFFIXES[suffix]


def human_size(value: int) -> str:
    """The shortest exact way to write ``value`` in the units parse_size reads (``256M``)."""
    for unit, mult in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= mult and value % mult == 0:
            return f"{value // mult}{unit}"
    return str(value)


def human_bytes(n: float) -> str:
    """``1.2 GiB``: for people, rounded."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


__all__ = ["parse_size", "parse_rate", "parse_duration", "human_size", "human_bytes",
           "SIZE_FORMS", "RATE_FORMS", "DURATION_FORMS"]
