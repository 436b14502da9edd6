"""``ftx keygen``: make an identity key pair (built only when named; see cli._Commands)."""

from __future__ import annotations

import click

from .cli import EXIT_LOCAL, EXIT_USAGE, _die
from .cli_help import KEYGEN_EPILOG


@click.command(epilog=KEYGEN_EPILOG)
@click.option("--identity", type=click.Path(dir_okay=False), default=None,
              help="Where to write the private key (default $XDG_CONFIG_HOME/ftx/identity); PATH.pub gets the "
                   "public-key line.")
@click.option("--comment", default=None, help="Comment at the end of the public-key line (default user@host).")
def keygen(identity, comment):
    """Create an identity key pair and print its public-key line and fingerprint."""
    from .credentials import CredentialError, create_identity, default_identity, public_line

    path = identity or default_identity()
    try:
        ident = create_identity(path, comment)
    except CredentialError as exc:
        _die(str(exc), EXIT_USAGE)
    except OSError as exc:
        _die(f"cannot write {path}: {exc.strerror or exc}", EXIT_LOCAL)
    click.echo(f"ftx: wrote {path} (private, mode 0600) and {path}.pub", err=True)
    click.echo(f"fingerprint: {ident.fingerprint}")
    try:
        with open(path + ".pub") as f:
            click.echo(f.readline().rstrip())
    except OSError:
        click.echo(public_line(ident.public, comment or ""))
