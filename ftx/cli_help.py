"""The texts of ``ftx --help`` and each command's: examples, units, environment, exit codes.

Kept apart from ftx/cli.py (which parses and calls the library) so that the help reads as
a man page would and the command module stays about its options.
"""

from __future__ import annotations

from . import DEFAULT_PORT

EXIT_CODES_TEXT = """\b
Exit codes:
  0    success
  1    some files failed (the others arrived)
  2    usage error (bad option, value or credential file)
  3    connection failed or lost (resolve, connect, timeout, refused, busy)
  4    protocol error from the peer, or authentication failed
  5    local file error (unreadable source, disk full, --dir unusable)
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM; the sender -- a receiver stops cleanly with 0)
"""

UNITS_TEXT = """\b
Units: SIZE 4096, 500K, 20M = 20MiB = 20*2^20, 20MB = 20*10^6 (as rsync), 1.5G;
  RATE is a SIZE per second or bits (decimal): 160Mbit, 1Gbit, 1Gbps;
  TIME 30 (seconds), 30s, 500ms, 5m, 12h, 7d.
"""

MAIN_EPILOG = f"""\b
Examples:
  ftx receive --dir ~/incoming --mkdir            (on the receiving machine)
  ftx send photos/ report.pdf host.example.org    (on the sending machine)
  ftx send --code big.iso host.example.org        (pairing code, no keys to copy)
  ftx COMMAND --help                              (e.g. ftx send --help)

{UNITS_TEXT}
\b
Environment:
  FTX_CODE           send: the receiver's pairing code (instead of --code's prompt)
  XDG_CONFIG_HOME    identity, authorized_keys, known_hosts in $XDG_CONFIG_HOME/ftx
                     (default ~/.config/ftx)
  XDG_STATE_HOME     the sender id that lets an interrupted transfer resume
                     (default ~/.local/state/ftx)
  NOTIFY_SOCKET, LISTEN_FDS   receive: set by systemd (readiness, socket activation)

\b
Shell completion (bash, zsh, fish):
  eval "$(_FTX_COMPLETE=bash_source ftx)"     in ~/.bashrc
  eval "$(_FTX_COMPLETE=zsh_source ftx)"      in ~/.zshrc
  _FTX_COMPLETE=fish_source ftx > ~/.config/fish/completions/ftx.fish

{EXIT_CODES_TEXT}"""

SEND_EPILOG = f"""\b
Examples:
  ftx send report.pdf host.example.org                 (port {DEFAULT_PORT})
  ftx send photos/ music/ host.example.org:9000        (directories, recursively)
  ftx send --udp --max-rate 160Mbit big.iso [2001:db8::1]:{DEFAULT_PORT}
  FTX_CODE=7-olive-tiger ftx send --code big.iso host.example.org
  ftx send --json big.iso host | jq .bytes_sent

\b
On a terminal it shows one total bar (bytes, files, rate, ETA) and a bar per
large file (8 MiB or more), then a one-line summary on stderr (not with -q
or --json; --json prints its object on stdout, on every exit).
An interrupted send resumes when run again (--no-resume: start over).

{UNITS_TEXT}
\b
Environment:
  FTX_CODE         the receiver's pairing code (with --code; never on the command line)
  XDG_CONFIG_HOME  identity and known_hosts in $XDG_CONFIG_HOME/ftx (default ~/.config/ftx)
  XDG_STATE_HOME   the sender id that resumes a transfer (default ~/.local/state/ftx)

{EXIT_CODES_TEXT}"""

RECEIVE_EPILOG = f"""\b
Examples:
  ftx receive --dir ~/incoming --mkdir                  (senders in authorized_keys)
  ftx receive --code --once --dir .                     (one sender with a pairing code)
  ftx receive --dir /srv/in --listen 192.0.2.10 --port 9000 --max-per-host 4
  ftx receive --dir /srv/in --min-free 10GB --partial-ttl 2d --metrics 9100
  ftx receive --insecure --dir /tmp/in --once --json    (tests, loopback only)

{UNITS_TEXT}
\b
Environment:
  XDG_CONFIG_HOME  identity and authorized_keys in $XDG_CONFIG_HOME/ftx (default ~/.config/ftx)
  NOTIFY_SOCKET    set by systemd (Type=notify): READY=1, STATUS=, STOPPING=1, WATCHDOG=1
  LISTEN_FDS       set by systemd socket activation: serve the sockets it passes

{EXIT_CODES_TEXT}"""

KEYGEN_EPILOG = """\b
Examples:
  ftx keygen                                   (~/.config/ftx/identity and identity.pub)
  ftx keygen --identity /etc/ftx/identity --comment backup-server

\b
Give the .pub line to the receiver's operator (authorized_keys), or the
receiver's fingerprint to senders (--expect-fingerprint).
Environment: XDG_CONFIG_HOME (default ~/.config) holds ftx/identity.
Exit codes: 0 written, 2 the key exists or the path is unsafe, 5 cannot write.
"""

IMPAIR_EPILOG = f"""\b
Examples:
  ftx impair --to 127.0.0.1:{DEFAULT_PORT} --both loss=0.01,delay=20ms --json
  ftx send --udp big.iso 127.0.0.1:PORT    (PORT: the one printed at start)
  ftx impair --to host:{DEFAULT_PORT} --forward rate=20Mbit,queue=30ms --duration 60

\b
It runs until SIGTERM, Ctrl-C or --duration, then prints its counters (JSON).
"ftx relay", its former name, still works.
"""
