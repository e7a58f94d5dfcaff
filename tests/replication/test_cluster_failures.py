"""Cluster mode when things fail: a node killed mid-write, the database gone and back, a failover.

Each test that takes the database away runs a PostgreSQL server of its own
(tests/pg_server.py), so the session's server stays up for the others.
"""

import logging
import signal
import threading

import grpc
import psycopg
import pytest
from recallclient import RecallClient, RecallError, Replica
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.types import TokenState

from recallcore.settings import Settings
from recallcore.storage import pg_schema, postgresql

from ..history import ServerLog, Subscriber, check_history, read_stream, server_state
from ..pg_server import PostgresServer
from ..support import FreezableProxy, ServerProcess, ServerThread, health, until

IDP = "https://idp.example"
HEARTBEAT = 0.1
MAX_STALENESS = 3.0  # of the follower and the replica
WAIT = 60.0  # deadline of every wait; never reached when things work


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


def one_revoked_one_not(client: RecallClient, reason: str):
    """Two tokens registered, the first revoked: (revoked, active)."""
    kept = client.register_one("alice", "web", ttl=3600)
    other = client.register_one("bob", "web", ttl=3600)
    client.revoke(serials=[kept.serial], reason=reason)
    return kept, other


def accepted(client: RecallClient, serial: int, reason: str):
    """For until(): revoke `serial`; True once accepted, False while refused UNAVAILABLE."""
    def attempt() -> bool:
        try:
            client.revoke(serials=[serial], reason=reason)
            return True
        except RecallError as exc:
            assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
            return False
    return attempt


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
            kept, other = one_revoked_one_not(client, "before the outage")
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

            until(accepted(client, other.serial, "after the outage"), "a write accepted once the database is back", 60)
            assert client.check(other.serial).state == TokenState.REVOKED
            until(lambda: client.stats().staleness < 1.0, "staleness back under 1 s", 30)
    finally:
        node.stop()


def test_a_database_link_gone_silent_fails_writes_within_the_store_timeout_and_heals_by_itself(
        pg_database, quick_timeouts):
    """A partition, a stalled proxy or a frozen server keeps the connection open and silent:
    without a deadline the writer would wait on it for as long as TCP takes to give up (many
    minutes), every write queued behind it."""
    port = pg_database.split("port=")[1].split()[0]
    proxy = FreezableProxy(f"127.0.0.1:{port}")
    conninfo = pg_database.replace(f"port={port}", f"port={proxy.address.rpartition(':')[2]}")
    dbname = conninfo.rpartition("dbname=")[2].split()[0]
    node = ServerThread(Settings(store=conninfo, listen="127.0.0.1:0", sweep_interval=3600, store_timeout=1.0,
                                 max_staleness=2.0))
    try:
        with RecallClient(node.address, timeout=20) as client:
            kept, other = one_revoked_one_not(client, "before the silence")
            proxy.freeze()
            assert client.check(other.serial).state == TokenState.ACTIVE  # within max_staleness: from memory

            with pytest.raises(RecallError) as cut:  # not DEADLINE_EXCEEDED: the node gave up, and says why
                client.revoke(serials=[other.serial], reason="while the link is silent")
            assert cut.value.code == grpc.StatusCode.UNAVAILABLE, cut.value
            assert f"PostgreSQL database '{dbname}'" in cut.value.details
            assert "no answer within 1 s" in cut.value.details, cut.value.details
            with pytest.raises(RecallError) as next_one:  # the next write is not held behind the first
                client.revoke(serials=[other.serial], reason="still silent")
            assert next_one.value.code == grpc.StatusCode.UNAVAILABLE, next_one.value
            until(lambda: client.stats().staleness > 2.5, "staleness reported above 2.5 s", 30)
            # Past max_staleness it refuses, as a stale follower does: other nodes may have
            # revoked what it has not read. Its gauge and its health say so.
            with pytest.raises(RecallError) as stale:
                client.check(other.serial)
            assert stale.value.code == grpc.StatusCode.UNAVAILABLE, stale.value
            assert f"PostgreSQL database '{dbname}'" in stale.value.details
            assert "max_staleness 2 s" in stale.value.details, stale.value.details
            assert not node.run(lambda: node.engine.answering())
            until(lambda: health(node.address) == "NOT_SERVING", "the node reported NOT_SERVING", 30)

            proxy.thaw()

            until(accepted(client, other.serial, "after the silence"), "a write accepted once the link speaks", 60)
            until(lambda: client.stats().staleness < 1.0, "staleness back under 1 s", 30)
            assert client.check(other.serial).state == TokenState.REVOKED
            until(lambda: health(node.address) == "SERVING", "the node reported SERVING again", 30)
    finally:
        node.stop()
        proxy.close()


def check_code(client: RecallClient, serial: int) -> str:
    try:
        return client.check(serial).state.name
    except RecallError as err:
        return err.code.name


def test_with_the_database_down_a_follower_and_a_replica_answer_to_their_bound_then_fail_closed_and_recover(
        own_postgres, tmp_path, caplog):
    """The node stops vouching once its tail cannot read the log: its subscribers go stale
    by their own bound (no vouch of it rejected as late), new ones are refused naming the
    database, and all of them are current again soon after the database returns."""
    caplog.set_level(logging.WARNING, "recallclient")
    conninfo = migrated(own_postgres)
    dbname = conninfo.rpartition("dbname=")[2]
    node = ServerProcess(tmp_path / "node", "--store", conninfo, "--heartbeat-interval", str(HEARTBEAT),
                         "--max-staleness", str(MAX_STALENESS))
    follower = ServerProcess(tmp_path / "follower", "--follow", node.address, "--heartbeat-interval", str(HEARTBEAT),
                             "--max-staleness", str(MAX_STALENESS))
    try:
        with RecallClient(node.address, timeout=10) as on_node, RecallClient(follower.address, timeout=10) as f, \
                Replica(node.address, max_staleness=MAX_STALENESS) as replica:
            token = on_node.register_one("alice", "web", ttl=3600)
            seq = on_node.revoke(serials=[on_node.register_one("bob", "web", ttl=3600).serial]).seq
            assert f.check(token.serial, min_seq=seq).state == TokenState.ACTIVE
            assert replica.wait_for(seq, WAIT)
            until(lambda: not replica.fail_closed, "a fresh replica", WAIT)

            own_postgres.stop()
            answers: list[tuple[str, bool]] = []  # (the follower's answer, the replica's) for the active token

            def refusing() -> bool:
                answers.append((check_code(f, token.serial), replica.is_revoked(token.serial)))
                return answers[-1] == ("UNAVAILABLE", True)

            until(refusing, "the follower refusing and the replica failing closed", WAIT)
            # They went on answering from what they had, then refused, and never answered
            # ACTIVE again (each sample: the follower's answer, then the replica's, in turn).
            assert answers[0] == ("ACTIVE", False), answers[:3]
            follower_answers = [a for a, _ in answers]
            closed_at = follower_answers.index("UNAVAILABLE")
            assert set(follower_answers[closed_at:]) == {"UNAVAILABLE"}, answers
            assert set(follower_answers[:closed_at]) == {"ACTIVE"}, answers
            replica_closed_at = [r for _, r in answers].index(True)
            assert all(r for _, r in answers[replica_closed_at:]), answers
            # Both are past their bound by their own reckoning, and the node says how stale it is.
            assert f.stats().staleness > MAX_STALENESS and replica.staleness > MAX_STALENESS
            until(lambda: on_node.stats().staleness > 2 * MAX_STALENESS, "the node's staleness growing", WAIT)
            assert check_code(on_node, token.serial) == "UNAVAILABLE"  # the node itself, as stale, refuses too
            assert check_code(f, token.serial) == "UNAVAILABLE" and replica.is_revoked(token.serial)
            with pytest.raises(grpc.RpcError) as refused:  # a new subscriber is told why
                read_stream(node.address, pb.WatchRequest(), lambda record: True, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"PostgreSQL database '{dbname}'" in refused.value.details(), refused.value.details()
            assert "ignored the server's vouch" not in caplog.text  # it stopped vouching: nothing came late

            own_postgres.start()

            def revoked() -> int:
                try:
                    return on_node.revoke(serials=[token.serial], reason="after the outage").seq
                except RecallError as exc:
                    assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
                    return 0

            until(revoked, "a write accepted once the database is back", WAIT)
            until(lambda: check_code(f, token.serial) == "REVOKED", "the follower answering again", WAIT)
            until(lambda: not replica.fail_closed, "the replica vouched for again", WAIT)
            assert replica.is_revoked(token.serial)
            assert not replica.is_revoked(token.serial + 1000)  # fresh again: an unknown serial is not revoked
            assert f.stats().staleness < MAX_STALENESS and replica.staleness < MAX_STALENESS
    finally:
        follower.close()
        node.close()


def recorded(tail) -> list[int]:
    """The seqs `tail` (a node's LogTail) delivers from now on, in order, as a list that grows."""
    seqs: list[int] = []
    deliver = tail.deliver

    def record(deltas) -> None:
        seqs.extend(delta.seq for delta in deltas)
        deliver(deltas)

    tail.deliver = record
    return seqs


def test_a_failover_to_a_synchronous_standby_loses_no_acknowledged_write_and_the_tails_resume(
        own_postgres, quick_timeouts):
    """Both nodes reconnect through the multi-host conninfo; each node's tail delivers the
    other node's changes in order, never one twice, and moves past its own node's (which the
    node applies itself) to the head, across the failover (no reload: the standby held all
    it had read); a write made on one node after the failover is read on the other with its
    min_seq, and a subscriber of one node sees one gapless, duplicate-free history."""
    conninfo = migrated(own_postgres)
    dbname = conninfo.rpartition("dbname=")[2]
    standby = own_postgres.standby()
    both = (f"host=127.0.0.1,127.0.0.1 port={own_postgres.port},{standby.port} user=postgres dbname={dbname} "
            "target_session_attrs=read-write")
    nodes = [ServerThread(Settings(store=both, listen="127.0.0.1:0", sweep_interval=3600,
                                   heartbeat_interval=HEARTBEAT)) for _ in range(2)]
    tails = [node.engine._tail for node in nodes]
    delivered = [recorded(tail) for tail in tails]  # the seqs each node's tail delivered, in order
    clients = [RecallClient(node.address, timeout=10) for node in nodes]
    sub = Subscriber("across the failover", nodes[1].address).start()
    try:
        acked = []  # (jti, seq, the node that wrote it)
        for i in range(20):
            receipt = clients[i % 2].revoke(tokens=[(IDP, f"f{i}")], reason="before the failover")
            acked.append((f"f{i}", receipt.seq, i % 2))
        own_postgres.stop(how=signal.SIGQUIT)  # the primary dies without a checkpoint
        standby.promote()

        def writes(n: int, jti: str) -> bool:
            try:
                acked.append((jti, clients[n].revoke(tokens=[(IDP, jti)], reason="after the failover").seq, n))
                return True
            except RecallError as exc:
                assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
                return False

        for n in range(2):  # each node finds the new primary by itself
            until(lambda: writes(n, f"after-{n}"), f"node {n} writing to the promoted standby", 60)
            jti, seq, _ = acked[-1]
            other = clients[1 - n]  # ...and the other reads that write once its tail reached the write's seq
            assert other.check(issuer=IDP, jti=jti, min_seq=seq).state == TokenState.REVOKED, jti
        last = max(seq for _, seq, _ in acked)
        for client in clients:
            for jti, _, _ in acked:
                assert client.check(issuer=IDP, jti=jti, min_seq=last).state == TokenState.REVOKED, jti
        with psycopg.connect(standby.conninfo(dbname)) as conn:  # the new primary's log holds every one
            head = conn.execute("SELECT seq FROM recallcore.head").fetchone()[0]
            logged = conn.execute("SELECT count(*), min(seq), max(seq) FROM recallcore.log").fetchone()
        assert logged == (head, 1, head) and head == len(acked) == 22
        for n, (tail, seqs) in enumerate(zip(tails, delivered)):
            theirs = {seq for _, seq, by in acked if by != n}
            assert seqs == sorted(set(seqs)) and theirs <= set(seqs), (n, seqs)  # in order, once, all
            until(lambda: tail.after == head, f"node {n}'s tail at the head", 30)  # past its own node's too
            assert nodes[n].run(lambda: nodes[n].engine.hub.epoch) == 0, "the node reloaded its state"
        final = server_state(nodes[1])
        assert final == server_state(nodes[0]) and final.seq == head
        sub.wait_vouched(head, 60)
        log = ServerLog().capture(nodes[1].engine)
    finally:
        sub.stop()
        for client in clients:
            client.close()
        for node in nodes:
            node.stop()
        standby.stop()
    assert len(sub.streams) == 1 and not sub.resyncs, (sub.resyncs, [s.end for s in sub.streams])
    check_history(sub.streams, log, final=final)
