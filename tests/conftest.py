import pathlib

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

# Shared, loaded machines: example run time varies too much for deadlines.
hypothesis_settings.register_profile(
    "recallcore", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("recallcore")

from recallclient import RecallClient

from recallcore.settings import Settings

from .history import Servers, seeded_rng
from .memory_store import StoreOpener
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


@pytest.fixture
def rng():
    return seeded_rng()


@pytest.fixture
def servers():
    started = Servers()
    yield started
    started.close()


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session (started on first use); tests take databases of it."""
    from .pg_server import PostgresServer

    server = PostgresServer().init()
    yield server
    server.remove()


@pytest.fixture
def pg_database(postgres) -> str:
    """The conninfo of a fresh database with the recallcore schema."""
    import psycopg

    from recallcore.storage import pg_schema

    conninfo = postgres.create_database()
    with psycopg.connect(conninfo) as conn:
        pg_schema.migrate(conn, conninfo)
    return conninfo


@pytest.fixture(params=StoreOpener.KINDS)
def stores(request) -> StoreOpener:
    """Tests that take this run on every storage engine (see tests/memory_store.py): the core's
    operation tests, and the Watch tests of what a store's compaction does to its readers."""
    if request.param == "postgresql":
        return StoreOpener("postgresql", request.getfixturevalue("pg_database"))
    return StoreOpener(request.param)
