"""The LMDB environment: opening, locking, identity, and typed access to tables.

Theory of operation. One LMDB environment in the data directory holds every
table below; one write transaction is one group of operations (see
writer.py), synced before anyone hears of it. A lock file held with flock
keeps a second server off the same directory. Keys are big-endian so that
LMDB's byte order is numeric order.

Tables (named databases):
  meta          b"format", b"store_id", b"seq", b"serial"
  tokens        serial -> TokenSpec (protobuf) of a registered token
  jtis          hash16(issuer, jti) -> serial
  revoked       chunk -> BitMap64 of revoked serials in that chunk
  exp, iat      serial >> 12 -> 4096 little-endian uint32 expiry / issue times (0 = none)
  index         kind + hash16(name) + chunk -> BitMap64 (s subject, c client, f family,
                i issuer; j + zeros: serials registered under a caller-chosen jti)
  foreign       key -> expires_at, seq   (revoked tokens never registered)
  foreign_exp   expires_at + key -> b""
  revocations   serial -> seq of the change that revoked it
  log           seq -> recall.v1.Delta
  audit         seq -> JSON audit record of the change
  rotated       chunk -> BitMap64 of rotated refresh tokens
  rotations     serial -> successor, time, seq, request fingerprint
  rules         scope + hash16(value) -> before, seq, value (cut-off rules in force)
  issuance      first serial of a registration -> seq of that change
A chunk is `serial >> 16`: bitmap values stay a few KB and a change rewrites
only the chunks it touches.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import struct
import threading
import uuid
from collections.abc import Iterator

import lmdb
import numpy as np
from pyroaring import BitMap64
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.revoked_set import RevokedSet, split

from .errors import StoreError
from .mirror import ExpiryIndex, Mirror

FORMAT = b"recallcore/1"
CHUNK_BITS = 16
EXP_BITS = 12
_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")
_TABLES = (
    "meta", "tokens", "jtis", "revoked", "exp", "iat", "index",
    "foreign", "foreign_exp", "revocations", "log", "audit",
    "rotated", "rotations", "rules", "issuance",
)
_OURS = {"data.mdb", "lock.mdb", "LOCK"}


def u64(value: int) -> bytes:
    return _U64.pack(value)


def from_u64(data: bytes) -> int:
    return _U64.unpack(data)[0]


def name_hash(*parts: str) -> bytes:
    """16 bytes identifying a tuple of strings (LMDB keys are at most 511 bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        raw = part.encode()
        h.update(_U64.pack(len(raw)))
        h.update(raw)
    return h.digest()


def split_chunks(bitmap: BitMap64):
    """Yield (chunk, part of `bitmap` in that chunk) in chunk order."""
    return split(bitmap, CHUNK_BITS)


class Txn:
    """Typed access to the tables inside one LMDB transaction."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database]) -> None:
        self.raw = txn
        self.db = dbs

    # meta
    def meta_int(self, name: bytes) -> int:
        value = self.raw.get(name, db=self.db["meta"])
        return from_u64(value) if value is not None else 0

    def put_meta_int(self, name: bytes, value: int) -> None:
        self.raw.put(name, u64(value), db=self.db["meta"])

    # token records and the (issuer, jti) index
    def record(self, serial: int) -> pb.TokenSpec | None:
        data = self.raw.get(u64(serial), db=self.db["tokens"])
        return pb.TokenSpec.FromString(data) if data is not None else None

    def put_record(self, serial: int, spec: pb.TokenSpec) -> None:
        self.raw.put(u64(serial), spec.SerializeToString(), db=self.db["tokens"], append=True)

    def update_record(self, serial: int, spec: pb.TokenSpec) -> None:
        self.raw.put(u64(serial), spec.SerializeToString(), db=self.db["tokens"])

    def delete_record(self, serial: int) -> None:
        self.raw.delete(u64(serial), db=self.db["tokens"])

    def serial_for(self, issuer: str, jti: str) -> int:
        """The serial registered under (issuer, jti), or 0."""
        data = self.raw.get(name_hash(issuer, jti), db=self.db["jtis"])
        return from_u64(data) if data is not None else 0

    def put_jti(self, issuer: str, jti: str, serial: int) -> None:
        self.raw.put(name_hash(issuer, jti), u64(serial), db=self.db["jtis"])

    def delete_jti(self, issuer: str, jti: str) -> None:
        self.raw.delete(name_hash(issuer, jti), db=self.db["jtis"])

    # chunked bitmaps
    def bitmap(self, table: str, prefix: bytes = b"") -> BitMap64:
        """The union of every chunk stored under `prefix` in `table`."""
        out = BitMap64()
        with self.raw.cursor(db=self.db[table]) as cur:
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                out |= BitMap64.deserialize(value)
        return out

    def bitmap_over(self, table: str, prefix: bytes, of: BitMap64) -> BitMap64:
        """The members of `of` stored under `prefix` (reads only the chunks `of` touches)."""
        out = BitMap64()
        db = self.db[table]
        for chunk, part in split_chunks(of):
            data = self.raw.get(prefix + u64(chunk), db=db)
            if data is not None:
                out |= BitMap64.deserialize(data) & part
        return out

    def update_bitmap(self, table: str, prefix: bytes, add: BitMap64, remove: BitMap64 = BitMap64()) -> None:
        """Add and remove serials in the chunks under `prefix`; drop empty chunks."""
        db = self.db[table]
        touched = {c for c, _ in split_chunks(add)} | {c for c, _ in split_chunks(remove)}
        for chunk in sorted(touched):
            key = prefix + u64(chunk)
            data = self.raw.get(key, db=db)
            bitmap = BitMap64.deserialize(data) if data is not None else BitMap64()
            span = BitMap64()
            span.add_range(chunk << CHUNK_BITS, (chunk + 1) << CHUNK_BITS)
            bitmap |= add & span
            bitmap -= remove & span
            if bitmap:
                bitmap.run_optimize()
                self.raw.put(key, bitmap.serialize(), db=db)
            elif data is not None:
                self.raw.delete(key, db=db)

    # per-serial times (tables "exp" and "iat")
    def set_times(self, table: str, ids: np.ndarray, values: np.ndarray) -> None:
        """Set `values[i]` for serial `ids[i]` (rewrites the 16 KB blocks touched)."""
        db = self.db[table]
        blocks = ids >> EXP_BITS
        for block in np.unique(blocks):
            key = u64(int(block))
            data = self.raw.get(key, db=db)
            stored = np.frombuffer(data, dtype="<u4").copy() if data is not None else np.zeros(1 << EXP_BITS, "<u4")
            mine = blocks == block
            stored[(ids[mine] & ((1 << EXP_BITS) - 1)).astype(np.intp)] = values[mine]
            self.raw.put(key, stored.tobytes(), db=db)

    def times(self, table: str) -> np.ndarray:
        """Every stored time of `table` as one uint32 array indexed by serial."""
        with self.raw.cursor(db=self.db[table]) as cur:
            blocks = [(from_u64(k), v) for k, v in cur.iternext()]
        size = (blocks[-1][0] + 1) << EXP_BITS if blocks else 1 << EXP_BITS
        out = np.zeros(size, dtype=np.uint32)
        for block, data in blocks:
            out[block << EXP_BITS : (block + 1) << EXP_BITS] = np.frombuffer(data, dtype="<u4")
        return out

    def times_of(self, table: str, ids: np.ndarray) -> np.ndarray:
        """The stored time of each serial in `ids` (0 where none)."""
        out = np.zeros(len(ids), dtype=np.uint32)
        blocks = ids >> EXP_BITS
        for block in np.unique(blocks):
            data = self.raw.get(u64(int(block)), db=self.db[table])
            if data is not None:
                mine = blocks == block
                out[mine] = np.frombuffer(data, dtype="<u4")[(ids[mine] & ((1 << EXP_BITS) - 1)).astype(np.intp)]
        return out

    # rules, rotations, issuance
    def put_rule(self, rule: tuple[int, str, int], seq: int) -> None:
        scope, value, before = rule
        self.raw.put(bytes([scope]) + name_hash(value), _U64X2.pack(before, seq) + value.encode(), db=self.db["rules"])

    def delete_rule(self, rule: tuple[int, str, int]) -> None:
        scope, value, _ = rule
        self.raw.delete(bytes([scope]) + name_hash(value), db=self.db["rules"])

    def rules(self) -> list[tuple[int, str, int]]:
        with self.raw.cursor(db=self.db["rules"]) as cur:
            return [(k[0], v[16:].decode(), _U64X2.unpack(v[:16])[0]) for k, v in cur.iternext()]

    def rotation(self, serial: int) -> tuple[int, int, int, bytes] | None:
        """(successor, time, seq, fingerprint) of a rotated serial, or None."""
        data = self.raw.get(u64(serial), db=self.db["rotations"])
        if data is None:
            return None
        successor, when, seq = struct.unpack(">QQQ", data[:24])
        return successor, when, seq, data[24:]

    def put_rotation(self, serial: int, successor: int, when: int, seq: int, fingerprint: bytes) -> None:
        self.raw.put(u64(serial), struct.pack(">QQQ", successor, when, seq) + fingerprint, db=self.db["rotations"])

    def delete_rotation(self, serial: int) -> None:
        self.raw.delete(u64(serial), db=self.db["rotations"])

    def put_issuance(self, first_serial: int, seq: int) -> None:
        self.raw.put(u64(first_serial), u64(seq), db=self.db["issuance"], append=True)

    def issued_by(self, serial: int) -> int:
        """The seq of the change that registered `serial` (0 when unknown)."""
        with self.raw.cursor(db=self.db["issuance"]) as cur:
            if cur.set_range(u64(serial + 1)):
                found = cur.prev()
            else:
                found = cur.last()
            return from_u64(cur.value()) if found else 0

    # revocation records
    def revoked_by(self, serial: int) -> int:
        """The seq that revoked `serial`, or 0."""
        data = self.raw.get(u64(serial), db=self.db["revocations"])
        return from_u64(data) if data is not None else 0

    def put_revocations(self, serials: BitMap64, seq: int) -> None:
        value = u64(seq)
        db = self.db["revocations"]
        self.raw.cursor(db=db).putmulti(((u64(s), value) for s in serials.to_array()), overwrite=True)

    def delete_revocation(self, serial: int) -> None:
        self.raw.delete(u64(serial), db=self.db["revocations"])

    # foreign tokens
    def foreign(self, key: int) -> tuple[int, int] | None:
        """(expires_at, seq) of a revoked foreign token key, or None."""
        data = self.raw.get(u64(key), db=self.db["foreign"])
        return _U64X2.unpack(data) if data is not None else None

    def put_foreign(self, key: int, expires_at: int, seq: int) -> None:
        old = self.foreign(key)
        if old is not None:
            self.raw.delete(_U64X2.pack(old[0], key), db=self.db["foreign_exp"])
        self.raw.put(u64(key), _U64X2.pack(expires_at, seq), db=self.db["foreign"])
        self.raw.put(_U64X2.pack(expires_at, key), b"", db=self.db["foreign_exp"])

    def foreign_due(self, upto: int, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` (expires_at, key) with expires_at <= upto, oldest first."""
        out = []
        with self.raw.cursor(db=self.db["foreign_exp"]) as cur:
            for key in cur.iternext(values=False):
                expires_at, fkey = _U64X2.unpack(key)
                if expires_at > upto or len(out) >= limit:
                    break
                out.append((expires_at, fkey))
        return out

    def delete_foreign(self, key: int, expires_at: int) -> None:
        self.raw.delete(u64(key), db=self.db["foreign"])
        self.raw.delete(_U64X2.pack(expires_at, key), db=self.db["foreign_exp"])

    def foreign_keys(self) -> Iterator[int]:
        with self.raw.cursor(db=self.db["foreign"]) as cur:
            for key in cur.iternext(values=False):
                yield from_u64(key)

    # change log and audit
    def put_change(self, seq: int, delta: pb.Delta, audit: dict) -> None:
        self.raw.put(u64(seq), delta.SerializeToString(), db=self.db["log"], append=True)
        self.raw.put(u64(seq), json.dumps(audit, separators=(",", ":")).encode(),
                     db=self.db["audit"], append=True)

    def compact_log(self, upto: int, before: int, limit: int) -> int:
        """Delete up to `limit` of the oldest changes with seq <= upto committed before `before`."""
        deleted = 0
        with self.raw.cursor(db=self.db["log"]) as cur:
            while deleted < limit and cur.first():
                seq = from_u64(cur.key())
                if seq > upto or pb.Delta.FromString(cur.value()).time >= before:
                    break
                cur.delete()
                deleted += 1
        return deleted

    def compact_audit(self, before: int, limit: int) -> int:
        """Delete up to `limit` of the oldest audit records written before `before`."""
        deleted = 0
        with self.raw.cursor(db=self.db["audit"]) as cur:
            while deleted < limit and cur.first():
                if json.loads(cur.value()).get("time", 0) >= before:
                    break
                cur.delete()
                deleted += 1
        return deleted

    def audit_after(self, after: int) -> Iterator[dict]:
        """Audit records with seq > after, oldest first."""
        with self.raw.cursor(db=self.db["audit"]) as cur:
            if not cur.set_range(u64(after + 1)):
                return
            for _, value in cur:
                yield json.loads(value)

    def log_first(self) -> int:
        """The oldest seq still in the change log, or 0 when it is empty."""
        with self.raw.cursor(db=self.db["log"]) as cur:
            return from_u64(cur.key()) if cur.first() else 0

    def delta(self, seq: int) -> pb.Delta | None:
        data = self.raw.get(u64(seq), db=self.db["log"])
        return pb.Delta.FromString(data) if data is not None else None

    def audit(self, seq: int) -> dict | None:
        data = self.raw.get(u64(seq), db=self.db["audit"])
        return json.loads(data) if data is not None else None


class Store:
    """An open data directory. Close it to release the lock."""

    def __init__(self, data_dir: pathlib.Path, *, map_size: int, max_map_size: int) -> None:
        self.path = pathlib.Path(data_dir)
        self.max_map_size = max_map_size
        self._lock_file = self._lock()
        try:
            self._check_foreign()
            existed = (self.path / "data.mdb").exists()
            try:
                self.env = lmdb.open(
                    str(self.path), map_size=map_size, max_dbs=len(_TABLES) + 1,
                    sync=True, metasync=True, subdir=True, readahead=False,
                )
                if existed:
                    self._refuse_foreign_tables()
                self.dbs = {name: self.env.open_db(name.encode()) for name in _TABLES}
            except lmdb.Error as exc:
                raise StoreError(
                    f"{self.path} does not hold a readable recallcore store: {exc}"
                ) from exc
            self.store_id = self._identity(existed)
        except BaseException:
            if getattr(self, "env", None) is not None:
                self.env.close()
            self._lock_file.close()
            raise
        # Readers take this lock around a transaction; resizing the map takes
        # it too (LMDB forbids set_mapsize while this process has one open).
        self.resize_lock = threading.Lock()

    def _lock(self):
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {self.path}: {exc}") from exc
        lock_file = open(self.path / "LOCK", "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreError(
                    f"data directory {self.path} is in use by another recallcore server "
                    f"(pid {holder}); stop it or choose another --data-dir"
                ) from exc
            raise
        lock_file.truncate(0)
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        return lock_file

    def _check_foreign(self) -> None:
        others = sorted(p.name for p in self.path.iterdir() if p.name not in _OURS)
        if others and not (self.path / "data.mdb").exists():
            raise StoreError(
                f"{self.path} is not a recallcore data directory (it holds {', '.join(others[:5])}); "
                "choose an empty or new directory"
            )

    def _identity(self, existed: bool) -> str:
        with self.env.begin(write=True) as txn:
            fmt = txn.get(b"format", db=self.dbs["meta"])
            if fmt is None:
                if existed and any(txn.stat(self.dbs[name])["entries"] for name in _TABLES):
                    raise StoreError(f"{self.path} holds an LMDB environment that is not a recallcore store")
                store_id = uuid.uuid4().hex
                txn.put(b"format", FORMAT, db=self.dbs["meta"])
                txn.put(b"store_id", store_id.encode(), db=self.dbs["meta"])
                return store_id
            if fmt != FORMAT:
                raise StoreError(
                    f"{self.path} holds store format {fmt!r}; this server reads {FORMAT!r}"
                )
            return txn.get(b"store_id", db=self.dbs["meta"]).decode()

    def _refuse_foreign_tables(self) -> None:
        """Raise StoreError, before writing anything, if the environment holds others' data."""
        ours = {name.encode() for name in _TABLES}
        with self.env.begin() as txn, txn.cursor() as cur:
            names = set(cur.iternext(values=False))
        if names - ours:
            raise StoreError(f"{self.path} holds an LMDB environment that is not a recallcore store")

    @contextlib.contextmanager
    def read(self) -> Iterator[Txn]:
        """A read transaction (any thread but the event loop's)."""
        with self.resize_lock, self.env.begin(buffers=False) as txn:
            yield Txn(txn, self.dbs)

    def write(self) -> lmdb.Transaction:
        """Begin a write transaction; only the writer thread calls this."""
        return self.env.begin(write=True)

    def grow(self) -> bool:
        """Double the map size up to the limit; False when already at the limit."""
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            return False
        with self.resize_lock:
            self.env.set_mapsize(min(current * 2, self.max_map_size))
        return True

    def sizes(self) -> tuple[int, int]:
        """(bytes in use, map size)."""
        info = self.env.info()
        return (info["last_pgno"] + 1) * self.env.stat()["psize"], info["map_size"]

    def load(self) -> Mirror:
        """The revocation state and expiries as stored: an in-memory mirror."""
        with self.read() as txn:
            state = RevokedSet(self.store_id)
            state.load(
                seq=txn.meta_int(b"seq"),
                revoked=txn.bitmap("revoked"),
                foreign=txn.foreign_keys(),
                registered_through=txn.meta_int(b"serial"),
                rules=txn.rules(),
            )
            return Mirror(state, ExpiryIndex(txn.times("exp")), txn.bitmap("rotated"))

    def close(self) -> None:
        self.env.close()
        self._lock_file.close()
