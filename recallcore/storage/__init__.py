"""Storage: the interface every engine offers, its engines, and the writer thread.

`base` is the seam: what a read transaction, a write transaction and a store
must offer, one docstring per method. The core computes every write against
it and never sees an engine's types. `lmdb` is the embedded engine (one
environment in a data directory; its tables and on-disk format),
`postgresql` the cluster engine (one database shared by every node; its
schema and migrations in `pg_schema`), `writer` the thread that group-commits operations into one write transaction of any
engine. Modules here may import the core and the engine's own driver; never
grpc or asyncio.
"""

from .base import Store, StoreFull


def open_store(settings) -> Store:
    """The store `settings` name, opened: the PostgreSQL database of settings.store when
    one is given, else the LMDB store in settings.data_dir.

    Raises StoreError when it cannot be used.
    """
    if settings.store:
        from .postgresql import PostgresStore

        return PostgresStore(settings.store, timeout=settings.store_timeout)
    from .lmdb import LmdbStore

    return LmdbStore(settings.data_dir, map_size=settings.map_size, max_map_size=settings.max_map_size)


__all__ = ["Store", "StoreFull", "open_store"]
