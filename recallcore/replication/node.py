"""The read side every node shares: the mirror, its waiters and its fan-out.

Theory of operation. A node (the primary `Engine`, or a `Follower`) holds a
`Mirror` on the asyncio event loop and changes it only through `_applied`
(deltas that are already durable on the primary) or `_installed` (a whole
snapshot, on followers). Each change is published to the Watch hub and
wakes callers waiting for a sequence (read-your-writes with `min_seq`).
Check and CheckBatch are answered from the mirror; what needs more than the
mirror (a custom jti's serial, a revocation's reason, a token record) goes
through hooks that the primary answers from LMDB and a follower from what it
has.
"""

import asyncio
import time
from collections.abc import Callable

import numpy as np
from recallclient.jti import foreign_key, serial_from_jti
from recallclient.revoked_set import Delta
from recallclient.types import CheckResult, JtiRef, Stats, TokenState

from ..core import validate
from ..core.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from ..core.mirror import Mirror
from ..core.model import Claims
from ..settings import Settings
from .hub import Hub


class Node:
    """Reads, waits and fan-out over a Mirror; subclasses add a source of changes."""

    def __init__(self, settings: Settings, state: Mirror, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.state = state
        self.hub = Hub(settings.watch_ring)
        self._seq_waiters: dict[int, list[asyncio.Future]] = {}
        self.synced = asyncio.Event()  # set once the node can answer reads
        self.wall_ns: Callable[[], int] = time.time_ns  # the clock vouches are stamped with

    @property
    def store_id(self) -> str:
        return self.state.revocations.store_id

    @property
    def ready(self) -> bool:
        """True when the node can answer reads."""
        return True

    # A subscriber ahead of this node: a follower waits this long for its
    # primary's changes to arrive; a primary resets it at once.
    ahead_wait = 0.0

    def vouching(self) -> bool:
        """True when this node may tell subscribers they are current."""
        return True

    def require_vouching(self) -> None:
        """Raise Unavailable, saying why, unless this node may vouch for a new subscriber."""
        if not self.vouching():
            raise Unavailable("this follower has lost touch with its primary; try another node")

    def vouch_time_us(self) -> int:
        """When this node can vouch its state was current (Unix microseconds); 0 when it cannot.

        A primary: now. A follower: when its primary last vouched for it.
        """
        return self.wall_ns() // 1000

    def answering(self) -> bool:
        """True when this node may answer reads: ready and within max_staleness."""
        return self.ready and self.staleness() <= self.settings.max_staleness

    def require_ready(self) -> None:
        """Raise unless this node may answer reads.

        FailedPrecondition before a follower's first sync; Unavailable, giving
        the staleness, past max_staleness (gateways then apply their own
        fail-closed policy, or ask another node).
        """
        if not self.ready:
            raise FailedPrecondition("this node has not synced with its primary yet; retry shortly")
        stale = self.staleness()
        if stale > self.settings.max_staleness:
            raise Unavailable(
                f"this follower cannot vouch for its state: its primary last vouched {stale:.1f} s ago "
                f"(max_staleness {self.settings.max_staleness:g} s); ask another node or retry"
            )

    # --------------------------------------------------------------- changes

    def _apply_one(self, delta: Delta) -> bool:
        """Apply a durable delta, publish it, wake sequence waiters; False if old."""
        if not self.state.apply(delta):
            return False
        self.hub.publish(delta)
        self._wake_seq_waiters()
        return True

    def _applied(self, deltas: list[Delta]) -> None:
        for delta in deltas:
            self._apply_one(delta)

    def _installed(self, state: Mirror) -> None:
        """Replace the whole mirror (a follower's snapshot)."""
        self.state = state
        self.hub.replace_history()
        self._wake_seq_waiters()
        self.synced.set()

    async def wait_for_seq(self, seq: int, timeout: float | None) -> None:
        """Return once the mirror has applied `seq`.

        Raises DeadlineExceeded after `timeout` (None: the caller set no
        deadline), and after settings.max_wait in any case: a sequence no
        write ever acknowledged must not park the call forever.
        """
        if seq <= self.state.seq:
            return
        self._refuse_unknown_seq(seq)
        timeout = self.settings.max_wait if timeout is None else min(timeout, self.settings.max_wait)
        future = asyncio.get_running_loop().create_future()
        waiters = self._seq_waiters.setdefault(seq, [])
        waiters.append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"min_seq: this node is at seq {self.state.seq} and did not reach {seq} in time"
            ) from None
        finally:
            if future in waiters:  # timed out or cancelled: not woken
                waiters.remove(future)
                if not waiters and self._seq_waiters.get(seq) is waiters:
                    del self._seq_waiters[seq]

    async def changed(self, after: int, timeout: float) -> None:
        """Return once the mirror is past seq `after`, or after `timeout` seconds (no error)."""
        if after < self.state.seq:
            return
        future = asyncio.get_running_loop().create_future()
        waiters = self._seq_waiters.setdefault(after + 1, [])
        waiters.append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            if future in waiters:
                waiters.remove(future)
                if not waiters and self._seq_waiters.get(after + 1) is waiters:
                    del self._seq_waiters[after + 1]

    def _refuse_unknown_seq(self, seq: int) -> None:
        """Raise when `seq` cannot arrive here by waiting (a primary: above its head)."""

    def _wake_seq_waiters(self) -> None:
        for seq in [s for s in self._seq_waiters if s <= self.state.seq]:
            for future in self._seq_waiters.pop(seq):
                if not future.done():
                    future.set_result(None)

    # ----------------------------------------------------------------- hooks

    async def _serials_of(self, refs: list[JtiRef]) -> list[int]:
        """The serial each exact (issuer, jti) is registered under here, or 0."""
        raise NotImplementedError

    async def _resolve(self, refs: list[JtiRef]) -> list[int]:
        """The serial of each token by (issuer, jti), or 0 for a foreign token.

        The registration of exactly that pair wins. Otherwise, unless the
        pair itself is revoked by key (another issuer's token that only looks
        canonical), a canonical jti stands for the serial it encodes: an
        issuer spelled differently (or left to the default at registration)
        must not turn a revoked token into an UNKNOWN one.
        """
        found = await self._serials_of(refs)
        revocations = self.state.revocations
        out = []
        for serial, ref in zip(found, refs):
            if not serial and not revocations.is_foreign_revoked(foreign_key(ref.issuer, ref.jti)):
                encoded = serial_from_jti(ref.jti, revocations.store_id) or 0
                serial = encoded if encoded <= revocations.registered_through else 0
            out.append(serial)
        return out

    async def _why_revoked(self, serial: int, key: int) -> tuple[int, str]:
        """(revoked_at, reason) of a revoked serial (or foreign key when serial is 0)."""
        raise NotImplementedError

    async def history(self, after: int, limit: int) -> list[Delta] | None:
        """Up to `limit` deltas after `after`, or None when they are no longer held."""
        return self.hub.since(after, limit)

    async def history_at(self, seq: int) -> bytes:
        """The store's history after change `seq` as this node holds it; b"" when it cannot tell."""
        if seq == self.state.seq:
            return self.state.revocations.history
        held = await self.history(seq - 1, 1) if seq > 0 else None
        return held[0].history if held and held[0].seq == seq else b""

    async def oldest_resumable(self) -> int:
        """The oldest sequence a subscriber can resume after."""
        return self.hub.oldest() or self.state.seq

    async def sizes(self) -> tuple[int, int, int, bool]:
        """(bytes of data in use, bytes reserved, the most it may grow to, registrations refused)."""
        return 0, 0, 0, False

    # ----------------------------------------------------------------- reads

    def _unregistered_state(self, ref: JtiRef, claims: Claims | None) -> TokenState:
        revocations = self.state.revocations
        if revocations.is_foreign_revoked(foreign_key(ref.issuer, ref.jti)):
            return TokenState.REVOKED
        if claims is not None and revocations.cut_off(ref.issuer, claims.sub, claims.client_id, claims.issued_at):
            return TokenState.REVOKED
        return TokenState.UNKNOWN

    async def check(self, ref: int | JtiRef, claims: Claims | None = None) -> CheckResult:
        """The state of one token by serial or (issuer, jti).

        `claims` of a token never registered here let cut-off rules apply to it.
        """
        self.require_ready()
        serial = ref if isinstance(ref, int) else (await self._resolve([ref]))[0]
        if serial:
            state = self.state.state(serial, int(self.clock()))
        else:
            state = self._unregistered_state(ref, claims)
        seq = self.state.seq
        if state != TokenState.REVOKED:
            return CheckResult(state, serial, 0, "", seq)
        key = foreign_key(ref.issuer, ref.jti) if not serial else 0
        if not serial and not self.state.revocations.is_foreign_revoked(key):
            return CheckResult(state, 0, 0, "cut-off rule", seq)
        revoked_at, reason = await self._why_revoked(serial, key)
        return CheckResult(state, serial, revoked_at, reason, seq)

    def check_in_memory(self, ref: JtiRef, claims: Claims, key: int = 0) -> tuple[TokenState, int]:
        """(state, serial or 0) of a signed token by (issuer, jti), from the mirror alone.

        Answers as `check` does, without the store: a canonical jti names its
        serial; any other jti is revoked when its (issuer, jti) key is (a
        registered token under a caller-chosen jti joins the keys when it is
        revoked, see core/operations.py), or when a cut-off rule covers
        `claims`. For tokens whose signature proved they were issued; `key`
        is foreign_key(ref.issuer, ref.jti) when the caller has it. Raises as
        require_ready.
        """
        self.require_ready()
        revocations = self.state.revocations
        if revocations.is_foreign_revoked(key or foreign_key(ref.issuer, ref.jti)):
            return TokenState.REVOKED, 0
        serial = serial_from_jti(ref.jti, revocations.store_id) or 0
        if serial and serial <= revocations.registered_through:
            return self.state.state(serial, int(self.clock())), serial
        if revocations.cut_off(ref.issuer, claims.sub, claims.client_id, claims.issued_at):
            return TokenState.REVOKED, 0
        return TokenState.UNKNOWN, 0

    def check_packed(self, packed: bytes) -> bytes:
        """One TokenState byte per little-endian uint64 serial in `packed`.

        Raises InvalidArgument naming the first serial that is 0 or too large.
        """
        self.require_ready()
        ids = np.frombuffer(validate.packed_serials(packed, self.settings), dtype=np.uint64)
        bad = (ids == 0) | (ids > validate.MAX_SERIAL)
        if bad.any():
            first = int(np.argmax(bad))
            validate.serial(int(ids[first]), f"serials[{first}]")
        return self.state.states(ids, int(self.clock()))

    async def check_refs(self, refs: list[JtiRef], claims: list[Claims | None] | None = None) -> list[TokenState]:
        """States of tokens by (issuer, jti), in order (claims as in `check`)."""
        if not refs:
            return []
        self.require_ready()
        serials = await self._resolve(refs)
        now = int(self.clock())
        claims = claims or [None] * len(refs)
        return [
            self.state.state(serial, now) if serial else self._unregistered_state(r, c)
            for serial, r, c in zip(serials, refs, claims)
        ]

    async def stats(self) -> Stats:
        """Counts of the mirror and sizes of the store."""
        data_bytes, map_bytes, max_map_bytes, refused = await self.sizes()
        revocations = self.state.revocations
        revoked, expired, active = self.state.counts(int(self.clock()))
        return Stats(
            registered=revocations.registered_through,
            revoked=revoked,
            active=active,
            expired=expired,
            foreign_revoked=len(revocations.foreign),
            seq=revocations.seq,
            store_id=self.store_id,
            data_bytes=data_bytes,
            map_bytes=map_bytes,
            staleness=self.staleness(),
            max_map_bytes=max_map_bytes,
            registrations_refused=refused,
            insecure=self.settings.insecure and not self.settings.loopback,
        )

    def staleness(self) -> float:
        """Seconds since this node last knew it was current (0: always current)."""
        return 0.0
