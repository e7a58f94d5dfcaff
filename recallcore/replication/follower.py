"""A follower: a read-only node that replicates a primary over Watch.

Theory of operation. The follower subscribes to its primary's Watch with
`with_expiries`, so snapshots carry every serial's expiry and the follower
can answer Check with all four states. Events go through the same
`ReplicaCore` that client replicas use; its hooks apply deltas to this
node's mirror (which publishes them to the follower's own subscribers) and
install snapshots (which resets them). A lost connection is retried with
capped, jittered backoff (grpc's own reconnect backoff is capped the same
way, so a follower is back within about a second of its primary) and
resumes from the last applied sequence; a stream that stays silent longer
than a few heartbeat intervals is dropped and retried.

Freshness. The follower is as fresh as its primary's last vouch, counted
from the time the primary stamped on it (recallclient.freshness): a vouch
that waited in a socket buffer while this process was paused does not make
it fresh. Past `max_staleness` it answers reads UNAVAILABLE (Node.
require_ready); it passes on to its own subscribers the primary's stamp,
never a fresher one, and stops sending them heartbeats after a few silent
intervals. A watchdog notices when the process itself stalled (a pause, a
long GC, swapping): the connection is then suspect, so it is dropped and
reopened at once, and the follower answers by its staleness until a fresh
vouch arrives.

The follower keeps no disk state: it holds the last `watch_ring` deltas for
its own subscribers to resume from, and anything older gets a snapshot.
What it cannot know without the primary's records: the reason of a
revocation, and tokens by caller-chosen (non-canonical) jti unless they are
revoked. Writes answer FAILED_PRECONDITION naming the primary.
"""

import asyncio
import logging
import pathlib
import random
import time

import grpc
import numpy as np
from pyroaring import BitMap64
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc
from recallclient.codec import bitmap_from
from recallclient.freshness import Freshness
from recallclient.jti import serial_from_jti
from recallclient.replica_core import ReplicaCore, Resync
from recallclient.revoked_set import Delta, RevokedSet
from recallclient.transport import Transport
from recallclient.types import JtiRef, TokenState

from ..core.errors import FailedPrecondition, InvalidArgument, Unavailable
from ..core.mirror import ExpiryIndex, Mirror
from ..core.operations import now_seconds
from ..settings import Settings
from .node import Node

log = logging.getLogger(__name__)

BACKOFF = (0.05, 1.0)  # seconds: first and largest delay between attempts (full jitter)
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # grpc's own reconnect backoff grows to 120 s by default: a primary back
    # after a long outage would wait that long for this follower.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]
# Refusals of this follower's credential: read it again, on a channel of its own.
_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
STALL = 1.0  # seconds the event loop may go unscheduled before the connection is suspect
WATCHDOG_PERIOD = 0.1
PRIMARY_TIMEOUT = 2.0  # seconds a question to the primary (an introspection) may take


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
        self._fresh = Freshness(settings.freshness_skew)
        self._primary_interval = settings.heartbeat_interval
        self._task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._stub: recall_pb2_grpc.RecallStub | None = None
        self._dropped = False  # the watchdog cancelled self._call
        self._ignored_logged = float("-inf")
        self.stalls = 0  # times the process was found to have stalled
        self.closed = False

    @property
    def ready(self) -> bool:
        return bool(self.store_id)

    def staleness(self) -> float:
        return self._fresh.staleness(time.monotonic())

    def vouch_time_us(self) -> int:
        """The primary's stamp on its last vouch that counted: never fresher than that."""
        return int(self._fresh.vouched_wall * 1e6) if self.vouching() else 0

    ahead_wait = 5.0

    def link_state(self) -> tuple[bool, bool]:
        """(a Watch stream to the primary is open, the primary's vouches are fresh)."""
        return self._call is not None, self.vouching()

    def vouching(self) -> bool:
        """Only while the primary vouches for this follower (within a few of
        its heartbeat intervals) does it vouch for its own subscribers: cut
        off from the primary, it lets them go stale."""
        within = 3 * max(self._primary_interval, self.settings.heartbeat_interval)
        return self.ready and self.staleness() <= min(within, self.settings.max_staleness)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="recallcore-follower")
        self._watchdog = asyncio.create_task(self._watch_for_stalls(), name="recallcore-follower-watchdog")

    async def close(self) -> None:
        self.closed = True
        tasks = [t for t in (self._task, self._watchdog) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_for_stalls(self) -> None:
        """Drop the connection when this process was not scheduled for longer than STALL.

        What arrives on it next may have waited in the socket buffer through
        the stall, and the primary may have died meanwhile: reconnect at once
        rather than wait for keepalive or silence to tell.
        """
        last = time.monotonic()
        while not self.closed:
            await asyncio.sleep(WATCHDOG_PERIOD)
            now = time.monotonic()
            if now - last > STALL:
                self.stalls += 1
                log.warning("this process stalled for %.1f s; reconnecting to %s (staleness %.1f s)",
                            now - last, self.primary, self.staleness())
                if self._call is not None:
                    self._dropped = True
                    self._call.cancel()
            last = now

    async def _follow(self) -> None:
        delay = BACKOFF[0]
        while not self.closed:
            try:
                # A channel lasts until the primary refuses this follower's credential: then the
                # credential is read again (it may have been rotated) for a channel of its own.
                async with self._transport().aio_channel(self.primary, CHANNEL_OPTIONS) as channel:
                    stub = self._stub = recall_pb2_grpc.RecallStub(channel)
                    refused = False
                    while not self.closed and not refused:
                        try:
                            if await self._stream(stub):
                                delay = BACKOFF[0]
                        except Resync as exc:
                            log.warning("resynchronising with %s: %s", self.primary, exc)
                        except grpc.aio.AioRpcError as exc:
                            refused = exc.code() in _REFUSED
                            log.log(logging.WARNING if refused else logging.INFO, "primary %s: %s %s",
                                    self.primary, exc.code().name, exc.details())
                        await asyncio.sleep(random.uniform(0, delay))  # full jitter
                        delay = min(delay * 2, BACKOFF[1])
            except Exception:  # a credential file that cannot be read, an event that does not parse
                log.exception("following %s failed; trying again", self.primary)
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, BACKOFF[1])

    def _transport(self) -> Transport:
        """How this follower reaches its primary: its own TLS identity and credential, if any."""
        s = self.settings
        token_file = s.primary_token_file
        token = pathlib.Path(token_file).read_text().strip() if token_file else None
        return Transport(s.primary_cacert or None, s.primary_cert or None, s.primary_key or None, token)

    async def _stream(self, stub: recall_pb2_grpc.RecallStub) -> bool:
        """Follow one Watch call until it ends; True when it made progress."""
        self._dropped = False
        call = self._call = stub.Watch(self._core.request())
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
                except asyncio.CancelledError:
                    # The watchdog cancelled the call after a stall: follow anew.
                    # A cancellation of this task itself goes on up.
                    if self._dropped and not asyncio.current_task().cancelling():
                        self._dropped = False
                        return progressed
                    raise
                if event is grpc.aio.EOF:
                    return progressed
                if event.HasField("heartbeat") and event.heartbeat.interval_ms:
                    self._primary_interval = event.heartbeat.interval_ms / 1000
                    silence = max(5.0, 3 * self._primary_interval)
                outcome = self._core.handle(event)
                if outcome.kind in ("installed", "applied"):
                    progressed = True
                if outcome.current:
                    self._vouch(outcome.vouched_at)
            return progressed
        finally:
            self._call = None
            call.cancel()

    def _vouch(self, sent_at: float) -> None:
        now = time.monotonic()
        if not self._fresh.vouch(sent_at, self._primary_interval, time.time(), now) and self._fresh.reason:
            if now - self._ignored_logged > 10:
                self._ignored_logged = now
                log.warning("ignored a vouch of primary %s (%d so far): %s",
                            self.primary, self._fresh.ignored, self._fresh.reason)

    # ---------------------------------------------------------------- hooks

    async def _serials_of(self, refs: list[JtiRef]) -> list[int]:
        """None: the (issuer, jti) index stays on the primary; Node._resolve
        still maps canonical jtis to their serials."""
        return [0] * len(refs)

    async def _why_revoked(self, serial: int, key: int) -> tuple[int, str]:
        return 0, ""

    async def introspect(self, ref: int | JtiRef) -> dict:
        """What a follower knows: state, serial and expiry (records stay on the primary).

        A token by an (issuer, jti) that is not canonical can only be resolved
        by the primary's index: the primary is asked (this follower needs the
        `introspect` role there); Unavailable when it does not answer.
        """
        self.require_ready()
        if isinstance(ref, JtiRef) and not serial_from_jti(ref.jti, self.store_id):
            return await self._introspect_at_primary(ref)
        result = await self.check(ref)
        out = {"state": result.state, "active": result.state == TokenState.ACTIVE}
        if result.serial:
            out["serial"] = result.serial
            out["exp"] = self.state.expiry.expires_at(result.serial)
        return out

    async def _introspect_at_primary(self, ref: JtiRef) -> dict:
        if self._stub is None:
            raise Unavailable(f"not connected to the primary at {self.primary}, which resolves this token")
        try:
            answer = await self._stub.Introspect(pb.IntrospectRequest(issuer=ref.issuer, jti=ref.jti),
                                                 timeout=PRIMARY_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:  # the question's fault, not the link's
                raise InvalidArgument(exc.details()) from None
            if code in _REFUSED:  # this follower's configuration: a retry will not help
                raise FailedPrecondition(
                    f"the primary at {self.primary}, which resolves this token, refused this follower "
                    f"({code.name} {exc.details()}): it needs the introspect role there"
                ) from None
            raise Unavailable(
                f"the primary at {self.primary}, which resolves this token, did not answer: "
                f"{code.name} {exc.details()}"
            ) from None
        out = {f.name: v for f, v in answer.ListFields()}
        out["state"], out["active"] = TokenState(answer.state), answer.active
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

    async def audit_pages(self, *args, **kwargs):
        raise FailedPrecondition(f"the audit trail is kept by the primary at {self.primary}")
        yield  # an async generator, as the primary's

    def _read_only(self) -> FailedPrecondition:
        return FailedPrecondition(
            f"this node is a read-only follower; send writes to the primary at {self.primary}"
        )
