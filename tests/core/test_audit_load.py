"""Reading the audit trail costs what it must: one read per commit for every follower,
a page at a time for a query, the name index for a filter, and never a Check's turn.

A real server (ServerThread on 127.0.0.1:0) on the in-memory store, counting
what audit readers ask of it, and able to hold an audit read still.
"""

import contextlib
import threading

import pytest
from recallclient import RecallClient, RecallError, TokenSpec, TokenState

from recallcore.core.audit import PAGE

from ..memory_store import MemoryStore, MemoryTxn
from ..support import ServerThread
from .test_audit import Follower

WAIT = 30.0


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scans = 0  # audit_after calls
        self.scanned_max = 0  # most records one audit_after call handed out
        self.fetched = 0  # audit(seq) calls
        self.gate = threading.Event()
        self.gate.set()


class CountingTxn(MemoryTxn):
    def __init__(self, tables, counts: Counts) -> None:
        super().__init__(tables)
        self.counts = counts

    def audit_after(self, after):
        self.counts.gate.wait(WAIT)
        with self.counts.lock:
            self.counts.scans += 1
        n = 0
        try:
            for record in super().audit_after(after):
                n += 1
                yield record
        finally:
            with self.counts.lock:
                self.counts.scanned_max = max(self.counts.scanned_max, n)

    def audit(self, seq):
        with self.counts.lock:
            self.counts.fetched += 1
        return super().audit(seq)


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.counts = Counts()

    @contextlib.contextmanager
    def read(self):
        with super().read() as txn:
            yield CountingTxn(txn.t, self.counts)


@pytest.fixture
def store() -> CountingStore:
    return CountingStore().open()


@pytest.fixture
def server(settings, store):
    srv = ServerThread(settings, store=store)
    yield srv
    srv.stop()


def test_followers_share_one_read_per_commit(server, store):
    followers = [Follower(server.address) for _ in range(8)]
    try:
        with RecallClient(server.address) as client:
            serials = [t.serial for t in client.register([TokenSpec(f"u{i}", "web") for i in range(40)]).tokens]
            for f in followers:
                f.wait_for_seq(1)
            before = store.counts.scans
            for serial in serials:
                client.revoke(serials=[serial])
        for f in followers:
            f.wait_for_seq(41)
            assert [r["seq"] for r in f.records] == list(range(1, 42))
        # 40 commits, 8 followers: at most one read per commit, not one per follower and commit.
        assert store.counts.scans - before <= 40
    finally:
        for f in followers:
            f.close()


def test_a_query_holds_one_page_at_a_time(server, store):
    with RecallClient(server.address) as client:
        client.register([TokenSpec("u", "web")] * 10)
        for serial in range(1, 11):
            client.revoke(serials=[serial])
        for i in range(3 * PAGE):
            client.revoke(tokens=[("https://idp.example", f"x-{i}")])
        store.counts.scanned_max = 0
        assert len(list(client.audit())) == 11 + 3 * PAGE
    assert store.counts.scanned_max <= PAGE


def test_a_filtered_query_reads_only_what_the_name_index_points_at(server, store):
    with RecallClient(server.address) as client:
        client.register([TokenSpec(f"u{i}", "web") for i in range(5)] + [TokenSpec("rare", "cli")])
        for i in range(300):
            client.revoke(tokens=[("https://idp.example", f"x-{i}")])
        client.revoke(serials=[6], reason="rare one")
        scans, fetched = store.counts.scans, store.counts.fetched
        assert [r["seq"] for r in client.audit(subject="rare")] == [1, 302]
        assert [r["seq"] for r in client.audit(client_id="cli")] == [1, 302]
    assert store.counts.scans == scans  # no scan of the trail
    assert store.counts.fetched - fetched <= 4  # the records the index named, and nothing else


def test_a_slow_audit_read_never_delays_a_check(server, store):
    with RecallClient(server.address) as client:
        token = client.register_one("alice", "web", issuer="https://idp.example", jti="custom-1")
        client.revoke(serials=[token.serial], reason="leak")
        store.counts.gate.clear()  # the next audit read waits
        reader = threading.Thread(target=lambda: list(RecallClient(server.address).audit()))
        reader.start()
        try:
            with RecallClient(server.address, timeout=5) as quick:
                # A check by a caller-chosen jti reads the store (its serial), as Introspect does.
                assert quick.check(issuer="https://idp.example", jti="custom-1").state == TokenState.REVOKED
                assert quick.introspect(token.serial)["reason"] == "leak"
        except RecallError as err:
            pytest.fail(f"a Check waited for the audit read: {err}")
        finally:
            store.counts.gate.set()
            reader.join(WAIT)


def test_a_server_with_an_open_follow_stream_stops_without_waiting_out_its_grace(settings, store):
    srv = ServerThread(settings, store=store)
    follower = Follower(srv.address)
    try:
        with RecallClient(srv.address) as client:
            client.register_one("alice", "web")
        follower.wait_for_seq(1)
        # With a minute of grace, the stop returns within seconds: the follow stream ends with it.
        srv.call(srv.server.stop(grace=60.0), timeout=10.0)
        follower.wait_ended()
    finally:
        follower.client.close()
        srv.stop()
