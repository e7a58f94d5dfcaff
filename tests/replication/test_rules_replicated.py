"""Cut-off rules travel to subscribers: Watch deltas, snapshots and follower nodes.

A real primary (ServerThread on 127.0.0.1:0, fake clock so that rules retire
when the test says) is followed by a ReplicaCore fed from Watch streams read
on the test thread, and by a follower node (a ServerThread with
Settings.follow). Each stream is read until the node's heartbeat vouches for
the head, which makes the ReplicaCore compare its digest (rules included)
with the node's. A replica's `cut_off` must answer claims the way the
primary's Check does.
"""

import itertools

import grpc
import pytest
from recallclient import JtiRef, RecallClient, RecallError, TokenState
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc
from recallclient.codec import rule_from_proto
from recallclient.replica_core import Outcome, ReplicaCore
from recallclient.revoked_set import ALL, CLIENT, ISSUER, SUBJECT

from recallcore.settings import Settings

from ..support import FakeClock, ServerThread

WAIT = 30.0  # deadline of every stream and wait; never reached when things work
LIFETIME = 3600  # max_token_lifetime: when a rule retires
IDP = "https://idp.example"
REVOKED, UNKNOWN = TokenState.REVOKED, TokenState.UNKNOWN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(data_dir) -> Settings:
    return Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600, token_ttl=600,
                    max_token_lifetime=LIFETIME, heartbeat_interval=0.05)


@pytest.fixture
def server(settings, clock):
    srv = ServerThread(settings, clock=clock)
    yield srv
    srv.stop()


def follow(address: str, core: ReplicaCore, seq: int, *, with_expiries: bool = False) -> list[Outcome]:
    """Read one Watch stream from where `core` is until a heartbeat vouches for `seq`; return the outcomes."""
    core.with_expiries = with_expiries
    outcomes: list[Outcome] = []
    with grpc.insecure_channel(address) as channel:
        call = recall_pb2_grpc.RecallStub(channel).Watch(core.request(), timeout=WAIT)
        try:
            for event in call:
                outcomes.append(core.handle(event))  # a digest that differs raises Resync
                if outcomes[-1].kind == "vouched" and outcomes[-1].seq >= seq:
                    return outcomes
        finally:
            call.cancel()
    raise AssertionError(f"stream ended before vouching for seq {seq}: {outcomes}")


def snapshot(address: str, *, with_expiries: bool) -> list[pb.SnapshotChunk]:
    """The chunks of a new subscriber's snapshot."""
    chunks: list[pb.SnapshotChunk] = []
    with grpc.insecure_channel(address) as channel:
        call = recall_pb2_grpc.RecallStub(channel).Watch(
            pb.WatchRequest(with_expiries=with_expiries), timeout=WAIT)
        try:
            for event in call:
                assert event.WhichOneof("event") == "snapshot", event
                chunks.append(event.snapshot)
                if len(chunks) == event.snapshot.count:
                    return chunks
        finally:
            call.cancel()
    raise AssertionError(f"stream ended after {len(chunks)} snapshot chunks")


def primary_rules(server: ServerThread) -> set:
    return server.run(lambda: set(server.engine.state.revocations.rules))


def primary_digest(server: ServerThread) -> bytes:
    return server.run(lambda: server.engine.state.revocations.digest())


def applied(outcomes: list[Outcome]):
    return [o.delta for o in outcomes if o.kind == "applied"]


def assert_claims_agree(core: ReplicaCore, client: RecallClient, now: int) -> None:
    """The replica's cut_off answers every claim combination as the node's Check does."""
    grid = itertools.product(["alice", "bob", ""], ["web", "cli", ""], [IDP, "https://other.example"],
                             [0, now - 2000, now - 200, now - 50, now])
    refs = [JtiRef(issuer, f"probe-{n}", sub=sub, client_id=cid, issued_at=iat)
            for n, (sub, cid, issuer, iat) in enumerate(grid)]
    states = client.check_batch(tokens=refs).token_states
    for ref, state in zip(refs, states):
        assert state in (REVOKED, UNKNOWN)
        assert core.state.cut_off(ref.issuer, ref.sub, ref.client_id, ref.issued_at) == (state == REVOKED), ref


def test_cutoffs_reach_a_subscriber_as_rules_added(server, client, clock):
    now = clock.now
    alice = [client.register_one("alice", "web").serial, client.register_one("alice", "cli").serial]
    bob = client.register_one("bob", "web").serial
    core = ReplicaCore()
    follow(server.address, core, client.stats().seq)
    assert core.state.rules == set() and not core.state.cut_off(IDP, "alice", "web", 0)

    first = client.cutoff("subject", "alice", reason="compromised")
    second = client.cutoff("client", "cli", before=now - 100)
    third = client.cutoff("issuer", IDP, before=now - 1000)
    outcomes = follow(server.address, core, third.seq)

    deltas = applied(outcomes)
    added = set().union(*(d.rules_added for d in deltas))
    assert added == {(SUBJECT, "alice", first.before), (CLIENT, "cli", second.before), (ISSUER, IDP, third.before)}
    assert set(alice) <= set().union(*(d.added for d in deltas)) and bob not in core.state.revoked
    assert core.state.rules == primary_rules(server) == added
    assert core.state.digest() == primary_digest(server)
    assert_claims_agree(core, client, now)

    # A newer rule for the same subject replaces the old one on the replica too.
    clock.advance(30)
    newer = client.cutoff("subject", "alice")
    deltas = applied(follow(server.address, core, newer.seq))
    assert deltas[-1].rules_removed == {(SUBJECT, "alice", first.before)}
    assert core.state.rules == primary_rules(server)
    assert core.state.digest() == primary_digest(server)
    assert_claims_agree(core, client, clock.now)


@pytest.mark.parametrize("with_expiries", [False, True])
def test_a_new_subscriber_gets_the_rules_in_its_snapshot(server, client, clock, with_expiries):
    client.register_one("alice", "web")
    client.cutoff("subject", "alice", reason="compromised")
    client.cutoff("all", before=clock.now - 1000)
    client.cutoff("issuer", IDP, before=clock.now - 10)
    rules = primary_rules(server)
    assert len(rules) == 3

    chunks = snapshot(server.address, with_expiries=with_expiries)
    assert {rule_from_proto(r) for r in chunks[0].rules} == rules
    assert all(not c.rules for c in chunks[1:])
    assert chunks[0].digest == primary_digest(server)

    core = ReplicaCore()
    outcomes = follow(server.address, core, client.stats().seq, with_expiries=with_expiries)
    assert outcomes[0].kind in ("chunk", "installed")
    assert core.state.rules == rules and core.state.digest() == primary_digest(server)
    assert core.state.cut_off(IDP, "", "", 0) and core.state.cut_off("x", "", "", clock.now - 2000)
    assert_claims_agree(core, client, clock.now)


def test_retirement_reaches_the_subscriber_as_rules_removed(server, client, clock):
    core = ReplicaCore()
    rule = client.cutoff("subject", "alice", reason="compromised")
    keep = client.cutoff("all", before=clock.now + 30)  # retires 30 s after the first
    follow(server.address, core, keep.seq)
    assert core.state.rules == {(SUBJECT, "alice", rule.before), (ALL, "", keep.before)}

    clock.advance(LIFETIME)
    seq = server.call(server.engine.sweep())
    deltas = applied(follow(server.address, core, seq))
    assert [d.rules_removed for d in deltas] == [{(SUBJECT, "alice", rule.before)}]
    assert core.state.rules == primary_rules(server) == {(ALL, "", keep.before)}
    assert core.state.digest() == primary_digest(server)

    clock.advance(30)
    seq = server.call(server.engine.sweep())
    assert [d.rules_removed for d in applied(follow(server.address, core, seq))] == [{(ALL, "", keep.before)}]
    assert core.state.rules == primary_rules(server) == set()
    assert not core.state.cut_off(IDP, "alice", "web", 0)
    assert core.state.digest() == primary_digest(server)


def test_a_follower_node_answers_claims_checks_with_the_rules(server, client, clock, tmp_path):
    token = client.register_one("alice", "web")
    other = client.register_one("bob", "web")
    rule = client.cutoff("subject", "alice", reason="compromised")
    follower = ServerThread(Settings(data_dir=tmp_path / "follower", listen="127.0.0.1:0",
                                     follow=server.address, heartbeat_interval=0.05))
    try:
        with RecallClient(follower.address) as replica:
            claims = {"issuer": IDP, "jti": "never-registered", "sub": "alice", "client_id": "web",
                      "issued_at": rule.before - 1}
            checked = replica.check(**claims, min_seq=rule.seq)
            assert (checked.state, checked.serial, checked.reason) == (REVOKED, 0, "cut-off rule")
            assert replica.check(token.serial).state == REVOKED
            assert replica.check(other.serial).state == TokenState.ACTIVE
            assert replica.check(**{**claims, "sub": "bob"}).state == UNKNOWN
            batch = replica.check_batch(tokens=[JtiRef(IDP, "a", sub="alice"), JtiRef(IDP, "b", sub="bob")])
            assert batch.token_states == (REVOKED, UNKNOWN)
            with pytest.raises(RecallError) as err:
                replica.cutoff("subject", "bob")
            assert err.value.code_name == "FAILED_PRECONDITION"

            clock.advance(LIFETIME)
            seq = server.call(server.engine.sweep())
            assert replica.check(**claims, min_seq=seq).state == UNKNOWN
            assert replica.check_batch(tokens=[JtiRef(IDP, "a", sub="alice")], min_seq=seq).token_states == (UNKNOWN,)
            assert follower.run(lambda: follower.engine.state.revocations.rules) == set()
            assert follower.run(lambda: follower.engine.state.revocations.digest()) == primary_digest(server)
    finally:
        follower.stop()
