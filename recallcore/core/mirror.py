"""The server's in-memory view: the revoked set plus every serial's expiry.

Theory of operation. `RevokedSet` (shared with client replicas) holds what is
revoked; `Mirror` adds what a server or follower needs to answer Check with
all four states: when each registered serial expires. Expiries live in a
numpy uint32 array indexed by serial (4 bytes per registered token), so that
"is this serial expired now?" is one array read, and the same question over a
batch or a bitmap is one vectorised comparison. Both parts change only by
applying deltas, so the primary's mirror, the writer's working copy and a
follower's mirror stay identical.

Pure: no I/O, no clock (callers pass `now`).
"""

from array import array

import numpy as np
from pyroaring import BitMap64
from recallclient.revoked_set import Delta, RevokedSet
from recallclient.types import TokenState

# An expiry of 1 marks a serial whose record was purged: expired long ago.
PURGED = 1
_ACTIVE, _REVOKED, _EXPIRED, _UNKNOWN, _ROTATED = (
    TokenState.ACTIVE, TokenState.REVOKED, TokenState.EXPIRED, TokenState.UNKNOWN, TokenState.ROTATED,
)


def _bitmap_of(ids: np.ndarray) -> BitMap64:
    """A BitMap64 of `ids`; sorting first makes the build several times faster."""
    ordered = array("Q")
    ordered.frombytes(np.sort(ids).astype("<u8", copy=False).tobytes())
    return BitMap64(ordered)


def as_array(bitmap: BitMap64) -> np.ndarray:
    """The serials of `bitmap` as a uint64 numpy array (sorted)."""
    return np.frombuffer(bitmap.to_array(), dtype=np.uint64) if bitmap else np.empty(0, np.uint64)


_SCALAR = 32  # up to this many serials, expiries are read one by one
COUNT_EVERY = 10  # seconds between counts of the unexpired serials (Mirror.unrevoked)


class ExpiryIndex:
    """When each serial expires (Unix seconds; 0 = not registered)."""

    def __init__(self, expires: np.ndarray | None = None) -> None:
        self._exp = expires if expires is not None else np.zeros(1 << 12, dtype=np.uint32)
        self._view = memoryview(self._exp)  # scalar reads: ~5x cheaper than numpy indexing

    @property
    def array(self) -> np.ndarray:
        """The backing array (index = serial); do not mutate."""
        return self._exp

    def set(self, serials: BitMap64, expires_at: int) -> None:
        """Record that `serials` expire at `expires_at`."""
        ids = as_array(serials)
        if not len(ids):
            return
        top = int(ids[-1])
        if top >= len(self._exp):
            grown = np.zeros(max(top + 1, 2 * len(self._exp)), dtype=np.uint32)
            grown[: len(self._exp)] = self._exp
            self._exp = grown
            self._view = memoryview(grown)
        self._exp[ids] = expires_at

    def expires_at(self, serial: int) -> int:
        view = self._view
        return view[serial] if serial < len(view) else 0

    def expired_mask(self, ids: np.ndarray, now: int) -> np.ndarray:
        """For each id: registered here and expired at `now`."""
        inside = ids < len(self._exp)
        exp = self._exp[np.where(inside, ids, 0)]
        return inside & (exp != 0) & (exp <= now)

    def expired_among(self, serials: BitMap64, now: int) -> BitMap64:
        """The serials of `serials` that have expired at `now`."""
        if len(serials) <= _SCALAR:  # a few serials (a single revocation): numpy costs more than it saves
            view, size = self._view, len(self._view)
            return BitMap64(s for s in serials if s < size and 0 != view[s] <= now)
        ids = as_array(serials)
        return BitMap64(ids[self.expired_mask(ids, now)]) if len(ids) else BitMap64()

    def count_expired(self, through: int, now: int) -> int:
        """How many of serials 1..through have expired at `now`."""
        exp = self._exp[1 : through + 1]
        return int(np.count_nonzero((exp != 0) & (exp <= now)))

    def purgeable(self, through: int, cutoff: int, limit: int) -> np.ndarray:
        """Up to `limit` serials that expired at or before `cutoff` and are not purged yet."""
        exp = self._exp[1 : through + 1]
        found = np.flatnonzero((exp > PURGED) & (exp <= cutoff))[:limit]
        return (found + 1).astype(np.uint64)


class Mirror:
    """A RevokedSet plus expiries and rotations: enough to answer Check with every state."""

    def __init__(self, revocations: RevokedSet, expiry: ExpiryIndex, rotated: BitMap64 | None = None) -> None:
        self.revocations = revocations
        self.expiry = expiry
        self.rotated = rotated if rotated is not None else BitMap64()
        self._live = (-COUNT_EVERY, 0, 0)  # (when, registered_through then, unexpired then): unrevoked()

    @property
    def seq(self) -> int:
        return self.revocations.seq

    @property
    def unrevoked_at_most(self) -> int:
        """Registered minus revoked: a quick bound of unrevoked(), and one that only grows (the
        revoked set loses its serials once they expire)."""
        return self.revocations.registered_through - len(self.revocations.revoked)

    def unrevoked(self, now: int) -> int:
        """At most how many registered tokens are neither revoked nor expired at `now`: what a kill
        switch would still revoke (it leaves expired tokens alone).

        The lesser of unrevoked_at_most and the unexpired at the last count
        plus every serial registered since. The count is one pass over the
        expiry array (23 ms at 10M serials), made at most once per
        COUNT_EVERY seconds: callers ask this only when the quick bound says
        the store is nearly full.
        """
        through = self.revocations.registered_through
        counted_at, counted_through, live = self._live
        if not counted_at <= now < counted_at + COUNT_EVERY or through < counted_through:
            live = through - self.expiry.count_expired(through, now)
            counted_through, self._live = through, (now, through, live)
        return min(self.unrevoked_at_most, live + through - counted_through)

    def copy(self) -> "Mirror":
        """An independent copy (the writer works on its own)."""
        return Mirror(self.revocations.copy(), ExpiryIndex(self.expiry.array.copy()), BitMap64(self.rotated))

    def apply(self, delta: Delta) -> bool:
        """Apply `delta` to both parts; False when already applied."""
        if not self.revocations.apply(delta):
            return False
        for expires_at, serials in delta.expiring:
            self.expiry.set(serials, expires_at)
        if delta.rotated:
            self.rotated |= delta.rotated
        return True

    def state(self, serial: int, now: int) -> TokenState:
        """The state of `serial` at `now`."""
        revocations = self.revocations
        if not 0 < serial <= revocations.registered_through:
            return _REVOKED if serial in revocations.revoked else _UNKNOWN
        view = self.expiry._view  # inlined expires_at: this is the Check hot path
        exp = view[serial] if serial < len(view) else 0
        if exp and exp <= now:
            return _EXPIRED
        if serial in revocations.revoked:
            return _REVOKED
        return _ROTATED if serial in self.rotated else _ACTIVE

    def states(self, ids: np.ndarray, now: int) -> bytes:
        """One TokenState byte per id (uint64 array), without a loop per id."""
        if not len(ids):
            return b""
        query = _bitmap_of(ids)
        hits = query & self.revocations.revoked
        rotated = query & self.rotated
        through = self.revocations.registered_through
        expired = self.expiry.expired_mask(ids, now)
        unregistered = query.max() > through
        if not (hits or rotated or unregistered or expired.any()):
            return bytes((_ACTIVE,)) * len(ids)
        out = np.full(len(ids), _ACTIVE, dtype=np.uint8)
        if rotated:
            out[np.isin(ids, as_array(rotated))] = _ROTATED
        is_revoked = np.isin(ids, as_array(hits)) if hits else np.zeros(len(ids), dtype=bool)
        out[is_revoked] = _REVOKED
        out[expired] = _EXPIRED
        if unregistered:
            out[(ids > through) & ~is_revoked] = _UNKNOWN
        return out.tobytes()

    def counts(self, now: int) -> tuple[int, int, int]:
        """(revoked and unexpired, expired, active) among registered serials."""
        through = self.revocations.registered_through
        revoked_set = self.revocations.revoked
        expired = self.expiry.count_expired(through, now)
        revoked = len(revoked_set) - len(self.expiry.expired_among(revoked_set, now))
        return revoked, expired, through - expired - revoked
