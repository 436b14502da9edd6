import pytest

from .helpers import Receiver


@pytest.fixture
def receiver_factory(tmp_path):
    started: list[Receiver] = []

    def start(*args: str, directory=None, host: str = "127.0.0.1", env: dict | None = None) -> Receiver:
        d = directory or tmp_path / "dst"
        d.mkdir(parents=True, exist_ok=True)
        r = Receiver(d, *args, host=host, env=env)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def receiver(receiver_factory):
    return receiver_factory()


@pytest.fixture(autouse=True, scope="session")
def _sender_state_dir(tmp_path_factory):
    """Senders keep their transfer identity here, not in the real ~/.local/state."""
    import os

    os.environ.setdefault("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    yield


@pytest.fixture(autouse=True, scope="session")
def _config_dir(tmp_path_factory):
    """Every ``ftx`` run of the tests uses one config directory whose identity authorizes itself.

    So the existing CLI tests run sealed in keys mode, unchanged: each receiver
    accepts the (same) sender key, and each sender remembers the receivers'
    (same) key in that directory's known_hosts.  Subprocesses inherit it.
    """
    import os

    from ftx.credentials import config_dir, load_identity, public_line

    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    ident = load_identity(os.path.join(config_dir(), "identity"))
    with open(os.path.join(config_dir(), "authorized_keys"), "w") as f:
        f.write(public_line(ident.public, "the tests' own identity") + "\n")
    os.environ.pop("FTX_CODE", None)
    yield
