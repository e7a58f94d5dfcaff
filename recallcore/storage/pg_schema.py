"""The PostgreSQL engine's schema: its versions, and the migration between them.

Theory of operation. Every table lives in the schema `recallcore` of the
database the conninfo names. `recallcore.schema_version` holds one row: the
version of the tables and the store identity (one per cluster: every node on
the database serves the same history). `migrate(conn)` (the command
`recallcore migrate-schema`) creates the tables on an empty database, or
brings older ones up to `VERSION`, one step at a time inside one
transaction; a server only ever reads `version(conn)` and refuses a database
without the schema or with a version it does not know.

Tables (version 2):
  head          one row (id 1): seq and history of the last change, the highest serial.
                Every write transaction locks it first (SELECT ... FOR UPDATE): writers of
                all nodes take turns, so commit order is sequence order and the log is dense.
  tokens        serial -> TokenSpec (protobuf, as in LMDB)
  jtis          (issuer, jti) -> serial
  bitmaps       (kind, name, chunk) -> portable roaring bitmap; kind "revoked", "rotated"
                (name "") or an index kind (subject, client_id, family, issuer, custom_jti)
  times         (kind "exp" | "iat", block) -> 4096 little-endian uint32
  issuance      first serial of a registration -> seq
  revocations   serial -> seq that revoked it
  rotations     serial -> successor, time, seq, request fingerprint
  foreign_keys  key (unsigned 64-bit, stored minus 2**63 to keep its order) -> expires_at, seq
  rules         (scope, value) -> before, seq
  log           seq -> time, recall.v1.Delta
  audit         seq -> time, JSON record, the subjects and clients it lists and whether it
                names more
  signals       name_hash(issuer, jti) of each Security Event Token applied (16 bytes, as
                LMDB keys it, so `recallcore migrate` copies it) -> the seq of its change, its iat
  cursors       SSF receiver name -> the seq up to which it was sent the events of changes

Version 1 keyed signals by (issuer, jti) as text; version 2 keys them by the
hash, computed here in Python (PostgreSQL has no BLAKE2b).
"""

import uuid

from ..core.digest import name_hash
from ..core.errors import StoreError

VERSION = 2
SCHEMA = "recallcore"
CHANNEL = "recallcore_log"  # NOTIFY channel: payload is the seq just committed

_V1 = """
CREATE SCHEMA IF NOT EXISTS recallcore;
CREATE TABLE recallcore.schema_version (
    version integer NOT NULL, store_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE recallcore.head (
    id smallint PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL, history bytea NOT NULL, serial bigint NOT NULL);
INSERT INTO recallcore.head VALUES (1, 0, '', 0);
CREATE TABLE recallcore.tokens (serial bigint PRIMARY KEY, spec bytea NOT NULL);
CREATE TABLE recallcore.jtis (issuer text NOT NULL, jti text NOT NULL, serial bigint NOT NULL,
    PRIMARY KEY (issuer, jti));
CREATE TABLE recallcore.bitmaps (kind text NOT NULL, name text NOT NULL, chunk bigint NOT NULL,
    bits bytea NOT NULL, PRIMARY KEY (kind, name, chunk));
CREATE TABLE recallcore.times (kind text NOT NULL, block bigint NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (kind, block));
CREATE TABLE recallcore.issuance (first_serial bigint PRIMARY KEY, seq bigint NOT NULL);
CREATE TABLE recallcore.revocations (serial bigint PRIMARY KEY, seq bigint NOT NULL);
CREATE TABLE recallcore.rotations (serial bigint PRIMARY KEY, successor bigint NOT NULL, at bigint NOT NULL,
    seq bigint NOT NULL, fingerprint bytea NOT NULL);
CREATE TABLE recallcore.foreign_keys (key bigint PRIMARY KEY, expires_at bigint NOT NULL, seq bigint NOT NULL);
CREATE INDEX foreign_keys_due ON recallcore.foreign_keys (expires_at, key);
CREATE TABLE recallcore.rules (scope smallint NOT NULL, value text NOT NULL, before bigint NOT NULL,
    seq bigint NOT NULL, PRIMARY KEY (scope, value));
CREATE TABLE recallcore.log (seq bigint PRIMARY KEY, time bigint NOT NULL, delta bytea NOT NULL);
CREATE TABLE recallcore.audit (seq bigint PRIMARY KEY, time bigint NOT NULL, record text NOT NULL,
    subjects text[] NOT NULL, clients text[] NOT NULL,
    subjects_more boolean NOT NULL, clients_more boolean NOT NULL);
CREATE INDEX audit_subjects ON recallcore.audit USING gin (subjects);
CREATE INDEX audit_clients ON recallcore.audit USING gin (clients);
CREATE TABLE recallcore.signals (issuer text NOT NULL, jti text NOT NULL, seq bigint NOT NULL,
    issued_at bigint NOT NULL, PRIMARY KEY (issuer, jti));
CREATE INDEX signals_issued ON recallcore.signals (issued_at);
CREATE TABLE recallcore.cursors (name text PRIMARY KEY, seq bigint NOT NULL);
"""



def _v2(conn) -> None:
    """signals keyed by name_hash(issuer, jti) instead of the names."""
    conn.execute("ALTER TABLE recallcore.signals ADD COLUMN key bytea")
    names = conn.execute("SELECT issuer, jti FROM recallcore.signals").fetchall()
    with conn.cursor() as cur:
        cur.executemany("UPDATE recallcore.signals SET key = %s WHERE issuer = %s AND jti = %s",
                        [(name_hash(issuer, jti), issuer, jti) for issuer, jti in names])
    conn.execute("ALTER TABLE recallcore.signals DROP CONSTRAINT signals_pkey, DROP COLUMN issuer, "
                 "DROP COLUMN jti, ALTER COLUMN key SET NOT NULL, ADD PRIMARY KEY (key)")


# version reached -> the SQL (or the function of a connection) that reaches it from the one
# before (1: from nothing).
STEPS = {1: _V1, 2: _v2}


def version(conn) -> int:
    """The schema version of the database `conn` is connected to (0: no recallcore schema)."""
    row = conn.execute(
        "SELECT to_regclass('recallcore.schema_version') IS NOT NULL"
    ).fetchone()
    if not row[0]:
        return 0
    found = conn.execute("SELECT version FROM recallcore.schema_version").fetchone()
    return found[0] if found else 0


def store_id(conn) -> str:
    """The store identity the schema was created with."""
    return conn.execute("SELECT store_id FROM recallcore.schema_version").fetchone()[0]


def migrate(conn, where: str) -> tuple[int, int]:
    """Create or upgrade the schema on `conn` (one transaction); returns (version before, after).

    Raises StoreError when the database holds a newer schema than this
    recallcore knows.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('recallcore migrate-schema'))")
        before = version(conn)
        if before > VERSION:
            raise StoreError(f"{where} holds recallcore schema version {before}; this recallcore knows "
                             f"up to {VERSION}: upgrade recallcore")
        for step in range(before + 1, VERSION + 1):
            if callable(STEPS[step]):
                STEPS[step](conn)
            else:
                conn.execute(STEPS[step])
            if step == 1:
                conn.execute("INSERT INTO recallcore.schema_version (version, store_id) VALUES (1, %s)",
                             (uuid.uuid4().hex,))
            else:
                conn.execute("UPDATE recallcore.schema_version SET version = %s", (step,))
    return before, VERSION


def require_current(conn, where: str) -> None:
    """Raise StoreError unless the database holds exactly the schema this server reads."""
    found = version(conn)
    if found == VERSION:
        return
    if found == 0:
        raise StoreError(f"{where} has no recallcore schema: run `recallcore migrate-schema --store ...` "
                         "against it first")
    if found < VERSION:
        raise StoreError(f"{where} holds recallcore schema version {found}; this server reads version "
                         f"{VERSION}: run `recallcore migrate-schema --store ...` to upgrade it")
    raise StoreError(f"{where} holds recallcore schema version {found}, newer than this server knows "
                     f"({VERSION}): upgrade recallcore")
