"""The handshake vectors in protocol.md (section 18.5) are what the code produces."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .handshake_vectors import RECEIVER_KEY, SENDER_KEY, vectors

SPEC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()
SECTION = SPEC[SPEC.index("### 18.5 Test vectors") : SPEC.index("### 18.6")]
VECTORS = vectors()
DUMPS = [k for k in VECTORS if k.startswith("**")]
VALUES = [k for k in VECTORS if not k.startswith("**")]
LABELS = {  # value -> the start of its line in the mode's part of section 18.5
    "keys x25519 shared": "X25519 shared secret (IKM)",
    "keys c hs traffic": "`c_hs`",
    "keys s hs traffic": "`s_hs`",
    "keys c ap traffic": "`c_ap`",
    "keys s ap traffic": "`s_ap`",
    "keys c ap key": "AES-256-GCM key of `c_ap`",
    "keys c ap iv": "its IV",
    "keys transcript": "transcript hash",
    "code spake2 key": "SPAKE2 key (IKM)",
    "code c hs traffic": "`c_hs`",
    "code s hs traffic": "`s_hs`",
    "code c ap traffic": "`c_ap`",
    "code s ap traffic": "`s_ap`",
    "code transcript": "transcript hash",
}


def _dump_after(marker: str) -> bytes:
    at = SECTION.index(marker)
    block = re.search(r"```\n(.*?)```", SECTION[at:], re.S).group(1)
    out = b""
    for line in block.splitlines():
        m = re.match(r"([0-9a-f]{4})  ((?:[0-9a-f]{2} ?)+)", line)
        assert m and int(m.group(1), 16) == len(out), line
        out += bytes.fromhex(m.group(2))
    return out


@pytest.mark.parametrize("marker", DUMPS)
def test_message_dumps_match_the_code(marker):
    assert _dump_after(marker) == VECTORS[marker]


@pytest.mark.parametrize("name", VALUES)
def test_values_match_the_code(name):
    mode = name.split()[0]
    part = SECTION[SECTION.index(f"**{mode.capitalize()} mode.**") :]
    line = next(ln for ln in part.splitlines() if ln.startswith(f"- {LABELS[name]}"))
    assert f"`{VECTORS[name].hex()}`" in line, name


def test_every_value_is_checked():
    assert set(VALUES) == set(LABELS)


def test_identities_and_fingerprints_in_the_text():
    from ftx.core.secure.sigma import fingerprint, raw_public

    for key in (SENDER_KEY, RECEIVER_KEY):
        assert fingerprint(raw_public(key)) in SECTION
        assert raw_public(key).hex()[:8] in SECTION
