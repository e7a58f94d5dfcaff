"""Where a Watch stream starts: at and around the compaction point, ahead of the
node, from another store, from nothing; and snapshots of a large set.

Each test opens one Watch call with a chosen request and checks how the
stream begins (tests/history.py records and checks it against the log).
"""

import dataclasses
import random
import time

import numpy as np
import pytest
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.codec import bitmap_from
from recallclient.replica_core import ReplicaCore
from recallclient.types import JtiRef, TokenSpec

from recallcore.core.model import Selector
from recallcore.replication import watch as watch_module
from recallcore.replication.watch import FOREIGN_PER_CHUNK, SNAPSHOT_SPAN
from recallcore.settings import Settings

from ..history import (
    ServerLog,
    Servers,
    StreamRecord,
    assemble,
    assert_atomic,
    assert_bookmarkable,
    assert_resumable,
    assert_snapshots_match_log,
    kinds,
    read_stream,
    server_state,
)
from ..support import FakeClock, ServerThread

HEARTBEAT = 0.05
LOG_KEEP = 10
OTHER_ISSUER = "https://other-idp.example"
BIG_REGISTERED = 2 * SNAPSHOT_SPAN + 6_000  # three revoked chunks: two whole spans and a part
BIG_REVOKED = BIG_REGISTERED // 2
BIG_FOREIGN = FOREIGN_PER_CHUNK + 1_000  # two foreign chunks
BATCH = 100_000  # Settings.max_batch (the default): most tokens or serials per call
BULK_TIMEOUT = 120.0


def beat(record: StreamRecord) -> bool:
    """Stop reading at the first heartbeat."""
    return record.events[-1].HasField("heartbeat")


@dataclasses.dataclass
class Compacted:
    """A primary whose log was compacted, and what it held before."""

    address: str
    store_id: str
    log: ServerLog  # captured before and after the compaction
    head: int
    first: int  # log_first() after the compaction


@pytest.fixture
def compacted(data_dir):
    clock = FakeClock()
    servers = Servers()
    settings = Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600,
                        heartbeat_interval=HEARTBEAT, log_keep=LOG_KEEP, log_keep_seconds=0,
                        watch_ring=4)
    srv = servers.start(settings, clock=clock)
    engine = srv.engine
    try:
        tokens = srv.call(engine.register([TokenSpec(f"user-{i % 4}", "app") for i in range(60)]))
        for i, token in enumerate(tokens.tokens[:40]):
            refs = (JtiRef(OTHER_ISSUER, f"ext-{i}"),) if i % 3 == 0 else ()
            srv.call(engine.revoke(Selector(serials=(token.serial,), tokens=refs)))
        log = ServerLog().capture(engine)
        clock.advance(2)  # log_keep_seconds=0 keeps changes of the current second
        assert srv.call(engine.sweep()) == 0
        log.capture(engine)
        assert (log.head, log.first) == (41, 41 - LOG_KEEP + 1)
        yield Compacted(srv.address, engine.store_id, log, log.head, log.first)
    finally:
        servers.close()


def watch(where: Compacted, after: int, store_id: str | None = None) -> StreamRecord:
    request = pb.WatchRequest(store_id=where.store_id if store_id is None else store_id, after_seq=after)
    return read_stream(where.address, request, beat)


@pytest.mark.parametrize("offset", [0, 1], ids=["at-the-point", "one-after"])
def test_resume_from_the_compaction_point_or_later_gets_deltas(compacted, offset):
    after = compacted.first - 1 + offset  # first - 1: the oldest seq a stream can resume after
    record = watch(compacted, after)
    assert kinds(record) == ["delta", "heartbeat"]
    assert_resumable(record, holds=compacted.log.holds, expect="deltas")
    delta = record.items[0][1]
    assert (delta.prev_seq, delta.seq) == (after, compacted.head)
    assert_atomic([record], compacted.log)
    start = compacted.log.states_at({after})[after]
    assert_bookmarkable([record], start)


def test_resume_from_before_the_compaction_point_gets_reset_and_snapshot(compacted):
    after = compacted.first - 2
    record = watch(compacted, after)
    assert kinds(record) == ["reset", "snapshot", "heartbeat"]
    assert_resumable(record, holds=compacted.log.holds, expect="compacted")
    reset = record.events[0].reset
    assert reset.reason == f"compacted: changes after seq {after} are no longer held"
    assert (reset.oldest_seq, reset.current_seq) == (compacted.first - 1, compacted.head)
    assert record.events[1].snapshot.seq == compacted.head
    assert_snapshots_match_log([record], compacted.log)
    assert_bookmarkable([record])


def test_resume_from_the_head_gets_a_heartbeat_and_no_delta(compacted):
    record = watch(compacted, compacted.head)
    assert kinds(record) == ["heartbeat"]
    assert record.events[0].heartbeat.seq == compacted.head == record.events[0].head_seq
    assert_resumable(record, holds=compacted.log.holds, expect="deltas")
    assert_bookmarkable([record], compacted.log.states_at({compacted.head})[compacted.head])


def test_subscriber_ahead_of_the_node_gets_reset_and_snapshot(compacted):
    record = watch(compacted, compacted.head + 5)
    assert kinds(record) == ["reset", "snapshot", "heartbeat"]
    assert_resumable(record, expect="ahead")
    reset = record.events[0].reset
    assert reset.reason.startswith(f"ahead: subscriber at seq {compacted.head + 5}"), reset.reason
    assert (reset.oldest_seq, reset.current_seq) == (compacted.first - 1, compacted.head)
    assert_snapshots_match_log([record], compacted.log)


def test_subscriber_of_another_store_gets_reset_and_snapshot(compacted):
    record = watch(compacted, 3, store_id="someone-else")
    assert kinds(record) == ["reset", "snapshot", "heartbeat"]
    assert_resumable(record, expect="store changed")
    reason = record.events[0].reset.reason
    assert reason.startswith("store changed") and "someone-else" in reason and compacted.store_id in reason
    assert {e.store_id for e in record.events} == {compacted.store_id}
    assert_snapshots_match_log([record], compacted.log)


def test_subscriber_with_nothing_gets_a_snapshot_without_reset(compacted):
    record = watch(compacted, 0, store_id="")
    assert kinds(record) == ["snapshot", "heartbeat"]
    assert_resumable(record, expect="snapshot")
    assert_snapshots_match_log([record], compacted.log)
    assert_bookmarkable([record])


# ------------------------------------------------------------- a large set


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A primary with 530k registered tokens (varied expiries), half of them revoked
    at random, and enough foreign revocations for two foreign chunks."""
    servers = Servers()
    settings = Settings(data_dir=tmp_path_factory.mktemp("big"), listen="127.0.0.1:0", sweep_interval=3600,
                        heartbeat_interval=HEARTBEAT, map_size=1 << 30)
    assert settings.max_batch == BATCH
    srv = servers.start(settings)
    try:
        engine, now = srv.engine, int(time.time())
        for start in range(0, BIG_REGISTERED, BATCH):
            specs = [TokenSpec("bulk", "app", expires_at=now + 3600 + (start + i) % 997) for i in range(BATCH)]
            srv.call(engine.register(specs[: BIG_REGISTERED - start]), BULK_TIMEOUT)
        revoked = random.Random(BIG_REGISTERED).sample(range(1, BIG_REGISTERED + 1), BIG_REVOKED)
        for start in range(0, BIG_REVOKED, BATCH):
            srv.call(engine.revoke(Selector(serials=tuple(revoked[start : start + BATCH]))), BULK_TIMEOUT)
        for start in range(0, BIG_FOREIGN, BATCH):
            refs = tuple(JtiRef(OTHER_ISSUER, f"ext-{i}") for i in range(start, min(start + BATCH, BIG_FOREIGN)))
            srv.call(engine.revoke(Selector(tokens=refs)), BULK_TIMEOUT)
        yield srv
    finally:
        servers.close()


def snapshot_of(srv, with_expiries: bool) -> StreamRecord:
    request = pb.WatchRequest(with_expiries=with_expiries)
    return read_stream(srv.address, request, beat, options=[("grpc.max_receive_message_length", 64 << 20)])


def test_large_set_is_split_into_consistent_chunks_that_reassemble(big):
    final = server_state(big)
    assert (len(final.revoked), len(final.foreign), final.registered_through) == \
        (BIG_REVOKED, BIG_FOREIGN, BIG_REGISTERED)
    record = snapshot_of(big, with_expiries=False)
    chunks = [e.snapshot for e in record.events if e.HasField("snapshot")]
    revoked_chunks = -(-(BIG_REGISTERED + 1) // SNAPSHOT_SPAN)
    assert len(chunks) == revoked_chunks + 2 and kinds(record) == ["snapshot", "heartbeat"]
    snap = assemble(chunks)  # same seq, count, cardinalities, digest; content matches them
    assert (snap.seq, snap.revoked, snap.foreign, snap.registered_through, snap.digest) == \
        (final.seq, final.revoked, final.foreign, final.registered_through, final.digest)
    for i, chunk in enumerate(chunks[:revoked_chunks]):  # chunk i holds serials of span i only
        members = bitmap_from(chunk.revoked)
        assert members and members.min() >= i * SNAPSHOT_SPAN and members.max() < (i + 1) * SNAPSHOT_SPAN
        assert not chunk.foreign
    assert [len(c.foreign) for c in chunks[revoked_chunks:]] == [FOREIGN_PER_CHUNK, BIG_FOREIGN - FOREIGN_PER_CHUNK]
    assert record.events[-1].heartbeat.digest == final.digest


def test_snapshot_with_expiries_carries_every_serials_expiry(big):
    record = snapshot_of(big, with_expiries=True)
    chunks = [e.snapshot for e in record.events if e.HasField("snapshot")]
    snap = assemble(chunks)
    through = snap.registered_through
    expected = big.run(lambda: big.engine.state.expiry.array[: through + 1].copy())
    got = np.zeros(through + 1, dtype=np.uint32)
    covered = 0
    for chunk in chunks:
        if chunk.expiries:
            part = np.frombuffer(chunk.expiries, dtype="<u4")
            assert chunk.expiries_from % SNAPSHOT_SPAN == 0 and len(part) <= SNAPSHOT_SPAN
            got[chunk.expiries_from : chunk.expiries_from + len(part)] = part
            covered += len(part)
    assert covered == through + 1
    assert np.array_equal(got, expected)
    assert len(np.unique(expected[1:])) == 997  # the expiries differ from serial to serial


def test_a_snapshot_that_changes_overtake_while_it_goes_out_vouches_only_once_caught_up(data_dir, monkeypatch):
    """A snapshot of several chunks is built at one seq; a revocation committed before its last
    chunk goes out must not be vouched away: the subscriber is not current until the delta."""
    monkeypatch.setattr(watch_module, "SNAPSHOT_SPAN", 4)  # ten registered tokens: three chunks
    srv = ServerThread(Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600))
    engine = srv.engine
    try:
        serial = srv.call(engine.register([TokenSpec("u", "app") for _ in range(10)])).tokens[0].serial

        async def read() -> list[pb.WatchEvent]:
            events = watch_module.stream(engine, pb.WatchRequest(with_expiries=True))
            got = [pb.WatchEvent.FromString(await anext(events))]
            await engine.revoke(Selector(serials=(serial,)))  # commits after the first chunk went out
            while not got[-1].HasField("delta"):
                got.append(pb.WatchEvent.FromString(await anext(events)))
            await events.aclose()
            return got

        events = srv.call(read())
    finally:
        srv.stop()
    chunks = [e for e in events if e.HasField("snapshot")]
    assert len(chunks) == 3 and chunks[-1].snapshot.seq == 1
    assert chunks[-1].head_seq == 2 and not chunks[-1].vouched_at_us  # not the newest: no vouch
    core = ReplicaCore()
    outcomes = [core.handle(e) for e in events]
    assert [(o.kind, o.current) for o in outcomes][-2:] == [("installed", False), ("applied", True)]
    assert events[-1].vouched_at_us and serial in core.state.revoked
