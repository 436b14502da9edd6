"""``ftx receive --config FILE`` and per-sender areas (issue #14): real receivers, real senders, real files.

The config file's keys are the long options; the command line wins.  An area
roots an authenticated sender's writes (and quick checks, and resumes) in its
own directory, with an optional quota and maximum file size.  SIGHUP re-reads
the file: areas and quotas change for new sessions, a bad file keeps the old.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ftx import credentials as cr
from ftx.metrics import refusal_reason

from .helpers import FTX, LineReader, run_send, wait_for, with_env, write_random

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent


def _identity(tmp_path: Path, name: str):
    """A sender's environment with its own identity; its public-key line and fingerprint."""
    home = tmp_path / name
    ident = cr.load_identity(str(home / "ftx" / "identity"))
    env = {"XDG_CONFIG_HOME": str(home), "XDG_STATE_HOME": str(tmp_path / f"{name}-state")}
    return env, cr.public_line(ident.public, name), ident.fingerprint


def _start(config: Path, *args: str, env: dict | None = None):
    proc = subprocess.Popen(FTX + ["receive", "--config", str(config), "--json", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=with_env(env))
    lines = LineReader(proc.stdout)
    first = lines.next_json()
    assert first["event"] == "listening", first
    return proc, lines, first


def _stop(proc) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return err


def _run_receive(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(FTX + ["receive", *args], capture_output=True, text=True, timeout=30, env=with_env(env))


# -- the file --------------------------------------------------------------------------


def test_options_come_from_the_file_and_the_command_line_wins(tmp_path):
    write_random(tmp_path / "f.bin", 30_000)
    config = tmp_path / "receive.toml"
    config.write_text(f'dir = "{tmp_path / "from-file"}"\nmkdir = true\nlisten = "127.0.0.1"\nport = 0\n'
                      'no-udp = true\nmin-free = "1000T"\nmax-connections = 4\n')
    proc, _, first = _start(config)
    try:
        assert first["dir"] == str(tmp_path / "from-file") and first["host"] == "127.0.0.1"
        assert first["transport"] == ["tcp"]  # no-udp from the file
        rc, report, err = run_send(str(tmp_path / "f.bin"), f"127.0.0.1:{first['port']}")
        assert rc == 1 and "--min-free" in report["files"][0]["message"], (rc, report, err)  # the file's limit
    finally:
        _stop(proc)
    proc, _, first = _start(config, "--min-free", "1M", "--dir", str(tmp_path / "cli"), "--mkdir")
    try:
        assert first["dir"] == str(tmp_path / "cli")
        rc, _, err = run_send(str(tmp_path / "f.bin"), f"127.0.0.1:{first['port']}")
        assert rc == 0, err
        assert (tmp_path / "cli" / "f.bin").stat().st_size == 30_000
    finally:
        _stop(proc)


def test_the_config_file_can_come_from_ftx_config(tmp_path):
    config = tmp_path / "receive.toml"
    config.write_text(f'dir = "{tmp_path}"\nlisten = "127.0.0.1"\nport = 0\nmax-per-host = "x"\n')
    r = _run_receive(env={"FTX_CONFIG": str(config)})
    assert r.returncode == 2 and f"ftx: {config}: key 'max-per-host':" in r.stderr, r.stderr


@pytest.mark.parametrize("text, key, words", [
    ('dri = "/tmp"\n', "dri", "unknown key"),
    ('port = "7431"\n', "port", "an integer"),
    ('overwrite = "yes"\n', "overwrite", "true or false"),
    ('min-free = "lots"\n', "min-free", "size"),
    ('stall-timeout = -5\n', "stall-timeout", "positive"),
    ('code = "7-apple-banana"\n', "code", "secret"),
    ('password = "hunter2"\n', "password", "secret"),
    ('tls-key = "-----BEGIN PRIVATE KEY-----"\n', "tls-key", "path"),
    ('[areas.a]\ndir = "a"\n', "areas.a", "key"),
    ('[areas.a]\nkey = "SHA256:x"\ndir = "../up"\n', "areas.a.dir", ".."),
    ('[areas.a]\nkey = "SHA256:x"\ndir = "a"\nquota = "lots"\n', "areas.a.quota", "size"),
    ('[areas.a]\nkey = "SHA256:x"\ndir = "a"\n[areas.b]\nkey = "SHA256:y"\ndir = "a/b"\n', "areas.b.dir", "inside"),
    ('default-area = "nobody"\n', "default-area", "no area"),
    ('[areas.a]\nkey = "SHA256:x"\ndir = "a"\n[areas.b]\nkey = ["SHA256:y", "SHA256:x"]\ndir = "b"\n', "areas.b",
     "one area"),
    ('[areas.a]\nkey = "SHA256:x"\ndir = "."\n', "areas.a.dir", "'.'"),
])
def test_a_bad_key_is_one_line_and_exit_2(tmp_path, text, key, words):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    r = _run_receive("--config", str(config), "--dir", str(tmp_path), "--listen", "127.0.0.1", "--port", "0")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ftx: {config}: key '{key}': "), r.stderr
    assert words in lines[0], r.stderr


def test_a_file_that_is_not_toml_or_missing_is_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("port = \n")
    for path in (config, tmp_path / "missing.toml"):
        r = _run_receive("--config", str(path), "--dir", str(tmp_path))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"ftx: {path}: "), r.stderr


def test_a_config_file_others_can_write_is_refused(tmp_path):
    config = tmp_path / "receive.toml"
    config.write_text('insecure = true\n')
    config.chmod(0o666)
    r = _run_receive("--config", str(config), "--dir", str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"ftx: {config}: ") and "writable by others" in r.stderr, r.stderr


def test_the_shipped_example_loads_as_shipped():
    import click

    from ftx.cli import receive
    from ftx.config_file import read

    example = ROOT / "contrib" / "ftx-receive.toml"
    settings = read(str(example), receive.params)
    assert settings.options["directory"] == "/srv/ftx" and settings.options["max_connections"] >= 1
    assert settings.areas is not None and len(settings.areas.areas) >= 2
    assert all(a.dir for a in settings.areas.areas)
    assert "--config /etc/ftx/receive.toml" in (ROOT / "contrib" / "ftx-receive.service").read_text()
    assert isinstance(receive, click.Command)


# -- areas ------------------------------------------------------------------------------


def _areas_setup(tmp_path: Path, extra: str = ""):
    ids = {name: _identity(tmp_path, name) for name in ("alice", "bob", "carol")}
    keys = tmp_path / "authorized_keys"
    keys.write_text("".join(line + "\n" for _, line, _ in ids.values()))
    config = tmp_path / "receive.toml"
    text = (f'dir = "{tmp_path / "dst"}"\nmkdir = true\nlisten = "127.0.0.1"\nport = 0\n'
            f'authorized-keys = "{keys}"\n'
            f'[areas.alice]\nkey = "{ids["alice"][2]}"\ndir = "alice"\n'
            f'[areas.bob]\nkey = "{ids["bob"][2]}"\ndir = "people/bob"\nquota = "100K"\nmax-file-size = "50K"\n'
            + extra)
    config.write_text(text)
    return ids, config


def test_each_sender_writes_only_into_its_area_and_others_are_refused(tmp_path):
    ids, config = _areas_setup(tmp_path)
    data = write_random(tmp_path / "src" / "same.bin", 40_000)
    write_random(tmp_path / "src" / "big.bin", 3 << 20, seed=2)
    proc, lines, first = _start(config)
    dest = f"127.0.0.1:{first['port']}"
    dst = tmp_path / "dst"
    try:
        for name in ("alice", "bob"):
            rc, report, err = run_send(str(tmp_path / "src" / "same.bin"), dest, env=ids[name][0])
            assert rc == 0, err
            assert report["files"][0]["status"] == "ok"  # bob's quick check does not see alice's copy
        assert (dst / "alice" / "same.bin").read_bytes() == data
        assert (dst / "people" / "bob" / "same.bin").read_bytes() == data
        assert not (dst / "same.bin").exists()
        assert oct((dst / "alice").stat().st_mode & 0o777) == "0o700"
        rc, _, err = run_send(str(tmp_path / "src" / "big.bin"), dest, env=ids["alice"][0])  # chunked, in alice/
        assert rc == 0, err
        assert (dst / "alice" / "big.bin").stat().st_size == 3 << 20
        rc, _, err = run_send(str(tmp_path / "src" / "big.bin"), dest, "--udp", env=ids["bob"][0])
        assert rc == 1 and "max-file-size" in err, err  # over UDP too, bob's area and its limits
        # carol is authorized but has no area: refused with a reason, nothing written
        rc, _, err = run_send(str(tmp_path / "src" / "same.bin"), dest, env=ids["carol"][0])
        assert rc != 0 and "no area" in err, err
        ev = wait_for(lambda: _event(lines, "session", lambda e: "no area" in (e.get("error") or "")), what="carol's session line")
        assert ev["ok"] is False and "no area" in ev["error"]
        assert sorted(p.name for p in dst.iterdir()) == ["alice", "people"]
    finally:
        err = _stop(proc)
    assert "no area" in err


def test_quota_and_max_file_size_refuse_offers_and_count_overwrites(tmp_path):
    ids, config = _areas_setup(tmp_path, "")
    config.write_text(config.read_text().replace("port = 0\n", "port = 0\noverwrite = true\n"))
    env = ids["bob"][0]
    src = tmp_path / "src"
    write_random(src / "a.bin", 40_000, seed=1)
    write_random(src / "b.bin", 40_000, seed=2)
    write_random(src / "c.bin", 40_000, seed=3)
    write_random(src / "huge.bin", 60_000, seed=4)
    proc, lines, first = _start(config)
    dest = f"127.0.0.1:{first['port']}"
    bob = tmp_path / "dst" / "people" / "bob"
    try:
        rc, report, _ = run_send(str(src / "huge.bin"), dest, env=env)
        message = report["files"][0]["message"]
        assert rc == 1 and "max-file-size" in message and refusal_reason(message) == "max_file_size", report
        for name in ("a.bin", "b.bin"):
            rc, _, err = run_send(str(src / name), dest, env=env)
            assert rc == 0, err
        rc, report, _ = run_send(str(src / "c.bin"), dest, env=env)  # 120K > 100K
        message = report["files"][0]["message"]
        assert rc == 1 and "quota" in message and refusal_reason(message) == "quota", report
        assert not (bob / "c.bin").exists()
        # replacing a.bin with as many other bytes costs nothing more
        write_random(src / "a.bin", 40_000, seed=5)
        rc, _, err = run_send(str(src / "a.bin"), dest, env=env)
        assert rc == 0, err
        assert (bob / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
        # a restarted receiver counts what is in the area already
    finally:
        _stop(proc)
    proc, lines, first = _start(config)
    try:
        rc, report, _ = run_send(str(src / "c.bin"), f"127.0.0.1:{first['port']}", env=env)
        assert rc == 1 and "quota" in report["files"][0]["message"], report
    finally:
        _stop(proc)


def test_data_past_the_quota_fails_the_file_and_nothing_lands(tmp_path):
    """Two offers that each fit, written together: the one whose data crosses the quota fails."""
    from ftx.areas import AreaSpec, Quota, Usage
    from ftx.core.manifest import FileEntry, Kind
    from ftx.errors import StorageError
    from ftx.storage import Destination, PartialFile

    root = tmp_path / "area"
    root.mkdir()
    dest = Destination(str(root))
    try:
        usage = Usage()
        usage.count(dest.root_fd)
        dest.quota = Quota(AreaSpec("t", frozenset({"k"}), frozenset(), b"area", 3 << 20, None), usage)
        parts = []
        for name in (b"one", b"two"):
            entry = FileEntry(path=name, kind=Kind.FILE, size=2 << 20, mode=0o644, mtime_ns=0, chunk_size=1 << 20)
            path = dest.resolve(name)
            dest.check_space(path, entry.size, entry.size)  # each fits on its own
            part = PartialFile(dest, entry, path)
            part.open(resume=False)
            parts.append(part)
        chunk = os.urandom(1 << 20)
        from ftx.core.checksum import chunk_checksum

        parts[0].write_chunk(0, chunk_checksum(chunk), chunk)
        parts[0].write_chunk(1, chunk_checksum(chunk), chunk)
        parts[1].write_chunk(0, chunk_checksum(chunk), chunk)
        with pytest.raises(StorageError, match="quota"):
            parts[1].write_chunk(1, chunk_checksum(chunk), chunk)
        for part in parts:
            part.close()
        assert sorted(os.listdir(root)) in ([".ftx"], [])  # nothing under a final name
    finally:
        dest.close()


def test_an_area_directory_that_is_a_symlink_is_refused_and_nothing_lands_elsewhere(tmp_path):
    ids, config = _areas_setup(tmp_path)
    write_random(tmp_path / "src" / "f.bin", 10_000)
    (tmp_path / "dst").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "dst" / "alice").symlink_to(tmp_path / "elsewhere")
    proc, _, first = _start(config)
    try:
        rc, _, err = run_send(str(tmp_path / "src" / "f.bin"), f"127.0.0.1:{first['port']}", env=ids["alice"][0])
        assert rc != 0 and "cannot use area 'alice'" in err and str(tmp_path / "dst") not in err, err
        assert list((tmp_path / "elsewhere").iterdir()) == []
        rc, _, err = run_send(str(tmp_path / "src" / "f.bin"), f"127.0.0.1:{first['port']}", env=ids["bob"][0])
        assert rc == 0, err  # the others' areas still work
    finally:
        err = _stop(proc)
    assert "refusing to write through symlink" in err, err


def test_areas_need_authenticated_senders(tmp_path):
    _, config = _areas_setup(tmp_path)
    text = "\n".join(line for line in config.read_text().splitlines() if not line.startswith("authorized-keys"))
    config.write_text(text.replace("port = 0", "port = 0\ninsecure = true"))
    r = _run_receive("--config", str(config))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(f"ftx: {config}: areas need"), r.stderr


def test_sighup_reloads_areas_and_keeps_the_old_settings_on_a_bad_file(tmp_path):
    ids, config = _areas_setup(tmp_path)
    write_random(tmp_path / "src" / "f.bin", 10_000)
    proc, lines, first = _start(config)
    dest = f"127.0.0.1:{first['port']}"
    try:
        rc, _, err = run_send(str(tmp_path / "src" / "f.bin"), dest, env=ids["carol"][0])
        assert rc != 0 and "no area" in err
        good = config.read_text() + f'[areas.carol]\nkey = "{ids["carol"][2]}"\ndir = "carol"\n'
        config.write_text(good.replace("port = 0", "port = 1"))  # a port change needs a restart
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _event(lines, "reloaded"), what="the reload")
        rc, _, err = run_send(str(tmp_path / "src" / "f.bin"), dest, env=ids["carol"][0])
        assert rc == 0, err
        assert (tmp_path / "dst" / "carol" / "f.bin").exists()
        config.write_text(good.replace(f'[areas.carol]\nkey = "{ids["carol"][2]}"', "[areas.carol]\nkye = 1"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _event(lines, "reloaded"), what="the second reload")
        (tmp_path / "dst" / "carol" / "f.bin").unlink()
        rc, _, err = run_send(str(tmp_path / "src" / "f.bin"), dest, env=ids["carol"][0])
        assert rc == 0, err  # the bad file changed nothing
    finally:
        err = _stop(proc)
    assert "port: needs a restart" in err, err
    bad = [line for line in err.splitlines() if "kye" in line]
    assert len(bad) == 1 and "keeping the settings read before" in bad[0], err


def _event(lines: LineReader, kind: str, pred=lambda ev: True) -> dict | None:
    while True:
        try:
            ev = lines.next_json(timeout=0.2)
        except AssertionError:
            return None
        if ev["event"] == kind and pred(ev):
            return ev


def test_a_transfer_in_progress_keeps_its_area_across_a_reload(tmp_path):
    from .helpers import journal_records, start_send

    ids, config = _areas_setup(tmp_path)
    write_random(tmp_path / "src" / "slow.bin", 2 << 20, seed=7)
    write_random(tmp_path / "src" / "f.bin", 10_000)
    proc, lines, first = _start(config)
    dest = f"127.0.0.1:{first['port']}"
    dst = tmp_path / "dst"
    try:
        slow = start_send(str(tmp_path / "src" / "slow.bin"), dest, "--max-rate", "1M", "--chunk-size", "256K",
                          env=ids["alice"][0])
        wait_for(lambda: journal_records(dst / "alice", "slow.bin") >= 1, what="alice's transfer under way")
        config.write_text(config.read_text().replace('dir = "alice"', 'dir = "alice2"'))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _event(lines, "reloaded"), what="the reload")
        rc, _, err = run_send(str(tmp_path / "src" / "f.bin"), dest, env=ids["alice"][0])
        assert rc == 0, err
        assert (dst / "alice2" / "f.bin").exists()  # a new session: the new area
        slow.communicate(timeout=30)
        assert slow.returncode == 0
        assert (dst / "alice" / "slow.bin").read_bytes() == (tmp_path / "src" / "slow.bin").read_bytes()
    finally:
        _stop(proc)


def test_tls_senders_match_by_subject_or_fingerprint_and_the_default_area_takes_the_rest():
    from ftx.areas import parse_areas
    from ftx.core.secure import PeerIdentity

    table = parse_areas({"scans": {"subject": "scanner.example.org", "dir": "scans"},
                         "pinned": {"subject": "SHA256:abc", "dir": "pinned"},
                         "keys": {"key": "SHA256:def", "dir": "k"}}, None)
    assert table.match(PeerIdentity("tls", "SHA256:zzz", b"", "scanner.example.org")).name == "scans"
    assert table.match(PeerIdentity("tls", "SHA256:abc", b"", "other")).name == "pinned"
    assert table.match(PeerIdentity("key", "SHA256:def", b"", "")).name == "keys"
    assert table.match(PeerIdentity("key", "SHA256:zzz", b"", "scanner.example.org")) is None  # a key's comment is no subject
    assert table.match(PeerIdentity("code", "", b"", "code")) is None
    with_default = parse_areas({"a": {"key": "SHA256:a", "dir": "a"}}, "a")
    assert with_default.match(PeerIdentity("key", "SHA256:other")).name == "a"


def test_two_senders_with_one_key_share_the_area_quota(tmp_path):
    import json

    from .helpers import start_send

    ids, config = _areas_setup(tmp_path)
    for who in ("x", "y"):
        for i in range(2):
            write_random(tmp_path / who / f"{who}{i}.bin", 30_000, seed=hash((who, i)) & 0xFFFF)
    proc, _, first = _start(config)
    dest = f"127.0.0.1:{first['port']}"
    try:
        senders = [start_send(str(tmp_path / who), dest, env=ids["bob"][0]) for who in ("x", "y")]
        statuses = []
        for s in senders:
            out, _ = s.communicate(timeout=60)
            statuses += [(f["status"], f.get("message", "")) for f in json.loads(out)["files"] if f["kind"] == "file"]
        assert sorted(st for st, _ in statuses) == ["ok", "ok", "ok", "storage"], statuses
        assert any("quota" in m for st, m in statuses if st == "storage")
        held = sum(p.stat().st_size for p in (tmp_path / "dst" / "people" / "bob").rglob("*.bin"))
        assert held == 90_000  # 120K offered, 100K allowed: three of the four files
    finally:
        _stop(proc)


def test_stale_partials_in_an_area_expire_as_in_the_root(tmp_path):
    from .helpers import journal_records, start_send

    ids, config = _areas_setup(tmp_path)
    config.write_text(config.read_text().replace("port = 0\n", 'port = 0\npartial-ttl = "2s"\n'))
    write_random(tmp_path / "src" / "slow.bin", 4 << 20, seed=8)
    proc, _, first = _start(config)
    area = tmp_path / "dst" / "alice"
    try:
        slow = start_send(str(tmp_path / "src" / "slow.bin"), f"127.0.0.1:{first['port']}", "--max-rate", "2M",
                          "--chunk-size", "256K", env=ids["alice"][0])
        wait_for(lambda: journal_records(area, "slow.bin") >= 6, what="1.5 MiB in alice's area")
        slow.kill()
        slow.communicate(timeout=10)
        wait_for(lambda: not (area / ".ftx").exists() or not any((area / ".ftx").iterdir()), timeout=30,
                 interval=0.1, what="the stale partial expired")
    finally:
        _stop(proc)


def test_the_partial_bytes_metric_counts_the_areas_partials(tmp_path):
    from ftx import config_file
    from ftx.cli import receive
    from ftx.metrics import _scan_partials

    ids, config = _areas_setup(tmp_path)
    for d in ("dst/.ftx", "dst/alice/.ftx", "dst/people/bob/.ftx"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "d-x").write_bytes(os.urandom(64 << 10))
    root = os.fsencode(tmp_path / "dst")
    assert 64 << 10 <= _scan_partials(root) < 128 << 10
    areas = config_file.read(str(config), receive.params).areas.areas
    assert 3 * (64 << 10) <= _scan_partials(root, areas) < 4 * (64 << 10)
