"""Cluster mode when things fail: a node killed mid-write, the database gone and back, a failover.

Each test that takes the database away runs a PostgreSQL server of its own
(tests/pg_server.py), so the session's server stays up for the others.
"""

import signal
import threading

import grpc
import psycopg
import pytest
from recallclient import RecallClient, RecallError
from recallclient.types import TokenState

from recallcore.settings import Settings
from recallcore.storage import pg_schema, postgresql

from ..pg_server import PostgresServer
from ..support import ServerProcess, ServerThread, until

IDP = "https://idp.example"


def migrated(server: PostgresServer) -> str:
    conninfo = server.create_database()
    with psycopg.connect(conninfo) as conn:
        pg_schema.migrate(conn, conninfo)
    return conninfo


@pytest.fixture
def own_postgres(tmp_path_factory):
    server = PostgresServer().init()
    yield server
    server.remove()


@pytest.fixture
def quick_timeouts(monkeypatch):
    monkeypatch.setattr(postgresql, "CONNECT_TIMEOUT", 1.0)


def test_a_node_killed_mid_write_loses_nothing_it_acknowledged_and_the_other_keeps_writing(pg_database, tmp_path):
    a = ServerProcess(tmp_path / "a", "--store", pg_database)
    b = ServerProcess(tmp_path / "b", "--store", pg_database)
    acked: list[tuple[str, int]] = []
    stop = threading.Event()

    def write() -> None:
        with RecallClient(a.address, timeout=5) as client:
            i = 0
            while not stop.is_set():
                try:
                    receipt = client.revoke(tokens=[(IDP, f"k{i}")], reason="before the kill")
                except RecallError:
                    return  # the node is gone
                acked.append((f"k{i}", receipt.seq))
                i += 1

    try:
        writer = threading.Thread(target=write)
        writer.start()
        until(lambda: len(acked) >= 30, "30 writes acknowledged by node A", 60)
        a.kill()  # while its caller keeps writing
        stop.set()
        writer.join(30)
        assert not writer.is_alive()
        with RecallClient(b.address) as on_b:
            last = max(seq for _, seq in acked)
            for jti, seq in acked:
                assert on_b.check(issuer=IDP, jti=jti, min_seq=last).state == TokenState.REVOKED, (jti, seq)
            after = on_b.revoke(tokens=[(IDP, "after-the-kill")], reason="node B still writes")
            assert after.seq > last
            assert on_b.check(issuer=IDP, jti="after-the-kill", min_seq=after.seq).state == TokenState.REVOKED
    finally:
        stop.set()
        a.close()
        b.close()


def test_with_the_database_down_writes_fail_naming_it_reads_go_on_and_it_recovers_by_itself(
        own_postgres, quick_timeouts):
    conninfo = migrated(own_postgres)
    dbname = conninfo.rpartition("dbname=")[2]
    node = ServerThread(Settings(store=conninfo, listen="127.0.0.1:0", sweep_interval=3600))
    try:
        with RecallClient(node.address, timeout=10) as client:
            kept = client.register_one("alice", "web", ttl=3600)
            other = client.register_one("bob", "web", ttl=3600)
            client.revoke(serials=[kept.serial], reason="before the outage")
            own_postgres.stop()

            with pytest.raises(RecallError) as refused:
                client.revoke(serials=[other.serial], reason="during the outage")
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert f"PostgreSQL database '{dbname}'" in refused.value.details
            # reads go on from memory, and the node says how stale it is
            assert client.check(kept.serial).state == TokenState.REVOKED
            assert client.check(other.serial).state == TokenState.ACTIVE
            until(lambda: client.stats().staleness > 1.0, "staleness reported above 1 s", 30)

            own_postgres.start()

            def revoked_again() -> bool:
                try:
                    client.revoke(serials=[other.serial], reason="after the outage")
                    return True
                except RecallError as exc:
                    assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
                    return False

            until(revoked_again, "a write accepted once the database is back", 60)
            assert client.check(other.serial).state == TokenState.REVOKED
            until(lambda: client.stats().staleness < 1.0, "staleness back under 1 s", 30)
    finally:
        node.stop()


def test_a_failover_to_a_synchronous_standby_loses_no_acknowledged_write(own_postgres, quick_timeouts):
    conninfo = migrated(own_postgres)
    dbname = conninfo.rpartition("dbname=")[2]
    standby = own_postgres.standby()
    both = (f"host=127.0.0.1,127.0.0.1 port={own_postgres.port},{standby.port} user=postgres dbname={dbname} "
            "target_session_attrs=read-write")
    nodes = [ServerThread(Settings(store=both, listen="127.0.0.1:0", sweep_interval=3600)) for _ in range(2)]
    clients = [RecallClient(node.address, timeout=10) for node in nodes]
    try:
        acked = []
        for i in range(20):
            receipt = clients[i % 2].revoke(tokens=[(IDP, f"f{i}")], reason="before the failover")
            acked.append((f"f{i}", receipt.seq))
        own_postgres.stop(how=signal.SIGQUIT)  # the primary dies without a checkpoint
        standby.promote()

        def writes(client, jti: str) -> bool:
            try:
                acked.append((jti, client.revoke(tokens=[(IDP, jti)], reason="after the failover").seq))
                return True
            except RecallError as exc:
                assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
                return False

        for n, client in enumerate(clients):  # each node finds the new primary by itself
            until(lambda: writes(client, f"after-{n}"), f"node {n} writing to the promoted standby", 60)
        last = max(seq for _, seq in acked)
        for client in clients:
            for jti, _ in acked:
                assert client.check(issuer=IDP, jti=jti, min_seq=last).state == TokenState.REVOKED, jti
        with psycopg.connect(standby.conninfo(dbname)) as conn:  # the new primary's log holds every one
            head = conn.execute("SELECT seq FROM recallcore.head").fetchone()[0]
            logged = conn.execute("SELECT count(*), min(seq), max(seq) FROM recallcore.log").fetchone()
        assert logged == (head, 1, head) and head == len(acked) == 22
    finally:
        for client in clients:
            client.close()
        for node in nodes:
            node.stop()
        standby.stop()
