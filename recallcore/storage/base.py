"""The storage seam: what every engine (LMDB, PostgreSQL, the tests' in-memory fake) offers.

Theory of operation. The core (recallcore.core.operations and .lifecycle)
computes what a write does by calling the methods of a `WriteTxn`; readers
(Check's hooks, Introspect, the audit queries, Watch catch-up) call those of
a `ReadTxn`. A transaction sees one consistent state: a read transaction the
state as of its start, a write transaction that state plus its own writes.
Only one write transaction runs at a time (the writer thread, see writer.py);
leaving `Store.write()` without an exception commits it durably before
returning, and an exception rolls every write of it back.

The values that cross the seam are the core's: serials and keys as ints,
token records as `recallclient.types.TokenSpec`, sets of serials as
`BitMap64`, per-serial times as numpy arrays, changes as
`recallclient.revoked_set.Delta` with a JSON-able audit record. How an engine
lays them out is its own business (storage/lmdb.py documents its tables).

Signals: the (issuer, jti) of every Security Event Token applied (see
core/signals.py), written in the transaction of the change it made, so a SET
delivered again is recognised even after a restart. Cursors: how far each
receiver of the SETs this server transmits has taken them (an outbox read
from the audit trail, see api/ssf_transmit.py).

Index kinds (`INDEX_KINDS`): the serials registered per subject, client_id,
family and issuer name, and under "custom_jti" (name "") every serial
registered under a caller-chosen jti rather than its canonical one.
"""

import abc
import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
from pyroaring import BitMap64
from recallclient.revoked_set import Delta, RevokedSet
from recallclient.types import TokenSpec

from ..core.mirror import ExpiryIndex, Mirror

_EMPTY = BitMap64()  # the default of "remove nothing"; never mutated
INDEX_KINDS = ("subject", "client_id", "family", "issuer", "custom_jti")

# A cut-off rule as stored: (scope, value, before).
Rule = tuple[int, str, int]
# A rotated refresh token: (successor serial, time of rotation, seq of the change, request fingerprint).
Rotation = tuple[int, int, int, bytes]


class StoreFull(Exception):
    """A write transaction ran out of space; nothing of it was kept. The message says what is
    full and what to do, for the caller; `grows`: Store.grow() may make room (LMDB's map can
    grow to max_map_size; a full disk cannot)."""

    def __init__(self, message: str, grows: bool = False) -> None:
        super().__init__(message)
        self.grows = grows


class ReadTxn(abc.ABC):
    """Reads inside one transaction; every value returned is a copy the caller may keep."""

    # ---------------------------------------------------------------- meta
    @abc.abstractmethod
    def head_seq(self) -> int:
        """The sequence number of the last committed change (0: none yet)."""

    @abc.abstractmethod
    def head_history(self) -> bytes:
        """The store's history after the last committed change (Delta.history; b"": not kept)."""

    @abc.abstractmethod
    def registered_through(self) -> int:
        """The highest serial ever assigned (0: none yet)."""

    # ------------------------------------------------------- token records
    @abc.abstractmethod
    def record(self, serial: int) -> TokenSpec | None:
        """The registration of `serial` (jti, issuer and times filled in), or None if unknown or purged."""

    def records(self, serials: Iterable[int]) -> dict[int, TokenSpec]:
        """serial -> registration, of those of `serials` that have one (an engine with round
        trips reads them together)."""
        found = ((serial, self.record(serial)) for serial in serials)
        return {serial: spec for serial, spec in found if spec is not None}

    @abc.abstractmethod
    def serial_for(self, issuer: str, jti: str) -> int:
        """The serial registered under exactly (issuer, jti), or 0."""

    @abc.abstractmethod
    def index(self, kind: str, name: str) -> BitMap64:
        """Every serial registered under `name` in index `kind` (see INDEX_KINDS)."""

    @abc.abstractmethod
    def index_among(self, kind: str, name: str, of: BitMap64) -> BitMap64:
        """The members of `of` in index (kind, name); reads only what `of` touches."""

    @abc.abstractmethod
    def issue_times(self, ids: np.ndarray) -> np.ndarray:
        """The issued_at (uint32 Unix seconds, 0 = none) of each serial in the uint64 array `ids`."""

    @abc.abstractmethod
    def expiries(self) -> np.ndarray:
        """Every serial's expiry as one uint32 array indexed by serial (0 = not registered)."""

    @abc.abstractmethod
    def issued_by(self, serial: int) -> int:
        """The seq of the change that registered `serial`, or 0 when unknown."""

    # -------------------------------------------------- the revocation state
    @abc.abstractmethod
    def revoked_serials(self) -> BitMap64:
        """Every serial in the revoked set."""

    @abc.abstractmethod
    def rotated_serials(self) -> BitMap64:
        """Every refresh-token serial that was rotated."""

    @abc.abstractmethod
    def revoked_by(self, serial: int) -> int:
        """The seq of the change that revoked `serial`, or 0."""

    @abc.abstractmethod
    def rotation(self, serial: int) -> Rotation | None:
        """How `serial` was rotated (see `Rotation`), or None."""

    @abc.abstractmethod
    def foreign(self, key: int) -> tuple[int, int] | None:
        """(expires_at, seq that revoked it) of a revoked foreign-token key, or None."""

    def foreigns(self, keys: Iterable[int]) -> dict[int, tuple[int, int]]:
        """key -> (expires_at, seq), of those of `keys` revoked (read together where that saves round trips)."""
        found = ((key, self.foreign(key)) for key in keys)
        return {key: value for key, value in found if value is not None}

    @abc.abstractmethod
    def foreign_keys(self) -> Iterator[int]:
        """Every revoked foreign-token key."""

    @abc.abstractmethod
    def foreign_due(self, upto: int, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` (expires_at, key) of foreign keys with expires_at <= upto, oldest first."""

    @abc.abstractmethod
    def rules(self) -> list[Rule]:
        """The cut-off rules in force."""

    # ------------------------------------------------ change log and audit
    @abc.abstractmethod
    def log_first(self) -> int:
        """The oldest seq still in the change log, or 0 when the log is empty."""

    @abc.abstractmethod
    def delta(self, seq: int) -> Delta | None:
        """The change committed as `seq`, or None when compacted away or not written."""

    def deltas_after(self, after: int, limit: int) -> list[Delta]:
        """Up to `limit` logged changes with seq > after, in order, up to the first not in the log."""
        out = []
        for seq in range(after + 1, min(after + limit, self.head_seq()) + 1):
            delta = self.delta(seq)
            if delta is None:
                break
            out.append(delta)
        return out

    @abc.abstractmethod
    def audit(self, seq: int) -> dict | None:
        """The audit record of change `seq`, or None."""

    @abc.abstractmethod
    def audit_after(self, after: int) -> Iterator[dict]:
        """Audit records with seq > after, oldest first."""

    @abc.abstractmethod
    def audit_naming(self, kind: str, name: str, after: int) -> Iterator[int]:
        """Seqs (> after, ascending) of the audit records that may concern `name`.

        kind "subject" or "client_id": the records whose "subjects" (or
        "clients") list `name`, and those that name more than they list
        ("subjects_more" / "clients_more"), which the caller checks.
        """

    # ------------------------------------------------ signals (SETs applied)
    @abc.abstractmethod
    def signal(self, issuer: str, jti: str) -> int | None:
        """The seq of the change that Security Event Token (issuer, jti) made (0: it changed
        nothing), or None when no SET of that issuer and jti was ever applied."""

    @abc.abstractmethod
    def cursor(self, name: str) -> int:
        """The seq up to which the SSF receiver `name` has been sent the events of changes (0: none)."""


class WriteTxn(ReadTxn):
    """Reads and writes inside the one write transaction; writes are kept only if it commits."""

    def expect_lookups(self, refs: list[tuple[str, str]]) -> None:
        """A hint, given before anything else is asked of the transaction: serial_for will be
        asked for these (issuer, jti). An engine whose every read is a round trip to a server
        may fetch them with its first; the default ignores it."""

    @abc.abstractmethod
    def set_head(self, seq: int, history: bytes) -> None:
        """Record `seq` as the last committed change, and the store's history after it."""

    @abc.abstractmethod
    def set_registered_through(self, serial: int) -> None:
        """Record `serial` as the highest serial assigned."""

    @abc.abstractmethod
    def put_record(self, serial: int, spec: TokenSpec) -> None:
        """Store the registration of a new serial (higher than every stored one)."""

    @abc.abstractmethod
    def update_record(self, serial: int, spec: TokenSpec) -> None:
        """Replace the registration of an existing serial."""

    @abc.abstractmethod
    def delete_record(self, serial: int) -> None:
        """Forget the registration of `serial` (a purge)."""

    @abc.abstractmethod
    def put_jti(self, issuer: str, jti: str, serial: int) -> None:
        """Point (issuer, jti) at `serial`."""

    @abc.abstractmethod
    def delete_jti(self, issuer: str, jti: str) -> None:
        """Forget the serial of (issuer, jti)."""

    @abc.abstractmethod
    def update_index(self, kind: str, name: str, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        """Add and remove serials in index (kind, name)."""

    def update_indexes(self, changes: Iterable[tuple[str, str, BitMap64]]) -> None:
        """Add serials to several indexes, (kind, name, serials) each: a registration's many
        subjects (an engine with round trips reads the chunks of all of them at once)."""
        for kind, name, add in changes:
            self.update_index(kind, name, add)

    @abc.abstractmethod
    def set_expiries(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Set the expiry of serial ids[i] to values[i] (uint32 Unix seconds)."""

    @abc.abstractmethod
    def set_issue_times(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Set the issued_at of serial ids[i] to values[i] (uint32 Unix seconds)."""

    @abc.abstractmethod
    def put_issuance(self, first_serial: int, seq: int) -> None:
        """Record that change `seq` registered the serials from `first_serial` on."""

    @abc.abstractmethod
    def update_revoked(self, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        """Add and remove serials in the revoked set."""

    @abc.abstractmethod
    def update_rotated(self, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        """Add and remove serials in the set of rotated refresh tokens."""

    @abc.abstractmethod
    def put_revocations(self, serials: BitMap64, seq: int) -> None:
        """Record that change `seq` revoked each of `serials`."""

    @abc.abstractmethod
    def delete_revocation(self, serial: int) -> None:
        """Forget which change revoked `serial` (a purge)."""

    @abc.abstractmethod
    def put_rotation(self, serial: int, successor: int, when: int, seq: int, fingerprint: bytes) -> None:
        """Record the rotation of `serial` (see `Rotation`)."""

    @abc.abstractmethod
    def delete_rotation(self, serial: int) -> None:
        """Forget the rotation of `serial` (a purge)."""

    @abc.abstractmethod
    def put_foreign(self, key: int, expires_at: int, seq: int) -> None:
        """Revoke (or re-date) a foreign-token key until `expires_at`, by change `seq`."""

    @abc.abstractmethod
    def delete_foreign(self, key: int, expires_at: int) -> None:
        """Forget the revoked foreign key `key` stored with `expires_at`."""

    @abc.abstractmethod
    def put_rule(self, rule: Rule, seq: int) -> None:
        """Put a cut-off rule in force (replacing one of the same scope and value)."""

    @abc.abstractmethod
    def delete_rule(self, rule: Rule) -> None:
        """Retire the cut-off rule of rule's scope and value."""

    @abc.abstractmethod
    def put_change(self, delta: Delta, audit: dict, wire: bytes | None = None) -> None:
        """Append `delta` to the change log and `audit` to the audit trail, both under delta.seq.

        `wire`: the delta's wire form (recall.v1.Delta) when the caller has it."""

    @abc.abstractmethod
    def put_signal(self, issuer: str, jti: str, seq: int, issued_at: int) -> None:
        """Record that SET (issuer, jti), issued at `issued_at` (its iat), was applied, by change
        `seq` (0: it changed nothing)."""

    @abc.abstractmethod
    def compact_signals(self, before: int, limit: int) -> int:
        """Forget up to `limit` of the oldest SETs issued before `before`; return how many."""

    @abc.abstractmethod
    def put_cursor(self, name: str, seq: int) -> None:
        """Record that receiver `name` has taken the events of every change up to `seq`."""

    @abc.abstractmethod
    def compact_log(self, upto: int, before: int, limit: int) -> int:
        """Delete up to `limit` of the oldest changes with seq <= upto and time < before; return how many."""

    @abc.abstractmethod
    def compact_audit(self, before: int, limit: int) -> int:
        """Delete up to `limit` of the oldest audit records with time < before; return how many."""


class Store(abc.ABC):
    """An open store. `store_id` names its history; close it to release it."""

    store_id: str

    @abc.abstractmethod
    def read(self) -> contextlib.AbstractContextManager[ReadTxn]:
        """A read transaction (any thread but the event loop's)."""

    @abc.abstractmethod
    def write(self) -> contextlib.AbstractContextManager[WriteTxn]:
        """The write transaction (the writer thread only): durable once the block exits cleanly.

        Raises StoreFull (from the block or the commit) when space ran out;
        any exception rolls the transaction back.
        """

    @abc.abstractmethod
    def grow(self) -> bool:
        """Make room after StoreFull; False when no more room can be had."""

    @abc.abstractmethod
    def sizes(self) -> tuple[int, int]:
        """(bytes in use, bytes reserved)."""

    @abc.abstractmethod
    def limit(self) -> int:
        """The most the store can grow to (bytes; 0: no known limit)."""

    @abc.abstractmethod
    def registrations_refused(self, unrevoked: int, new: int) -> str:
        """Why registering `new` more tokens must be refused now, or "" when it may go on.

        The rest of the store is kept for revocations: enough to revoke all
        `unrevoked` tokens plus those `new` ones (the kill switch must work
        on a full store) and the change records that go with them.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store; no transaction may be open."""

    def tail(self, after: int, history: bytes, deliver, reset, every: float):
        """A follower of the change log for a store several nodes write (None: this node is its only writer).

        Once started it calls deliver(deltas) with every change committed
        after `after` (whose history is `history`), by any node, in order,
        and reset() (which reloads the state and returns its (seq, history))
        when changes it missed were compacted or the store no longer holds
        what this node applied; it reads the log at least every `every`
        seconds, and its `staleness()` says how long ago it last knew the
        newest change; see storage/pg_tail.py.
        """
        return None

    def load(self) -> Mirror:
        """The revocation state, expiries and rotations as stored: an in-memory mirror."""
        with self.read() as txn:
            return mirror_of(txn, self.store_id)


def mirror_of(txn: ReadTxn, store_id: str) -> Mirror:
    """The revocation state, expiries and rotations `txn` sees, as an in-memory mirror."""
    state = RevokedSet(store_id)
    state.load(
        seq=txn.head_seq(),
        revoked=txn.revoked_serials(),
        foreign=txn.foreign_keys(),
        registered_through=txn.registered_through(),
        rules=txn.rules(),
        history=txn.head_history(),
    )
    return Mirror(state, ExpiryIndex(txn.expiries()), txn.rotated_serials())
