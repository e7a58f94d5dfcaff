"""Local replicas of the revoked set, kept current over Watch.

Theory of operation. A replica answers `is_revoked` from memory (a bitmap
lookup) and follows the server's Watch stream in the background: a
`ReplicaCore` turns each event into an `Outcome`, and `_ReplicaBase` records
it (the lookup references, the time the server last vouched, listeners,
waiters, saving). The two drivers differ only in I/O: `Replica` runs the
stream on a daemon thread over a blocking channel, `AsyncReplica` on a task
over grpc.aio. Each also runs a ticker that flips the `_stale` flag and
cancels a stream that went silent (the watchdog); a broken stream is
reopened with full-jitter exponential backoff, resuming from the replica's
sequence. The hot path reads two attributes, `_stale` and `_revoked`, and
takes no lock: a snapshot install swaps the bitmap reference, a delta
mutates it in place, both on the stream's thread (atomic under the GIL).
The replica file also records when the server last vouched (wall clock), so
a warm start is as stale as the file, not fresh and not infinitely stale.
"""

import asyncio
import contextlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable

import grpc

from . import replica_file
from ._proto.recall.v1 import recall_pb2 as pb
from ._proto.recall.v1 import recall_pb2_grpc
from .freshness import DEFAULT_MAX_SKEW, Freshness
from .jti import UNBOUND_PREFIX, bound_parser, foreign_key, serial_from_jti
from .replica_core import Outcome, ReplicaCore, Resync
from .revoked_set import RevokedSet
from .transport import Transport

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # grpc's own reconnect backoff grows to 120 s by default: cap it, so a
    # replica is back within about a second of its server.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)
ON_STALE = ("fail_closed", "raise")
_NOTIFIED = frozenset({"installed", "applied", "reset"})  # kinds listeners see
_VOUCHING = frozenset({"installed", "applied", "vouched", "skipped"})
_HEALTHY = frozenset({"installed", "applied", "vouched"})  # reset the backoff

Target = str | Callable[[], str]
Listener = Callable[[Outcome], None]



class StaleReplica(Exception):
    """Raised by `is_revoked` (on_stale="raise") when the replica is too stale."""

    def __init__(self, staleness: float, max_staleness: float) -> None:
        super().__init__(f"replica is {staleness:.3f} s stale (max_staleness {max_staleness} s)")
        self.staleness = staleness


class _ReplicaBase:
    """Lookup, staleness policy and bookkeeping shared by both drivers (no I/O).

    `target` is "host:port" or a function returning it (called before each
    connection). `max_staleness`: seconds without the server vouching after
    which `is_revoked` follows `on_stale` ("fail_closed": everything is
    revoked; "raise": StaleReplica). `path`: the replica file, for warm
    starts. `backoff`: (first, largest) reconnect delay in seconds.
    `clock_skew`: seconds the server's clock may differ from this host's;
    staleness counts from the time the server stamped on its vouch (see
    freshness.py), and a vouch stamped further off than this is ignored and
    logged. `cacert`, `cert`, `key`, `token`: TLS material and a bearer
    credential, as for RecallClient.
    `channel`: a channel you own (left open). `on_change`: a first listener
    (see add_listener). Raises ValueError for a bad argument.
    """

    def __init__(self, target: Target, *, max_staleness: float = 5.0, on_stale: str = "fail_closed",
                 path: str | os.PathLike | None = None, backoff: tuple[float, float] = (0.05, 5.0),
                 channel: grpc.Channel | grpc.aio.Channel | None = None,
                 on_change: Listener | None = None, clock_skew: float = DEFAULT_MAX_SKEW,
                 cacert: str | None = None, cert: str | None = None, key: str | None = None,
                 token: str | None = None) -> None:
        if not max_staleness > 0:
            raise ValueError("max_staleness: must be positive")
        if on_stale not in ON_STALE:
            raise ValueError(f"on_stale: must be one of {ON_STALE}, not {on_stale!r}")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError("backoff: must be (low, high) with 0 < low <= high")
        self._target = target
        self.max_staleness = max_staleness
        self._raise = on_stale == "raise"
        self._file = replica_file.ReplicaFile(path) if path is not None else None
        self._backoff = backoff
        self._listeners: list[Listener] = [on_change] if on_change else []
        self._core = ReplicaCore()
        self._adopt(self._core.state)
        self._stale = True
        self._done_seq = 0  # the seq whose outcome was fully recorded (waiters see this)
        self._fresh = Freshness(clock_skew)  # when the server last vouched, by its own stamp
        self._ignored_logged = -math.inf
        self._flag_lock = threading.Lock()
        self._interval = 0.0  # the server's heartbeat interval, seconds
        self._last_event = time.monotonic()
        self._attempt = 0
        self._tick_period = min(max_staleness / 4, 0.25)
        self._channel = channel
        self._transport = Transport(cacert, cert, key, token)
        self._setup()

    # ------------------------------------------------------------ lookups

    def is_revoked(
        self, token: int | str, issuer: str | None = None,
        sub: str = "", client_id: str = "", issued_at: int | None = None,
    ) -> bool:
        """True when the token is revoked: an int serial, or a str jti.

        A canonical jti is looked up by the serial it encodes; any other jti
        needs `issuer` and is looked up by (issuer, jti) key: tokens revoked
        that way, never registered or registered under that jti. Give the
        token's claims (`sub`, `client_id`, `issued_at`; issued_at 0 =
        unknown) to apply cut-off rules to a token the store never
        registered. Past `max_staleness` answers True
        (on_stale="fail_closed") or raises StaleReplica (on_stale="raise").
        Raises ValueError for a non-canonical jti without issuer, TypeError
        for other token types.
        """
        if self._stale:
            if self._raise:
                raise StaleReplica(self.staleness, self.max_staleness)
            return True
        # The hot path, tuned by measurement: an exact type test (bools and
        # floats must not pass as serials; the bitmap would take them), and
        # no keyword-only parameters (they cost ~20 ns a call on 3.11).
        if type(token) is int:
            try:
                return token in self._revoked
            except OverflowError:  # negative or past 64 bits: never a serial
                return False
        if type(token) is not str:
            raise TypeError(f"token: an int serial or a str jti, not {type(token).__name__}")
        # A jti bound to this store names its serial and nothing else (the
        # store never keeps one as a foreign key): no pair to hash, which is
        # most of the cost of any other jti.
        serial = self._bound_serial(token)
        if serial is not None:
            if serial in self._revoked:
                return True
        elif self._jti_revoked(token, issuer):
            return True
        if issued_at is None:
            return False
        return self._core.state.cut_off(issuer or "", sub, client_id, issued_at)

    def _jti_revoked(self, token: str, issuer: str | None) -> bool:
        """Any jti but one bound to this store: by (issuer, jti) key, or an older
        canonical (rc1) jti by its serial."""
        if issuer is not None and foreign_key(issuer, token) in self._foreign:
            return True
        serial = serial_from_jti(token) if token.startswith(UNBOUND_PREFIX) else None
        if serial is not None:
            return serial in self._revoked
        if issuer is None:
            raise ValueError(f"jti {token!r} is not canonical: pass issuer= to check it")
        return False

    def _adopt(self, state: RevokedSet) -> None:
        """Point the lookups at `state` (a new set, or the same one with another store id)."""
        self._revoked, self._foreign = state.revoked, state.foreign
        self._bound_serial = bound_parser(state.store_id)

    # -------------------------------------------------------------- state

    @property
    def staleness(self) -> float:
        """Seconds since the server last vouched for this replica (inf before)."""
        return self._fresh.staleness(time.monotonic())

    @property
    def seq(self) -> int:
        """The sequence the replica has applied."""
        return self._core.state.seq

    @property
    def fail_closed(self) -> bool:
        """True while the replica cannot vouch for its set (before its first snapshot, past
        max_staleness): is_revoked then answers as `on_stale` says, never "not revoked"."""
        return self._stale

    @property
    def store_id(self) -> str:
        """The store the replica follows ("" before its first snapshot)."""
        return self._core.state.store_id

    @property
    def cardinality(self) -> int:
        """Serials in the replica's revoked set."""
        return len(self._core.state.revoked)

    def digest(self) -> bytes:
        """The 32-byte digest of the replica's set (compare with the server's)."""
        return self._core.state.digest()

    def add_listener(self, fn: Listener) -> None:
        """Call `fn(outcome)` on the replica's thread or task for every
        installed, applied or reset outcome; its exceptions are logged."""
        self._listeners.append(fn)

    # ------------------------------------------------- shared driver logic

    def _resolve(self) -> str:
        return self._target() if callable(self._target) else self._target

    def _load_file(self) -> None:
        saved = self._file.read() if self._file is not None else None
        if saved is None:
            return
        self._core = ReplicaCore(saved.state)
        self._adopt(saved.state)
        self._done_seq = saved.state.seq
        with self._flag_lock:  # a saved time in the future (a clock that went back) stays stale
            self._fresh.restore(saved.vouched_at, time.time(), time.monotonic())
            self._stale = self._fresh.staleness(time.monotonic()) > self.max_staleness

    def _request(self) -> pb.WatchRequest:
        self._last_event = time.monotonic()
        return self._core.request()

    def _handle(self, event: pb.WatchEvent) -> bool:
        """Apply one event and record its outcome; True when a save is due.

        Raises Resync when the stream cannot be followed."""
        self._last_event = time.monotonic()
        outcome = self._core.handle(event)
        kind = outcome.kind
        if kind == "installed" or kind == "applied":
            self._adopt(self._core.state)
        if kind in _HEALTHY:
            self._attempt = 0
        if kind == "vouched" and event.heartbeat.interval_ms != self._interval * 1000:
            self._interval = event.heartbeat.interval_ms / 1000
            if self._interval >= self.max_staleness:
                log.warning("server heartbeat interval %.1f s >= max_staleness %.1f s: the replica "
                            "will go stale between heartbeats", self._interval, self.max_staleness)
        if outcome.current and kind in _VOUCHING:
            self._vouch(outcome.vouched_at)
        if kind in _NOTIFIED:
            for listener in list(self._listeners):
                try:
                    listener(outcome)
                except Exception:
                    log.exception("replica listener %r failed", listener)
        self._done_seq = outcome.seq
        self._notify()
        return self._save_due(kind == "installed")

    def _vouch(self, sent_at: float) -> None:
        """Count the server's vouch stamped `sent_at` (its clock), if it may count."""
        with self._flag_lock:
            now = time.monotonic()
            counted = self._fresh.vouch(sent_at, self._interval or 1.0, time.time(), now)
            self._stale = self._fresh.staleness(now) > self.max_staleness
        if not counted and self._fresh.reason and now - self._ignored_logged > 10:
            self._ignored_logged = now
            log.warning("ignored the server's vouch (%d so far): %s", self._fresh.ignored, self._fresh.reason)

    def _tick(self, streaming: bool) -> bool:
        """Re-evaluate `_stale`; True when the open stream has been silent too long."""
        now = time.monotonic()
        with self._flag_lock:
            self._stale = self._fresh.staleness(now) > self.max_staleness
        silent = now - self._last_event
        if not streaming or silent <= max(self.max_staleness, 3 * self._interval):
            return False
        self._last_event = now
        log.warning("no Watch event for %.1f s: reconnecting", silent)
        return True

    def _next_delay(self) -> float:
        low, high = self._backoff  # full jitter, within [low, high]
        ceiling = min(high, low * 2 ** min(self._attempt, 32))
        self._attempt += 1
        return random.uniform(low, ceiling)

    def _save_due(self, installed: bool = False) -> bool:
        return self._file is not None and self._file.due(self._core.state, self._fresh.vouched_wall, installed)

    def _save_now(self) -> None:
        if self._file is not None:
            self._file.write(self._core.state, self._fresh.vouched_wall)

    def _setup(self) -> None:
        raise NotImplementedError

    def _notify(self) -> None:
        raise NotImplementedError


class Replica(_ReplicaBase):
    """A revoked-set replica kept current by a daemon thread (arguments: see
    _ReplicaBase; `channel` is a grpc.Channel). Use `start()`/`close()` or
    `with Replica(...) as replica`."""

    def _setup(self) -> None:
        self._lock = threading.Lock()  # guards _call against close()
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._call: grpc.Call | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> "Replica":
        """Load the replica file (if any) and start following; returns self."""
        if self._threads:
            raise RuntimeError("replica already started")
        self._load_file()
        for run, name in ((self._run, "recall-replica"), (self._ticker, "recall-replica-tick")):
            thread = threading.Thread(target=run, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def close(self) -> None:
        """Stop following, join the threads, save the replica file."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            call = self._call
        if call is not None:
            call.cancel()
        for thread in self._threads:
            thread.join()
        self._notify()
        if self._threads:
            self._save_now()

    def __enter__(self) -> "Replica":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_for(self, seq: int, timeout: float | None = None) -> bool:
        """Block until the replica has applied `seq` (and its listeners have run);
        False after `timeout` seconds or close."""
        with self._changed:
            self._changed.wait_for(lambda: self._done_seq >= seq or self._closing.is_set(), timeout)
        return self._done_seq >= seq

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                channel = self._channel or self._transport.channel(self._resolve(), CHANNEL_OPTIONS)
                try:
                    self._follow(channel)
                finally:
                    if channel is not self._channel:
                        channel.close()
                if self._save_due():
                    self._save_now()
            except Exception:
                log.exception("replica stream failed")
            self._closing.wait(self._next_delay())

    def _follow(self, channel: grpc.Channel) -> None:
        with self._lock:
            if self._closing.is_set():
                return
            call = self._call = recall_pb2_grpc.RecallStub(channel).Watch(self._request())
        try:
            for event in call:
                if self._handle(event):
                    self._save_now()
        except Resync as exc:
            log.warning("replica resyncing: %s", exc)
        except grpc.RpcError as exc:
            if not self._closing.is_set():
                log.info("Watch stream ended: %s %s", exc.code().name, exc.details())
        finally:
            with self._lock:
                self._call = None
            call.cancel()

    def _ticker(self) -> None:
        while not self._closing.wait(self._tick_period):
            with self._lock:
                call = self._call
            if self._tick(call is not None):
                call.cancel()


class AsyncReplica(_ReplicaBase):
    """The asyncio twin of `Replica`, driven by a task over grpc.aio (same
    arguments; `channel` is a grpc.aio.Channel). `await start()`, `await
    close()` or `async with`; `is_revoked` is synchronous and as fast."""

    def _setup(self) -> None:
        self._changed = asyncio.Event()  # replaced by a new one on every outcome
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    async def start(self) -> "AsyncReplica":
        """Load the replica file (if any) and start following; returns self."""
        if self._tasks:
            raise RuntimeError("replica already started")
        await asyncio.to_thread(self._load_file)
        self._tasks = [asyncio.create_task(self._run(), name="recall-replica"),
                       asyncio.create_task(self._ticker(), name="recall-replica-tick")]
        return self

    async def close(self) -> None:
        """Stop following, wait for the tasks, save the replica file."""
        if self._closing:
            return
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tasks:
            self._notify()
            await asyncio.to_thread(self._save_now)

    async def __aenter__(self) -> "AsyncReplica":
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_for(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until the replica has applied `seq` (and its listeners have run);
        False after `timeout` seconds or close."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._done_seq < seq and not self._closing:
                    await self._changed.wait()
        return self._done_seq >= seq

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        while True:
            try:
                channel = self._channel or self._transport.aio_channel(self._resolve(), CHANNEL_OPTIONS)
                try:
                    await self._follow(channel)
                finally:
                    if channel is not self._channel:
                        await channel.close()
                if self._save_due():
                    await asyncio.to_thread(self._save_now)
            except Exception:
                log.exception("replica stream failed")
            await asyncio.sleep(self._next_delay())

    async def _follow(self, channel: grpc.aio.Channel) -> None:
        call = self._call = recall_pb2_grpc.RecallStub(channel).Watch(self._request())
        try:
            async for event in call:
                if self._handle(event):
                    await asyncio.to_thread(self._save_now)
        except Resync as exc:
            log.warning("replica resyncing: %s", exc)
        except grpc.RpcError as exc:
            log.info("Watch stream ended: %s %s", exc.code().name, exc.details())
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            # the watchdog cancelled the call: reconnect
        finally:
            self._call = None
            call.cancel()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick_period)
            call = self._call
            if self._tick(call is not None):
                call.cancel()
