"""An in-memory store: a small, honest implementation of recallcore.storage.base.

Theory of operation. The committed state is one `_Tables` value. A read
transaction works on the value current when it began (writers never change a
committed value, so a reader sees one consistent state); the write
transaction works on a copy and, on a clean exit, publishes it as the
new committed value: commit is atomic, and an exception leaves nothing
behind. Values are never changed in place, so the copy is of each table, not
deep. Audit records are kept as JSON text and token records as frozen
TokenSpecs, as a real engine would serialise them. "Durable" here means
"outlives the engine that wrote it": `open` it for an engine, and after the
engine closed it, `open` the same object again to restart on it.

`capacity` (entries, counted over every table) makes the store fill up: a
write transaction past it raises StoreFull, and `grow` doubles it up to
`max_capacity`.
"""

import bisect
import contextlib
import dataclasses
import json
import threading
import uuid
from collections.abc import Iterator

import numpy as np
from pyroaring import BitMap64
from recallclient.revoked_set import Delta
from recallclient.types import TokenSpec

from recallcore.storage.base import Rotation, Rule, Store, StoreFull, WriteTxn

_EMPTY = BitMap64()


@dataclasses.dataclass
class _Tables:
    seq: int = 0
    history: bytes = b""
    serial: int = 0
    records: dict[int, TokenSpec] = dataclasses.field(default_factory=dict)
    jtis: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    indexes: dict[tuple[str, str], BitMap64] = dataclasses.field(default_factory=dict)
    revoked: BitMap64 = dataclasses.field(default_factory=BitMap64)
    rotated: BitMap64 = dataclasses.field(default_factory=BitMap64)
    expires: dict[int, int] = dataclasses.field(default_factory=dict)
    issued: dict[int, int] = dataclasses.field(default_factory=dict)
    issuance: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (first serial, seq), sorted
    revocations: dict[int, int] = dataclasses.field(default_factory=dict)
    rotations: dict[int, Rotation] = dataclasses.field(default_factory=dict)
    foreign: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)
    rules: dict[tuple[int, str], tuple[int, int]] = dataclasses.field(default_factory=dict)  # -> (before, seq)
    log: dict[int, Delta] = dataclasses.field(default_factory=dict)
    audit: dict[int, str] = dataclasses.field(default_factory=dict)
    signals: dict[tuple[str, str], tuple[int, int]] = dataclasses.field(default_factory=dict)  # -> (seq, iat)
    cursors: dict[str, int] = dataclasses.field(default_factory=dict)

    def copy(self) -> "_Tables":
        """A copy to write on. Values are never changed in place (sets are replaced, not
        mutated), so copying each table is enough."""
        return _Tables(**{
            f.name: getattr(self, f.name).copy() if isinstance(getattr(self, f.name), dict | list)
            else getattr(self, f.name) for f in dataclasses.fields(self)
        })

    def entries(self) -> int:
        sets = sum(len(b) for b in self.indexes.values()) + len(self.revoked) + len(self.rotated)
        return (sets + len(self.records) + len(self.jtis) + len(self.expires) + len(self.issuance)
                + len(self.revocations) + len(self.rotations) + len(self.foreign) + len(self.log)
                + len(self.signals) + len(self.cursors))


class MemoryTxn(WriteTxn):
    """The storage interface over one `_Tables` value."""

    def __init__(self, tables: _Tables) -> None:
        self.t = tables

    # meta
    def head_seq(self) -> int:
        return self.t.seq

    def head_history(self) -> bytes:
        return self.t.history

    def registered_through(self) -> int:
        return self.t.serial

    def set_head(self, seq: int, history: bytes) -> None:
        self.t.seq, self.t.history = seq, history

    def set_registered_through(self, serial: int) -> None:
        self.t.serial = serial

    # records
    def record(self, serial: int) -> TokenSpec | None:
        return self.t.records.get(serial)

    def put_record(self, serial: int, spec: TokenSpec) -> None:
        assert not self.t.records or serial > max(self.t.records), "put_record takes new, higher serials"
        self.t.records[serial] = spec

    def update_record(self, serial: int, spec: TokenSpec) -> None:
        self.t.records[serial] = spec

    def delete_record(self, serial: int) -> None:
        self.t.records.pop(serial, None)

    def serial_for(self, issuer: str, jti: str) -> int:
        return self.t.jtis.get((issuer, jti), 0)

    def put_jti(self, issuer: str, jti: str, serial: int) -> None:
        self.t.jtis[(issuer, jti)] = serial

    def delete_jti(self, issuer: str, jti: str) -> None:
        self.t.jtis.pop((issuer, jti), None)

    # sets of serials
    def index(self, kind: str, name: str) -> BitMap64:
        return BitMap64(self.t.indexes.get((kind, name), _EMPTY))

    def index_among(self, kind: str, name: str, of: BitMap64) -> BitMap64:
        return self.t.indexes.get((kind, name), _EMPTY) & of

    def update_index(self, kind: str, name: str, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        members = (self.t.indexes.get((kind, name), _EMPTY) | add) - remove
        if members:
            self.t.indexes[(kind, name)] = members
        else:
            self.t.indexes.pop((kind, name), None)

    def revoked_serials(self) -> BitMap64:
        return BitMap64(self.t.revoked)

    def rotated_serials(self) -> BitMap64:
        return BitMap64(self.t.rotated)

    def update_revoked(self, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        self.t.revoked = (self.t.revoked | add) - remove

    def update_rotated(self, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        self.t.rotated = (self.t.rotated | add) - remove

    # per-serial times
    def set_expiries(self, ids: np.ndarray, values: np.ndarray) -> None:
        self.t.expires.update(zip(ids.tolist(), values.tolist()))

    def set_issue_times(self, ids: np.ndarray, values: np.ndarray) -> None:
        self.t.issued.update(zip(ids.tolist(), values.tolist()))

    def expiries(self) -> np.ndarray:
        out = np.zeros(max(self.t.expires, default=0) + 1, dtype=np.uint32)
        for serial, expires_at in self.t.expires.items():
            out[serial] = expires_at
        return out

    def issue_times(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.t.issued.get(s, 0) for s in ids.tolist()], dtype=np.uint32)

    def put_issuance(self, first_serial: int, seq: int) -> None:
        bisect.insort(self.t.issuance, (first_serial, seq))

    def issued_by(self, serial: int) -> int:
        at = bisect.bisect_right(self.t.issuance, (serial, 2**64))
        return self.t.issuance[at - 1][1] if at else 0

    # revocation records, rotations, foreign keys, rules
    def revoked_by(self, serial: int) -> int:
        return self.t.revocations.get(serial, 0)

    def put_revocations(self, serials: BitMap64, seq: int) -> None:
        self.t.revocations.update(dict.fromkeys(serials, seq))

    def delete_revocation(self, serial: int) -> None:
        self.t.revocations.pop(serial, None)

    def rotation(self, serial: int) -> Rotation | None:
        return self.t.rotations.get(serial)

    def put_rotation(self, serial: int, successor: int, when: int, seq: int, fingerprint: bytes) -> None:
        self.t.rotations[serial] = (successor, when, seq, fingerprint)

    def delete_rotation(self, serial: int) -> None:
        self.t.rotations.pop(serial, None)

    def foreign(self, key: int) -> tuple[int, int] | None:
        return self.t.foreign.get(key)

    def foreign_keys(self) -> Iterator[int]:
        return iter(list(self.t.foreign))

    def foreign_due(self, upto: int, limit: int) -> list[tuple[int, int]]:
        due = sorted((exp, key) for key, (exp, _) in self.t.foreign.items() if exp <= upto)
        return due[:limit]

    def put_foreign(self, key: int, expires_at: int, seq: int) -> None:
        self.t.foreign[key] = (expires_at, seq)

    def delete_foreign(self, key: int, expires_at: int) -> None:
        self.t.foreign.pop(key, None)

    def rules(self) -> list[Rule]:
        return [(scope, value, before) for (scope, value), (before, _) in sorted(self.t.rules.items())]

    def put_rule(self, rule: Rule, seq: int) -> None:
        scope, value, before = rule
        self.t.rules[(scope, value)] = (before, seq)

    def delete_rule(self, rule: Rule) -> None:
        self.t.rules.pop(rule[:2], None)

    def signal(self, issuer: str, jti: str) -> int | None:
        found = self.t.signals.get((issuer, jti))
        return found[0] if found is not None else None

    def put_signal(self, issuer: str, jti: str, seq: int, issued_at: int) -> None:
        self.t.signals[(issuer, jti)] = (seq, issued_at)

    def compact_signals(self, before: int, limit: int) -> int:
        due = sorted((iat, key) for key, (_, iat) in self.t.signals.items() if iat < before)[:limit]
        for _, key in due:
            del self.t.signals[key]
        return len(due)

    def cursor(self, name: str) -> int:
        return self.t.cursors.get(name, 0)

    def put_cursor(self, name: str, seq: int) -> None:
        self.t.cursors[name] = seq

    # change log and audit
    def put_change(self, delta: Delta, audit: dict, wire: bytes | None = None) -> None:
        assert delta.seq not in self.t.log and delta.seq > max(self.t.log, default=0), "the log only grows"
        self.t.log[delta.seq] = delta
        self.t.audit[delta.seq] = json.dumps(audit)

    def compact_log(self, upto: int, before: int, limit: int) -> int:
        deleted = 0
        for seq in sorted(self.t.log):
            if deleted >= limit or seq > upto or self.t.log[seq].time >= before:
                break
            del self.t.log[seq]
            deleted += 1
        return deleted

    def compact_audit(self, before: int, limit: int) -> int:
        deleted = 0
        for seq in sorted(self.t.audit):
            if deleted >= limit or json.loads(self.t.audit[seq]).get("time", 0) >= before:
                break
            del self.t.audit[seq]
            deleted += 1
        return deleted

    def log_first(self) -> int:
        return min(self.t.log, default=0)

    def delta(self, seq: int) -> Delta | None:
        return self.t.log.get(seq)

    def audit(self, seq: int) -> dict | None:
        text = self.t.audit.get(seq)
        return json.loads(text) if text is not None else None

    def audit_naming(self, kind: str, name: str, after: int) -> Iterator[int]:
        field = {"subject": "subjects", "client_id": "clients"}[kind]
        for seq in sorted(s for s in self.t.audit if s > after):
            record = json.loads(self.t.audit[seq])
            if name in record.get(field, ()) or record.get(f"{field}_more"):
                yield seq

    def audit_after(self, after: int) -> Iterator[dict]:
        for seq in sorted(s for s in self.t.audit if s > after):
            yield json.loads(self.t.audit[seq])


class MemoryStore(Store):
    """One store's state in memory; `open` it for each engine that runs on it, in turn."""

    def __init__(self, capacity: int | None = None, max_capacity: int | None = None) -> None:
        self.store_id = uuid.uuid4().hex
        self.capacity = capacity
        self.max_capacity = max_capacity if max_capacity is not None else capacity
        self._committed = _Tables()
        self._writing = threading.Lock()
        self.is_open = False

    def open(self) -> "MemoryStore":
        """Open the store for an engine (again, after the last one closed it); returns self."""
        assert not self.is_open, "the store is open already: one engine at a time"
        self.is_open = True
        return self

    @contextlib.contextmanager
    def read(self) -> Iterator[MemoryTxn]:
        assert self.is_open, "the store is closed"
        yield MemoryTxn(self._committed)

    @contextlib.contextmanager
    def write(self) -> Iterator[MemoryTxn]:
        assert self.is_open, "the store is closed"
        if not self._writing.acquire(blocking=False):
            raise RuntimeError("a second write transaction while one is open")
        try:
            work = self._committed.copy()
            yield MemoryTxn(work)
            if self.capacity is not None and work.entries() > self.capacity:
                raise StoreFull(f"{work.entries()} entries exceed the capacity of {self.capacity}")
            self._committed = work
        finally:
            self._writing.release()

    def grow(self) -> bool:
        if self.capacity is None or self.capacity >= self.max_capacity:
            return False
        self.capacity = min(self.capacity * 2, self.max_capacity)
        return True

    def sizes(self) -> tuple[int, int]:
        used = self._committed.entries()
        return used, self.capacity if self.capacity is not None else used

    def limit(self) -> int:
        return self.max_capacity or 0

    def registrations_refused(self, unrevoked: int, new: int) -> str:
        # In entries: revoking a token writes about one, registering one about six.
        if self.max_capacity is None or self._committed.entries() + unrevoked + 7 * new <= self.max_capacity:
            return ""
        return f"store nearly full: {self._committed.entries()} of {self.max_capacity} entries; --max-map-size"

    def close(self) -> None:
        self.is_open = False


class StoreOpener:
    """The store of one engine kind, for each Engine started on it in turn.

    `kind` "lmdb": None, so that the Engine opens the LMDB store in its
    settings' data_dir (and a restart opens the same directory); "memory":
    one MemoryStore, opened anew for every engine; "postgresql": a
    PostgresStore on the database `conninfo` names, opened anew for every
    engine (a restart reconnects to the same database).
    """

    KINDS = ("lmdb", "memory", "postgresql")

    def __init__(self, kind: str, conninfo: str = "") -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown store kind {kind!r}")
        self.kind = kind
        self.memory = MemoryStore() if kind == "memory" else None
        self.conninfo = conninfo

    def __call__(self) -> Store | None:
        if self.kind == "postgresql":
            from recallcore.storage.postgresql import PostgresStore

            return PostgresStore(self.conninfo)
        return self.memory.open() if self.memory is not None else None
