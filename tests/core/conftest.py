import pytest

from ..memory_store import StoreOpener


@pytest.fixture(params=StoreOpener.KINDS)
def stores(request) -> StoreOpener:
    """The core's operation tests run on every storage engine (see tests/memory_store.py)."""
    if request.param == "postgresql":
        return StoreOpener("postgresql", request.getfixturevalue("pg_database"))
    return StoreOpener(request.param)
