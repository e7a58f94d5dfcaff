"""recallcore.storage.postgresql and pg_schema: the schema command, refusals at open, one store per database.

Against a real PostgreSQL server (tests/pg_server.py); the seam's contract
itself is test_interface.py's, run on this engine too.
"""

import psycopg
import pytest
from pyroaring import BitMap64

from recallcore import cli
from recallcore.core.errors import StoreError
from recallcore.settings import Settings
from recallcore.storage import open_store, pg_schema
from recallcore.storage.pg_deadline import connect_options
from recallcore.storage.postgresql import PostgresStore

from ..support import free_address
from .test_interface import spec


def test_migrate_schema_creates_the_schema_once_and_a_server_opens_it(postgres, capsys):
    conninfo = postgres.create_database()
    with pytest.raises(StoreError, match="has no recallcore schema: run `recallcore migrate-schema"):
        PostgresStore(conninfo)

    assert cli.main(["migrate-schema", "--store", conninfo]) == 0
    assert "schema created at version 2" in capsys.readouterr().out
    assert cli.main(["migrate-schema", "--store", conninfo]) == 0
    assert "schema at version 2, nothing to do" in capsys.readouterr().out

    store = open_store(Settings(store=conninfo))
    try:
        with store.read() as txn:
            assert txn.head_seq() == 0 and txn.registered_through() == 0
    finally:
        store.close()


def test_a_schema_of_an_unknown_version_is_refused_naming_the_database(postgres, capsys):
    conninfo = postgres.create_database()
    assert cli.main(["migrate-schema", "--store", conninfo]) == 0
    with psycopg.connect(conninfo) as conn:
        conn.execute("UPDATE recallcore.schema_version SET version = %s", (pg_schema.VERSION + 1,))
    dbname = conninfo.rpartition("dbname=")[2]
    newer = pg_schema.VERSION + 1
    with pytest.raises(StoreError, match=f"database '{dbname}'.*schema version {newer}, newer than this server"):
        PostgresStore(conninfo)
    assert cli.main(["migrate-schema", "--store", conninfo]) == 1
    assert "upgrade recallcore" in capsys.readouterr().err


def test_a_version_1_schema_is_upgraded_keeping_the_signals_applied_and_refused_until_then(postgres, capsys):
    conninfo = postgres.create_database()
    with psycopg.connect(conninfo) as conn:  # a database as version 1 left it
        conn.execute(pg_schema.STEPS[1])
        conn.execute("INSERT INTO recallcore.schema_version (version, store_id) VALUES (1, 'v1-store')")
        conn.execute("INSERT INTO recallcore.signals (issuer, jti, seq, issued_at) VALUES "
                     "('https://idp.example', 'set-1', 7, 100), ('https://idp.example', 'set-2', 0, 200)")
    with pytest.raises(StoreError, match="schema version 1; this server reads version 2: run `recallcore migrate"):
        PostgresStore(conninfo)
    assert cli.main(["migrate-schema", "--store", conninfo]) == 0
    assert "schema upgraded from 1 to version 2" in capsys.readouterr().out
    store = PostgresStore(conninfo)
    try:
        assert store.store_id == "v1-store"
        with store.read() as txn:
            assert txn.signal("https://idp.example", "set-1") == 7
            assert txn.signal("https://idp.example", "set-2") == 0
            assert txn.signal("https://idp.example", "set-3") is None
        with store.write() as txn:
            assert txn.compact_signals(before=150, limit=10) == 1  # set-1, by its iat
        with store.read() as txn:
            assert txn.signal("https://idp.example", "set-1") is None
            assert txn.signal("https://idp.example", "set-2") == 0
    finally:
        store.close()


def test_every_store_on_one_database_has_its_identity_and_sees_the_others_commits(pg_database):
    first, second = PostgresStore(pg_database), PostgresStore(pg_database)
    try:
        assert first.store_id == second.store_id
        with first.write() as txn:
            txn.set_head(1, b"h1")
            txn.update_revoked(BitMap64([5, 70_000]))
        with second.read() as txn:
            assert txn.head_seq() == 1
            assert txn.revoked_serials() == BitMap64([5, 70_000])
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("tuned", ["off", "local", "remote_write", "remote_apply"])
def test_writes_commit_durably_whatever_the_database_was_tuned_to(pg_database, tuned):
    with psycopg.connect(pg_database, autocommit=True) as admin:
        database = admin.info.dbname
        admin.execute(f"ALTER DATABASE {database} SET synchronous_commit = {tuned}")
    try:
        store = PostgresStore(pg_database)
        try:
            with store.write() as txn:
                txn.set_head(1, b"h1")
                level = txn.conn.execute("SHOW synchronous_commit").fetchone()[0]
            assert level == ("remote_apply" if tuned == "remote_apply" else "on")
        finally:
            store.close()
    finally:
        with psycopg.connect(pg_database, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {database} RESET synchronous_commit")


def test_a_failed_write_transaction_keeps_nothing_and_the_next_one_commits(pg_database):
    store = PostgresStore(pg_database)
    try:
        with pytest.raises(RuntimeError), store.write() as txn:  # an error in the block
            txn.set_head(1, b"h1")
            txn.update_revoked(BitMap64([5]))
            raise RuntimeError("a bug")
        with pytest.raises(psycopg.errors.UniqueViolation), store.write() as txn:  # one at the commit's flush
            txn.set_head(1, b"h1")
            txn.put_record(1, spec(1))
            txn.put_record(1, spec(1))
        with store.read() as txn:
            assert (txn.head_seq(), txn.revoked_serials(), txn.record(1)) == (0, BitMap64(), None)
        with store.write() as txn:
            txn.set_head(1, b"h1")
            txn.put_record(1, spec(1))
        with store.read() as txn:
            assert (txn.head_seq(), txn.record(1)) == (1, spec(1))
    finally:
        store.close()


def test_an_unreachable_database_at_start_is_an_error_naming_it_not_a_hang():
    port = free_address().rpartition(":")[2]
    with pytest.raises(StoreError, match=f"cannot connect to PostgreSQL database 'nowhere' at host 127.0.0.1 "
                                         f"port {port}") as refused:
        PostgresStore(f"host=127.0.0.1 port={port} dbname=nowhere user=postgres password=hunter2",
                      connect_timeout=1)
    assert "hunter2" not in str(refused.value)


def test_the_store_setting_takes_only_a_conninfo():
    assert Settings(store="postgresql://db.example/recall").store
    assert Settings(store="host=a,b dbname=recall target_session_attrs=read-write").store
    with pytest.raises(ValueError, match="store: 'var/recall' is not a PostgreSQL conninfo"):
        Settings(store="var/recall")
    with pytest.raises(ValueError, match="give --store or --follow, not both"):
        Settings(store="postgresql://db/recall", follow="127.0.0.1:50051")


def test_connections_bound_a_dead_peer_unless_the_conninfo_says_otherwise():
    options = connect_options("host=db.example dbname=recall", 2.5)
    assert options == {"keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 3,
                       "tcp_user_timeout": 2500}
    chosen = connect_options("postgresql://db.example/recall?keepalives_idle=60&tcp_user_timeout=0", 2.5)
    assert "keepalives_idle" not in chosen and "tcp_user_timeout" not in chosen  # the operator's choice stands
    assert chosen["keepalives"] == 1
