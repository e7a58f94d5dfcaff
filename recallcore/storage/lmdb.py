"""The embedded engine: one LMDB environment in a data directory, behind the storage seam.

Theory of operation. One LMDB environment in the data directory holds every
table below; one write transaction is one group of operations (see
writer.py), synced before anyone hears of it. A lock file held with flock
keeps a second server off the same directory. Keys are big-endian so that
LMDB's byte order is numeric order.

Tables (named databases):
  meta          b"format", b"store_id", b"seq", b"serial", b"history" (after seq)
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
  audit_names   s|c + hash16(name) + seq -> b"" for each subject (s) / client (c) an audit
                record lists; S|C + seq -> b"" for records that name more than they list
  sums          tag + key -> CRC-32 of the value under key in revoked (r), rotated (o)
                or exp (e); checked at start (see lmdb_checks.py)
  signals       hash16(issuer, jti) -> seq of the change a Security Event Token made (0: none), its iat
  signals_iat   iat + hash16(issuer, jti) -> b"" (oldest first, for compaction)
  cursors       receiver name (UTF-8) -> seq up to which it has taken the SETs sent to it
A chunk is `serial >> 16`: bitmap values stay a few KB and a change rewrites
only the chunks it touches. Format 2 adds "sums"; a format-1 store gets them
when first opened.
"""

import contextlib
import errno
import fcntl
import heapq
import json
import logging
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
from recallclient.codec import delta_from_proto, delta_to_proto
from recallclient.revoked_set import Delta, split
from recallclient.types import TokenSpec

from ..core.digest import name_hash
from ..core.errors import StoreError
from . import lmdb_checks as checks
from .base import Rotation, Rule, Store, StoreFull, WriteTxn
from .records import decode_record as _decode_record
from .records import encode_record as _encode_record
from .records import touched_chunks, updated_chunk

FORMAT = b"recallcore/2"
FORMAT_1 = b"recallcore/1"  # before "sums": migrated when opened
CHUNK_BITS = 16
EXP_BITS = 12
_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")
_TABLES = (
    "meta", "tokens", "jtis", "revoked", "exp", "iat", "index",
    "foreign", "foreign_exp", "revocations", "log", "audit",
    "rotated", "rotations", "rules", "issuance", "sums", "audit_names", "signals",
    "signals_iat", "cursors",
)
_AUDIT_NAMES = {"subject": (b"s", b"S", "subjects"), "client_id": (b"c", b"C", "clients")}
_OURS = {"data.mdb", "lock.mdb", "LOCK"}
log = logging.getLogger(__name__)
# What stays free for revocations once registrations are refused (see
# registrations_refused): a fixed part for change and audit records, and per
# unrevoked token what revoking it writes (a revocation record, ~24 bytes in
# a half-full B-tree page, and a foreign key for a caller-chosen jti), with
# margin; a registration writes its record, jti, times and index entries.
RESERVE_FIXED = 64 << 20
REVOCATION_BYTES = 64
REGISTRATION_BYTES = 512
# Key prefix of each index kind in table "index"; "custom_jti" has one list, named by zeros.
_INDEX_PREFIX = {"subject": b"s", "client_id": b"c", "family": b"f", "issuer": b"i"}
_CUSTOM_JTI = b"j" + bytes(16)
_EMPTY = BitMap64()


def u64(value: int) -> bytes:
    return _U64.pack(value)


def from_u64(data: bytes) -> int:
    return _U64.unpack(data)[0]


def split_chunks(bitmap: BitMap64):
    """Yield (chunk, part of `bitmap` in that chunk) in chunk order."""
    return split(bitmap, CHUNK_BITS)


def _index_key(kind: str, name: str) -> bytes:
    return _CUSTOM_JTI if kind == "custom_jti" else _INDEX_PREFIX[kind] + name_hash(name)


class LmdbTxn(WriteTxn):
    """The storage interface over one LMDB transaction (read-only or the write one)."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database], path: pathlib.Path) -> None:
        self.raw = txn
        self.db = dbs
        self.path = path
        # Bitmap changes not written yet, per (table, prefix): (serials to add, to remove). A
        # group of revocations touches the same chunks again and again; each chunk is written
        # once, before the commit (flush) or before its table is read.
        self._pending: dict[tuple[str, bytes], tuple[BitMap64, BitMap64]] = {}

    # values of the bitmap and time tables; those of the checked tables with their sums
    def _put_value(self, table: str, key: bytes, value: bytes) -> None:
        self.raw.put(key, value, db=self.db[table])
        if table in checks.CHECKED:
            self.raw.put(checks.sum_key(table, key), checks.checksum(value), db=self.db["sums"])

    def _delete_value(self, table: str, key: bytes) -> None:
        self.raw.delete(key, db=self.db[table])
        if table in checks.CHECKED:
            self.raw.delete(checks.sum_key(table, key), db=self.db["sums"])

    def _verified(self, table: str, key: bytes, value: bytes) -> bytes:
        checks.verify(self.path, table, key, value, self.raw.get(checks.sum_key(table, key), db=self.db["sums"]))
        return value

    def add_checksums(self) -> int:
        """Write the sum of every value of the checked tables (a format-1 store); returns how many."""
        count = 0
        for table in checks.CHECKED:
            with self.raw.cursor(db=self.db[table]) as cur:
                pairs = list(cur.iternext())
            for key, value in pairs:
                self.raw.put(checks.sum_key(table, key), checks.checksum(value), db=self.db["sums"])
                count += 1
        return count

    # meta
    def _meta_int(self, name: bytes) -> int:
        value = self.raw.get(name, db=self.db["meta"])
        return from_u64(value) if value is not None else 0

    def head_seq(self) -> int:
        return self._meta_int(b"seq")

    def head_history(self) -> bytes:
        return self.raw.get(b"history", db=self.db["meta"]) or b""

    def registered_through(self) -> int:
        return self._meta_int(b"serial")

    def set_head(self, seq: int, history: bytes) -> None:
        self.raw.put(b"seq", u64(seq), db=self.db["meta"])
        self.raw.put(b"history", history, db=self.db["meta"])

    def set_registered_through(self, serial: int) -> None:
        self.raw.put(b"serial", u64(serial), db=self.db["meta"])

    # token records and the (issuer, jti) index
    def record(self, serial: int) -> TokenSpec | None:
        data = self.raw.get(u64(serial), db=self.db["tokens"])
        return _decode_record(data) if data is not None else None

    def put_record(self, serial: int, spec: TokenSpec) -> None:
        self.raw.put(u64(serial), _encode_record(spec), db=self.db["tokens"], append=True)

    def update_record(self, serial: int, spec: TokenSpec) -> None:
        self.raw.put(u64(serial), _encode_record(spec), db=self.db["tokens"])

    def delete_record(self, serial: int) -> None:
        self.raw.delete(u64(serial), db=self.db["tokens"])

    def serial_for(self, issuer: str, jti: str) -> int:
        data = self.raw.get(name_hash(issuer, jti), db=self.db["jtis"])
        return from_u64(data) if data is not None else 0

    def put_jti(self, issuer: str, jti: str, serial: int) -> None:
        self.raw.put(name_hash(issuer, jti), u64(serial), db=self.db["jtis"])

    def delete_jti(self, issuer: str, jti: str) -> None:
        self.raw.delete(name_hash(issuer, jti), db=self.db["jtis"])

    # chunked bitmaps: the revoked and rotated sets, the name indexes
    def _bitmap(self, table: str, prefix: bytes = b"") -> BitMap64:
        """The union of every chunk stored under `prefix` in `table` (each checked, if its table is)."""
        self._flush(table)
        out = BitMap64()
        checked = table in checks.CHECKED
        with self.raw.cursor(db=self.db[table]) as cur:
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                if checked:
                    self._verified(table, key, value)
                try:
                    out |= BitMap64.deserialize(value)
                except ValueError as exc:
                    raise checks.corrupt(self.path, table, key, f"not a bitmap ({exc})") from None
        return out

    def _update_bitmap(self, table: str, prefix: bytes, add: BitMap64, remove: BitMap64) -> None:
        """Add and remove serials under `prefix` (written by flush, merged with earlier changes)."""
        pending = self._pending.get((table, prefix))
        if pending is None:
            self._pending[table, prefix] = (BitMap64(add), BitMap64(remove))
            return
        # As Delta.merge: ((S | a) - r | add) - remove is (S | (a - remove) | add) - ((r - add) | remove).
        added, removed = pending
        added -= remove
        added |= add
        removed -= add
        removed |= remove

    def flush(self) -> None:
        """Write every pending bitmap change (the store calls this before committing)."""
        pending, self._pending = self._pending, {}
        for (table, prefix), (add, remove) in pending.items():
            self._write_bitmap(table, prefix, add, remove)

    def _flush(self, table: str) -> None:
        for key in [key for key in self._pending if key[0] == table]:
            add, remove = self._pending.pop(key)
            self._write_bitmap(table, key[1], add, remove)

    def _write_bitmap(self, table: str, prefix: bytes, add: BitMap64, remove: BitMap64) -> None:
        """Add and remove serials in the chunks under `prefix`; drop empty chunks."""
        db = self.db[table]
        for chunk in touched_chunks(add, remove, CHUNK_BITS):
            key = prefix + u64(chunk)
            data = self.raw.get(key, db=db)
            bitmap = updated_chunk(BitMap64.deserialize(data) if data is not None else None, chunk, add, remove,
                                   CHUNK_BITS)
            if bitmap:
                self._put_value(table, key, bitmap.serialize())
            elif data is not None:
                self._delete_value(table, key)

    def index(self, kind: str, name: str) -> BitMap64:
        return self._bitmap("index", _index_key(kind, name))

    def index_among(self, kind: str, name: str, of: BitMap64) -> BitMap64:
        self._flush("index")
        prefix = _index_key(kind, name)
        out = BitMap64()
        db = self.db["index"]
        for chunk, part in split_chunks(of):
            data = self.raw.get(prefix + u64(chunk), db=db)
            if data is not None:
                out |= BitMap64.deserialize(data) & part
        return out

    def update_index(self, kind: str, name: str, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        self._update_bitmap("index", _index_key(kind, name), add, remove)

    def revoked_serials(self) -> BitMap64:
        return self._bitmap("revoked")

    def rotated_serials(self) -> BitMap64:
        return self._bitmap("rotated")

    def update_revoked(self, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        self._update_bitmap("revoked", b"", add, remove)

    def update_rotated(self, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        self._update_bitmap("rotated", b"", add, remove)

    # per-serial times (tables "exp" and "iat"): blocks of 4096 little-endian uint32
    def _set_times(self, table: str, ids: np.ndarray, values: np.ndarray) -> None:
        db = self.db[table]
        blocks = ids >> EXP_BITS
        for block in np.unique(blocks):
            key = u64(int(block))
            data = self.raw.get(key, db=db)
            stored = np.frombuffer(data, dtype="<u4").copy() if data is not None else np.zeros(1 << EXP_BITS, "<u4")
            mine = blocks == block
            stored[(ids[mine] & ((1 << EXP_BITS) - 1)).astype(np.intp)] = values[mine]
            self._put_value(table, key, stored.tobytes())

    def set_expiries(self, ids: np.ndarray, values: np.ndarray) -> None:
        self._set_times("exp", ids, values)

    def set_issue_times(self, ids: np.ndarray, values: np.ndarray) -> None:
        self._set_times("iat", ids, values)

    def expiries(self) -> np.ndarray:
        with self.raw.cursor(db=self.db["exp"]) as cur:
            blocks = [(from_u64(k), self._verified("exp", k, v)) for k, v in cur.iternext()]
        for block, data in blocks:
            if len(data) != 4 << EXP_BITS:
                raise checks.corrupt(self.path, "exp", u64(block), f"{len(data)} bytes, not {4 << EXP_BITS}")
        size = (blocks[-1][0] + 1) << EXP_BITS if blocks else 1 << EXP_BITS
        out = np.zeros(size, dtype=np.uint32)
        for block, data in blocks:
            out[block << EXP_BITS : (block + 1) << EXP_BITS] = np.frombuffer(data, dtype="<u4")
        return out

    def issue_times(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros(len(ids), dtype=np.uint32)
        blocks = ids >> EXP_BITS
        for block in np.unique(blocks):
            data = self.raw.get(u64(int(block)), db=self.db["iat"])
            if data is not None:
                mine = blocks == block
                out[mine] = np.frombuffer(data, dtype="<u4")[(ids[mine] & ((1 << EXP_BITS) - 1)).astype(np.intp)]
        return out

    # rules, rotations, issuance
    def put_rule(self, rule: Rule, seq: int) -> None:
        scope, value, before = rule
        self.raw.put(bytes([scope]) + name_hash(value), _U64X2.pack(before, seq) + value.encode(), db=self.db["rules"])

    def delete_rule(self, rule: Rule) -> None:
        scope, value, _ = rule
        self.raw.delete(bytes([scope]) + name_hash(value), db=self.db["rules"])

    def rules(self) -> list[Rule]:
        with self.raw.cursor(db=self.db["rules"]) as cur:
            return [(k[0], v[16:].decode(), _U64X2.unpack(v[:16])[0]) for k, v in cur.iternext()]

    def rotation(self, serial: int) -> Rotation | None:
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
        with self.raw.cursor(db=self.db["issuance"]) as cur:
            if cur.set_range(u64(serial + 1)):
                found = cur.prev()
            else:
                found = cur.last()
            return from_u64(cur.value()) if found else 0

    # revocation records
    def revoked_by(self, serial: int) -> int:
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
        data = self.raw.get(u64(key), db=self.db["foreign"])
        return _U64X2.unpack(data) if data is not None else None

    def put_foreign(self, key: int, expires_at: int, seq: int) -> None:
        old = self.foreign(key)
        if old is not None:
            self.raw.delete(_U64X2.pack(old[0], key), db=self.db["foreign_exp"])
        self.raw.put(u64(key), _U64X2.pack(expires_at, seq), db=self.db["foreign"])
        self.raw.put(_U64X2.pack(expires_at, key), b"", db=self.db["foreign_exp"])

    def foreign_due(self, upto: int, limit: int) -> list[tuple[int, int]]:
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

    # signals
    def signal(self, issuer: str, jti: str) -> int | None:
        data = self.raw.get(name_hash(issuer, jti), db=self.db["signals"])
        return _U64X2.unpack(data)[0] if data is not None else None

    def put_signal(self, issuer: str, jti: str, seq: int, issued_at: int) -> None:
        key = name_hash(issuer, jti)
        self.raw.put(key, _U64X2.pack(seq, issued_at), db=self.db["signals"])
        self.raw.put(u64(issued_at) + key, b"", db=self.db["signals_iat"])

    def compact_signals(self, before: int, limit: int) -> int:
        due = []
        with self.raw.cursor(db=self.db["signals_iat"]) as cur:
            for key in cur.iternext(values=False):
                if from_u64(key[:8]) >= before or len(due) >= limit:
                    break
                due.append(key)
        for key in due:
            self.raw.delete(key, db=self.db["signals_iat"])
            self.raw.delete(key[8:], db=self.db["signals"])
        return len(due)

    def cursor(self, name: str) -> int:
        data = self.raw.get(name.encode(), db=self.db["cursors"])
        return from_u64(data) if data is not None else 0

    def put_cursor(self, name: str, seq: int) -> None:
        self.raw.put(name.encode(), u64(seq), db=self.db["cursors"])

    # change log and audit
    def put_change(self, delta: Delta, audit: dict, wire: bytes | None = None) -> None:
        if wire is None:
            wire = delta_to_proto(delta).SerializeToString()
        self.raw.put(u64(delta.seq), wire, db=self.db["log"], append=True)
        self.raw.put(u64(delta.seq), json.dumps(audit, separators=(",", ":")).encode(),
                     db=self.db["audit"], append=True)
        self._index_audit(delta.seq, audit)

    def _audit_name_keys(self, seq: int, audit: dict) -> Iterator[bytes]:
        for listed, more, field in _AUDIT_NAMES.values():
            for name in audit.get(field, ()):
                yield listed + name_hash(name) + u64(seq)
            if audit.get(f"{field}_more"):
                yield more + u64(seq)

    def _index_audit(self, seq: int, audit: dict) -> None:
        for key in self._audit_name_keys(seq, audit):
            self.raw.put(key, b"", db=self.db["audit_names"])

    def index_all_audit(self) -> int:
        """Index the names of every audit record (a store from before the index); returns how many."""
        count = 0
        for record in self.audit_after(0):
            self._index_audit(record["seq"], record)
            count += 1
        return count

    def audit_naming(self, kind: str, name: str, after: int) -> Iterator[int]:
        listed, more, _ = _AUDIT_NAMES[kind]
        last = 0
        for seq in heapq.merge(self._seqs_under(listed + name_hash(name), after), self._seqs_under(more, after)):
            if seq != last:  # a record may list the name and name more than it lists
                yield seq
                last = seq

    def _seqs_under(self, prefix: bytes, after: int) -> Iterator[int]:
        with self.raw.cursor(db=self.db["audit_names"]) as cur:
            if not cur.set_range(prefix + u64(after + 1)):
                return
            for key in cur.iternext(values=False):
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    return
                yield from_u64(key[len(prefix):])

    def compact_log(self, upto: int, before: int, limit: int) -> int:
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
        deleted = 0
        with self.raw.cursor(db=self.db["audit"]) as cur:
            while deleted < limit and cur.first():
                record = json.loads(cur.value())
                if record.get("time", 0) >= before:
                    break
                for key in self._audit_name_keys(from_u64(cur.key()), record):
                    self.raw.delete(key, db=self.db["audit_names"])
                cur.delete()
                deleted += 1
        return deleted

    def audit_after(self, after: int) -> Iterator[dict]:
        with self.raw.cursor(db=self.db["audit"]) as cur:
            if not cur.set_range(u64(after + 1)):
                return
            for _, value in cur:
                yield json.loads(value)

    def log_first(self) -> int:
        with self.raw.cursor(db=self.db["log"]) as cur:
            return from_u64(cur.key()) if cur.first() else 0

    def delta(self, seq: int) -> Delta | None:
        data = self.raw.get(u64(seq), db=self.db["log"])
        return delta_from_proto(pb.Delta.FromString(data)) if data is not None else None

    def audit(self, seq: int) -> dict | None:
        data = self.raw.get(u64(seq), db=self.db["audit"])
        return json.loads(data) if data is not None else None


class LmdbStore(Store):
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
                    info = self.env.info()  # from the meta pages: safe to read on a short file
                    checks.check_file_size(self.path, info["last_pgno"], self.env.stat()["psize"])
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
                txn.put(b"audit_names", b"1", db=self.dbs["meta"])
                txn.put(b"store_id", store_id.encode(), db=self.dbs["meta"])
                return store_id
            if fmt == FORMAT_1:
                count = LmdbTxn(txn, self.dbs, self.path).add_checksums()
                txn.put(b"format", FORMAT, db=self.dbs["meta"])
                log.info("%s: store format 1 upgraded to %s (%d checksums added)", self.path, FORMAT.decode(), count)
                fmt = FORMAT
            if fmt == FORMAT and txn.get(b"audit_names", db=self.dbs["meta"]) is None:
                count = LmdbTxn(txn, self.dbs, self.path).index_all_audit()
                txn.put(b"audit_names", b"1", db=self.dbs["meta"])
                if count:
                    log.info("%s: names of %d audit records indexed", self.path, count)
            elif fmt != FORMAT:
                raise StoreError(
                    f"{self.path} holds store format {fmt!r}; this server reads {FORMAT!r} and {FORMAT_1!r}"
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
    def read(self) -> Iterator[LmdbTxn]:
        """A read transaction (any thread but the event loop's)."""
        with self.resize_lock, self.env.begin(buffers=False) as txn:
            yield LmdbTxn(txn, self.dbs, self.path)

    @contextlib.contextmanager
    def write(self) -> Iterator[LmdbTxn]:
        """The write transaction; only the writer thread calls this. Synced on a clean exit."""
        try:
            with self.env.begin(write=True) as txn:
                ours = LmdbTxn(txn, self.dbs, self.path)
                yield ours
                ours.flush()
        except lmdb.MapFullError as exc:
            raise StoreFull(f"store is full: the LMDB map reached max_map_size ({self.max_map_size} bytes); "
                            "raise --max-map-size", grows=True) from exc
        except lmdb.DiskError as exc:  # ENOSPC: growing the map would not help
            raise StoreFull(f"store is full: the disk holding {self.path} has no space left ({exc}); "
                            "free some, nothing was written") from exc

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

    def limit(self) -> int:
        return self.max_map_size

    def registrations_refused(self, unrevoked: int, new: int) -> str:
        used, _ = self.sizes()
        reserve = min(self.max_map_size // 32, RESERVE_FIXED) + REVOCATION_BYTES * (unrevoked + new)
        if used + reserve + REGISTRATION_BYTES * new <= self.max_map_size:
            return ""
        return (
            f"store nearly full: {used} of {self.max_map_size} bytes in use, and {reserve} are kept so that "
            "every token can still be revoked; registrations are refused, revocations and cut-offs still "
            "work. Raise --max-map-size (expired tokens are purged after --audit-retention)"
        )

    def close(self) -> None:
        self.env.close()
        self._lock_file.close()
