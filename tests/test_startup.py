"""Fixed costs of every run: what `ftx --help`, a shell's TAB and a send import before any work.

Every TAB runs the program, and 20 000 tiny files are sent in about as long as the interpreter
takes to start twice: modules a run does not need (asyncio for --help, cryptography for
--insecure) must not be imported.  Checked in a fresh interpreter with ``-X importtime``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import FTX, Receiver

pytestmark = pytest.mark.timeout(60)


def _imported(args: list[str], env: dict | None = None) -> set[str]:
    """The modules a fresh ``ftx ARGS`` imports (it must exit 0)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *FTX[1:], *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def _imported_fresh(args: list[str], env: dict | None = None) -> set[str]:
    """``_imported``, with every module the interpreter's start imported (site, .pth files: an
    editable install's finder imports pathlib, and with it ipaddress) forgotten first, so that any
    import of them by ftx's code shows too."""
    code = ("import sys\n"
            "for name in [m for m in sys.modules if m in FORGET]:\n"
            "    del sys.modules[name]\n"
            "sys.stderr.write('ftx starts\\n')\n"
            "from ftx.cli import main\n"
            "main()\n").replace("FORGET", repr(NOT_FOR_A_TCP_KEYS_SEND))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.split("ftx starts\n", 1)[1].splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


HEAVY_FOR_HELP = ("asyncio", "ssl", "cryptography", "tomllib", "ftx.areas", "ftx.core.secure", "socket")


def test_help_imports_no_event_loop_tls_or_crypto():
    mods = _imported(["--help"])
    assert "click" in mods  # the check can see imports at all
    assert not [m for m in HEAVY_FOR_HELP if m in mods]


def test_tab_completion_imports_no_event_loop_tls_or_crypto():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "from ftx.cli import main; main(prog_name='ftx')"],
                          capture_output=True, text=True, env={**os.environ, "_FTX_COMPLETE": "bash_complete",
                                                               "COMP_WORDS": "ftx receive --", "COMP_CWORD": "2"},
                          timeout=50)
    assert proc.returncode == 0 and "--max-connections" in proc.stdout  # it completed
    mods = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not [m for m in HEAVY_FOR_HELP if m in mods]


def test_insecure_send_imports_no_cryptography(tmp_path):
    """--insecure neither authenticates nor encrypts: no cipher, key or signature module is loaded."""
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello\n")
    r = Receiver(tmp_path / "in", "--insecure")
    try:
        mods = _imported(["send", str(src), r.dest, "--insecure", "--no-progress"])
        assert "ftx.sending" in mods and "ftx.core.secure.handshake" in mods  # the check sees the send path
        assert not [m for m in mods if m.startswith("cryptography")]
        assert "ftx.impair_cli" not in mods and "ftx.receipt_cli" not in mods  # other commands: loaded when named
        assert "json" not in mods  # only --json and --log-format json write JSON
        assert (tmp_path / "in" / "a.txt").read_bytes() == b"hello\n"
    finally:
        r.stop()


def _write_key(path, pem: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, pem)
    os.close(fd)
    return str(path)


def test_identity_read_without_the_serialization_package_is_the_same_key(tmp_path):
    """load_identity reads the PKCS#8 file it writes itself; any other PEM goes to cryptography's parser."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key

    from ftx import credentials as cr

    made = cr.load_identity(str(tmp_path / "id"))  # created, as on first use
    pem = (tmp_path / "id").read_bytes()
    assert cr._ed25519_from_pem(pem) is not None  # the fast path takes the file ftx writes
    again = cr.load_identity(str(tmp_path / "id"), create=False)
    assert cr.raw_public(again.key) == cr.raw_public(made.key) == cr.raw_public(load_pem_private_key(pem, None))
    key = Ed25519PrivateKey.generate()
    for n, other in enumerate([
        key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()),  # another container
        pem.replace(b"\n", b"\r\n"),  # CRLF line ends
        b"junk before\n" + pem,
    ]):
        got = cr._ed25519_from_pem(other)
        try:
            expected = load_pem_private_key(other, None)
        except ValueError:
            expected = None
        if got is not None:  # taken by the fast path only where cryptography reads the same key
            assert expected is not None and cr.raw_public(got) == cr.raw_public(expected), n
    for bad in (pem.replace(b"BEGIN PRIVATE KEY", b"BEGIN PUBLIC KEY"), pem[:60] + b"!" + pem[61:], b""):
        with pytest.raises(cr.CredentialError, match="not an unencrypted PEM private key"):
            cr.load_identity(_write_key(tmp_path / f"bad{len(bad)}", bad), create=False)


def test_keys_mode_send_imports_no_serialization_package(tmp_path):
    """Keys mode loads the identity and signs the handshake without cryptography's serialization
    package (PEM/DER/SSH codecs: ~20 ms of start-up), and makes its X25519 keys without the OpenSSL
    backend module (~9 ms)."""
    cfg = tmp_path / "cfg"
    env = {"XDG_CONFIG_HOME": str(cfg), "XDG_STATE_HOME": str(tmp_path / "state")}
    from ftx import credentials as cr

    ident = cr.load_identity(str(cfg / "ftx" / "identity"))
    (cfg / "ftx" / "authorized_keys").write_text(cr.public_line(cr.raw_public(ident.key), "me") + "\n")
    src = tmp_path / "a.txt"
    src.write_bytes(b"sealed\n")
    r = Receiver(tmp_path / "in", env=env)
    try:
        mods = _imported(["send", str(src), r.dest, "--no-progress"], env)
        assert "ftx.core.secure.sigma" in mods  # keys mode ran
        assert "cryptography.hazmat.primitives.serialization" not in mods
        assert "cryptography.hazmat.backends.openssl" not in mods
        assert "_ssl" not in mods  # only TLS mode loads ssl (sans-I/O, core/secure/tls.py); asyncio does not
        assert (tmp_path / "in" / "a.txt").read_bytes() == b"sealed\n"
    finally:
        r.stop()


# what a keys-mode TCP send of a tree never runs: the other transport, the other authentications,
# receipts, progress bars, and `random` (secrets: the handshake's randomness is os.urandom); nor
# hashlib/hmac (a second OpenSSL: keys mode hashes with cryptography's, already loaded), ctypes (the
# receiver's malloc_trim) or ipaddress (parsing a receiver's --max-per-host keys): ~4 ms of start-up;
# nor dataclasses (core.record defines Config, the reports and the handshake's outcome: 2.4 ms less)
NOT_FOR_A_TCP_KEYS_SEND = ("random", "secrets", "tempfile", "dataclasses", "ftx.transport.udp", "ftx.transport.udp_link",
                           "ftx.core.udp", "ftx.core.secure.tls", "ftx.tlsconfig", "ftx.core.secure.pake",
                           "spake2", "ftx.receipt_file", "ftx.core.secure.receipt", "tqdm", "ftx.metrics",
                           "hashlib", "_hashlib", "hmac", "ctypes", "_ctypes", "ipaddress",
                           "ftx.limits", "ftx.config_file",  # (a receiver's limits and configuration)
                           "cryptography.hazmat.primitives.ciphers")  # (the AEADs come from the Rust binding)


def test_a_tcp_keys_send_of_a_tree_imports_only_what_it_runs(tmp_path):
    cfg = tmp_path / "cfg"
    env = {"XDG_CONFIG_HOME": str(cfg), "XDG_STATE_HOME": str(tmp_path / "state")}
    from ftx import credentials as cr

    ident = cr.load_identity(str(cfg / "ftx" / "identity"))
    (cfg / "ftx" / "authorized_keys").write_text(cr.public_line(cr.raw_public(ident.key), "me") + "\n")
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_bytes(b"sealed\n")
    r = Receiver(tmp_path / "in", env=env)
    try:
        for run in range(2):  # the first send, and a resend (the quick check of the whole tree)
            mods = _imported_fresh(["send", str(src), r.dest, "--no-progress", "--json"], env)
            assert "ftx.core.secure.sigma" in mods  # keys mode ran
            assert [m for m in mods if m.startswith(NOT_FOR_A_TCP_KEYS_SEND)] == [], run
            # the first send ran the session; the resend of the unchanged tree was done by the
            # head start (ftx/head_start.py), without asyncio and the session
            assert ("ftx.sending" in mods, "asyncio" in mods) == ((True, True) if run == 0 else (False, False)), run
        assert (tmp_path / "in" / "tree" / "sub" / "a.txt").read_bytes() == b"sealed\n"
    finally:
        r.stop()


def test_the_heap_is_left_to_the_os_at_exit():
    """At exit the interpreter's last collections walk and free every module, class and function a
    run loaded (about 35 ms of a one-file send): the CLI freezes the heap first (gc.freeze, atexit),
    and what it printed and its exit code stay as they were."""
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: sys.stderr.write(f'frozen={gc.get_freeze_count()}\\n'))\n"  # runs last
             "from ftx.cli import main\n"
             "main(['--version'], prog_name='ftx')\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0 and proc.stdout.startswith("ftx, version")
    frozen = int(proc.stderr.rsplit("frozen=", 1)[1])
    assert frozen > 10_000  # the modules' objects, not a handful


def test_a_finished_send_leaves_the_interpreter_without_tearing_it_down(tmp_path):
    """A send that is done and has written its report ends with os._exit: the interpreter's
    teardown (its modules and the objects they hold freed one by one, ~5 ms of every send) is
    skipped.  Nothing is lost: the --json object is whole, log lines are flushed, the exit code is
    the command's.  Only where ftx is the program (main() read sys.argv); a caller that passes
    the arguments (tests' CliRunner) gets click's exit as before."""
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello\n")
    r = Receiver(tmp_path / "in", "--insecure")
    try:
        probe = ("import atexit, sys\n"
                 "atexit.register(lambda: sys.stderr.write('torn down\\n'))\n"  # the interpreter's teardown
                 "from ftx.cli import main\n"
                 f"sys.argv = ['ftx', 'send', {str(src)!r}, {r.dest!r}, '--insecure', '--json', '-v']\n"
                 "main()\n")
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=50)
        assert proc.returncode == 0, proc.stderr
        import json

        report = json.loads(proc.stdout)
        assert report["ok"] and report["exit"] == 0 and report["files"][0]["status"] == "ok"
        assert "torn down" not in proc.stderr
        assert (tmp_path / "in" / "a.txt").read_bytes() == b"hello\n"
    finally:
        r.stop()


def test_a_send_with_its_standard_output_closed_still_exits_0(tmp_path):
    """Under cron or a supervisor, or with ``>&-``, fd 1 is closed and Python's sys.stdout is
    None: the quick exit flushed it anyway and a delivered file ended in exit 1 and a traceback
    (review13)."""
    import os

    src = tmp_path / "a.txt"
    src.write_bytes(b"hello\n")
    r = Receiver(tmp_path / "in", "--insecure")
    try:
        proc = subprocess.run([sys.executable, "-m", "ftx", "send", str(src), r.dest, "--insecure", "--no-progress"],
                              preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True, timeout=50)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert (tmp_path / "in" / "a.txt").read_bytes() == b"hello\n"
    finally:
        r.stop()


def test_a_numeric_address_is_resolved_without_a_thread():
    """asyncio's getaddrinfo starts a resolver thread (and asyncio.run's end another to join it), even
    for 127.0.0.1: connect converts a numeric address itself, with the same result; names still go
    to the resolver."""
    import asyncio
    import socket
    import threading

    from ftx.transport.sockets import resolve

    async def main() -> None:
        before = threading.active_count()
        for host in ("127.0.0.1", "::1", "fe80::1%1"):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                assert await resolve(host, 7431, kind) == socket.getaddrinfo(host, 7431, type=kind)
        assert threading.active_count() == before  # no thread started
        assert {info[4][1] for info in await resolve("localhost", 7431, socket.SOCK_STREAM)} == {7431}

    asyncio.run(main())


GC_PROBE = """
import asyncio, gc, sys
runs = []
gc.callbacks.append(lambda phase, info: runs.append(info) if phase == "start" else None)

def run(coro, **kwargs):  # in place of the event loop: report, then stop as Ctrl-C would
    sys.stderr.write(f"probe collections={len(runs) - before} enabled={gc.isenabled()} frozen={gc.get_freeze_count()}\\n")
    coro.close()
    raise KeyboardInterrupt

asyncio.run = run
import ftx  # the package (a few lines); from here on the command line
before = len(runs)
from ftx.cli import main
main(sys.argv[1:], prog_name="ftx")
"""


@pytest.mark.parametrize("command", ["send", "receive"])
def test_no_collection_while_a_command_loads_and_collection_on_in_its_loop(tmp_path, command):
    """Loading a command's modules made the collector run some 40 times over objects that all stay:
    paused until the event loop starts, then everything loaded so far is frozen and collection
    resumes (a receiver that ran without it would grow with every cycle its sessions leave)."""
    (tmp_path / "a.txt").write_bytes(b"x")
    # (--checksum: a send without a head start, which would connect before its loop: head_start.py)
    args = {"send": ["send", str(tmp_path / "a.txt"), "127.0.0.1:9", "--insecure", "--no-progress", "--checksum"],
            "receive": ["receive", "--dir", str(tmp_path), "--port", "0", "--listen", "127.0.0.1"]}[command]
    proc = subprocess.run([sys.executable, "-c", GC_PROBE, *args], capture_output=True, text=True, timeout=50,
                          env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert proc.returncode == 130, proc.stderr[-2000:]  # it reached its event loop (then "Ctrl-C")
    fields = dict(f.split("=") for f in proc.stderr.split("probe ", 1)[1].split()[:3])
    # none while ftx loads (one may run while Python compiles a module that has no .pyc yet, as
    # under PYTHONDONTWRITEBYTECODE; without the pause 20 to 40 ran)
    assert int(fields["collections"]) <= 2 and fields["enabled"] == "True", fields
    assert int(fields["frozen"]) > 10_000, fields


def test_a_receiver_has_imported_what_its_first_sender_needs_before_it_listens(tmp_path):
    """A keys-mode ``ftx receive`` imported the session, the handshake and the AEAD modules (and
    cryptography's serialization package) when its first sender connected: ~15 ms of every
    ``--once`` receiver's first transfer, spent while the sender waited for the handshake."""
    cfg = tmp_path / "cfg"
    env = {**os.environ, "XDG_CONFIG_HOME": str(cfg), "XDG_STATE_HOME": str(tmp_path / "state")}
    from ftx import credentials as cr

    ident = cr.load_identity(str(cfg / "ftx" / "identity"))
    (cfg / "ftx" / "authorized_keys").write_text(cr.public_line(cr.raw_public(ident.key), "me") + "\n")
    src = tmp_path / "tree"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_bytes(b"sealed\n")
    dst = tmp_path / "in"
    dst.mkdir()
    recv = subprocess.Popen([sys.executable, "-X", "importtime", *FTX[1:], "receive", "--listen", "127.0.0.1",
                             "--port", "0", "--dir", str(dst), "--json", "--once", "--no-udp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        import json

        port = json.loads(recv.stdout.readline())["port"]
        send = subprocess.run(FTX + ["send", str(src), f"127.0.0.1:{port}", "--no-progress"],
                              capture_output=True, text=True, env=env, timeout=50)
        assert send.returncode == 0, send.stderr
        recv.stdout.read()
        err = recv.communicate(timeout=50)[1]
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.communicate()
    assert recv.returncode == 0, err[-2000:]
    assert (dst / "tree" / "d" / "a.txt").read_bytes() == b"sealed\n"
    lines = err.splitlines()
    at = next(i for i, line in enumerate(lines) if "listening on" in line)
    late = [line.rsplit("|", 1)[1].strip() for line in lines[at:] if line.startswith("import time:")]
    assert "ftx.core.secure.sigma" in {line.rsplit("|", 1)[1].strip() for line in lines
                                       if line.startswith("import time:")}  # keys mode ran
    assert late == [], " ".join(late)


def test_the_command_line_builds_only_the_send_command_until_another_is_named():
    """Each command's click options cost start-up to build (``receive`` has 36): ``ftx send``
    builds its own only; ``receive`` and ``keygen`` are made when named (or listed)."""
    code = ("import ftx.cli as cli\n"
            "print(sorted(cli.main.commands))\n"
            "print(cli.receive.name, cli.keygen.name, sorted(cli.main.list_commands(None)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    built, named = proc.stdout.splitlines()
    assert built == "['send']"
    assert named == "receive keygen ['impair', 'keygen', 'receive', 'relay', 'send', 'verify-receipt']"


def test_a_command_that_does_not_pause_collection_runs_with_it_on(tmp_path):
    """``ftx impair`` (a relay that may run for hours) does not pause the collector itself: the
    pause while the command line parses ends before it runs."""
    proc = subprocess.run([sys.executable, "-c", GC_PROBE, "impair", "--to", "127.0.0.1:9", "--both", "loss=1%"],
                          capture_output=True, text=True, timeout=50)
    assert "probe " in proc.stderr, proc.stderr[-2000:]  # it reached its event loop
    fields = dict(f.split("=") for f in proc.stderr.split("probe ", 1)[1].split()[:3])
    assert fields["enabled"] == "True", fields


FREEZE_PROBE = """
import gc, sys, threading
import ftx.cli as cli
import ftx.head_start as head_start
import ftx.prewalk as prewalk
started = threading.Event()  # the walk begins once the send has begun (as on a busy machine)
begin = head_start.begin
def _begin(plan, *rest):
    gc.freeze()  # (what the command had loaded by then: as _loaded does once the loop starts)
    started.set()
    return begin(plan, *rest)
head_start.begin = _begin
walk = prewalk.Prewalk._walk
def _walk(self):
    started.wait(30)
    walk(self)
prewalk.Prewalk._walk = _walk
known = prewalk.Prewalk.known
def _known(self, local):
    found = known(self, local)
    young = {id(o) for g in range(3) for o in gc.get_objects(g)}
    sys.stderr.write(f"probe listed={found is not None} young={id(found) in young}\\n")
    return found
prewalk.Prewalk.known = _known
cli.main()
"""


@pytest.mark.timeout(60)
def test_the_tree_listed_ahead_is_left_out_of_the_collectors_walks(tmp_path):
    """The sender's listing ahead (prewalk.Prewalk: a record per entry) is made by its thread while
    the send starts, often after the loaded modules were frozen: the
    collector's older generations walked all of it again and again (~2 ms of a re-send of 20 000
    files).  Once listed it is frozen too; it is freed as before, by reference counts, once its
    groups are sent."""
    src = tmp_path / "tree"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        (src / f"d{d}" / "f").write_bytes(b"x")
    r = Receiver(tmp_path / "in", "--insecure")
    try:
        proc = subprocess.run([sys.executable, "-c", FREEZE_PROBE, "send", str(src), r.dest, "--insecure",
                               "--no-progress"], capture_output=True, text=True, timeout=50)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        r.stop()
    assert "probe listed=True young=False" in proc.stderr, proc.stderr[-2000:]


def test_the_entry_knows_which_send_options_take_a_value():
    """ftx/entry.py finds a send's paths before click loads: its table of the options that take a
    value must be the command's."""
    import click

    from ftx.cli import main
    from ftx.entry import SEND_VALUE_OPTIONS

    send = main.get_command(click.Context(main), "send")
    valued = {opt for p in send.params if isinstance(p, click.Option) and not p.is_flag and not p.count
              for opt in p.opts + p.secondary_opts}
    assert valued == SEND_VALUE_OPTIONS
    assert all(opt.startswith("--") for opt in valued)  # (no short option takes a value)


@pytest.mark.parametrize("args", [
    ["a", "host"], ["a", "b/c", "host:1"], ["--port", "7431", "a", "host"], ["a", "--identity=id", "host", "--json"],
    ["-vq", "a", "host", "--max-rate", "1M"], ["--", "-odd", "host"], ["a", "-", "host", "--no-progress", "-v"],
    ["--idle-timeout", "5", "--log-format", "json", "x", "y", "host"]])
def test_the_entry_finds_the_paths_click_parses(args):
    import click

    from ftx.cli import main
    from ftx.entry import send_paths

    send = main.get_command(click.Context(main), "send")
    parsed = send.make_context("send", list(args)).params["paths"]
    assert send_paths(["ftx", "send", *args]) == list(parsed)


def test_the_entry_lists_nothing_ahead_for_other_commands_or_sends_without_checks():
    from ftx.entry import send_paths

    for argv in (["ftx", "receive", "--dir", "x"], ["ftx", "send", "host"], ["ftx", "send", "a", "h", "--checksum"],
                 ["ftx", "send", "a", "h", "--receipt", "r"], ["ftx", "--help"], ["ftx"]):
        assert send_paths(argv) is None, argv


def test_a_send_begins_listing_its_trees_before_its_command_line_loads(tmp_path):
    """Begun after click and ftx.cli had loaded, the listing ahead was not done when a re-send of
    20 000 files wanted it.  (-X importtime writes a line as each import ends.)"""
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_bytes(b"x")
    proc = subprocess.run([*FTX[:1], "-X", "importtime", *FTX[1:], "send", str(src), "127.0.0.1:9", "--json",
                           "--no-progress", "--insecure", "--idle-timeout", "2"], capture_output=True, text=True,
                          timeout=50)
    assert proc.returncode == 3, proc.stderr[-2000:]  # nothing listens on port 9: it could not connect
    order = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert order.index("ftx.prewalk") < order.index("click"), order
