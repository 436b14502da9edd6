"""The sender's transfer identity: created once per user, stable, never fatal."""

from __future__ import annotations

import os
import stat

from ftx.identity import sender_id


def test_created_once_with_mode_0600_and_stable(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    first = sender_id()
    path = tmp_path / "ftx" / "sender-id"
    assert len(first) == 16 and path.read_text().strip() == first.hex()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sender_id() == first
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "other-user"))
    assert sender_id() != first


def test_a_broken_state_dir_gives_a_fresh_id_per_run(tmp_path, monkeypatch):
    (tmp_path / "ftx").mkdir()
    (tmp_path / "ftx" / "sender-id").write_text("not hex\n")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    a, b = sender_id(), sender_id()
    assert len(a) == len(b) == 16 and a != b
    assert (tmp_path / "ftx" / "sender-id").read_text() == "not hex\n"  # not ours to replace
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked))  # a file where the directory should be
    assert len(sender_id()) == 16
    assert not os.path.isdir(blocked)
