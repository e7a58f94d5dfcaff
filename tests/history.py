"""Watch histories: record every event subscribers see, check them against the log.

Theory of operation. A `Subscriber` follows a node's Watch on its own thread
through a `ReplicaCore` (the protocol code replicas and followers use),
resumes with `ReplicaCore.request()` whenever a stream ends, and keeps every
stream it opened as a `StreamRecord`: the request and every event, in order.
After the run, `ServerLog.capture` reads the primary's change log from LMDB
(captures accumulate, so a log compacted later is still known), and one
assertion helper per property of etcd's watch robustness suite holds one
subscriber's streams against it: ordered, unique, atomic, reliable,
resumable, bookmarkable. `assert_snapshots_match_log` checks every snapshot
against the log replayed to its seq and `assert_converged` the replayed set
against the server's. The checks replay the recorded events themselves;
they never trust the verdicts of the ReplicaCore that drove the streams.
"""

import dataclasses
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Self

import grpc
from pyroaring import BitMap64
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc
from recallclient.codec import bitmap_from, delta_from_proto
from recallclient.replica_core import Outcome, ReplicaCore, Resync
from recallclient.revoked_set import Delta, RevokedSet

from recallcore.replication.hub import merge_all

from .support import ServerThread

RETRY = 0.05  # seconds between attempts to reach a node that is down
RESETS = ("compacted", "ahead", "store changed", "diverged", "upstream reset")


# ------------------------------------------------------------------ records


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A complete snapshot as received (every chunk, checked for consistency)."""

    store_id: str
    seq: int
    revoked: BitMap64
    foreign: frozenset[int]
    registered_through: int
    digest: bytes
    chunks: tuple[pb.SnapshotChunk, ...]


def assemble(chunks: Sequence[pb.SnapshotChunk], store_id: str = "") -> Snapshot:
    """The snapshot `chunks` carry; AssertionError unless they agree with each other."""
    first = chunks[0]
    common = ("seq", "count", "cardinality", "foreign_cardinality", "digest", "registered_through")
    revoked, foreign = BitMap64(), []
    for i, chunk in enumerate(chunks):
        assert chunk.index == i, f"snapshot chunk {chunk.index} arrived in place {i}"
        for name in common:
            assert getattr(chunk, name) == getattr(first, name), f"chunk {i}: {name} differs from chunk 0"
        part = bitmap_from(chunk.revoked)
        assert not part & revoked, f"chunk {i} repeats serials of earlier chunks"
        revoked |= part
        foreign.extend(chunk.foreign)
    assert len(chunks) == first.count, f"{len(chunks)} chunks of {first.count}"
    assert len(foreign) == len(set(foreign)), "a foreign key appears in two chunks"
    state = RevokedSet()
    state.load(seq=first.seq, revoked=revoked, foreign=foreign, registered_through=first.registered_through)
    assert (len(revoked), len(foreign)) == (first.cardinality, first.foreign_cardinality), \
        f"snapshot {first.seq}: cardinalities differ from the chunks' content"
    assert state.digest() == first.digest, f"snapshot {first.seq}: digest differs from the chunks' content"
    return Snapshot(store_id, first.seq, revoked, frozenset(foreign), first.registered_through, first.digest,
                    tuple(chunks))


@dataclasses.dataclass
class StreamRecord:
    """One Watch call: what was asked, every event received, and how it ended."""

    request: pb.WatchRequest
    target: str
    events: list[pb.WatchEvent] = dataclasses.field(default_factory=list)
    end: str = ""

    @property
    def items(self) -> list[tuple[str, object]]:
        """(kind, value) per event, a snapshot's chunks folded into one "snapshot"
        item; "partial" marks a snapshot the stream ended inside. Folded again when
        more events arrived since (a stream still open may be checked)."""
        folded = self.__dict__.get("_folded")
        if folded is None or folded[0] != len(self.events):
            count = len(self.events)
            folded = self.__dict__["_folded"] = (count, self._fold(self.events[:count]))
        return folded[1]

    @staticmethod
    def _fold(events: list[pb.WatchEvent]) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        chunks: list[pb.SnapshotChunk] = []
        for event in events:
            kind = event.WhichOneof("event")
            if kind == "snapshot":
                chunks.append(event.snapshot)
                if len(chunks) == chunks[0].count:
                    out.append(("snapshot", assemble(chunks, event.store_id)))
                    chunks = []
                continue
            assert not chunks, f"a {kind} arrived inside a snapshot ({len(chunks)} of {chunks[0].count} chunks)"
            value = delta_from_proto(event.delta) if kind == "delta" else getattr(event, kind)
            out.append((kind, value))
        if chunks:
            out.append(("partial", None))
        return out


# ------------------------------------------------------------ server's log


@dataclasses.dataclass(frozen=True)
class ServerState:
    """A node's revoked set at one instant (taken on its event loop)."""

    store_id: str
    seq: int
    revoked: BitMap64
    foreign: frozenset[int]
    registered_through: int
    digest: bytes


def server_state(srv) -> ServerState:
    """The revoked set of the node served by ServerThread `srv`."""

    def take() -> ServerState:
        rev = srv.engine.state.revocations
        return ServerState(rev.store_id, rev.seq, BitMap64(rev.revoked), frozenset(rev.foreign),
                           rev.registered_through, rev.digest())

    return srv.run(take)


class ServerLog:
    """Every change seen in a primary's LMDB log, over one or more captures."""

    def __init__(self) -> None:
        self.changes: dict[int, Delta] = {}
        self.store_id = ""
        self.first = 0  # log_first() at the latest capture
        self.head = 0  # the stored seq at the latest capture

    def capture(self, engine) -> "ServerLog":
        """Read the log of `engine` (a primary) in one read transaction; returns self."""
        with engine.store.read() as txn:
            self.first, self.head = txn.log_first(), txn.head_seq()
            for seq in range(self.first or self.head + 1, self.head + 1):
                delta = txn.delta(seq)
                assert delta is not None, f"the log holds {self.first}..{self.head} but not {seq}"
                self.changes[seq] = delta
        self.store_id = engine.store_id
        return self

    def holds(self, after: int) -> bool:
        """True when, at the latest capture, a stream could resume after `after` from the log."""
        return after == self.head or bool(self.first) and self.first - 1 <= after < self.head

    def merged(self, prev_seq: int, seq: int) -> Delta:
        """The changes prev_seq+1..seq merged; AssertionError if any was not captured."""
        missing = [s for s in range(prev_seq + 1, seq + 1) if s not in self.changes]
        assert not missing, f"changes {missing[:5]}... were never captured (capture before compacting)"
        return merge_all([self.changes[s] for s in range(prev_seq + 1, seq + 1)])

    def states_at(self, seqs: set[int]) -> dict[int, RevokedSet]:
        """The revoked set after each seq in `seqs`, replayed from the first change."""
        assert all(s in self.changes for s in range(1, max(seqs, default=0) + 1)), \
            "the log was compacted before it was captured; capture it before compacting"
        out, state = {}, RevokedSet(self.store_id)
        for seq in range(max(seqs, default=0) + 1):
            if seq:
                state.apply(self.changes[seq])
            if seq in seqs:
                copy = RevokedSet(self.store_id)
                copy.load(seq=seq, revoked=state.revoked, foreign=state.foreign,
                          registered_through=state.registered_through)
                out[seq] = copy
        return out


# --------------------------------------------------------------- properties


Logs = ServerLog | Mapping[str, ServerLog]  # one log, or one per store id


def _log(logs: Logs, store_id: str) -> ServerLog:
    if isinstance(logs, ServerLog):
        return logs
    assert store_id in logs, f"no log captured for store {store_id!r}"
    return logs[store_id]


def assert_ordered(streams: Sequence[StreamRecord]) -> None:
    """Within a stream, after each snapshot: delta seqs strictly increase, past
    the snapshot's seq, and heartbeats never go back."""
    for n, stream in enumerate(streams):
        last = None
        for kind, value in stream.items:
            if kind == "snapshot":
                last = value.seq
            elif kind == "delta":
                assert value.prev_seq < value.seq, f"stream {n}: delta {value.prev_seq}->{value.seq} goes back"
                assert last is None or value.seq > last, f"stream {n}: delta to {value.seq} after seq {last}"
                last = value.seq
            elif kind == "heartbeat":
                assert last is None or value.seq >= last, f"stream {n}: heartbeat {value.seq} after seq {last}"
                last = value.seq


def assert_unique(streams: Sequence[StreamRecord]) -> None:
    """No change is delivered twice between two snapshots, over every stream."""
    covered: set[int] = set()
    for n, stream in enumerate(streams):
        for kind, value in stream.items:
            if kind == "snapshot":
                covered = set()
            elif kind == "delta":
                span = set(range(value.prev_seq + 1, value.seq + 1))
                again = sorted(span & covered)
                assert not again, f"stream {n}: seqs {again[:5]} delivered twice"
                covered |= span


def _logged(delta: Delta) -> tuple:
    return (delta.prev_seq, delta.seq, delta.added, delta.removed, delta.foreign_added,
            delta.foreign_removed, delta.registered_through,
            [(exp, list(serials)) for exp, serials in delta.expiring], delta.time)


def assert_atomic(streams: Sequence[StreamRecord], log: Logs) -> None:
    """Every delta starts and ends on change boundaries and carries exactly the
    logged changes it spans, merged: never part of one."""
    for n, stream in enumerate(streams):
        for event in stream.events:
            if event.HasField("delta"):
                _check_atomic(n, delta_from_proto(event.delta), _log(log, event.store_id))


def _check_atomic(n: int, delta: Delta, log: ServerLog) -> None:
    assert 0 <= delta.prev_seq < delta.seq, f"stream {n}: delta {delta.prev_seq}->{delta.seq}"
    expected = log.merged(delta.prev_seq, delta.seq)
    assert _logged(delta) == _logged(expected), (
        f"stream {n}: delta {delta.prev_seq}->{delta.seq} differs from the logged changes it spans"
    )


def assert_reliable(streams: Sequence[StreamRecord]) -> None:
    """No gaps: each delta starts where the stream stood (its after_seq, the last
    snapshot or the last delta), and each stream resumes where the last stopped."""
    end = 0
    for n, stream in enumerate(streams):
        after = stream.request.after_seq
        assert after in (0, end), f"stream {n} resumed after {after}, the previous stream ended at {end}"
        at = after or None
        for kind, value in stream.items:
            if kind == "reset":
                at = None
            elif kind == "snapshot":
                at = end = value.seq
            elif kind == "delta":
                assert at is not None, f"stream {n}: delta {value.prev_seq}->{value.seq} before any snapshot"
                assert value.prev_seq == at, f"stream {n}: gap, at seq {at} got delta {value.prev_seq}->{value.seq}"
                at = end = value.seq


def classify(stream: StreamRecord) -> str:
    """How a stream started: "snapshot", "deltas" (or a heartbeat at after_seq), a
    reset reason's first words (see RESETS), or "nothing"."""
    if not stream.items:
        return "nothing"
    kind, value = stream.items[0]
    if kind == "reset":
        return next((r for r in RESETS if value.reason.startswith(r)), f"reset {value.reason!r}")
    return "snapshot" if kind in ("snapshot", "partial") else "deltas"


def assert_resumable(stream: StreamRecord, *, holds: Callable[[int], bool] | None = None,
                     expect: str | None = None) -> None:
    """A stream asked to resume after S starts with a delta from S (or a heartbeat
    at S); one that cannot resume starts with a Reset naming why, then a snapshot;
    after_seq 0 starts with a snapshot and no Reset. `holds(S)`: the server still
    held S, so no "compacted" Reset is allowed. `expect`: the start `classify` must give."""
    after, how = stream.request.after_seq, classify(stream)
    if expect is not None:
        assert how == expect, f"stream after {after} started with {how}, expected {expect}"
    if how == "nothing":
        return
    assert how in ("snapshot", "deltas") + RESETS, f"stream after {after}: unexplained {how}"
    if how.startswith(RESETS):
        rest = stream.items[1:]
        assert not rest or rest[0][0] in ("snapshot", "partial"), f"a {how} reset not followed by a snapshot"
        assert not (how == "compacted" and holds is not None and holds(after)), \
            f"stream after {after} was reset as compacted, but the log still holds it"
        if how == "ahead":
            assert after > stream.items[0][1].current_seq
        return
    if after == 0 or how == "snapshot":
        assert after == 0, f"stream after {after} started with a snapshot and no Reset"
        return
    kind, value = stream.items[0]
    start = value.prev_seq if kind == "delta" else value.seq
    assert start == after, f"stream after {after} started with a {kind} at {start}"


def replay(streams: Sequence[StreamRecord], start: RevokedSet | None = None,
           on_heartbeat: Callable[[int, pb.Heartbeat, RevokedSet], None] | None = None) -> RevokedSet:
    """The set a subscriber holds after the streams, from `start` (default: empty;
    modified in place), applying only complete snapshots."""
    state = start if start is not None else RevokedSet()
    for n, stream in enumerate(streams):
        for kind, value in stream.items:
            if kind == "snapshot":
                state = RevokedSet(value.store_id)
                state.load(seq=value.seq, revoked=value.revoked, foreign=value.foreign,
                           registered_through=value.registered_through)
            elif kind == "delta":
                assert state.apply(value), f"stream {n}: delta to {value.seq} re-sent at seq {state.seq}"
            elif kind == "heartbeat" and on_heartbeat is not None:
                on_heartbeat(n, value, state)
    return state


def assert_bookmarkable(streams: Sequence[StreamRecord], start: RevokedSet | None = None) -> None:
    """Every heartbeat vouches for the last seq sent, with the digest and counts of
    the set replayed from the stream (and `start`) up to that point."""

    def check(n: int, beat: pb.Heartbeat, state: RevokedSet) -> None:
        assert beat.seq == state.seq, f"stream {n}: heartbeat at {beat.seq}, last seq sent {state.seq}"
        assert (beat.cardinality, beat.foreign_cardinality) == (len(state.revoked), len(state.foreign)), \
            f"stream {n}: heartbeat {beat.seq} counts differ from the replayed set"
        assert beat.digest == state.digest(), f"stream {n}: heartbeat {beat.seq} digest differs from the replayed set"

    replay(streams, start, check)


def assert_snapshots_match_log(streams: Sequence[StreamRecord], log: Logs) -> None:
    """Every complete snapshot equals the logged changes replayed to its seq."""
    snapshots = [v for s in streams for k, v in s.items if k == "snapshot"]
    for snap in snapshots:
        want = _log(log, snap.store_id).states_at({snap.seq})[snap.seq]
        assert (snap.revoked, snap.foreign, snap.registered_through, snap.digest) == \
            (want.revoked, frozenset(want.foreign), want.registered_through, want.digest()), \
            f"snapshot at {snap.seq} differs from the log replayed to {snap.seq}"


def assert_converged(state: RevokedSet, server: ServerState) -> None:
    """The replayed set is the server's: seq, serials, foreign keys, digest."""
    assert (state.store_id, state.seq) == (server.store_id, server.seq), \
        f"replayed {state.store_id}@{state.seq}, server {server.store_id}@{server.seq}"
    assert state.revoked == server.revoked, f"revoked serials differ: {len(state.revoked)} vs {len(server.revoked)}"
    assert state.foreign == server.foreign, f"foreign keys differ: {len(state.foreign)} vs {len(server.foreign)}"
    assert state.registered_through == server.registered_through
    assert state.digest() == server.digest


def check_history(streams: Sequence[StreamRecord], log: Logs, *, final: ServerState | None = None,
                  holds: Callable[[int], bool] | None = None) -> RevokedSet:
    """Every property above for one subscriber's streams; returns the replayed set."""
    assert streams, "no stream recorded"
    assert_ordered(streams)
    assert_unique(streams)
    assert_atomic(streams, log)
    assert_reliable(streams)
    for stream in streams:
        assert_resumable(stream, holds=holds)
    assert_bookmarkable(streams)
    assert_snapshots_match_log(streams, log)
    state = replay(streams)
    if final is not None:
        assert_converged(state, final)
    return state


# ------------------------------------------------------------ test support


def seeded_rng() -> random.Random:
    """A Random seeded from RECALL_SEED or at random; the seed is printed (shown on failure)."""
    seed = int(os.environ.get("RECALL_SEED") or random.randrange(2**32))
    print(f"RECALL_SEED={seed}")
    return random.Random(seed)


class Servers:
    """The ServerThreads a test starts; close() stops those still running, oldest
    first (a primary before its followers, whose streams then end)."""

    def __init__(self) -> None:
        self.running: list[ServerThread] = []

    def start(self, settings, **engine_args) -> ServerThread:
        self.running.append(ServerThread(settings, **engine_args))
        return self.running[-1]

    def stop(self, srv: ServerThread) -> None:
        self.running.remove(srv)
        srv.stop()

    def close(self) -> None:
        while self.running:
            self.stop(self.running[0])


def read_stream(address: str, request: pb.WatchRequest, until: Callable[[StreamRecord], bool],
                timeout: float = 30.0, options: Sequence[tuple] = ()) -> StreamRecord:
    """Open one Watch call and record its events until `until(record)`; then cancel it."""
    record = StreamRecord(request, address)
    with grpc.insecure_channel(address, options=list(options)) as channel:
        call = recall_pb2_grpc.RecallStub(channel).Watch(request, timeout=timeout)
        try:
            for event in call:
                record.events.append(event)
                if until(record):
                    record.end = "done"
                    return record
            record.end = "eof"
        finally:
            call.cancel()
    return record


def kinds(record: StreamRecord) -> list[str]:
    """The kinds of a stream's items, in order (one "snapshot" for all its chunks)."""
    return [kind for kind, _ in record.items]


# --------------------------------------------------------------- subscriber


class Subscriber:
    """Follows Watch on a thread through a ReplicaCore, recording every stream.

    `target`: "host:port" or a function returning it (read before each
    stream). `disconnect`: (rng, chance) to cancel after an event and resume.
    `delay`: seconds to sleep after each event (a slow consumer). Clear
    `reading` to stop reading (without cancelling) until it is set again.
    `deadline`: seconds the subscriber may run at all.
    """

    def __init__(self, name: str, target: str | Callable[[], str], *, with_expiries: bool = False,
                 channel_options: Sequence[tuple] = (), disconnect: tuple | None = None,
                 delay: float = 0.0, deadline: float = 60.0) -> None:
        self.name = name
        self._target = target if callable(target) else (lambda: target)
        self.core = ReplicaCore()
        self.core.with_expiries = with_expiries
        self.streams: list[StreamRecord] = []
        self.resyncs: list[str] = []
        self.outcome: Outcome | None = None
        self.vouched = -1  # seq of the last heartbeat the replica accepted (of the store it follows)
        self._vouched_store = ""
        self.error: BaseException | None = None
        self.reading = threading.Event()
        self.reading.set()
        self._options = list(channel_options)
        self._disconnect = disconnect
        self._delay = delay
        self._until = time.monotonic() + deadline
        self._cond = threading.Condition()
        self._call = None
        self._paused = self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"subscriber-{name}", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------- control

    def wait_until(self, predicate: Callable[["Subscriber"], bool], what: str, timeout: float = 30.0) -> None:
        """Return once predicate(self) holds; AssertionError after `timeout` or on a failure."""
        with self._cond:
            self._cond.wait_for(lambda: predicate(self) or self.error is not None, timeout)
            if self.error is not None:
                raise AssertionError(f"{self.name} failed") from self.error
            assert predicate(self), f"{self.name}: not {what} after {timeout}s (at {self.core.state.seq}, {self.outcome})"

    def wait_vouched(self, seq: int, timeout: float = 30.0) -> None:
        """Return once a heartbeat vouched for `seq` (or later) and the replica accepted it."""
        self.wait_until(lambda s: s.vouched >= seq, f"vouched for seq {seq}", timeout)

    def pause(self) -> None:
        """Cancel the current stream and open no other until resume()."""
        with self._cond:
            self._paused = True
            if self._call is not None:
                self._call.cancel()
        self.wait_until(lambda s: s._call is None, "paused", 10.0)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stop(self) -> None:
        """Cancel the stream, end the thread; raise what the thread failed with."""
        with self._cond:
            self._stopping = True
            if self._call is not None:
                self._call.cancel()
            self._cond.notify_all()
        self.reading.set()
        self._thread.join(30.0)
        assert not self._thread.is_alive(), f"{self.name} did not stop"
        if self.error is not None:
            raise AssertionError(f"{self.name} failed") from self.error

    # -------------------------------------------------------------- thread

    def _run(self) -> None:
        channel, channel_target = None, None
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping or not self._paused, self._left())
                    if self._stopping:
                        return
                    assert not self._paused and self._left() > 0, "deadline passed while paused"
                target = self._target()
                if target != channel_target:
                    if channel is not None:
                        channel.close()
                    channel, channel_target = grpc.insecure_channel(target, options=self._options), target
                record = StreamRecord(self.core.request(), target)
                with self._cond:
                    if self._stopping or self._paused:
                        continue
                    self._call = recall_pb2_grpc.RecallStub(channel).Watch(record.request, timeout=self._left())
                    self.streams.append(record)
                record.end = self._follow(self._call, record)
                with self._cond:
                    self._call = None
                    self._cond.notify_all()
                    if record.end not in ("disconnected", "stopped") and not record.end.startswith("resync"):
                        self._cond.wait(RETRY)  # the node is down or restarting: poll
                    assert self._left() > 0, f"deadline passed; last stream ended {record.end}"
        except BaseException as exc:  # noqa: BLE001 - any failure goes to the test via wait_until / stop
            with self._cond:
                self.error = exc
                self._cond.notify_all()
        finally:
            if channel is not None:
                channel.close()

    def _left(self) -> float:
        return max(0.0, self._until - time.monotonic())

    def _follow(self, call, record: StreamRecord) -> str:
        """Read one stream to its end; return how it ended."""
        try:
            for event in call:
                record.events.append(event)
                try:
                    outcome = self.core.handle(event)
                except Resync as exc:
                    self.resyncs.append(str(exc))
                    call.cancel()
                    return f"resync: {exc}"
                with self._cond:
                    self.outcome = outcome
                    if outcome.kind == "vouched":
                        self.vouched, self._vouched_store = outcome.seq, self.core.state.store_id
                    elif outcome.kind == "installed" and self.core.state.store_id != self._vouched_store:
                        self.vouched = -1  # that vouch was another store's: its seqs say nothing here
                    self._cond.notify_all()
                if self._delay:
                    time.sleep(self._delay)  # a slow consumer, by design
                if not self.reading.is_set():
                    assert self.reading.wait(self._left()), "held past the deadline"
                if self._disconnect is not None and self._disconnect[0].random() < self._disconnect[1]:
                    call.cancel()
                    return "disconnected"
            return "eof"
        except grpc.RpcError as exc:
            if self._stopping or self._paused:
                return "stopped"
            return f"{exc.code().name}: {exc.details()}"
