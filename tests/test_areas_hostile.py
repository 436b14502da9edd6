"""Per-sender areas attacked by an authenticated sender (issue #14): real receivers, real senders, real files.

Alice must not read, list, resume into, overwrite or learn of bob's files or the
root's; a symlink a local user made inside her area must not lead her out of it;
TLS client certificates pick areas end to end as keys do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import run_send, wait_for, write_random
from .test_config_areas import _areas_setup, _start, _stop

pytestmark = pytest.mark.timeout(90)


def test_a_symlink_in_alices_area_does_not_lead_into_bobs(tmp_path):
    ids, config = _areas_setup(tmp_path)
    dst = tmp_path / "dst"
    bob = dst / "people" / "bob"
    bob.mkdir(parents=True)
    secret = write_random(bob / "secret.bin", 20_000, seed=9)
    (dst / "alice").mkdir(mode=0o700)
    (dst / "alice" / "link").symlink_to(bob)  # made by a local user, not by ftx
    (dst / "alice" / "file-link").symlink_to(bob / "secret.bin")
    src = tmp_path / "src"
    write_random(src / "link" / "secret.bin", 20_000, seed=10)  # alice's own bytes, same name
    write_random(src / "file-link", 5_000, seed=11)
    proc, _, first = _start(config, "--overwrite")
    try:
        rc, report, err = run_send(str(src / "link"), f"127.0.0.1:{first['port']}", env=ids["alice"][0])
        assert rc != 0, (report, err)
        # --overwrite replaces the name in alice's area (rename), never the file the link points to
        rc, report, err = run_send(str(src / "file-link"), f"127.0.0.1:{first['port']}", env=ids["alice"][0])
        assert rc != 0 or not (dst / "alice" / "file-link").is_symlink(), (report, err)
        assert (bob / "secret.bin").read_bytes() == secret  # bob's file untouched
        assert sorted(p.name for p in bob.iterdir()) == ["secret.bin"]  # nothing new in bob's area
        assert (dst / "alice" / "link").is_symlink()
    finally:
        _stop(proc)


def _tls_config(tmp_path: Path, ca_path: Path, server) -> Path:
    config = tmp_path / "receive.toml"
    config.write_text(f'dir = "{tmp_path / "dst"}"\nmkdir = true\nlisten = "127.0.0.1"\nport = 0\n'
                      f'tls-cert = "{server.cert}"\ntls-key = "{server.key}"\ntls-ca = "{ca_path}"\n'
                      '[areas.scanner]\nsubject = "scanner.example.org"\ndir = "scans"\nmax-file-size = "50K"\n'
                      '[areas.office]\nsubject = "office.example.org"\ndir = "office"\n')
    return config


@pytest.mark.parametrize("udp", [(), ("--udp",)], ids=["tcp", "udp"])
def test_tls_client_certificates_pick_areas_end_to_end(tmp_path, udp):
    from .tls_pki import CA

    ca = CA(tmp_path / "pki")
    server = ca.issue("localhost", ["localhost", "127.0.0.1"], stem="server")
    scanner = ca.issue("scanner.example.org", client=True, stem="scanner")
    office = ca.issue("office.example.org", client=True, stem="office")
    stranger = ca.issue("stranger.example.org", client=True, stem="stranger")
    config = _tls_config(tmp_path, ca.path, server)
    src = tmp_path / "src"
    data = write_random(src / "scan.bin", 40_000)
    write_random(src / "big.bin", 60_000, seed=3)
    proc, _, first = _start(config)
    dest = f"127.0.0.1:{first['port']}"
    dst = tmp_path / "dst"

    def send(path: Path, who):
        return run_send(str(path), dest, "--tls-ca", str(ca.path), "--tls-cert", str(who.cert),
                        "--tls-key", str(who.key), *udp)
    try:
        rc, report, err = send(src / "scan.bin", scanner)
        assert rc == 0, err
        assert (dst / "scans" / "scan.bin").read_bytes() == data
        rc, report, err = send(src / "scan.bin", office)
        assert rc == 0 and report["files"][0]["status"] == "ok", err  # office's quick check does not see scans/
        assert (dst / "office" / "scan.bin").read_bytes() == data
        rc, report, err = send(src / "big.bin", scanner)  # over the scanner area's max-file-size
        assert rc == 1 and "max-file-size" in err, err
        assert not (dst / "scans" / "big.bin").exists()
        rc, report, err = send(src / "scan.bin", stranger)  # a valid certificate without an area
        assert rc != 0 and "no area" in err, err
        rc, report, err = run_send(str(src / "scan.bin"), dest, "--tls-ca", str(ca.path), *udp)  # no certificate
        assert rc != 0, err
        assert sorted(p.name for p in dst.iterdir() if p.name != ".ftx") == ["office", "scans"]
    finally:
        _stop(proc)


def test_an_expired_partial_gives_its_bytes_back_to_the_quota(tmp_path):
    """A sender that never finishes: its partial counts against the quota until it expires, then not."""
    from .helpers import journal_records, start_send

    ids, config = _areas_setup(tmp_path)
    config.write_text(config.read_text().replace("port = 0\n", 'port = 0\npartial-ttl = "2s"\n')
                      .replace('quota = "100K"\nmax-file-size = "50K"', 'quota = "3M"'))
    write_random(tmp_path / "src" / "slow.bin", 2560 << 10, seed=8)
    write_random(tmp_path / "src2" / "next.bin", 2 << 20, seed=9)
    proc, _, first = _start(config)
    dest = f"127.0.0.1:{first['port']}"
    area = tmp_path / "dst" / "people" / "bob"
    try:
        slow = start_send(str(tmp_path / "src" / "slow.bin"), dest, "--max-rate", "2M", "--chunk-size", "256K",
                          env=ids["bob"][0])
        wait_for(lambda: journal_records(area, "slow.bin") >= 6, what="1.5 MiB in bob's area")
        slow.kill()
        slow.communicate(timeout=10)
        rc, report, _ = run_send(str(tmp_path / "src2" / "next.bin"), dest, env=ids["bob"][0])
        assert rc == 1 and "quota" in report["files"][0]["message"], report  # the partial still counts
        wait_for(lambda: not (area / ".ftx").exists() or not any((area / ".ftx").iterdir()), timeout=30,
                 interval=0.1, what="the stale partial expired")
        rc, report, err = run_send(str(tmp_path / "src2" / "next.bin"), dest, env=ids["bob"][0])
        assert rc == 0, (report, err)  # the expired partial's bytes no longer count
    finally:
        _stop(proc)


def test_overwriting_with_a_bigger_file_counts_the_difference(tmp_path):
    ids, config = _areas_setup(tmp_path)
    config.write_text(config.read_text().replace("port = 0\n", "port = 0\noverwrite = true\n")
                      .replace('max-file-size = "50K"', 'max-file-size = "80K"'))
    env = ids["bob"][0]
    src = tmp_path / "src"
    write_random(src / "a.bin", 40_000, seed=1)
    write_random(src / "b.bin", 40_000, seed=2)
    proc, _, first = _start(config)
    dest = f"127.0.0.1:{first['port']}"
    bob = tmp_path / "dst" / "people" / "bob"
    try:
        for name in ("a.bin", "b.bin"):
            rc, _, err = run_send(str(src / name), dest, env=env)
            assert rc == 0, err
        old = (bob / "a.bin").read_bytes()
        write_random(src / "a.bin", 70_000, seed=3)  # 80K held; 40K replaced by 70K: 110K > 100K
        rc, report, _ = run_send(str(src / "a.bin"), dest, env=env)
        assert rc == 1 and "quota" in report["files"][0]["message"], report
        assert (bob / "a.bin").read_bytes() == old  # the old file stays
        write_random(src / "a.bin", 55_000, seed=4)  # 95K: fits
        rc, _, err = run_send(str(src / "a.bin"), dest, env=env)
        assert rc == 0, err
        write_random(src / "c.bin", 10_000, seed=5)  # 105K
        rc, report, _ = run_send(str(src / "c.bin"), dest, env=env)
        assert rc == 1 and "quota" in report["files"][0]["message"], report
    finally:
        _stop(proc)


@pytest.mark.parametrize("udp", [(), ("--udp",)], ids=["tcp", "udp"])
def test_many_small_files_at_once_stay_within_the_quota(tmp_path, udp):
    """Each small file fits the quota alone; together they do not: the area holds at most the quota."""
    ids, config = _areas_setup(tmp_path)
    src = tmp_path / "src"
    for i in range(40):
        write_random(src / f"s{i:02d}", 5_000, seed=i)  # 200K offered at once, 100K allowed
    proc, _, first = _start(config)
    try:
        rc, report, err = run_send(str(src), f"127.0.0.1:{first['port']}", *udp, env=ids["bob"][0])
        assert rc == 1 and any("quota" in (f.get("message") or "") for f in report["files"]), (report, err)
    finally:
        _stop(proc)
    bob = tmp_path / "dst" / "people" / "bob"
    held = sum(p.stat().st_size for p in bob.rglob("*") if p.is_file() and ".ftx" not in p.parts)
    assert 0 < held <= 100 << 10, held
