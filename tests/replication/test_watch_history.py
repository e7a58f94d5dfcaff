"""Watch streams checked against the primary's log under concurrent writes.

Real servers (ServerThread) and real clients: writer threads register and
revoke at random while subscribers follow Watch; afterwards every recorded
stream is checked by tests/history.py for the six etcd properties (ordered,
unique, atomic, reliable, resumable, bookmarkable), every snapshot against
the log, and the replayed set against the server's. The seed is printed
(set RECALL_SEED to replay a run).
"""

import asyncio
import contextlib
import dataclasses
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pyroaring import BitMap64
from recallclient import JtiRef, RecallClient, TokenSpec, TokenType
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.codec import bitmap_bytes, bitmap_from
from recallclient.revoked_set import RevokedSet

from recallcore.replication import watch

from ..history import (
    ServerLog,
    StreamRecord,
    Subscriber,
    assert_resumable,
    assert_snapshots_match_log,
    check_history,
    classify,
    kinds,
    server_state,
)
from ..support import FakeClock

HEARTBEAT = 0.05
WRITE_TIMEOUT = 60.0
ISSUER = "recallcore"  # Settings.issuer: where tokens registered without an issuer live
OTHER_ISSUER = "https://other-idp.example"
SUBJECTS = [f"user-{i}" for i in range(12)]
CLIENTS = [f"app-{i}" for i in range(5)]
FAMILIES = [f"family-{i}" for i in range(20)]


@pytest.fixture
def fast(settings):
    return dataclasses.replace(settings, heartbeat_interval=HEARTBEAT)


class Workload:
    """Random registrations and revocations (serial, subject, client, family,
    foreign and custom jti) from several client threads."""

    def __init__(self, rng: random.Random) -> None:
        self.seed = rng.getrandbits(64)
        self.runs = 0
        self._lock = threading.Lock()
        self.through = 0
        self.custom: list[str] = []

    def run(self, address: str, threads: int, ops: int) -> None:
        """`ops` operations on each of `threads` threads; raises what any of them raised."""
        self.runs += 1
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(self._thread, address, self.runs * 1000 + n, ops) for n in range(threads)]
            for future in futures:
                future.result(WRITE_TIMEOUT)

    def _thread(self, address: str, n: int, ops: int) -> None:
        rng = random.Random(self.seed + n)
        with RecallClient(address, timeout=WRITE_TIMEOUT) as client:
            for i in range(ops):
                self._one(client, rng, f"{self.seed}.{n}.{i}")

    def _one(self, client: RecallClient, rng: random.Random, tag: str) -> None:
        with self._lock:
            through, custom = self.through, list(self.custom)
        pick = rng.random()
        if pick < 0.3 or through < 10:
            specs = [self._spec(rng, f"{tag}.{k}") for k in range(rng.randint(1, 8))]
            result = client.register(specs)
            with self._lock:
                self.through = max(self.through, *(t.serial for t in result.tokens))
                self.custom += [s.jti for s in specs if s.jti]
        elif pick < 0.6:
            client.revoke(serials=rng.sample(range(1, through + 1), rng.randint(1, 6)))
        elif pick < 0.7:
            client.revoke(subject=rng.choice(SUBJECTS), reason="subject")
        elif pick < 0.8:
            client.revoke(family=rng.choice(FAMILIES))
        elif pick < 0.82:
            client.revoke(client_id=rng.choice(CLIENTS))
        elif pick < 0.92:
            client.revoke(tokens=[(OTHER_ISSUER, f"ext-{rng.getrandbits(48)}") for _ in range(rng.randint(1, 4))])
        elif custom:
            client.revoke(tokens=[JtiRef(ISSUER, rng.choice(custom))])
        else:
            client.revoke(serials=[rng.randint(1, through)], tokens=[(OTHER_ISSUER, f"mix-{tag}")])

    @staticmethod
    def _spec(rng: random.Random, tag: str) -> TokenSpec:
        refresh = rng.random() < 0.4
        return TokenSpec(
            subject=rng.choice(SUBJECTS), client_id=rng.choice(CLIENTS),
            jti=f"custom-{tag}" if rng.random() < 0.15 else "",
            type=TokenType.REFRESH if refresh else TokenType.ACCESS,
            family=rng.choice(FAMILIES) if refresh else "",
        )


def revoke_foreign(address: str, count: int, keys: int, tag: str) -> None:
    """`count` revocations of `keys` foreign tokens each (big deltas, ~9 bytes a key)."""
    with RecallClient(address, timeout=WRITE_TIMEOUT) as client:
        for i in range(count):
            client.revoke(tokens=[(OTHER_ISSUER, f"{tag}-{i}-{k}") for k in range(keys)])


def check_all(subscribers, srv, log=None):
    """Every subscriber's history against the log, converged to the server's set."""
    final = server_state(srv)
    for sub in subscribers:
        sub.wait_vouched(final.seq)
    log = (log or ServerLog()).capture(srv.engine)
    for sub in subscribers:
        assert not sub.resyncs, f"{sub.name}: {sub.resyncs}"
        check_history(sub.streams, log, final=final, holds=log.holds)
    return final, log


def test_concurrent_writers_and_subscribers(servers, fast, rng):
    srv = servers.start(fast)
    work = Workload(rng)
    with contextlib.ExitStack() as stack:
        early = [stack.enter_context(Subscriber(f"early-{i}", srv.address)) for i in range(2)]
        with ThreadPoolExecutor(1) as pool:
            writes = pool.submit(work.run, srv.address, 4, 75)
            late = [stack.enter_context(Subscriber(f"late-{i}", srv.address)) for i in range(2)]
            writes.result(WRITE_TIMEOUT)
        final, _ = check_all(early + late, srv)
    assert final.seq > 150 and final.revoked and final.foreign  # a few hundred changes


def test_random_disconnects_resume_from_the_last_applied_seq(servers, fast, rng):
    srv = servers.start(fast)
    subs = [Subscriber(f"flaky-{i}", srv.address, disconnect=(random.Random(rng.random()), 0.2))
            for i in range(4)]
    with contextlib.ExitStack() as stack:
        for sub in subs:
            stack.enter_context(sub)
        Workload(rng).run(srv.address, 4, 60)
        check_all(subs, srv)
    for sub in subs:
        assert len(sub.streams) > 1, f"{sub.name} never disconnected"
        resumed = [s for s in sub.streams if s.request.after_seq and s.events]
        assert resumed, f"{sub.name} never resumed"
        for stream in resumed:  # the log holds everything: no snapshot after the first
            assert_resumable(stream, expect="deltas")


def test_slow_reader_never_blocks_the_writer_and_gets_merged_deltas(servers, fast, rng):
    srv = servers.start(fast)
    # Without BDP probing the receive window stays small, so a held reader
    # pushes back on its stream within ~100 KB.
    slow = Subscriber("slow", srv.address, channel_options=[("grpc.http2.bdp_probe", 0)], delay=0.002)
    slow.reading.clear()
    with slow, Subscriber("fast", srv.address) as quick:
        slow.wait_until(lambda s: s.outcome is not None and s.outcome.kind == "installed", "installed")
        held_at = slow.core.state.seq
        with ThreadPoolExecutor(2) as pool:  # ~300 deltas of ~1 KB while the reader reads nothing
            futures = [pool.submit(revoke_foreign, srv.address, 150, 100, f"slow-{n}") for n in range(2)]
            futures += [pool.submit(Workload(rng).run, srv.address, 1, 40)]
            for future in futures:
                future.result(WRITE_TIMEOUT)
        assert slow.core.state.seq == held_at, "the held reader read on"
        slow.reading.set()
        final, _ = check_all([slow, quick], srv)
    spans = [d.seq - d.prev_seq for s in slow.streams for k, d in s.items if k == "delta"]
    assert max(spans) > 1, f"the slow reader got only single changes ({len(spans)} deltas)"
    assert sum(spans) == final.seq - held_at


def test_a_storm_of_writes_reaches_subscribers_as_spaced_merged_events(servers, fast, rng):
    spacing = 0.5
    srv = servers.start(dataclasses.replace(fast, heartbeat_interval=1.0, watch_spacing=spacing))
    with contextlib.ExitStack() as stack:
        subs = [stack.enter_context(Subscriber(f"sub-{i}", srv.address)) for i in range(2)]
        for sub in subs:
            sub.wait_until(lambda s: s.outcome is not None and s.outcome.kind == "installed", "installed")
        start_seq, started = server_state(srv).seq, time.monotonic()
        Workload(rng).run(srv.address, 4, 40)
        elapsed = time.monotonic() - started
        final, _ = check_all(subs, srv)  # ordered, atomic, exactly once, converged
    changes = final.seq - start_seq
    # A stream sends a burst of live events at once, then one per `spacing`,
    # the last one spacing after the last commit at the latest.
    most = watch.LIVE_BURST + int((elapsed + spacing) / spacing) + 1
    for sub in subs:
        spans = [d.seq - d.prev_seq for s in sub.streams for k, d in s.items if k == "delta"]
        assert sum(spans) == changes
        assert len(spans) <= most < changes, f"{sub.name}: {len(spans)} events for {changes} changes in {elapsed:.2f} s"


def test_resume_after_compaction_gets_reset_and_snapshot(servers, fast, rng, stores):
    clock = FakeClock()
    srv = servers.start(dataclasses.replace(fast, log_keep=8, log_keep_seconds=0, watch_ring=4), clock=clock,
                        store=stores())
    work = Workload(rng)
    with Subscriber("steady", srv.address) as steady, Subscriber("away", srv.address) as away:
        work.run(srv.address, 2, 30)
        head = server_state(srv).seq
        away.wait_vouched(head)
        away.pause()
        work.run(srv.address, 3, 50)
        log = ServerLog().capture(srv.engine)  # every change, before compaction
        steady.wait_vouched(log.head)  # a stream spaced past a burst lags the writes a little: not at the sweep
        clock.advance(2)  # log_keep_seconds=0 keeps changes of the current second
        assert srv.call(srv.engine.sweep()) == 0
        log.capture(srv.engine)
        assert log.first == log.head - 8 + 1 and log.first > head + 1, (log.first, log.head, head)
        away.resume()
        work.run(srv.address, 2, 20)  # the resumed stream races new writes
        check_all([steady, away], srv, log)
    resumed = away.streams[-1]
    assert resumed.request.after_seq == head
    assert_resumable(resumed, expect="compacted")
    assert kinds(steady.streams[0]).count("snapshot") == 1 and len(steady.streams) == 1


def test_compaction_during_a_catch_up_resets_the_stream(servers, fast, rng, monkeypatch, stores):
    clock = FakeClock()
    srv = servers.start(dataclasses.replace(fast, log_keep=8, log_keep_seconds=0, watch_ring=4), clock=clock,
                        store=stores())
    monkeypatch.setattr(watch, "HISTORY_PAGE", 5)  # a catch-up takes several pages
    work = Workload(rng)
    with Subscriber("behind", srv.address) as behind:
        work.run(srv.address, 1, 20)
        start = server_state(srv).seq
        behind.wait_vouched(start)
        behind.pause()
        revoke_foreign(srv.address, 60, 2, "catch-up")

        # Hold the catch-up's second page until the log has been compacted past it.
        history, blocked, release = srv.engine.history, threading.Event(), threading.Event()

        async def gated(after, limit):
            if limit > 1 and after > start and not blocked.is_set():
                blocked.set()
                await asyncio.to_thread(release.wait, 30)
            return await history(after, limit)

        monkeypatch.setattr(srv.engine, "history", gated)
        behind.resume()
        assert blocked.wait(10), "the catch-up never asked for a second page"
        log = ServerLog().capture(srv.engine)
        clock.advance(2)
        srv.call(srv.engine.sweep())
        log.capture(srv.engine)
        assert log.first > start + 5 + 1, (log.first, start)
        release.set()
        check_all([behind], srv, log)
    stream = behind.streams[-1]
    assert kinds(stream)[:3] == ["delta", "reset", "snapshot"], kinds(stream)[:6]
    first, reset = stream.items[0][1], stream.items[1][1]
    assert (first.prev_seq, first.seq) == (start, start + 5)
    assert reset.reason.startswith(f"compacted: changes after seq {start + 5}"), reset.reason


def test_subscribers_resume_across_a_server_restart_without_a_snapshot(servers, fast, rng):
    srv = servers.start(fast)
    where = {"address": srv.address}
    work = Workload(rng)
    subs = [Subscriber(f"sub-{i}", lambda: where["address"]) for i in range(3)]
    with contextlib.ExitStack() as stack:
        for sub in subs:
            stack.enter_context(sub)
        work.run(srv.address, 3, 40)
        before = server_state(srv)
        for sub in subs:
            sub.wait_vouched(before.seq)
        servers.stop(srv)
        srv = servers.start(fast)  # same data directory, a new port
        where["address"] = srv.address
        assert server_state(srv).seq == before.seq
        work.run(srv.address, 3, 40)
        check_all(subs, srv)
    for sub in subs:
        starts = [classify(s) for s in sub.streams]
        assert starts[0] == "snapshot" and starts.count("snapshot") == 1, starts
        assert any(s.target == srv.address and s.events for s in sub.streams)


# ------------------------------------------------ the checker catches faults


def _clone(streams: list[StreamRecord]) -> list[StreamRecord]:
    def copy(msg):
        out = type(msg)()
        out.CopyFrom(msg)
        return out

    return [StreamRecord(copy(s.request), s.target, [copy(e) for e in s.events], s.end) for s in streams]


def _find(streams, kind: str, *, followed: bool = False, resumed: bool = False) -> tuple[int, int]:
    """(stream, event) index of the first `kind` event (with a later delta in its stream)."""
    for n, stream in enumerate(streams):
        if resumed and not stream.request.after_seq:
            continue
        for i, event in enumerate(stream.events):
            later = any(e.HasField("delta") for e in stream.events[i + 1 :])
            if event.HasField(kind) and (later or not followed):
                return n, i
    raise AssertionError(f"the recorded history has no {kind} to break")


def _drop_delta(streams, log):
    n, i = _find(streams, "delta", followed=True)
    del streams[n].events[i]


def _repeat_delta(streams, log):
    n, i = _find(streams, "delta", followed=True)
    streams[n].events.insert(i + 1, streams[n].events[i])


def _swap_deltas(streams, log):
    n, i = _find(streams, "delta", followed=True)
    j = next(j for j in range(i + 1, len(streams[n].events)) if streams[n].events[j].HasField("delta"))
    events = streams[n].events
    events[i], events[j] = events[j], events[i]


def _extra_serial(streams, log):
    n, i = _find(streams, "delta")
    delta = streams[n].events[i].delta
    delta.added = bitmap_bytes(bitmap_from(delta.added) | BitMap64([2**40]))


def _part_of_a_change(streams, log):
    n, i = _find(streams, "delta")
    event = streams[n].events[i]
    event.delta.foreign_added.append(12345)  # as if a change were cut and this half came with another


def _stale_digest(streams, log):
    n, i = _find(streams, "heartbeat")
    streams[n].events[i].heartbeat.digest = bytes(40)


def _wrong_count(streams, log):
    n, i = _find(streams, "heartbeat")
    streams[n].events[i].heartbeat.cardinality += 1


def _resume_elsewhere(streams, log):
    n, _ = _find(streams, "delta", resumed=True)
    streams[n].request.after_seq += 1


MUTATIONS = [
    (_drop_delta, "gap"),
    (_repeat_delta, "delta to|twice"),
    (_swap_deltas, "delta to|goes back"),
    (_extra_serial, "differs from the logged changes"),
    (_part_of_a_change, "differs from the logged changes"),
    (_stale_digest, "digest differs"),
    (_wrong_count, "counts differ"),
    (_resume_elsewhere, "resumed after"),
]


def test_the_checker_catches_broken_histories(servers, fast, rng):
    srv = servers.start(fast)
    with Subscriber("recorded", srv.address, disconnect=(random.Random(rng.random()), 0.3)) as sub:
        Workload(rng).run(srv.address, 2, 40)
        final, log = check_all([sub], srv)
    streams = sub.streams
    for mutate, message in MUTATIONS:
        broken = _clone(streams)
        mutate(broken, log)
        with pytest.raises(AssertionError, match=message):
            check_history(broken, log, final=final, holds=log.holds)

    resumed = next(s for s in streams if s.request.after_seq and s.events)
    snapshot = [e for e in streams[0].events if e.HasField("snapshot")]
    restarted = _clone([resumed])[0]
    restarted.events[:] = snapshot  # a snapshot without a Reset, for a seq the log holds
    with pytest.raises(AssertionError, match="snapshot and no Reset"):
        assert_resumable(restarted, holds=log.holds)
    reset = _clone([restarted])[0]  # (a record's items are computed once)
    reset.events.insert(0, pb.WatchEvent(reset=pb.Reset(reason="compacted: changes after ...")))
    with pytest.raises(AssertionError, match="still holds"):
        assert_resumable(reset, holds=log.holds)

    other = dataclasses.replace(final, foreign=final.foreign | {7})
    with pytest.raises(AssertionError, match="foreign keys differ"):
        check_history(streams, log, final=other)
    wrong = _clone(streams)
    chunk = wrong[0].events[0].snapshot
    state = RevokedSet()  # a self-consistent snapshot of the wrong set
    state.load(seq=chunk.seq, revoked=bitmap_from(chunk.revoked) | BitMap64([2**40]),
               foreign=chunk.foreign, registered_through=chunk.registered_through)
    chunk.revoked, chunk.cardinality, chunk.digest = bitmap_bytes(state.revoked), len(state.revoked), state.digest()
    with pytest.raises(AssertionError, match="differs from the log replayed"):
        assert_snapshots_match_log(wrong, log)
