"""The CLI as a new user meets it: the impairment emulator's name, shell completion, --help as a man page."""

import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ftx.cli import main

from .helpers import FTX, LineReader

pytestmark = pytest.mark.timeout(60)


def _help(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_impairment_emulator_is_called_impair_and_relay_is_a_hidden_alias():
    top = _help()
    assert "impair" in top
    assert " relay " not in top and "\n  relay" not in top  # croc/wormhole users would read it as a rendezvous relay
    assert "Usage: main relay" in _help("relay") or "relay [OPTIONS]" in _help("relay")


@pytest.mark.parametrize("name", ["impair", "relay"])
def test_impair_and_its_old_name_both_run(name):
    proc = subprocess.Popen(FTX + [name, "--to", "127.0.0.1:9", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = LineReader(proc.stdout).next_json()
        assert first["event"] == "listening" and first["port"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def _complete(shell: str, words: str = "", cword: int = 0, extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "_FTX_COMPLETE": f"{shell}_{'source' if not words else 'complete'}",
           "COMP_WORDS": words, "COMP_CWORD": str(cword), **(extra or {})}
    return subprocess.run([sys.executable, "-c", "from ftx.cli import main; main(prog_name='ftx')"], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o nosort -F"), ("zsh", "compdef"),
                                          ("fish", "complete --no-files --command ftx")])
def test_completion_scripts_are_produced(shell, marker):
    out = _complete(shell)
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout and "_FTX_COMPLETE" in out.stdout


def test_completing_se_gives_send():
    out = _complete("bash", "ftx se", 1)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["plain,send"]


def test_completing_options_and_hidden_alias_not_offered():
    out = _complete("bash", "ftx send --max-r", 2)
    assert "plain,--max-rate" in out.stdout.split()
    out = _complete("bash", "ftx re", 1)
    assert out.stdout.split() == ["plain,receive"]  # not the hidden 'relay'


def test_top_help_lists_exit_codes_environment_and_completion():
    out = _help()
    for text in ("Exit codes", "130", "143", "FTX_CODE", "_FTX_COMPLETE=bash_source", "ftx send --help"):
        assert text in out, text


@pytest.mark.parametrize("command", ["send", "receive", "impair", "keygen", "verify-receipt"])
def test_every_command_has_examples(command):
    out = _help(command)
    assert "Examples:" in out and f"ftx {command} " in out


def test_send_help_names_units_environment_and_exit_codes():
    out = _help("send")
    for text in ("FTX_CODE", "XDG_CONFIG_HOME", "Exit codes", "143", "160Mbit", "20MiB"):
        assert text in out, text


def test_receive_help_names_units_environment_and_exit_codes():
    out = _help("receive")
    for text in ("NOTIFY_SOCKET", "LISTEN_FDS", "XDG_CONFIG_HOME", "Exit codes", "20MB", "5m"):
        assert text in out, text


def _examples():
    import re
    import shlex

    for command in ("", "send", "receive", "impair", "keygen", "verify-receipt"):
        text = _help(*([command] if command else []))
        block = text.split("Examples:", 1)[1].split("\n\n", 1)[0]
        for line in block.strip().splitlines():
            line = re.sub(r"\s{2,}\(.*\)\s*$", "", line.strip()).split(" | ")[0]
            words = shlex.split(line)
            while words and "=" in words[0]:
                words.pop(0)  # FTX_CODE=... ftx send
            if words[1:2] != ["COMMAND"]:
                yield words


@pytest.mark.parametrize("words", list(_examples()), ids=lambda w: " ".join(w))
def test_every_example_in_the_help_parses(words):
    """An example with a misspelt option would teach users an error."""
    assert words[0] == "ftx"
    command = main.get_command(None, words[1])
    assert command is not None, words
    command.make_context(words[1], words[2:], resilient_parsing=False)  # raises on an unknown option
