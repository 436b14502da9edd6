import pytest

from .helpers import Receiver


@pytest.fixture
def receiver_factory(tmp_path):
    started: list[Receiver] = []

    def start(*args: str, directory=None, host: str = "127.0.0.1") -> Receiver:
        d = directory or tmp_path / "dst"
        d.mkdir(parents=True, exist_ok=True)
        r = Receiver(d, *args, host=host)
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
