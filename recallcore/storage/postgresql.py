"""The cluster engine: one PostgreSQL database behind the storage seam, shared by every node.

Theory of operation. The tables are pg_schema.py's. A read transaction is
one REPEATABLE READ, READ ONLY transaction on a pooled connection
(pg_connections.py): one
snapshot, as the seam asks. The write transaction runs on a connection of
its own: it first locks the single head row (SELECT ... FOR UPDATE), so the
writers of every node sharing the database take turns and the sequence
numbers they take are dense and in commit order; it ends with a NOTIFY on
pg_schema.CHANNEL (delivered only on commit) and a commit that returns only
once the server made it durable (synchronous_commit, and with a synchronous
standby, on both).

Writes are buffered and sent in one pipeline (runs of one statement as
executemany) before the next read of the same transaction and, with the
NOTIFY and the COMMIT, at the end, so a registration of a thousand tokens is
a few round trips, not thousands; reads always see the transaction's own
writes. The writer's connection is in autocommit mode and the transaction
is begun by its first statement, one query that also takes the head lock
and looks up the (issuer, jti) the writer announced (`expect_lookups`: the
references its group's revocations and rotations name, kept for the
transaction and updated by its own writes): a revocation by (issuer, jti)
is two round trips (BEGIN, the lock and the lookup; the writes, NOTIFY and
COMMIT), not five. A transaction that fails is rolled back on its
connection. The write
transaction keeps the head it locked (and then set) rather than asking again.

Connection failures surface as `Unavailable` naming the database (never its
password), and so does a database that stops answering: each round trip has
`timeout` seconds (settings.store_timeout), then its connection is cut
(pg_deadline.py). A database without the schema, or with one of another
version, is a StoreError at open.
"""

import contextlib
import json
import logging
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
import psycopg.conninfo
from psycopg import sql as pgsql
from pyroaring import BitMap64
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.codec import delta_from_proto, delta_to_proto
from recallclient.revoked_set import Delta, split
from recallclient.types import TokenSpec

from ..core.digest import name_hash
from ..core.errors import StoreError, Unavailable
from ..settings import DEFAULT_STORE_TIMEOUT
from . import pg_schema
from .base import Rotation, Rule, Store, StoreFull, WriteTxn
from .pg_connections import Connections
from .pg_deadline import Deadlines, Lend
from .records import decode_record, encode_record, touched_chunks, updated_chunk

log = logging.getLogger(__name__)

CHUNK_BITS = 16  # as in LMDB: a bitmap row holds the serials of one 65,536-wide chunk
EXP_BITS = 12
SIGN = 1 << 63  # foreign keys are unsigned 64-bit: stored minus SIGN, which keeps their order
PAGE = 1000  # rows read per round trip by the iterators
PIPELINE_SLICE = 2000  # rows of one executemany in a flush's pipeline, the deadline renewed before each
PREFETCH = 1000  # most (issuer, jti) looked up in the query that takes the head lock
LOOKUP_PAGE = 10_000  # keys read by key per round trip: jtis past PREFETCH, records, foreign keys, index chunks
CONNECT_TIMEOUT = 5.0  # seconds to wait for a connection at open and for each transaction (tests lower it)
_EMPTY = BitMap64()


def describe(conninfo: str) -> str:
    """The database a conninfo names, for messages: hosts, ports and dbname, never the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "PostgreSQL database (unparsable conninfo)"
    hosts = params.get("host") or params.get("hostaddr") or "localhost"
    ports = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "(default)"
    return f"PostgreSQL database {dbname!r} at host {hosts} port {ports}"


class PgTxn(WriteTxn):
    """The storage interface over one PostgreSQL transaction (a read-only one or the write one).

    The write transaction is begun lazily, by its first statement: BEGIN, the head lock and
    the jti lookups announced by `expect_lookups` travel as one query."""

    def __init__(self, conn: psycopg.Connection, lend: Lend, *, begin: bool = False) -> None:
        self.conn = conn
        self._lend = lend  # its deadline is renewed before each round trip
        self._pending: list[tuple[str, tuple]] = []
        self.head: int | None = None  # the write transaction's head: as locked, then as set
        self.locked: int | None = None  # the head as the write transaction locked it
        self._begin = begin  # the write transaction is still to be begun
        self._expected: list[tuple[str, str]] = []
        self._jtis: dict[tuple[str, str], int] = {}  # (issuer, jti) -> serial, as of this write transaction

    # ------------------------------------------------------------ plumbing
    def begin(self) -> None:
        """Begin the write transaction (once): BEGIN, the head lock and the expected lookups."""
        if not self._begin:
            return
        self._begin = False
        query = _BEGIN_AND_LOCK
        expected = list(dict.fromkeys(self._expected))
        expected, rest = expected[:PREFETCH], expected[PREFETCH:]
        if expected:
            refs = pgsql.SQL(", ").join(pgsql.SQL("({}, {})").format(pgsql.Literal(i), pgsql.Literal(j))
                                        for i, j in expected)
            query += "; " + pgsql.SQL("SELECT issuer, jti, serial FROM recallcore.jtis WHERE (issuer, jti) IN ({})"
                                      ).format(refs).as_string(self.conn)
        with self._lend.trip():
            cur = self.conn.execute(query)  # one round trip (simple query protocol); the connection is autocommit
            cur.nextset()
            self.head = self.locked = cur.fetchone()[0]
            if expected:
                cur.nextset()
                found = cur.fetchall()
        if expected:
            self._jtis = dict.fromkeys(expected, 0) | {(i, j): serial for i, j, serial in found}
        if rest:  # past the first PREFETCH: in pages, under the lock
            self._jtis.update(dict.fromkeys(rest, 0))
            self._jtis.update(((issuer, jti), serial) for issuer, jti, serial in self._rows_by_page(
                "SELECT j.issuer, j.jti, j.serial FROM unnest(%s::text[], %s::text[]) AS r(issuer, jti) "
                "JOIN recallcore.jtis j ON j.issuer = r.issuer AND j.jti = r.jti",
                rest, lambda page: ([i for i, _ in page], [j for _, j in page])))

    def expect_lookups(self, refs) -> None:
        if self._begin:
            self._expected.extend(refs)

    def _write(self, sql: str, params: tuple) -> None:
        self._pending.append((sql, params))

    def flush(self) -> None:
        """Send the buffered writes in one pipeline, each run of one statement as one executemany."""
        self.begin()
        pending, self._pending = self._pending, []
        i = 0
        with self._lend.trip(), self.conn.pipeline(), self.conn.cursor() as cur:
            while i < len(pending):
                sql = pending[i][0]
                j = i
                while j < len(pending) and pending[j][0] == sql:
                    j += 1
                if j - i == 1:
                    cur.execute(sql, pending[i][1])
                else:  # in slices: the deadline bounds a wait for progress, not the whole pipeline
                    for k in range(i, j, PIPELINE_SLICE):
                        self._lend.renew()
                        cur.executemany(sql, [params for _, params in pending[k:min(j, k + PIPELINE_SLICE)]])
                i = j

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        self.begin()
        if self._pending:
            self.flush()
        with self._lend.trip():
            return self.conn.execute(sql, params).fetchall()

    def _rows_by_page(self, sql: str, keys: list, params: Callable[[list], tuple]) -> Iterator[tuple]:
        """The rows of `sql` for `keys`, LOOKUP_PAGE keys a round trip (params(page): its parameters)."""
        for k in range(0, len(keys), LOOKUP_PAGE):
            yield from self._rows(sql, params(keys[k:k + LOOKUP_PAGE]))

    def _one(self, sql: str, params: tuple = ()):
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # ----------------------------------------------------------------- meta
    def head_seq(self) -> int:
        self.begin()
        if self.head is not None:
            return self.head
        return self._one("SELECT seq FROM recallcore.head WHERE id = 1")[0]

    def head_history(self) -> bytes:
        return bytes(self._one("SELECT history FROM recallcore.head WHERE id = 1")[0])

    def registered_through(self) -> int:
        return self._one("SELECT serial FROM recallcore.head WHERE id = 1")[0]

    def set_head(self, seq: int, history: bytes) -> None:
        self._write("UPDATE recallcore.head SET seq = %s, history = %s WHERE id = 1", (seq, history))
        if self.head is not None:
            self.head = seq

    def set_registered_through(self, serial: int) -> None:
        self._write("UPDATE recallcore.head SET serial = %s WHERE id = 1", (serial,))

    # -------------------------------------------------------- token records
    def record(self, serial: int) -> TokenSpec | None:
        row = self._one("SELECT spec FROM recallcore.tokens WHERE serial = %s", (serial,))
        return decode_record(bytes(row[0])) if row else None

    def records(self, serials) -> dict[int, TokenSpec]:
        rows = self._rows_by_page("SELECT serial, spec FROM recallcore.tokens WHERE serial = ANY(%s)",
                                  list(serials), lambda page: (page,))
        return {serial: decode_record(bytes(spec)) for serial, spec in rows}

    def put_record(self, serial: int, spec: TokenSpec) -> None:
        self._write("INSERT INTO recallcore.tokens (serial, spec) VALUES (%s, %s)", (serial, encode_record(spec)))

    def update_record(self, serial: int, spec: TokenSpec) -> None:
        self._write("UPDATE recallcore.tokens SET spec = %s WHERE serial = %s", (encode_record(spec), serial))

    def delete_record(self, serial: int) -> None:
        self._write("DELETE FROM recallcore.tokens WHERE serial = %s", (serial,))

    def serial_for(self, issuer: str, jti: str) -> int:
        known = self._jtis.get((issuer, jti))
        if known is not None:
            return known
        row = self._one("SELECT serial FROM recallcore.jtis WHERE issuer = %s AND jti = %s", (issuer, jti))
        return row[0] if row else 0

    def put_jti(self, issuer: str, jti: str, serial: int) -> None:
        self._jtis[(issuer, jti)] = serial
        self._write("INSERT INTO recallcore.jtis (issuer, jti, serial) VALUES (%s, %s, %s) "
                    "ON CONFLICT (issuer, jti) DO UPDATE SET serial = EXCLUDED.serial", (issuer, jti, serial))

    def delete_jti(self, issuer: str, jti: str) -> None:
        self._jtis[(issuer, jti)] = 0
        self._write("DELETE FROM recallcore.jtis WHERE issuer = %s AND jti = %s", (issuer, jti))

    # ---------------------------------------------------- chunked bitmaps
    def _bitmap(self, kind: str, name: str = "") -> BitMap64:
        out = BitMap64()
        for (bits,) in self._rows("SELECT bits FROM recallcore.bitmaps WHERE kind = %s AND name = %s",
                                  (kind, name)):
            out |= BitMap64.deserialize(bytes(bits))
        return out

    def _chunks(self, kind: str, name: str, chunks: list[int]) -> dict[int, BitMap64]:
        rows = self._rows("SELECT chunk, bits FROM recallcore.bitmaps WHERE kind = %s AND name = %s "
                          "AND chunk = ANY(%s)", (kind, name, chunks))
        return {chunk: BitMap64.deserialize(bytes(bits)) for chunk, bits in rows}

    def _update_bitmap(self, kind: str, name: str, add: BitMap64, remove: BitMap64) -> None:
        touched = touched_chunks(add, remove, CHUNK_BITS)
        if not touched:
            return
        stored = self._chunks(kind, name, touched)
        for chunk in touched:
            bitmap = updated_chunk(stored.get(chunk), chunk, add, remove, CHUNK_BITS)
            if bitmap:
                self._put_chunk(kind, name, chunk, bitmap)
            elif chunk in stored:
                self._write("DELETE FROM recallcore.bitmaps WHERE kind = %s AND name = %s AND chunk = %s",
                            (kind, name, chunk))

    def index(self, kind: str, name: str) -> BitMap64:
        return self._bitmap(kind, name)

    def index_among(self, kind: str, name: str, of: BitMap64) -> BitMap64:
        parts = dict(split(of, CHUNK_BITS))
        out = BitMap64()
        if parts:
            for chunk, bitmap in self._chunks(kind, name, sorted(parts)).items():
                out |= bitmap & parts[chunk]
        return out

    def update_index(self, kind: str, name: str, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        self._update_bitmap(kind, name, add, remove)

    def update_indexes(self, changes) -> None:
        """The chunks of every index changed, read in pages (not one round trip a name), then written."""
        wanted = [(kind, name, chunk, add) for kind, name, add in changes
                  for chunk in touched_chunks(add, _EMPTY, CHUNK_BITS)]
        rows = self._rows_by_page(
            "SELECT kind, name, chunk, bits FROM recallcore.bitmaps WHERE (kind, name, chunk) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]))",
            wanted, lambda page: tuple(list(column) for column in zip(*((k, n, c) for k, n, c, _ in page))))
        stored = {(kind, name, chunk): BitMap64.deserialize(bytes(bits)) for kind, name, chunk, bits in rows}
        for kind, name, chunk, add in wanted:
            bitmap = updated_chunk(stored.get((kind, name, chunk)), chunk, add, _EMPTY, CHUNK_BITS)
            self._put_chunk(kind, name, chunk, bitmap)

    def _put_chunk(self, kind: str, name: str, chunk: int, bitmap: BitMap64) -> None:
        self._write("INSERT INTO recallcore.bitmaps (kind, name, chunk, bits) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (kind, name, chunk) DO UPDATE SET bits = EXCLUDED.bits",
                    (kind, name, chunk, bitmap.serialize()))

    def revoked_serials(self) -> BitMap64:
        return self._bitmap("revoked")

    def rotated_serials(self) -> BitMap64:
        return self._bitmap("rotated")

    def update_revoked(self, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        self._update_bitmap("revoked", "", add, remove)

    def update_rotated(self, add: BitMap64, remove: BitMap64 = _EMPTY) -> None:
        self._update_bitmap("rotated", "", add, remove)

    # ------------------------------------------------------ per-serial times
    def _blocks(self, kind: str, blocks: list[int]) -> dict[int, np.ndarray]:
        rows = self._rows("SELECT block, data FROM recallcore.times WHERE kind = %s AND block = ANY(%s)",
                          (kind, blocks))
        return {block: np.frombuffer(bytes(data), dtype="<u4") for block, data in rows}

    def _set_times(self, kind: str, ids: np.ndarray, values: np.ndarray) -> None:
        blocks = ids >> EXP_BITS
        unique = [int(b) for b in np.unique(blocks)]
        stored = self._blocks(kind, unique)
        for block in unique:
            data = stored[block].copy() if block in stored else np.zeros(1 << EXP_BITS, "<u4")
            mine = blocks == block
            data[(ids[mine] & ((1 << EXP_BITS) - 1)).astype(np.intp)] = values[mine]
            self._write("INSERT INTO recallcore.times (kind, block, data) VALUES (%s, %s, %s) "
                        "ON CONFLICT (kind, block) DO UPDATE SET data = EXCLUDED.data", (kind, block, data.tobytes()))

    def set_expiries(self, ids: np.ndarray, values: np.ndarray) -> None:
        self._set_times("exp", ids, values)

    def set_issue_times(self, ids: np.ndarray, values: np.ndarray) -> None:
        self._set_times("iat", ids, values)

    def expiries(self) -> np.ndarray:
        rows = self._rows("SELECT block, data FROM recallcore.times WHERE kind = 'exp' ORDER BY block")
        size = (rows[-1][0] + 1) << EXP_BITS if rows else 1 << EXP_BITS
        out = np.zeros(size, dtype=np.uint32)
        for block, data in rows:
            out[block << EXP_BITS : (block + 1) << EXP_BITS] = np.frombuffer(bytes(data), dtype="<u4")
        return out

    def issue_times(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros(len(ids), dtype=np.uint32)
        blocks = ids >> EXP_BITS
        stored = self._blocks("iat", [int(b) for b in np.unique(blocks)])
        for block, data in stored.items():
            mine = blocks == block
            out[mine] = data[(ids[mine] & ((1 << EXP_BITS) - 1)).astype(np.intp)]
        return out

    # ----------------------------------------------- rules, rotations, issuance
    def put_rule(self, rule: Rule, seq: int) -> None:
        scope, value, before = rule
        self._write("INSERT INTO recallcore.rules (scope, value, before, seq) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (scope, value) DO UPDATE SET before = EXCLUDED.before, seq = EXCLUDED.seq",
                    (scope, value, before, seq))

    def delete_rule(self, rule: Rule) -> None:
        self._write("DELETE FROM recallcore.rules WHERE scope = %s AND value = %s", rule[:2])

    def rules(self) -> list[Rule]:
        return [(scope, value, before) for scope, value, before in
                self._rows("SELECT scope, value, before FROM recallcore.rules ORDER BY scope, value")]

    def rotation(self, serial: int) -> Rotation | None:
        row = self._one("SELECT successor, at, seq, fingerprint FROM recallcore.rotations WHERE serial = %s",
                        (serial,))
        return (row[0], row[1], row[2], bytes(row[3])) if row else None

    def put_rotation(self, serial: int, successor: int, when: int, seq: int, fingerprint: bytes) -> None:
        self._write("INSERT INTO recallcore.rotations (serial, successor, at, seq, fingerprint) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (serial) DO UPDATE SET successor = EXCLUDED.successor, "
                    "at = EXCLUDED.at, seq = EXCLUDED.seq, fingerprint = EXCLUDED.fingerprint",
                    (serial, successor, when, seq, fingerprint))

    def delete_rotation(self, serial: int) -> None:
        self._write("DELETE FROM recallcore.rotations WHERE serial = %s", (serial,))

    def put_issuance(self, first_serial: int, seq: int) -> None:
        self._write("INSERT INTO recallcore.issuance (first_serial, seq) VALUES (%s, %s)", (first_serial, seq))

    def issued_by(self, serial: int) -> int:
        row = self._one("SELECT seq FROM recallcore.issuance WHERE first_serial <= %s "
                        "ORDER BY first_serial DESC LIMIT 1", (serial,))
        return row[0] if row else 0

    # --------------------------------------------------- revocation records
    def revoked_by(self, serial: int) -> int:
        row = self._one("SELECT seq FROM recallcore.revocations WHERE serial = %s", (serial,))
        return row[0] if row else 0

    def put_revocations(self, serials: BitMap64, seq: int) -> None:
        for serial in serials:
            self._write("INSERT INTO recallcore.revocations (serial, seq) VALUES (%s, %s) "
                        "ON CONFLICT (serial) DO UPDATE SET seq = EXCLUDED.seq", (serial, seq))

    def delete_revocation(self, serial: int) -> None:
        self._write("DELETE FROM recallcore.revocations WHERE serial = %s", (serial,))

    # -------------------------------------------------------------- signals
    def signal(self, issuer: str, jti: str) -> int | None:
        row = self._one("SELECT seq FROM recallcore.signals WHERE key = %s", (name_hash(issuer, jti),))
        return row[0] if row else None

    def put_signal(self, issuer: str, jti: str, seq: int, issued_at: int) -> None:
        self._write("INSERT INTO recallcore.signals (key, seq, issued_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq, issued_at = EXCLUDED.issued_at",
                    (name_hash(issuer, jti), seq, issued_at))

    def compact_signals(self, before: int, limit: int) -> int:
        rows = self._rows("DELETE FROM recallcore.signals WHERE key IN (SELECT key FROM recallcore.signals "
                          "WHERE issued_at < %s ORDER BY issued_at LIMIT %s) RETURNING 1", (before, limit))
        return len(rows)

    def cursor(self, name: str) -> int:
        row = self._one("SELECT seq FROM recallcore.cursors WHERE name = %s", (name,))
        return row[0] if row else 0

    def put_cursor(self, name: str, seq: int) -> None:
        self._write("INSERT INTO recallcore.cursors (name, seq) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq", (name, seq))

    # ------------------------------------------------------- foreign tokens
    def foreign(self, key: int) -> tuple[int, int] | None:
        row = self._one("SELECT expires_at, seq FROM recallcore.foreign_keys WHERE key = %s", (key - SIGN,))
        return (row[0], row[1]) if row else None

    def foreigns(self, keys) -> dict[int, tuple[int, int]]:
        rows = self._rows_by_page("SELECT key, expires_at, seq FROM recallcore.foreign_keys WHERE key = ANY(%s)",
                                  [key - SIGN for key in keys], lambda page: (page,))
        return {key + SIGN: (expires_at, seq) for key, expires_at, seq in rows}

    def put_foreign(self, key: int, expires_at: int, seq: int) -> None:
        self._write("INSERT INTO recallcore.foreign_keys (key, expires_at, seq) VALUES (%s, %s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at, seq = EXCLUDED.seq",
                    (key - SIGN, expires_at, seq))

    def foreign_due(self, upto: int, limit: int) -> list[tuple[int, int]]:
        rows = self._rows("SELECT expires_at, key FROM recallcore.foreign_keys WHERE expires_at <= %s "
                          "ORDER BY expires_at, key LIMIT %s", (upto, limit))
        return [(expires_at, key + SIGN) for expires_at, key in rows]

    def delete_foreign(self, key: int, expires_at: int) -> None:
        self._write("DELETE FROM recallcore.foreign_keys WHERE key = %s", (key - SIGN,))

    def foreign_keys(self) -> Iterator[int]:
        after = -SIGN - 1
        while True:
            rows = self._rows("SELECT key FROM recallcore.foreign_keys WHERE key > %s ORDER BY key LIMIT %s",
                              (after, PAGE))
            for (key,) in rows:
                yield key + SIGN
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    # ------------------------------------------------ change log and audit
    def put_change(self, delta: Delta, audit: dict, wire: bytes | None = None) -> None:
        if wire is None:
            wire = delta_to_proto(delta).SerializeToString()
        self._write("INSERT INTO recallcore.log (seq, time, delta) VALUES (%s, %s, %s)", (delta.seq, delta.time, wire))
        self._write("INSERT INTO recallcore.audit (seq, time, record, subjects, clients, subjects_more, "
                    "clients_more) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (delta.seq, audit.get("time", 0), json.dumps(audit, separators=(",", ":")),
                     list(audit.get("subjects", ())), list(audit.get("clients", ())),
                     bool(audit.get("subjects_more")), bool(audit.get("clients_more"))))

    def _compact(self, table: str, stop_if: str, params: tuple, limit: int) -> int:
        # The oldest entries go, up to the first one that must stay (as LMDB's cursor walk does).
        stop = self._one(f"SELECT seq FROM recallcore.{table} WHERE {stop_if} ORDER BY seq LIMIT 1", params)
        if self._pending:
            self.flush()
        with self._lend.trip():
            cur = self.conn.execute(
                f"DELETE FROM recallcore.{table} WHERE seq IN (SELECT seq FROM recallcore.{table} "
                "WHERE seq < %s ORDER BY seq LIMIT %s)", (stop[0] if stop else 2**63 - 1, limit))
        return cur.rowcount

    def compact_log(self, upto: int, before: int, limit: int) -> int:
        return self._compact("log", "seq > %s OR time >= %s", (upto, before), limit)

    def compact_audit(self, before: int, limit: int) -> int:
        return self._compact("audit", "time >= %s", (before,), limit)

    def _paged(self, sql: str, after: int, *params) -> Iterator[tuple]:
        """Rows of `sql` (its first column the seq; parameters: after, *params, limit) in seq order."""
        while True:
            rows = self._rows(sql, (after, *params, PAGE))
            yield from rows
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    def audit_after(self, after: int) -> Iterator[dict]:
        for _, record in self._paged("SELECT seq, record FROM recallcore.audit WHERE seq > %s "
                                     "ORDER BY seq LIMIT %s", after):
            yield json.loads(record)

    def audit_naming(self, kind: str, name: str, after: int) -> Iterator[int]:
        listed, more = {"subject": ("subjects", "subjects_more"), "client_id": ("clients", "clients_more")}[kind]
        for (seq,) in self._paged(f"SELECT seq FROM recallcore.audit WHERE seq > %s AND (%s = ANY({listed}) "
                                  f"OR {more}) ORDER BY seq LIMIT %s", after, name):
            yield seq

    def log_first(self) -> int:
        row = self._one("SELECT min(seq) FROM recallcore.log")
        return row[0] or 0

    def delta(self, seq: int) -> Delta | None:
        row = self._one("SELECT delta FROM recallcore.log WHERE seq = %s", (seq,))
        return delta_from_proto(pb.Delta.FromString(bytes(row[0]))) if row else None

    def deltas_after(self, after: int, limit: int) -> list[Delta]:
        """Up to `limit` logged changes with seq > after, in order (the tail of the log)."""
        rows = self._rows("SELECT delta FROM recallcore.log WHERE seq > %s ORDER BY seq LIMIT %s", (after, limit))
        return [delta_from_proto(pb.Delta.FromString(bytes(data))) for (data,) in rows]

    def audit(self, seq: int) -> dict | None:
        row = self._one("SELECT record FROM recallcore.audit WHERE seq = %s", (seq,))
        return json.loads(row[0]) if row else None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _configure_reader(conn: psycopg.Connection) -> None:
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True


# synchronous_commit levels under which COMMIT returns before the change is flushed (off,
# local: the primary may lose it in a crash; remote_write: a standby promoted after one may).
_WEAK_COMMITS = frozenset({"off", "local", "remote_write"})


def _configure_writer(conn: psycopg.Connection) -> None:
    # The write transaction is begun and committed by statements of its own (PostgresStore.write),
    # so that BEGIN travels with the head lock and COMMIT with the writes.
    conn.autocommit = True
    # A change is acknowledged once committed, so COMMIT must mean durable, whatever the database or
    # role was tuned to (a stronger level, remote_apply, is kept).
    if conn.execute("SHOW synchronous_commit").fetchone()[0] in _WEAK_COMMITS:
        conn.execute("SET synchronous_commit = on")


_BEGIN_AND_LOCK = "BEGIN; SELECT seq FROM recallcore.head WHERE id = 1 FOR UPDATE"


def _roll_back(conn: psycopg.Connection) -> None:
    """End a failed write transaction (a connection left inside one is closed when given back)."""
    if conn.broken or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        pass


class PostgresStore(Store):
    """The store in one PostgreSQL database; several nodes may open it at once."""

    def __init__(self, conninfo: str, *, readers: int = 4, connect_timeout: float | None = None,
                 timeout: float = DEFAULT_STORE_TIMEOUT) -> None:
        """`timeout`: seconds to wait for one answer before the connection is cut (and the
        transaction fails Unavailable): a database that stopped answering holds nothing longer."""
        self.conninfo = conninfo
        self.where = describe(conninfo)
        self.connect_timeout = connect_timeout = connect_timeout or CONNECT_TIMEOUT
        self.writer_pid = 0  # the server process of this store's write connection (its NOTIFYs are its own)
        self.deadlines = Deadlines(timeout, "recallcore-pg")
        self._readers = Connections(conninfo, readers, connect_timeout, self.deadlines, _configure_reader)
        self._writers = Connections(conninfo, 1, connect_timeout, self.deadlines, _configure_writer)
        try:
            with self._readers.lend() as lend, lend.conn.transaction():
                conn = lend.conn
                pg_schema.require_current(conn, self.where)
                self.store_id = pg_schema.store_id(conn)
        except psycopg.OperationalError as exc:
            self.close()
            raise StoreError(f"cannot connect to {self.where} within {connect_timeout:g} s: "
                             f"{_first_line(exc)}") from exc
        except BaseException:
            self.close()
            raise

    def _unavailable(self, exc: Exception) -> Unavailable:
        return Unavailable(f"{self.where} is unreachable: {_first_line(exc)}")

    @contextlib.contextmanager
    def read(self) -> Iterator[PgTxn]:
        """A REPEATABLE READ, READ ONLY transaction: one snapshot."""
        try:
            with self._readers.lend() as lend, lend.conn.transaction():
                lend.conn.execute("SELECT 1")  # the snapshot is taken by the first statement: now, not later
                lend.rest()
                yield PgTxn(lend.conn, lend)
                lend.renew()  # its end (COMMIT) is a round trip too
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc

    @contextlib.contextmanager
    def write(self) -> Iterator[PgTxn]:
        """The write transaction: the head row locked first, durable once the block exits cleanly."""
        try:
            with self._writers.lend() as lend:
                conn = lend.conn
                lend.rest()  # the writer works before its first round trip
                self.writer_pid = conn.info.backend_pid
                txn = PgTxn(conn, lend, begin=True)  # begun by its first statement (the writer connection is autocommit)
                try:
                    yield txn
                    txn.begin()
                    if txn.head != txn.locked:
                        txn._write("SELECT pg_notify(%s, %s)", (pg_schema.CHANNEL, str(txn.head)))
                    txn._write("COMMIT", ())
                    txn.flush()  # the writes, the NOTIFY and the COMMIT: one round trip
                except BaseException:
                    lend.renew()
                    _roll_back(conn)
                    raise
        except psycopg.errors.DiskFull as exc:
            raise StoreFull(f"store is full: {self.where} has no space left ({_first_line(exc)}); "
                            "free some on its disk, nothing was written") from exc
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc

    def tail(self, after: int, history: bytes, deliver, reset, every: float):
        from .pg_tail import POLL_INTERVAL, LogTail

        return LogTail(self, after, history, deliver, reset, poll_interval=min(POLL_INTERVAL, every))

    def grow(self) -> bool:
        return False  # the database's disk is the operator's to grow

    def sizes(self) -> tuple[int, int]:
        with self.read() as txn:
            used = txn._one("SELECT pg_database_size(current_database())")[0]
        return used, used

    def limit(self) -> int:
        return 0

    def registrations_refused(self, unrevoked: int, new: int) -> str:
        return ""  # no known limit: the database grows with its disk

    def close(self) -> None:
        for pool in (self._readers, self._writers):
            pool.close()
        self.deadlines.close()
