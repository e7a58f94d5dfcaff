"""A follower (serve --follow): converges, reads its writes with min_seq, refuses
writes, serves Watch with the primary's history, survives a primary restart.

A real primary and a real follower, each a ServerThread on 127.0.0.1:0.
"""

import asyncio
import contextlib
import dataclasses
import random
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recallclient import RecallClient, RecallError, Replica, TokenSpec, TokenState, TokenType, canonical_jti
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

from recallcore.server import SERVICE_NAME
from recallcore.settings import Settings

from ..history import (
    ServerLog,
    Servers,
    Subscriber,
    assert_resumable,
    check_history,
    classify,
    server_state,
)
from ..support import free_address

HEARTBEAT = 0.05
SYNC_TIMEOUT = 30.0
ISSUER = "recallcore"  # the primary's Settings.issuer
OTHER_ISSUER = "https://other-idp.example"


@pytest.fixture
def primary_settings(settings):
    return dataclasses.replace(settings, heartbeat_interval=HEARTBEAT)


@pytest.fixture
def primary(servers, primary_settings):
    return servers.start(primary_settings)


def start_follower(servers: Servers, tmp_path, address: str):
    return servers.start(Settings(data_dir=tmp_path / "follower", listen="127.0.0.1:0", follow=address,
                                  heartbeat_interval=HEARTBEAT))


@pytest.fixture
def follower(servers, tmp_path, primary):
    node = start_follower(servers, tmp_path, primary.address)
    node.call(asyncio.wait_for(node.engine.synced.wait(), SYNC_TIMEOUT), SYNC_TIMEOUT + 5)
    return node


def caught_up(follower, seq: int) -> None:
    """Return once the follower has applied `seq` (it waits on the sequence, no polling)."""
    follower.call(follower.engine.wait_for_seq(seq, SYNC_TIMEOUT), SYNC_TIMEOUT + 5)


def write_some(address: str, rng: random.Random, rounds: int) -> int:
    """Registrations and revocations of every kind; returns the last seq."""
    with RecallClient(address) as client:
        seq = 0
        for i in range(rounds):
            specs = [TokenSpec(f"user-{rng.randrange(5)}", "app", type=TokenType.REFRESH,
                               family=f"family-{rng.randrange(8)}", jti=f"custom-{i}-{k}" if k == 0 else "")
                     for k in range(rng.randint(1, 6))]
            tokens = client.register(specs).tokens
            seq = client.revoke(serials=[tokens[-1].serial]).seq
            seq = client.revoke(tokens=[(OTHER_ISSUER, f"ext-{i}"), (ISSUER, specs[0].jti)]).seq or seq
            if i % 7 == 0:
                seq = client.revoke(family=f"family-{rng.randrange(8)}").seq or seq
            if i % 11 == 0:
                seq = client.revoke(subject=f"user-{rng.randrange(5)}").seq or seq
        return max(seq, client.stats().seq)


def same_state(primary, follower) -> None:
    """The follower holds the primary's set, digest and expiries."""
    want = server_state(primary)
    caught_up(follower, want.seq)
    assert server_state(follower) == want
    through = want.registered_through
    expiries = [srv.run(lambda srv=srv: srv.engine.state.expiry.array[: through + 1].copy())
                for srv in (primary, follower)]
    assert np.array_equal(*expiries)


def test_follower_converges_to_the_primarys_set_and_digest(primary, follower, rng):
    write_some(primary.address, rng, 30)
    same_state(primary, follower)
    with RecallClient(primary.address) as p, RecallClient(follower.address) as f:
        ours, theirs = p.stats(), f.stats()
    fields = ("registered", "revoked", "active", "expired", "foreign_revoked", "seq", "store_id")
    assert [getattr(theirs, n) for n in fields] == [getattr(ours, n) for n in fields]


def test_follower_reads_its_writes_with_min_seq(primary, follower):
    with RecallClient(primary.address) as p, RecallClient(follower.address) as f:
        for i in range(20):
            serial = p.register_one("alice", "app").serial
            receipt = p.revoke(serials=[serial], tokens=[(OTHER_ISSUER, f"ryw-{i}")])
            assert f.check(serial, min_seq=receipt.seq).state == TokenState.REVOKED
            batch = f.check_batch([serial, serial + 1], tokens=[(OTHER_ISSUER, f"ryw-{i}")], min_seq=receipt.seq)
            assert batch.states == (TokenState.REVOKED, TokenState.UNKNOWN)
            assert batch.token_states == (TokenState.REVOKED,) and batch.seq >= receipt.seq


def test_min_seq_the_follower_never_reaches_is_deadline_exceeded(primary, follower):
    with RecallClient(primary.address) as p:
        serial = p.register_one("alice", "app").serial
        far = p.stats().seq + 1000
    with RecallClient(follower.address, timeout=0.3) as f:
        for call in (lambda: f.check(serial, min_seq=far), lambda: f.check_batch([serial], min_seq=far)):
            with pytest.raises(RecallError) as failure:
                call()
            assert failure.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_custom_jti_is_unknown_on_a_follower_until_revoked(primary, follower):
    # follower.py: a follower cannot know "tokens by caller-chosen (non-canonical)
    # jti unless they are revoked" (revoking one adds its (issuer, jti) key to the
    # foreign set, which followers receive); canonical jtis carry their serial.
    with RecallClient(primary.address) as p, RecallClient(follower.address) as f:
        one, two = p.register([TokenSpec("bob", "app", jti="bob-token-1"),
                               TokenSpec("bob", "app", jti="bob-token-2")]).tokens
        seq = p.stats().seq
        for token in (one, two):
            assert p.check(issuer=ISSUER, jti=token.jti).state == TokenState.ACTIVE
            custom = f.check(issuer=ISSUER, jti=token.jti, min_seq=seq)
            assert (custom.state, custom.serial) == (TokenState.UNKNOWN, 0)
            assert f.check(issuer=ISSUER, jti=token.canonical_jti).state == TokenState.ACTIVE
        by_serial = p.revoke(serials=[one.serial]).seq
        by_jti = p.revoke(tokens=[(ISSUER, two.jti)]).seq
        for token, seq in ((one, by_serial), (two, by_jti)):
            assert f.check(issuer=ISSUER, jti=token.jti, min_seq=seq).state == TokenState.REVOKED
            assert f.check(issuer=ISSUER, jti=token.canonical_jti).state == TokenState.REVOKED
            assert f.check_batch(tokens=[(ISSUER, token.jti)]).token_states == (TokenState.REVOKED,)


def test_foreign_token_with_a_canonical_looking_jti_is_revoked_on_the_follower_too(primary, follower):
    with RecallClient(primary.address) as p, RecallClient(follower.address) as f:
        serial = p.register_one("carol", "app").serial
        foreign = (OTHER_ISSUER, canonical_jti(serial))  # e.g. another recallcore store's token
        seq = p.revoke(tokens=[foreign]).seq
        assert p.check(issuer=OTHER_ISSUER, jti=canonical_jti(serial)).state == TokenState.REVOKED
        assert f.check(issuer=OTHER_ISSUER, jti=canonical_jti(serial), min_seq=seq).state == TokenState.REVOKED


def test_writes_to_a_follower_fail_naming_the_primary(primary, follower):
    with RecallClient(follower.address) as f:
        for write in (lambda: f.register_one("dave", "app"), lambda: f.revoke(serials=[1])):
            with pytest.raises(RecallError) as failure:
                write()
            assert failure.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert primary.address in failure.value.details


def test_watch_through_the_follower_has_the_primarys_history(primary, follower, rng):
    log = ServerLog()
    subs = [Subscriber("steady", follower.address),
            Subscriber("flaky", follower.address, disconnect=(random.Random(rng.random()), 0.2))]
    with contextlib.ExitStack() as stack:
        for sub in subs:
            stack.enter_context(sub)
        writers = [threading.Thread(target=write_some, args=(primary.address, random.Random(rng.random()), 25))
                   for _ in range(2)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(SYNC_TIMEOUT)
        assert not any(writer.is_alive() for writer in writers)
        final = server_state(primary)
        for sub in subs:
            sub.wait_vouched(final.seq)
    log.capture(primary.engine)  # the follower's seqs are the primary's
    for sub in subs:
        assert not sub.resyncs, sub.resyncs
        check_history(sub.streams, log, final=final)
        for stream in sub.streams:  # the follower's ring still holds every resumed seq
            if stream.request.after_seq and stream.events:
                assert_resumable(stream, expect="deltas")
    assert len(subs[1].streams) > 1


def test_follower_survives_a_primary_restart_and_resumes(servers, primary_settings, primary, follower, rng):
    address = primary.address
    with Subscriber("downstream", follower.address) as sub:
        write_some(address, rng, 10)
        same_state(primary, follower)
        servers.stop(primary)
        primary = servers.start(dataclasses.replace(primary_settings, listen=address))  # same data, same port
        write_some(address, rng, 10)
        same_state(primary, follower)
        final = server_state(primary)
        sub.wait_vouched(final.seq)
    assert follower.run(lambda: follower.engine.hub.epoch) == 1, "the follower took a second snapshot"
    check_history(sub.streams, ServerLog().capture(primary.engine), final=final)
    assert [classify(s) for s in sub.streams] == ["snapshot"]


def test_a_new_store_behind_the_same_address_resets_the_followers_subscribers(
        servers, tmp_path, primary_settings, primary, follower, rng):
    address, old_log = primary.address, ServerLog()
    with Subscriber("downstream", follower.address) as sub:
        write_some(address, rng, 5)
        sub.wait_vouched(server_state(primary).seq)
        old_log.capture(primary.engine)
        servers.stop(primary)
        other = dataclasses.replace(primary_settings, data_dir=tmp_path / "other", listen=address)
        primary = servers.start(other)  # another store where the primary was
        write_some(address, rng, 3)
        final = server_state(primary)
        sub.wait_until(lambda s: s.core.state.store_id == final.store_id and s.vouched >= final.seq,
                       "following the new store")
    assert follower.run(lambda: follower.engine.hub.epoch) == 2, "the follower did not install the new store"
    new_log = ServerLog().capture(primary.engine)
    check_history(sub.streams, {old_log.store_id: old_log, new_log.store_id: new_log}, final=final)
    resets = [v.reason for s in sub.streams for k, v in s.items if k == "reset"]
    assert resets == ["upstream reset: this node installed a new snapshot"], resets
    assert not sub.resyncs, sub.resyncs


async def _close_as_an_event_arrives(engine) -> bool:
    """Do what Follower.close() does (closed = True, cancel the follow task) at the
    instant a read of the primary's stream completes; True if the task then ends."""

    def close_now(_=None) -> None:
        engine.closed = True
        engine._task.cancel()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while True:  # a pending read of the Watch call in a task of its own (made by wait_for)
        reads = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_StreamResponseMixin.read"]
        if reads or loop.time() > deadline:
            break
        await asyncio.sleep(0.01)
    if reads:
        reads[0].add_done_callback(close_now)  # runs right after wait_for's own callback
    else:
        close_now()  # reads run inside the follow task: nothing can drop the cancellation
    done, _ = await asyncio.wait({engine._task}, timeout=5.0)
    return bool(done)


def test_follower_stops_when_closed_just_as_an_event_arrives(primary, follower):
    assert follower.call(_close_as_an_event_arrives(follower.engine)), "the follow task ignored close()"


def recall_health(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def test_health_is_serving_once_the_follower_has_synced(servers, tmp_path, primary_settings):
    address = free_address()  # nothing listens here yet
    follower = start_follower(servers, tmp_path, address)
    assert recall_health(follower.address) != "SERVING"
    with RecallClient(follower.address) as f:
        with pytest.raises(RecallError) as failure:
            f.check(1)
        assert failure.value.code == grpc.StatusCode.FAILED_PRECONDITION
    servers.start(dataclasses.replace(primary_settings, listen=address))
    deadline = time.monotonic() + SYNC_TIMEOUT
    while recall_health(follower.address) != "SERVING":  # health has no wait: poll with a deadline
        assert time.monotonic() < deadline, "the follower never reported SERVING"
        time.sleep(0.05)
    assert follower.engine.synced.is_set()
    with RecallClient(follower.address) as f:
        assert f.check(1).state == TokenState.UNKNOWN


# ------------------------------------------------ a follower vouches only when it can


def _first_event_or_error(address: str, request: pb.WatchRequest):
    with grpc.insecure_channel(address) as channel:
        call = recall_pb2_grpc.RecallStub(channel).Watch(request, timeout=SYNC_TIMEOUT)
        try:
            return next(iter(call))
        except grpc.RpcError as exc:
            return exc
        finally:
            call.cancel()


def test_an_unsynced_follower_refuses_to_stream(servers, tmp_path):
    lonely = start_follower(servers, tmp_path, free_address())  # its primary is not there
    got = _first_event_or_error(lonely.address, pb.WatchRequest(store_id="some-store", after_seq=5))
    assert isinstance(got, grpc.RpcError) and got.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_follower_cut_off_from_its_primary_stops_vouching(servers, tmp_path, primary, follower):
    with RecallClient(primary.address) as p:
        token = p.register_one("alice", "web")
        caught_up(follower, p.revoke(serials=[token.serial]).seq)
    with Replica(follower.address, max_staleness=4 * HEARTBEAT * 10) as replica:
        assert replica.wait_for(follower.engine.state.seq, SYNC_TIMEOUT)
        assert replica.is_revoked(token.serial)
        servers.stop(primary)
        never_issued = token.serial + 1000
        deadline = time.monotonic() + SYNC_TIMEOUT
        while not replica.is_revoked(never_issued) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling what a caller sees, bounded by the deadline
        assert replica.is_revoked(never_issued)  # stale: fails closed
        assert replica.staleness >= replica.max_staleness
    got = _first_event_or_error(follower.address, pb.WatchRequest())
    assert isinstance(got, grpc.RpcError) and got.code() == grpc.StatusCode.UNAVAILABLE


def test_a_subscriber_ahead_of_a_follower_is_not_moved_back(servers, tmp_path, primary, follower):
    with RecallClient(primary.address) as p:
        token = p.register_one("alice", "web")
        seq = p.revoke(serials=[token.serial]).seq
    caught_up(follower, seq)
    ahead = pb.WatchRequest(store_id=follower.engine.store_id, after_seq=seq + 5)
    got = _first_event_or_error(follower.address, ahead)
    assert isinstance(got, grpc.RpcError) and got.code() == grpc.StatusCode.UNAVAILABLE
    assert "behind the subscriber" in got.details()


def test_a_min_seq_never_acknowledged_is_refused_by_the_primary_and_capped_on_a_follower(
        servers, tmp_path, primary):
    follower = servers.start(dataclasses.replace(
        Settings(data_dir=tmp_path / "f", listen="127.0.0.1:0", follow=primary.address,
                 heartbeat_interval=HEARTBEAT), max_wait=0.5))
    follower.call(asyncio.wait_for(follower.engine.synced.wait(), SYNC_TIMEOUT), SYNC_TIMEOUT + 5)
    far = 2**64 - 1
    with RecallClient(primary.address, timeout=None) as p, RecallClient(follower.address, timeout=None) as f:
        serial = p.register_one("alice", "app").serial
        head = p.stats().seq
        for call in (lambda: p.check(serial, min_seq=far), lambda: p.check_batch([serial], min_seq=head + 1)):
            with pytest.raises(RecallError) as failure:
                call()  # no deadline: answered at once, not parked
            assert failure.value.code == grpc.StatusCode.OUT_OF_RANGE
            assert "beyond this primary's newest change" in failure.value.details
        assert p.check(serial, min_seq=head).state == TokenState.ACTIVE
        for call in (lambda: f.check(serial, min_seq=far), lambda: f.check_batch([serial], min_seq=far)):
            with pytest.raises(RecallError) as failure:
                call()  # no deadline: the follower's max_wait ends it
            assert failure.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "did not reach" in failure.value.details


def test_following_the_audit_trail_on_a_follower_names_the_primary(primary, follower):
    with RecallClient(follower.address) as f:
        for query in ({}, {"follow": True}):
            with pytest.raises(RecallError) as failure:
                list(f.audit(**query))
            assert failure.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert primary.address in failure.value.details
