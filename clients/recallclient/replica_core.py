"""Following a Watch stream: the protocol, without I/O.

Theory of operation. A `ReplicaCore` holds a `RevokedSet` and consumes the
events of one Watch stream at a time (`handle`). It answers what happened:
a snapshot chunk was stored, a snapshot was installed, a delta applied, the
node vouched for the current sequence, or the node announced a reset. When
the stream cannot be trusted (a gap in sequence numbers, a digest that does
not match, chunks out of order, another store), `handle` raises `Resync` and
the next `request()` asks for a fresh snapshot. The set it holds keeps
answering meanwhile (it is older, not emptier); only a completed, verified
snapshot replaces it.

The sync and asyncio replicas and the server's follower nodes drive this
same class; subclasses hook `_apply_delta` and `_install` to keep more state.
"""

import dataclasses

from pyroaring import BitMap64

from ._proto.recall.v1 import recall_pb2 as pb
from .codec import bitmap_from, delta_from_proto, rule_from_proto
from .revoked_set import Delta, RevokedSet, SequenceGap


class Resync(Exception):
    """The stream cannot be followed further; reconnect for a snapshot."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one event did.

    kind: "chunk", "installed", "applied", "skipped", "vouched" or "reset".
    seq: the replica's sequence after the event.
    current: the node said this sequence was its newest when it sent the event.
    vouched_at: when it was (Unix seconds, the node's clock; 0 = not said): a
        current event counts for freshness from then (see freshness.py).
    delta: the delta applied ("applied" only).
    reason: why the node reset ("reset" only).
    """

    kind: str
    seq: int
    current: bool = False
    vouched_at: float = 0.0
    delta: Delta | None = None
    reason: str = ""


@dataclasses.dataclass
class _Snapshot:
    seq: int
    count: int
    revoked: BitMap64
    foreign: list[int]
    chunks: list[pb.SnapshotChunk]
    rules: list[tuple[int, str, int]]


class ReplicaCore:
    """A RevokedSet kept current by the events of Watch streams."""

    def __init__(self, state: RevokedSet | None = None) -> None:
        self.state = state if state is not None else RevokedSet()
        self._snapshot: _Snapshot | None = None
        self._resync = False
        self.with_expiries = False

    def request(self) -> pb.WatchRequest:
        """The Watch request that resumes from where this replica is."""
        self._snapshot = None  # a new stream starts a new snapshot
        after = 0 if self._resync else self.state.seq
        return pb.WatchRequest(
            store_id=self.state.store_id, after_seq=after, with_expiries=self.with_expiries,
            history=self.state.history if after else b"",
        )

    def forget(self) -> None:
        """Ask for a snapshot next time; keep answering from the current set."""
        self._snapshot = None
        self._resync = True

    def handle(self, event: pb.WatchEvent) -> Outcome:
        """Apply one event; raises Resync when the stream cannot be followed."""
        kind = event.WhichOneof("event")
        if kind in ("delta", "heartbeat") and event.store_id != self.state.store_id:
            self._fail(f"{kind} from store {event.store_id!r}, following {self.state.store_id!r}")
        if kind == "delta":
            return self._delta(event)
        if kind == "heartbeat":
            return self._heartbeat(event)
        if kind == "snapshot":
            return self._chunk(event)
        if kind == "reset":
            self._snapshot = None
            return Outcome("reset", self.state.seq, reason=event.reset.reason)
        self._fail(f"unknown event {kind!r}")

    def _fail(self, why: str) -> None:
        self.forget()
        raise Resync(why)

    def _delta(self, event: pb.WatchEvent) -> Outcome:
        if self._snapshot is not None or self._resync:
            self._fail("delta while a snapshot is due")
        try:
            delta = delta_from_proto(event.delta)
        except ValueError as exc:
            self._fail(f"malformed delta {event.delta.seq}: {exc}")
        try:
            applied = self._apply_delta(delta)
        except SequenceGap as gap:
            self._fail(str(gap))
        current = event.head_seq == self.state.seq
        at = event.vouched_at_us / 1e6
        if not applied:
            return Outcome("skipped", self.state.seq, current, at)
        return Outcome("applied", self.state.seq, current, at, delta=delta)

    def _heartbeat(self, event: pb.WatchEvent) -> Outcome:
        beat = event.heartbeat
        if self._snapshot is not None or self._resync:
            self._fail("heartbeat while a snapshot is due")
        if beat.seq != self.state.seq:
            self._fail(f"heartbeat at seq {beat.seq}, replica at {self.state.seq}")
        if beat.digest != self.state.digest():
            self._fail(f"digest differs from the node's at seq {beat.seq}")
        return Outcome("vouched", self.state.seq, current=event.head_seq == beat.seq,
                       vouched_at=event.vouched_at_us / 1e6)

    def _chunk(self, event: pb.WatchEvent) -> Outcome:
        chunk = event.snapshot
        snap = self._snapshot
        if chunk.index == 0:
            snap = self._snapshot = _Snapshot(chunk.seq, chunk.count, BitMap64(), [], [],
                                              [rule_from_proto(r) for r in chunk.rules])
        elif snap is None or chunk.seq != snap.seq or chunk.index != len(snap.chunks) or chunk.count != snap.count:
            self._fail(f"snapshot chunk {chunk.index} of {chunk.count} out of order")
        try:
            snap.revoked |= bitmap_from(chunk.revoked)
        except ValueError as exc:
            self._fail(f"malformed snapshot chunk {chunk.index}: {exc}")
        snap.foreign.extend(chunk.foreign)
        snap.chunks.append(chunk)
        if len(snap.chunks) < snap.count:
            return Outcome("chunk", self.state.seq)
        self._snapshot = None
        if not event.store_id:
            self._fail("snapshot from a node that names no store")
        state = RevokedSet(event.store_id)
        state.load(seq=snap.seq, revoked=snap.revoked, foreign=snap.foreign,
                   registered_through=chunk.registered_through, rules=snap.rules, history=chunk.history)
        if (len(state.revoked), len(state.foreign)) != (chunk.cardinality, chunk.foreign_cardinality) \
                or state.digest() != chunk.digest:
            self._fail(f"snapshot at seq {snap.seq} does not match its digest")
        self._install(state, snap.chunks)
        self._resync = False
        return Outcome("installed", self.state.seq, current=event.head_seq == snap.seq,
                       vouched_at=event.vouched_at_us / 1e6)

    # hooks for subclasses that keep more than the revoked set

    def _apply_delta(self, delta: Delta) -> bool:
        return self.state.apply(delta)

    def _install(self, state: RevokedSet, chunks: list[pb.SnapshotChunk]) -> None:
        self.state = state

