"""A follower: a read-only node that replicates a primary over Watch.

Theory of operation. The follower subscribes to its primary's Watch with
`with_expiries`, so snapshots carry every serial's expiry and the follower
can answer Check with all four states. Events go through the same
`ReplicaCore` that client replicas use; its hooks apply deltas to this
node's mirror (which publishes them to the follower's own subscribers) and
install snapshots (which resets them). A lost connection is retried with
jittered backoff and resumes from the last applied sequence; a stream that
stays silent longer than a few heartbeat intervals is dropped and retried.

The follower keeps no disk state: it holds the last `watch_ring` deltas for
its own subscribers to resume from, and anything older gets a snapshot.
What it cannot know without the primary's records: the reason of a
revocation, and tokens by caller-chosen (non-canonical) jti unless they are
revoked. Writes answer FAILED_PRECONDITION naming the primary.
"""

import asyncio
import logging
import random
import time

import grpc
import numpy as np
from pyroaring import BitMap64
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc
from recallclient.codec import bitmap_from
from recallclient.replica_core import ReplicaCore, Resync
from recallclient.revoked_set import Delta, RevokedSet
from recallclient.types import JtiRef, TokenState

from ..core.errors import FailedPrecondition
from ..core.mirror import ExpiryIndex, Mirror
from ..core.operations import now_seconds
from ..settings import Settings
from .node import Node

log = logging.getLogger(__name__)

BACKOFF = (0.05, 5.0)
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


def _expiries(chunks: list[pb.SnapshotChunk], through: int) -> np.ndarray:
    out = np.zeros(max(through + 1, 1 << 12), dtype=np.uint32)
    for chunk in chunks:
        if chunk.expiries:
            part = np.frombuffer(chunk.expiries, dtype="<u4")
            out[chunk.expiries_from : chunk.expiries_from + len(part)] = part
    return out


class _Core(ReplicaCore):
    def __init__(self, node: "Follower") -> None:
        super().__init__(node.state.revocations)
        self.with_expiries = True
        self.node = node

    def _apply_delta(self, delta: Delta) -> bool:
        return self.node._apply_one(delta)

    def _install(self, state: RevokedSet, chunks: list[pb.SnapshotChunk]) -> None:
        rotated = BitMap64()
        for chunk in chunks:
            rotated |= bitmap_from(chunk.rotated)
        self.node._installed(Mirror(state, ExpiryIndex(_expiries(chunks, state.registered_through)), rotated))
        self.state = state


class Follower(Node):
    """A read-only node fed by its primary's Watch stream."""

    def __init__(self, settings: Settings, *, clock=now_seconds) -> None:
        super().__init__(settings, Mirror(RevokedSet(), ExpiryIndex()), clock)
        self.primary = settings.follow
        self._core = _Core(self)
        self._vouched_at = float("-inf")
        self._primary_interval = settings.heartbeat_interval
        self._task: asyncio.Task | None = None
        self.closed = False

    @property
    def ready(self) -> bool:
        return bool(self.store_id)

    def staleness(self) -> float:
        return time.monotonic() - self._vouched_at

    ahead_wait = 5.0

    def vouching(self) -> bool:
        """Only while the primary vouches for this follower (within a few of
        its heartbeat intervals) does it vouch for its own subscribers: cut
        off from the primary, it lets them go stale."""
        return self.ready and self.staleness() <= 3 * max(self._primary_interval, self.settings.heartbeat_interval)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="recallcore-follower")

    async def close(self) -> None:
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        delay = BACKOFF[0]
        async with grpc.aio.insecure_channel(self.primary, options=CHANNEL_OPTIONS) as channel:
            stub = recall_pb2_grpc.RecallStub(channel)
            while not self.closed:
                try:
                    if await self._stream(stub):
                        delay = BACKOFF[0]
                except Resync as exc:
                    log.warning("resynchronising with %s: %s", self.primary, exc)
                except grpc.aio.AioRpcError as exc:
                    log.info("primary %s: %s %s", self.primary, exc.code().name, exc.details())
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, BACKOFF[1])

    async def _stream(self, stub: recall_pb2_grpc.RecallStub) -> bool:
        """Follow one Watch call until it ends; True when it made progress."""
        call = stub.Watch(self._core.request())
        silence = max(5.0, 3 * self.settings.heartbeat_interval)
        progressed = False
        try:
            while not self.closed:
                try:
                    # asyncio.timeout, unlike wait_for on 3.11, never swallows a
                    # cancellation that lands as the read completes.
                    async with asyncio.timeout(silence):
                        event = await call.read()
                except TimeoutError:
                    log.warning("primary %s silent for %.1fs; reconnecting", self.primary, silence)
                    return progressed
                if event is grpc.aio.EOF:
                    return progressed
                if event.HasField("heartbeat") and event.heartbeat.interval_ms:
                    self._primary_interval = event.heartbeat.interval_ms / 1000
                    silence = max(5.0, 3 * self._primary_interval)
                outcome = self._core.handle(event)
                if outcome.kind in ("installed", "applied"):
                    progressed = True
                if outcome.current:
                    self._vouched_at = time.monotonic()
            return progressed
        finally:
            call.cancel()

    # ---------------------------------------------------------------- hooks

    async def _serials_of(self, refs: list[JtiRef]) -> list[int]:
        """None: the (issuer, jti) index stays on the primary; Node._resolve
        still maps canonical jtis to their serials."""
        return [0] * len(refs)

    async def _why_revoked(self, serial: int, key: int) -> tuple[int, str]:
        return 0, ""

    async def introspect(self, ref: int | JtiRef) -> dict:
        """What a follower knows: state, serial and expiry (records stay on the primary)."""
        self.require_ready()
        result = await self.check(ref)
        out = {"state": result.state, "active": result.state == TokenState.ACTIVE}
        if result.serial:
            out["serial"] = result.serial
            out["exp"] = self.state.expiry.expires_at(result.serial)
        return out

    async def register(self, *args, **kwargs):
        raise self._read_only()

    async def revoke(self, *args, **kwargs):
        raise self._read_only()

    async def rotate(self, *args, **kwargs):
        raise self._read_only()

    async def cutoff(self, *args, **kwargs):
        raise self._read_only()

    async def audit(self, *args, **kwargs):
        raise FailedPrecondition(f"the audit trail is kept by the primary at {self.primary}")

    audit_after = audit

    def _read_only(self) -> FailedPrecondition:
        return FailedPrecondition(
            f"this node is a read-only follower; send writes to the primary at {self.primary}"
        )
