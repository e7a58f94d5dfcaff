"""The audit trail: one record per change, the queries over it, and following it.

The property test drives a real Engine (LMDB in a fresh directory, writer
thread) on its own event loop with a fake clock through random registrations,
revocations by every selector, rotations, cut-off rules, sweeps and the
passing of time, and after every step reads the change log and the audit
table straight from the store: both must hold exactly the sequences
1..head, and each audit record must be of the kind of the change that wrote
it. The other tests go through a real server (ServerThread on 127.0.0.1:0,
fake clock) and RecallClient; see recallcore/core/audit.py for the contract.
"""

import asyncio
import dataclasses
import json
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, event
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from recallclient import JtiRef, RecallClient, RecallError, TokenSpec, TokenType
from recallclient.revoked_set import SUBJECT

from recallcore.core.errors import InvalidArgument
from recallcore.core.lifecycle import SCOPE_NAMES
from recallcore.core.model import Selector
from recallcore.engine import Engine
from recallcore.settings import Settings

from ..support import FakeClock, ServerThread

WAIT = 30.0  # deadline of every wait; never reached when things work
IDP = "https://idp.example"
ISSUER = "recallcore"  # the server's default issuer
SUBJECTS = ["alice", "bob", "carol"]
CLIENTS = ["web", "cli"]
FAMILIES = ["", "fam-1", "fam-2"]
CUSTOM = ["jti-1", "jti-2", "jti-3"]
WRITERS, WRITES = 4, 25  # concurrent registrations while the trail is followed
RETENTION = 100  # audit_retention of the retention test
MARKER = "S3CRET-7f3a"  # planted where the trail must not repeat it


# ------------------------------------------------ one record for each change


async def started(cfg: Settings, clock: FakeClock) -> Engine:
    """An Engine whose start-up sweep has run (the sweeper's first step, then ours behind it)."""
    engine = Engine(cfg, clock=clock)
    try:
        await engine.start()
        await asyncio.sleep(0)  # a yield, not a wait: the sweeper task takes its first step
        await engine.sweep()
    except BaseException:
        await engine.close()
        raise
    return engine


specs = st.builds(
    TokenSpec,
    subject=st.sampled_from(SUBJECTS), client_id=st.sampled_from(CLIENTS),
    issuer=st.sampled_from(["", IDP]), jti=st.sampled_from(["", "", *CUSTOM]),
    type=st.sampled_from([TokenType.ACCESS, TokenType.REFRESH]),
    family=st.sampled_from(FAMILIES),
)
selectors = st.one_of(
    st.builds(Selector, serials=st.lists(st.integers(1, 30), min_size=1, max_size=4).map(tuple)),
    st.builds(Selector, subject=st.sampled_from(SUBJECTS)),
    st.builds(Selector, client_id=st.sampled_from(CLIENTS)),
    st.builds(Selector, family=st.sampled_from(FAMILIES[1:])),
    st.builds(Selector, tokens=st.lists(
        st.builds(JtiRef, issuer=st.sampled_from([ISSUER, IDP]), jti=st.sampled_from([*CUSTOM, "x1", "x2"])),
        min_size=1, max_size=3).map(tuple)),
)


SUCCESSOR = TokenSpec("", "", type=TokenType.REFRESH)  # everything else inherited


class AuditMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.mkdtemp(prefix="recallcore-audit-")
        self.clock = FakeClock()
        self.engine: Engine | None = None
        self.kinds: dict[int, str] = {}  # seq -> kind of the change the test made
        self.refresh: list[int] = []  # serials of refresh tokens, to present for rotation

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            if self.engine is not None:
                self.run(self.engine.close())
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def changed(self, head: int, kind: str | None, seq: int | None = None) -> None:
        """The last operation moved the head from `head` by one change of `kind`, or (None) not at all."""
        now = self.engine.state.seq
        if kind is None:
            assert now == head
            return
        assert now == head + 1 and seq in (None, now)
        self.kinds[now] = kind
        event(kind)

    @initialize()
    def open(self) -> None:
        cfg = Settings(data_dir=self.dir, listen="127.0.0.1:0", sweep_interval=3600, token_ttl=600,
                       max_token_lifetime=3600, rotation_grace=10)
        self.engine = self.run(started(cfg, self.clock))
        assert self.engine.state.seq == 0

    @rule(tokens=st.lists(specs, min_size=1, max_size=4), backdate=st.sampled_from([0, 100]))
    def register(self, tokens, backdate):
        head = self.engine.state.seq
        if backdate:
            tokens = [dataclasses.replace(t, issued_at=int(self.clock.now) - backdate) for t in tokens]
        result = self.run(self.engine.register(tokens, actor="issuer"))
        fresh = sum(not t.existing for t in result.tokens)
        self.refresh += [t.serial for t, spec in zip(result.tokens, tokens)
                         if not t.existing and spec.type == TokenType.REFRESH]
        self.changed(head, "register" if fresh else None, result.seq or None)

    @rule(selector=selectors)
    def revoke(self, selector):
        head = self.engine.state.seq
        result = self.run(self.engine.revoke(selector, reason="test", actor="ops"))
        self.changed(head, "revoke" if result.count else None, result.seq)

    @precondition(lambda self: self.refresh)
    @rule(data=st.data(), request_id=st.sampled_from(["", "r1", "r2"]))
    def rotate(self, data, request_id):
        self.present(data.draw(st.sampled_from(self.refresh), label="serial"), request_id)

    @rule(serial=st.integers(1, 30))
    def rotate_any(self, serial):
        self.present(serial, "r1")

    def present(self, serial: int, request_id: str) -> None:
        head = self.engine.state.seq
        try:
            result = self.run(self.engine.rotate(serial, SUCCESSOR, request_id=request_id))
        except InvalidArgument as exc:
            assert "is an access token" in str(exc)
            self.changed(head, None)
            return
        event(f"rotate: {result.outcome}")
        if result.outcome == "ROTATED":
            self.refresh.append(result.successor.serial)
        kind = {"ROTATED": "rotate", "REUSE_DETECTED": "reuse_detected"}.get(result.outcome)
        self.changed(head, kind, result.seq)

    @rule(scope=st.sampled_from([1, 2, 3, 4]), pick=st.integers(0, 2), back=st.sampled_from([0, 50, 500]))
    def cutoff(self, scope, pick, back):
        head = self.engine.state.seq
        value = {1: SUBJECTS[pick], 2: CLIENTS[pick % 2], 3: [ISSUER, IDP][pick % 2], 4: ""}[scope]
        before = int(self.clock.now) - back if back else 0
        in_force = max((r[2] for r in self.engine.state.revocations.rules if r[:2] == (scope, value)), default=0)
        result = self.run(self.engine.cutoff(scope, value, before, reason="kill"))
        self.changed(head, "cutoff" if in_force < result.before else None, result.seq)

    @rule()
    def sweep(self):
        head = self.engine.state.seq
        seq = self.run(self.engine.sweep())
        self.changed(head, "sweep" if seq else None, seq)

    @rule(seconds=st.sampled_from([1, 5, 11, 300, 700, 4000]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @invariant()
    def log_and_audit_agree(self):
        if self.engine is None:
            return
        head = self.engine.state.seq
        with self.engine.store.read() as txn:
            records = list(txn.audit_after(0))
            deltas = [txn.delta(seq) for seq in range(1, head + 2)]
            assert txn.log_first() == (1 if head else 0)
        assert [r["seq"] for r in records] == list(range(1, head + 1))
        assert deltas[-1] is None and None not in deltas[:-1]
        for record, delta in zip(records, deltas):
            seq = record["seq"]
            assert (delta.seq, delta.prev_seq, delta.time) == (seq, seq - 1, record["time"])
            assert record["kind"] == self.kinds[seq], (seq, record)
            _check_shape(record, delta)


def _check_shape(record: dict, delta) -> None:
    """The audit record says what the logged delta did."""
    kind = record["kind"]
    if kind == "register":
        assert delta.registered_through == record["last_serial"]
        assert record["count"] == record["last_serial"] - record["first_serial"] + 1
        assert len(delta.added) == record["cut_off"]
    elif kind == "revoke":
        assert record["count"] >= 1 and (delta.added or delta.foreign_added)
        assert record["count"] <= len(delta.added) + len(delta.foreign_added)
    elif kind == "rotate":
        assert list(delta.rotated) == [record["serial"]] and delta.registered_through == record["successor"]
    elif kind == "reuse_detected":
        assert record["serial"] in delta.added and len(delta.added) == record["count"]
    elif kind == "cutoff":
        rule_ = record["rule"]
        logged = {(SCOPE_NAMES[s], v, b) for s, v, b in delta.rules_added}
        assert logged == {(rule_["scope"], rule_["value"], rule_["before"])}
        assert len(delta.added) == record["count"]
    elif kind == "sweep":
        assert record["count"] == len(delta.removed) + len(delta.foreign_removed)
        assert record["rules_retired"] == [list(r) for r in sorted(delta.rules_removed)]
    else:
        raise AssertionError(f"unexpected kind {kind!r}")


AuditMachine.TestCase.settings = hsettings(
    max_examples=25, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAuditMachine = AuditMachine.TestCase


# --------------------------------------------------------- through a server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(data_dir) -> Settings:
    return Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600, token_ttl=600,
                    max_token_lifetime=3600, rotation_grace=10)


@pytest.fixture
def server(settings, clock, stores):
    srv = ServerThread(settings, clock=clock, store=stores())
    yield srv
    srv.stop()


def seqs(records) -> list[int]:
    return [r["seq"] for r in records]


def test_trace_of_a_token_shows_its_life_in_order(client, clock):
    expires_at = clock.now + 1000
    batch = client.register([TokenSpec("bob", "cli"), TokenSpec("alice", "web", type=TokenType.REFRESH,
                                                                 family="f1", expires_at=expires_at)])
    root = batch.tokens[1]
    clock.advance(5)
    client.register_one("carol", "web")
    clock.advance(5)
    rotated = client.rotate(root.serial, request_id="r1", actor="as", origin="10.0.0.7")
    successor = rotated.successor.serial
    clock.advance(20)  # past the grace window
    reuse = client.rotate(root.serial, request_id="r2", actor="as", origin="10.9.9.9")

    trace = list(client.audit(serial=root.serial))
    assert [(r["seq"], r["type"]) for r in trace] == [
        (batch.seq, "register"), (rotated.seq, "rotate"), (reuse.seq, "reuse_detected")]
    assert (trace[1]["serial"], trace[1]["successor"], trace[1]["origin"]) == (root.serial, successor, "10.0.0.7")
    assert [(r["type"], r["seq"]) for r in client.audit(serial=successor)] == [
        ("rotate", rotated.seq), ("reuse_detected", reuse.seq)]
    assert [r["type"] for r in client.audit(serial=batch.tokens[0].serial)] == ["register"]
    assert list(client.audit(serial=999)) == []

    clock.advance(1000)  # past the root's expiry
    trace = list(client.audit(serial=root.serial))
    assert [r["type"] for r in trace] == ["register", "rotate", "reuse_detected", "expired"]
    assert (trace[-1]["seq"], trace[-1]["time"], trace[-1]["serial"]) == (0, expires_at, root.serial)
    assert [r["time"] for r in trace] == sorted(r["time"] for r in trace)
    assert [r["type"] for r in client.audit(serial=root.serial, limit=2)] == ["register", "rotate"]
    assert [r["type"] for r in client.audit(serial=root.serial, after_seq=rotated.seq)] == ["reuse_detected"]


def test_filters_by_subject_client_time_with_limit_and_resume(client, clock):
    t0 = clock.now
    client.register_one("alice", "web")                        # 1 at t0
    clock.advance(10)
    client.register_one("bob", "cli")                          # 2 at t0+10
    clock.advance(10)
    client.revoke(subject="alice", reason="r")                 # 3 at t0+20
    clock.advance(10)
    client.cutoff("client", "cli", reason="k")                 # 4 at t0+30
    clock.advance(10)
    assert client.revoke(client_id="web", subject="bob").count == 0  # no change, no record
    client.register_one("alice", "cli")                        # 5 at t0+40

    assert seqs(client.audit()) == [1, 2, 3, 4, 5]
    assert seqs(client.audit(subject="alice")) == [1, 3, 5]
    # A record is about a subject / client when it named it or changed one of its tokens.
    assert seqs(client.audit(subject="bob")) == [2, 4]
    assert seqs(client.audit(client_id="cli")) == [2, 4, 5]
    assert seqs(client.audit(client_id="web")) == [1, 3]
    assert seqs(client.audit(since=t0 + 10, until=t0 + 30)) == [2, 3, 4]
    assert seqs(client.audit(since=t0 + 31)) == [5]
    assert seqs(client.audit(until=t0)) == [1]
    assert seqs(client.audit(subject="alice", since=t0 + 1)) == [3, 5]
    assert seqs(client.audit(limit=2)) == [1, 2]
    assert seqs(client.audit(after_seq=2)) == [3, 4, 5]
    assert seqs(client.audit(after_seq=2, limit=1, client_id="cli")) == [4]
    pages, after = [], 0
    while page := list(client.audit(after_seq=after, limit=2)):
        pages.append(seqs(page))
        after = page[-1]["seq"]
    assert pages == [[1, 2], [3, 4], [5]]


def test_subject_and_client_filters_find_every_name_of_a_large_registration(client):
    """A registration record lists only a few names; the filters still find all of them,
    and only within that registration's serials."""
    client.register([TokenSpec(f"user-{i}", f"app-{i}") for i in range(20)])  # seq 1
    client.register([TokenSpec("user-99", "app-99"), TokenSpec("user-19", "app-0")])  # seq 2
    for i in (0, 15, 16, 19):
        assert seqs(client.audit(subject=f"user-{i}")) == ([1, 2] if i == 19 else [1])
        assert seqs(client.audit(client_id=f"app-{i}")) == ([1, 2] if i == 0 else [1])
    assert seqs(client.audit(subject="user-99")) == [2]
    assert seqs(client.audit(subject="user-20")) == []
    assert seqs(client.audit(subject="user-17", client_id="app-17")) == [1]
    assert seqs(client.audit(subject="user-17", client_id="app-18")) == [1]  # both names are in it


def test_filters_find_a_large_revocation_by_the_tokens_it_revoked_listed_or_not(settings, clock, stores):
    """A revocation of many subjects' tokens lists a few names; a filter finds it for every
    subject it touched (by its logged change, and once the log is compacted, by the revocation
    records), never for one it did not touch."""
    srv = ServerThread(dataclasses.replace(settings, log_keep=1, log_keep_seconds=0), clock=clock, store=stores())
    try:
        with RecallClient(srv.address) as client:
            client.register([TokenSpec(f"user-{i}", "app") for i in range(30)])  # seq 1, serials 1..30
            client.register([TokenSpec("quiet", "app")] * 5)  # seq 2, serials 31..35
            assert client.revoke(serials=list(range(1, 31)), reason="many").seq == 3
            assert client.revoke(serials=[33], reason="one").seq == 4
            cases = (("user-0", [1, 3]), ("user-29", [1, 3]), ("quiet", [2, 4]), ("nobody", []))
            for name, want in cases:
                assert seqs(client.audit(subject=name)) == want, name
            assert seqs(client.audit(subject="user-29", after_seq=1, limit=1)) == [3]
            # Past the log's retention the revocation records still say which change revoked what.
            clock.advance(1)
            srv.call(srv.engine.sweep())
            assert srv.call(srv.engine.oldest_resumable()) == 3  # changes 1..3 left the log
            for name, want in cases:
                assert seqs(client.audit(subject=name)) == want, name
    finally:
        srv.stop()


class Follower:
    """client.audit(follow=True, **query) read on a thread; `records` as they arrive."""

    def __init__(self, address: str, **query) -> None:
        self.client = RecallClient(address)
        self.records: list[dict] = []
        self.error: RecallError | None = None
        self.ended = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(query,), name="audit-follower", daemon=True)
        self._thread.start()

    def _run(self, query: dict) -> None:
        try:
            for record in self.client.audit(follow=True, **query):
                with self._cond:
                    self.records.append(record)
                    self._cond.notify_all()
        except RecallError as exc:
            self.error = exc
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def wait_for_seq(self, seq: int) -> None:
        """Return once a record with `seq` (or later) arrived."""
        with self._cond:
            self._cond.wait_for(lambda: self.ended or (self.records and self.records[-1]["seq"] >= seq), WAIT)
            assert self.records and self.records[-1]["seq"] >= seq, (seq, self.records, self.error)

    def wait_ended(self) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.ended, WAIT), "the stream did not end"
        self._thread.join(WAIT)

    def close(self) -> None:
        """Close the channel (cancelling the stream if it still runs) and end the thread."""
        self.client.close()
        self.wait_ended()


def test_follow_streams_new_records_in_order_and_cancels_cleanly(server, client):
    client.register_one("alice", "web")
    client.register_one("bob", "web")
    everything = Follower(server.address)                  # history first, then new records
    new_only = Follower(server.address, after_seq=2)       # only what comes after seq 2
    alice = Follower(server.address, after_seq=2, subject="alice")
    followers = (everything, new_only, alice)
    try:
        everything.wait_for_seq(2)

        def write(n: int) -> None:                         # writers racing the followers' reads
            with RecallClient(server.address, timeout=WAIT) as own:
                for i in range(WRITES):
                    own.register([TokenSpec("alice" if (n + i) % 3 == 0 else "bob", "web")])

        with ThreadPoolExecutor(WRITERS) as pool:
            for future in [pool.submit(write, n) for n in range(WRITERS)]:
                future.result(WAIT)
        head = client.revoke(subject="alice", reason="done").seq
        for follower in followers:
            follower.wait_for_seq(head)
    finally:
        for follower in followers:
            follower.close()
    for follower in followers:
        assert follower.error is not None and follower.error.code_name == "CANCELLED", follower.error
    assert head == 2 + WRITERS * WRITES + 1
    assert seqs(everything.records) == list(range(1, head + 1))
    assert seqs(new_only.records) == list(range(3, head + 1))
    assert seqs(alice.records) == seqs(client.audit(after_seq=2, subject="alice"))
    assert len(alice.records) > 1 and alice.records[-1]["type"] == "revoke"
    # The server goes on serving after its followers left.
    assert client.register([TokenSpec("carol", "web")]).seq == head + 1
    assert seqs(client.audit(after_seq=head)) == [head + 1]


def _stall_reader(server: ServerThread) -> threading.Event:
    """Occupy the engine's single reader thread until the returned event is set."""
    gate = threading.Event()
    server.engine._reader.submit(gate.wait, WAIT)
    return gate


def test_follow_sends_no_duplicates_when_commits_race_its_read(server, client):
    client.register_one("alice", "web")                     # seq 1
    follower = Follower(server.address)
    try:
        follower.wait_for_seq(1)
        gate = _stall_reader(server)
        try:
            client.register_one("bob", "web")               # seq 2 wakes the stream; its read waits at the gate
            client.register_one("carol", "web")             # seq 3 commits meanwhile
        finally:
            gate.set()
        client.register_one("dave", "web")                  # seq 4
        follower.wait_for_seq(4)
    finally:
        follower.close()
    assert seqs(follower.records) == [1, 2, 3, 4]


def test_follow_stops_at_its_limit(server, client):
    client.register_one("alice", "web")                     # seq 1
    follower = Follower(server.address, limit=2)
    try:
        follower.wait_for_seq(1)
        gate = _stall_reader(server)
        try:
            client.register_one("bob", "web")               # seq 2
            client.register_one("carol", "web")             # seq 3
        finally:
            gate.set()
        follower.wait_ended()
    finally:
        follower.close()
    assert follower.error is None
    assert seqs(follower.records) == [1, 2]



def test_audit_records_hold_ids_and_metadata_never_token_material(server, client, clock):
    """Scopes, jtis, request ids and references to foreign tokens never reach the trail;
    what the caller sent as metadata (actor, origin, reason) and the ids it names do."""
    tokens = client.register([
        TokenSpec("alice", "web", jti=f"opaque-{MARKER}-1", scopes=("read", f"scope-{MARKER}"), family="fam-1",
                  type=TokenType.REFRESH, origin="login-page"),
        TokenSpec("alice", "web", jti=f"opaque-{MARKER}-2", issuer=IDP, family="fam-1"),
        TokenSpec("bob", "cli", scopes=(f"x-{MARKER}",)),
    ], actor="issuer-svc").tokens
    rotated = client.rotate(tokens[0].serial, request_id=f"req-{MARKER}", actor="as", origin="10.1.2.3",
                            successor=TokenSpec("", "", jti=f"opaque-{MARKER}-3", scopes=(f"scope-{MARKER}",)))
    clock.advance(60)
    client.rotate(tokens[0].serial, request_id=f"req2-{MARKER}", actor="as", origin="10.1.2.4")  # reuse
    client.revoke(tokens=[JtiRef(IDP, f"opaque-{MARKER}-2"), JtiRef(IDP, f"foreign-{MARKER}")],
                  reason="leaked", actor="secops", origin="ticket-42")
    client.revoke(serials=[tokens[2].serial], reason="logout", actor="bob")
    client.cutoff("subject", "carol", reason="compromised", actor="secops")
    client.check(issuer=IDP, jti=f"probe-{MARKER}", sub="carol")  # reads leave no record
    clock.advance(4000)
    client.register_one("dave", "web")
    assert server.call(server.engine.sweep())  # expiries, the foreign key and the rule go

    records = list(client.audit())
    assert [r["type"] for r in records] == [
        "register", "rotate", "reuse_detected", "revoke", "revoke", "cutoff", "register", "sweep"]
    assert records[-1]["rules_retired"] == [[SUBJECT, "carol", records[5]["rule"]["before"]]]
    for record in records:
        assert MARKER not in json.dumps(record), record
    text = json.dumps(records)
    for shown in ("issuer-svc", "login-page", "10.1.2.3", "10.1.2.4", "leaked", "ticket-42", "secops",
                  "compromised", "fam-1", "alice", "carol"):
        assert shown in text, shown
    assert records[1]["successor"] == rotated.successor.serial


def test_retention_removes_old_records_in_a_sweep(settings, clock):
    """Records go max_token_lifetime + audit_retention after they were written (the
    longest a token they explain can live, then the retention), by a sweep."""
    server = ServerThread(dataclasses.replace(settings, audit_retention=RETENTION), clock=clock)
    try:
        with RecallClient(server.address) as client:
            _retention(server, client, clock)
    finally:
        server.stop()


def _retention(server: ServerThread, client: RecallClient, clock: FakeClock) -> None:
    def registrations() -> list[int]:
        return [r["seq"] for r in client.audit() if r["type"] == "register"]

    client.register_one("alice", "web")                      # seq 1 at t0
    clock.advance(50)
    client.register_one("bob", "web")                        # seq 2 at t0+50
    clock.advance(server.settings.max_token_lifetime + RETENTION - 50)
    server.call(server.engine.sweep())                       # seq 1 is just old enough to stay
    assert registrations() == [1, 2]
    clock.advance(1)
    server.call(server.engine.sweep())
    assert registrations() == [2]
    assert list(client.audit(serial=1)) == []               # its token was purged too
    clock.advance(50)
    server.call(server.engine.sweep())
    assert registrations() == []
    assert [r["type"] for r in client.audit()] == ["sweep"]  # the sweep that purged the tokens stays
