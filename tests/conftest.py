import pathlib

import pytest

from recallclient import RecallClient
from recallcore.settings import Settings

from .support import ServerThread


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir: pathlib.Path) -> Settings:
    return Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600)


@pytest.fixture
def server(settings: Settings):
    srv = ServerThread(settings)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ServerThread):
    with RecallClient(server.address) as c:
        yield c
