"""Cluster mode: several nodes on one PostgreSQL database, every one of them writing and reading.

Real nodes (ServerThreads with --store) on a real PostgreSQL server
(tests/pg_server.py). Writes go to either node; each node learns of every
change, its own included, from the log table (storage/pg_tail.py).
"""

import dataclasses
import logging
import threading

import pytest
from recallclient import RecallClient
from recallclient.jti import foreign_key
from recallclient.types import TokenState

from recallcore.settings import Settings

from ..history import ServerLog, Subscriber, check_history, server_state
from ..support import FakeClock, FreezableProxy, until

IDP = "https://idp.example"
WRITERS_PER_NODE = 4
WRITES_EACH = 15
HEARTBEAT = 0.05
LOG_KEEP = 8


def node_settings(conninfo: str) -> Settings:
    return Settings(store=conninfo, listen="127.0.0.1:0", sweep_interval=3600)


@pytest.fixture
def cluster(pg_database, servers):
    return servers.start(node_settings(pg_database)), servers.start(node_settings(pg_database))


def test_a_write_acknowledged_by_one_node_is_readable_on_the_other_with_min_seq(cluster):
    a, b = cluster
    with RecallClient(a.address) as on_a, RecallClient(b.address) as on_b:
        assert on_a.stats().store_id == on_b.stats().store_id
        token = on_a.register_one("alice", "web", ttl=3600)
        receipt = on_a.revoke(serials=[token.serial], reason="leaked")
        seen = on_b.check(token.serial, min_seq=receipt.seq)
        assert seen.state == TokenState.REVOKED and seen.reason == "leaked"
        # and the other way round, with a serial node B assigned
        other = on_b.register_one("bob", "web", ttl=3600)
        assert other.serial == token.serial + 1  # one dense serial space for the cluster
        back = on_b.revoke(serials=[other.serial], reason="by b")
        assert on_a.check(other.serial, min_seq=back.seq).state == TokenState.REVOKED
        assert on_a.check(token.serial).state == TokenState.REVOKED  # the writer's own change, from the log


def test_two_nodes_writing_at_once_keep_one_dense_log_with_every_acknowledged_write_once(cluster):
    a, b = cluster
    acked: dict[int, list[int]] = {}  # seq -> foreign keys acknowledged with it
    lock = threading.Lock()
    failures: list[BaseException] = []

    def write(node, name: str) -> None:
        try:
            with RecallClient(node.address) as client:
                for i in range(WRITES_EACH):
                    jti = f"{name}-{i}"
                    receipt = client.revoke(tokens=[(IDP, jti)], reason=name)
                    assert receipt.count == 1
                    with lock:
                        acked.setdefault(receipt.seq, []).append(foreign_key(IDP, jti))
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    current = [a.address]
    with Subscriber("switching", lambda: current[0]) as sub:
        threads = [threading.Thread(target=write, args=(node, f"{label}{t}"))
                   for label, node in (("a", a), ("b", b)) for t in range(WRITERS_PER_NODE)]
        for thread in threads:
            thread.start()
        until(lambda: len(acked) >= WRITERS_PER_NODE * WRITES_EACH // 2, "half the writes acknowledged", 60)
        sub.pause()  # the replica moves to the other node, resuming by sequence
        current[0] = b.address
        sub.resume()
        for thread in threads:
            thread.join(60)
        assert not failures, failures
        assert not any(thread.is_alive() for thread in threads)
        written = 2 * WRITERS_PER_NODE * WRITES_EACH
        until(lambda: server_state(a).seq == server_state(b).seq == written, "both nodes applied every change", 30)
        final = server_state(a)
        assert server_state(b) == final
        sub.wait_vouched(final.seq)

    log = ServerLog().capture(a.engine)
    assert log.first == 1 and log.head == written == final.seq  # dense: one change per write, no gap
    for seq in range(1, log.head + 1):
        assert log.changes[seq].prev_seq == seq - 1
    for seq, keys in acked.items():  # every acknowledgement names the change that holds its write...
        assert set(keys) <= log.changes[seq].foreign_added
    logged = [key for seq in range(1, log.head + 1) for key in log.changes[seq].foreign_added]
    assert sorted(logged) == sorted(k for keys in acked.values() for k in keys)  # ...each exactly once
    assert ServerLog().capture(b.engine).changes == log.changes  # both nodes read one log
    assert not sub.resyncs, sub.resyncs
    assert len(sub.streams) == 2 and sub.streams[1].target == b.address
    check_history(sub.streams, log, final=final)


def test_a_node_whose_tail_fell_behind_the_retained_log_reloads_and_resets_its_subscribers(
        pg_database, servers, caplog):
    """What a follower does when its primary compacted past it, a node does when the cluster
    compacted past its tail: it reloads the state from the database, and its subscribers get
    an explicit reset and a snapshot, never a gap."""
    caplog.set_level(logging.WARNING, "recallcore.storage.pg_tail")
    clock = FakeClock()
    settings = dataclasses.replace(node_settings(pg_database), heartbeat_interval=HEARTBEAT, log_keep=LOG_KEEP,
                                   log_keep_seconds=0)
    a = servers.start(settings, clock=clock)
    port = pg_database.split("port=")[1].split()[0]
    proxy = FreezableProxy(f"127.0.0.1:{port}")  # node B reaches the database through it
    try:
        b = servers.start(dataclasses.replace(settings, store=pg_database.replace(
            f"port={port}", f"port={proxy.address.rpartition(':')[2]}")))
        with RecallClient(a.address) as on_a, Subscriber("downstream of b", b.address) as sub:
            for i in range(5):
                seq = on_a.revoke(tokens=[(IDP, f"before-{i}")], reason="before").seq
            sub.wait_vouched(seq)
            behind = server_state(b).seq
            proxy.freeze()  # node B's tail stops reading, its connections held open
            for i in range(3 * LOG_KEEP):
                seq = on_a.revoke(tokens=[(IDP, f"while-{i}")], reason="while b is away").seq
            log = ServerLog().capture(a.engine)  # every change, before compaction
            clock.advance(2)  # log_keep_seconds=0 keeps changes of the current second
            assert a.call(a.engine.sweep()) == 0
            log.capture(a.engine)
            assert log.first == log.head - LOG_KEEP + 1 and log.first > behind + 1, (log.first, behind)
            after = on_a.revoke(tokens=[(IDP, "after")], reason="after the compaction").seq
            log.capture(a.engine)
            proxy.thaw()
            until(lambda: server_state(b).seq == after, "node B caught up", 30)
            assert server_state(b) == server_state(a)
            sub.wait_vouched(after)
            with RecallClient(b.address) as on_b:  # its writer was as far behind: it reloads and writes
                last = on_b.revoke(tokens=[(IDP, "by b")], reason="b writes again").seq
            assert last == after + 1
            log.capture(a.engine)
            until(lambda: server_state(a).seq == last, "node A read node B's change", 30)
            final = server_state(a)
            assert server_state(b) == final
            sub.wait_vouched(last)
    finally:
        proxy.close()
    assert "were compacted away before this node read them" in caplog.text
    assert b.run(lambda: b.engine.hub.epoch) == 1, "node B did not reload once"
    resets = [v.reason for s in sub.streams for k, v in s.items if k == "reset"]
    assert resets == ["upstream reset: this node installed a new snapshot"], resets
    assert not sub.resyncs, sub.resyncs
    check_history(sub.streams, log, final=final)
