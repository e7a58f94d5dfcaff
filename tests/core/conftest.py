import pytest

from ..memory_store import StoreOpener


@pytest.fixture(params=StoreOpener.KINDS)
def stores(request) -> StoreOpener:
    """The core's operation tests run on every storage engine (see tests/memory_store.py)."""
    return StoreOpener(request.param)
