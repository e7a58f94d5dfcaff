"""`recallcore migrate --from DIR --to CONNINFO`: an LMDB store copied into an empty cluster database.

Theory of operation. One LMDB read transaction and one PostgreSQL write
transaction (the head row locked): everything is copied or nothing. Values
both engines store alike are copied as they are (token records, bitmap
chunks, time blocks, the change log, audit records); what LMDB keys by a
hash of a name (the (issuer, jti) index and the name indexes) is rebuilt
from the token records, which hold the names. The store identity, the
sequence and its history, the serials, rules, rotations and revocation
records are kept, so replicas and followers of the old store resume on the
cluster by sequence, without a reset; so is the Shared Signals state (the
Security Event Tokens applied, which a cluster node then refuses to apply
again, and each receiver's cursor, from which its pusher goes on). Afterwards the mirror loaded from
each side must agree (seq, serials, digest of the revoked set), or the copy
is rolled back.
"""

import json
import struct
from collections import defaultdict

import numpy as np
from pyroaring import BitMap64
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.jti import serial_from_jti

from ..core.errors import StoreError
from .base import mirror_of
from .lmdb import LmdbStore, from_u64
from .postgresql import SIGN, PostgresStore
from .records import decode_record

FLUSH_EVERY = 10_000  # rows buffered before they are sent
_NAME_INDEXES = ("subject", "client_id", "family", "issuer")


def copy_store(source: LmdbStore, target: PostgresStore) -> dict[str, int]:
    """Copy `source` into the empty database of `target`; returns rows copied per table.

    Raises StoreError when the database already holds a store, or when the
    copy does not read back as the source.
    """
    counts: dict[str, int] = defaultdict(int)
    with source.read() as src, target.write() as dst:
        if dst.head_seq() or dst.registered_through() or dst._one("SELECT count(*) FROM recallcore.tokens")[0]:
            raise StoreError(f"{target.where} already holds a store (seq {dst.head_seq()}); "
                             "migrate into an empty database")
        raw, db = src.raw, src.db

        def rows(table: str):
            with raw.cursor(db=db[table]) as cur:
                yield from cur.iternext()

        def put(table: str, sql: str, params: tuple) -> None:
            dst._write(sql, params)
            counts[table] += 1
            if len(dst._pending) >= FLUSH_EVERY:
                dst.flush()

        dst.set_head(src.head_seq(), src.head_history())
        dst.set_registered_through(src.registered_through())
        dst._write("UPDATE recallcore.schema_version SET store_id = %s", (source.store_id,))
        indexes: dict[tuple[str, str], BitMap64] = defaultdict(BitMap64)
        for key, value in rows("tokens"):
            serial, spec = from_u64(key), decode_record(value)
            put("tokens", "INSERT INTO recallcore.tokens (serial, spec) VALUES (%s, %s)", (serial, value))
            put("jtis", "INSERT INTO recallcore.jtis (issuer, jti, serial) VALUES (%s, %s, %s)",
                (spec.issuer, spec.jti, serial))
            for kind in _NAME_INDEXES:
                if getattr(spec, kind):
                    indexes[(kind, getattr(spec, kind))].add(serial)
            if serial_from_jti(spec.jti, source.store_id) != serial:  # as registering decides (operations.py)
                indexes[("custom_jti", "")].add(serial)
        dst.update_indexes((kind, name, serials) for (kind, name), serials in indexes.items())
        for table, kind in (("revoked", "revoked"), ("rotated", "rotated")):
            for key, value in rows(table):
                put(table, "INSERT INTO recallcore.bitmaps (kind, name, chunk, bits) VALUES (%s, '', %s, %s)",
                    (kind, from_u64(key), value))
        for table in ("exp", "iat"):
            for key, value in rows(table):
                put(table, "INSERT INTO recallcore.times (kind, block, data) VALUES (%s, %s, %s)",
                    (table, from_u64(key), value))
        for key, value in rows("foreign"):
            expires_at, seq = struct.unpack(">QQ", value)
            put("foreign", "INSERT INTO recallcore.foreign_keys (key, expires_at, seq) VALUES (%s, %s, %s)",
                (from_u64(key) - SIGN, expires_at, seq))
        for key, value in rows("revocations"):
            put("revocations", "INSERT INTO recallcore.revocations (serial, seq) VALUES (%s, %s)",
                (from_u64(key), from_u64(value)))
        for key, value in rows("rotations"):
            successor, when, seq = struct.unpack(">QQQ", value[:24])
            put("rotations", "INSERT INTO recallcore.rotations (serial, successor, at, seq, fingerprint) "
                "VALUES (%s, %s, %s, %s, %s)", (from_u64(key), successor, when, seq, value[24:]))
        for key, value in rows("rules"):
            before, seq = struct.unpack(">QQ", value[:16])
            put("rules", "INSERT INTO recallcore.rules (scope, value, before, seq) VALUES (%s, %s, %s, %s)",
                (key[0], value[16:].decode(), before, seq))
        for key, value in rows("issuance"):
            put("issuance", "INSERT INTO recallcore.issuance (first_serial, seq) VALUES (%s, %s)",
                (from_u64(key), from_u64(value)))
        for key, value in rows("log"):
            put("log", "INSERT INTO recallcore.log (seq, time, delta) VALUES (%s, %s, %s)",
                (from_u64(key), pb.Delta.FromString(value).time, value))
        for key, value in rows("signals"):  # keyed alike: name_hash(issuer, jti)
            seq, issued_at = struct.unpack(">QQ", value)
            put("signals", "INSERT INTO recallcore.signals (key, seq, issued_at) VALUES (%s, %s, %s)",
                (key, seq, issued_at))
        for key, value in rows("cursors"):
            put("cursors", "INSERT INTO recallcore.cursors (name, seq) VALUES (%s, %s)",
                (key.decode(), from_u64(value)))
        for key, value in rows("audit"):
            record = json.loads(value)
            put("audit", "INSERT INTO recallcore.audit (seq, time, record, subjects, clients, subjects_more, "
                "clients_more) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (from_u64(key), record.get("time", 0), value.decode(), list(record.get("subjects", ())),
                 list(record.get("clients", ())), bool(record.get("subjects_more")),
                 bool(record.get("clients_more"))))
        _same(mirror_of(src, source.store_id), mirror_of(dst, source.store_id), target.where)
    return dict(counts)


def _same(source, copied, where: str) -> None:
    a, b = source.revocations, copied.revocations
    if (a.seq, a.registered_through, a.digest(), a.rules) != (b.seq, b.registered_through, b.digest(), b.rules) \
            or source.rotated != copied.rotated or not np.array_equal(source.expiry.array, copied.expiry.array):
        raise StoreError(f"the copy in {where} does not read back as the source (seq {b.seq} vs {a.seq}); "
                         "nothing was kept")
