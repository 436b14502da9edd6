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
