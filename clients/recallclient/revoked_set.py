"""The revoked set as a replica holds it, and the deltas that change it.

Theory of operation. A store's revocation state is a sequence of committed
changes numbered 1, 2, 3, ... Each change is a `Delta`: the serials it
revoked (`added`) and no longer tracks (`removed`, e.g. swept after expiry),
the same for foreign token keys (tokens revoked by issuer + jti that the store
never registered), the cut-off rules it adds or retires, and, for servers and
followers only, the new highest serial, the expiry of each new serial and the
refresh tokens it rotated. A `RevokedSet` starts empty at sequence 0 (or from
a snapshot) and applies deltas strictly in order: a delta whose `prev_seq` is
not the set's `seq` raises `SequenceGap`, and one already applied is skipped,
so applying is idempotent. The server's in-memory mirror, client replicas and
follower nodes are all this one class fed by the same deltas.

The `digest` fingerprints the exact sets: the revoked serials are cut into
ranges of 2**20 serials, each range hashed (BLAKE2b over its sorted serials
as little-endian uint64), and the range hashes hashed together; a delta marks
only the ranges it touches for rehashing, so keeping the digest costs time
proportional to the change. Foreign keys are uniformly random 64-bit hashes,
so their count and sum (mod 2**64) fingerprint them.

Foreign keys are BLAKE2b hashes of (issuer, jti): uniformly random 64-bit
values, which roaring bitmaps compress badly. They live in a Python set:
on this machine kind `key in set()` took ~260 ns against ~540 ns for a
BitMap64 of random ids, at ~60 against ~22 bytes per key; tokens revoked by
issuer + jti are few next to registered ones, so lookup speed wins (see
bench/README.md, scenario 1: the hash itself dominates either way).

Pure: no I/O, no clock (callers pass `now`), no threads.
"""

import dataclasses
import hashlib
import struct
from collections.abc import Iterable

from pyroaring import BitMap64

_MASK = 2**64 - 1

# Cut-off rule scopes (the numbers of recall.v1.Rule.Scope).
SUBJECT, CLIENT, ISSUER, ALL = 1, 2, 3, 4
Rule = tuple[int, str, int]  # (scope, value, before)
_DIGEST = struct.Struct("<QQQ16s")
DIGEST_BITS = 20


def span(start: int, stop: int) -> BitMap64:
    """A bitmap of start..stop-1 (stop may be 2**64)."""
    out = BitMap64()
    out.add_range(start, min(stop, _MASK))
    if stop > _MASK:
        out.add(_MASK)
    return out


def split(bitmap: BitMap64, bits: int):
    """Yield (n, part of `bitmap` in [n << bits, (n + 1) << bits)) for each nonempty part, in order."""
    if not bitmap:
        return
    n, last = bitmap.min() >> bits, bitmap.max() >> bits
    while n <= last:
        part = bitmap & span(n << bits, (n + 1) << bits)
        if part:
            yield n, part
        following = next(bitmap.iter_equal_or_larger((n + 1) << bits), None) if n < last else None
        if following is None:
            return
        n = following >> bits


def _ranges(bitmap: BitMap64) -> set[int]:
    """The digest ranges `bitmap` touches."""
    if len(bitmap) <= 64:
        return {x >> DIGEST_BITS for x in bitmap}
    return {n for n, _ in split(bitmap, DIGEST_BITS)}


class SequenceGap(Exception):
    """A delta does not follow the sequence the set is at."""

    def __init__(self, have: int, prev_seq: int, seq: int) -> None:
        super().__init__(f"at seq {have}, got a delta from {prev_seq} to {seq}")
        self.have = have
        self.prev_seq = prev_seq
        self.seq = seq


@dataclasses.dataclass(frozen=True)
class Delta:
    """One committed change (or several merged); bitmaps are not to be mutated."""

    prev_seq: int
    seq: int
    added: BitMap64 = dataclasses.field(default_factory=BitMap64)
    removed: BitMap64 = dataclasses.field(default_factory=BitMap64)
    foreign_added: frozenset[int] = frozenset()
    foreign_removed: frozenset[int] = frozenset()
    registered_through: int = 0
    expiring: tuple[tuple[int, BitMap64], ...] = ()
    time: int = 0
    rules_added: frozenset[Rule] = frozenset()
    rules_removed: frozenset[Rule] = frozenset()
    rotated: BitMap64 = dataclasses.field(default_factory=BitMap64)
    history: bytes = b""  # the store's history after this change (see recall.v1.Delta.history)

    def merge(self, later: "Delta") -> "Delta":
        """Return one delta equal to applying `self` then `later`."""
        if later.prev_seq != self.seq:
            raise SequenceGap(self.seq, later.prev_seq, later.seq)
        added = (self.added - later.removed) | later.added
        removed = (self.removed - later.added) | later.removed
        f_added = (self.foreign_added - later.foreign_removed) | later.foreign_added
        f_removed = (self.foreign_removed - later.foreign_added) | later.foreign_removed
        return Delta(
            prev_seq=self.prev_seq,
            seq=later.seq,
            added=added,
            removed=removed,
            foreign_added=f_added,
            foreign_removed=f_removed,
            registered_through=max(self.registered_through, later.registered_through),
            expiring=self.expiring + later.expiring,
            time=later.time,
            rules_added=(self.rules_added - later.rules_removed) | later.rules_added,
            rules_removed=(self.rules_removed - later.rules_added) | later.rules_removed,
            rotated=self.rotated | later.rotated,
            history=later.history,
        )

    @property
    def empty(self) -> bool:
        """True when applying the delta changes nothing but the sequence."""
        return not (
            self.added
            or self.removed
            or self.foreign_added
            or self.foreign_removed
            or self.registered_through
            or self.expiring
            or self.rules_added
            or self.rules_removed
            or self.rotated
        )


class RevokedSet:
    """What is revoked, and how far serials have been issued, at `seq`."""

    def __init__(self, store_id: str = "", seq: int = 0) -> None:
        self.store_id = store_id
        self.seq = seq
        self.revoked = BitMap64()
        self.foreign: set[int] = set()
        self.registered_through = 0
        self._range_digests: dict[int, bytes] = {}
        self._dirty: set[int] = set()
        self._foreign_sum = 0
        self.rules: set[Rule] = set()
        self._cutoffs: dict[tuple[int, str], int] = {}
        self.history = b""  # the store's history at seq (b"": not known)

    # ------------------------------------------------------------- loading

    def load(
        self,
        *,
        seq: int,
        revoked: BitMap64,
        foreign: Iterable[int] = (),
        registered_through: int = 0,
        rules: Iterable[Rule] = (),
        history: bytes = b"",
    ) -> None:
        """Replace the whole state (a snapshot or the store's contents)."""
        self.seq = seq
        self.history = history
        self.revoked = BitMap64(revoked)
        self.foreign = set(foreign)
        self.registered_through = registered_through
        self._range_digests = {}
        self._dirty = {n for n, _ in split(self.revoked, DIGEST_BITS)}
        self._foreign_sum = sum(self.foreign) & _MASK
        self.rules = set(rules)
        self._index_rules()

    def copy(self) -> "RevokedSet":
        """An independent copy (same store, seq, sets and digest state)."""
        other = RevokedSet(self.store_id, self.seq)
        other.revoked = BitMap64(self.revoked)
        other.foreign = set(self.foreign)
        other.registered_through = self.registered_through
        other._range_digests = dict(self._range_digests)
        other._dirty = set(self._dirty)
        other._foreign_sum = self._foreign_sum
        other.rules = set(self.rules)
        other._cutoffs = dict(self._cutoffs)
        other.history = self.history
        return other

    # ------------------------------------------------------------ changing

    def apply(self, delta: Delta) -> bool:
        """Apply `delta`; False when it was applied before. Raises SequenceGap."""
        if delta.seq <= self.seq:
            return False
        if delta.prev_seq != self.seq:
            raise SequenceGap(self.seq, delta.prev_seq, delta.seq)
        if delta.added:
            new = delta.added - self.revoked
            self.revoked |= new
            self._dirty |= _ranges(new)
        if delta.removed:
            gone = delta.removed & self.revoked
            self.revoked -= gone
            self._dirty |= _ranges(gone)
        for key in delta.foreign_added:
            if key not in self.foreign:
                self.foreign.add(key)
                self._foreign_sum = (self._foreign_sum + key) & _MASK
        for key in delta.foreign_removed:
            if key in self.foreign:
                self.foreign.discard(key)
                self._foreign_sum = (self._foreign_sum - key) & _MASK
        if delta.rules_added or delta.rules_removed:
            self.rules |= delta.rules_added
            self.rules -= delta.rules_removed
            self._index_rules()
        if delta.registered_through > self.registered_through:
            self.registered_through = delta.registered_through
        self.seq = delta.seq
        self.history = delta.history
        return True

    def _index_rules(self) -> None:
        cutoffs: dict[tuple[int, str], int] = {}
        for scope, value, before in self.rules:
            key = (scope, value)
            cutoffs[key] = max(cutoffs.get(key, 0), before)
        self._cutoffs = cutoffs

    # ------------------------------------------------------------- reading

    def cut_off(self, issuer: str, subject: str, client_id: str, issued_at: int) -> bool:
        """True when a cut-off rule revokes a token with these claims.

        An unknown issued_at (0) counts as issued before any rule that
        applies: the kill switch fails closed.
        """
        cutoffs = self._cutoffs
        if not cutoffs:
            return False
        before = max(
            cutoffs.get((ALL, ""), 0),
            cutoffs.get((SUBJECT, subject), 0) if subject else 0,
            cutoffs.get((CLIENT, client_id), 0) if client_id else 0,
            cutoffs.get((ISSUER, issuer), 0) if issuer else 0,
        )
        return issued_at < before

    def is_revoked(self, serial: int) -> bool:
        """True when `serial` is in the revoked set."""
        return serial in self.revoked

    def is_foreign_revoked(self, key: int) -> bool:
        """True when the foreign token key is revoked."""
        return key in self.foreign

    @property
    def cardinality(self) -> int:
        """Serials in the revoked set."""
        return len(self.revoked)

    def digest(self) -> bytes:
        """A 40-byte fingerprint of the revoked serials and foreign keys."""
        for n in self._dirty:
            part = self.revoked & span(n << DIGEST_BITS, (n + 1) << DIGEST_BITS)
            if part:
                self._range_digests[n] = hashlib.blake2b(part.to_array().tobytes(), digest_size=16).digest()
            else:
                self._range_digests.pop(n, None)
        self._dirty.clear()
        combined = hashlib.blake2b(digest_size=16)
        for n in sorted(self._range_digests):
            combined.update(n.to_bytes(8, "little") + self._range_digests[n])
        for scope, value, before in sorted(self.rules):
            combined.update(b"rule%d:%d:%s\x00" % (scope, before, value.encode()))
        return _DIGEST.pack(len(self.revoked), len(self.foreign), self._foreign_sum, combined.digest())
