"""`recallcore serve` and `check-config`: the command line, the only reader of files and the environment.

Every option of `serve` comes from, in increasing precedence: its default,
the config file (--config FILE or RECALL_CONFIG; see config.py), the
environment variable RECALL_<OPTION> (e.g. RECALL_DATA_DIR, RECALL_LISTEN),
and the command-line flag.
"""

import argparse
import asyncio
import logging
import os
import pathlib
import sys

from . import __version__, config
from .core.errors import RecallError, StoreError
from .security.credentials import hash_secret
from .server import serve
from .settings import Settings

MIGRATE_STORE_TIMEOUT = 600.0  # seconds `migrate` waits for one answer of the database

_OPTIONS = (
    # flag, Settings field, type, help
    ("--data-dir", "data_dir", str, "data directory (LMDB environment)"),
    ("--store", "store", str,
     "PostgreSQL conninfo of a cluster database (postgresql://... or 'host=a,b ... "
     "target_session_attrs=read-write'); instead of --data-dir"),
    ("--store-timeout", "store_timeout", float,
     "seconds to wait for one answer of PostgreSQL before cutting the connection (the write fails UNAVAILABLE)"),
    ("--listen", "listen", str, "HOST:PORT to serve on; port 0 picks a free port"),
    ("--issuer", "issuer", str, "issuer recorded for registrations that give none"),
    ("--token-ttl", "token_ttl", int, "lifetime (s) of registrations that give no expires_at"),
    ("--max-token-lifetime", "max_token_lifetime", int,
     "longest token lifetime (s); foreign revocations without expiry last this long"),
    ("--audit-retention", "audit_retention", int, "seconds token records are kept after expiry"),
    ("--sweep-interval", "sweep_interval", float, "seconds between expiry sweeps"),
    ("--max-batch", "max_batch", int, "most tokens, serials or references per call"),
    ("--map-size", "map_size", int, "initial LMDB map size in bytes"),
    ("--max-map-size", "max_map_size", int, "largest LMDB map size in bytes; writes fail past it"),
    ("--heartbeat-interval", "heartbeat_interval", float, "seconds of Watch silence before a heartbeat"),
    ("--watch-spacing", "watch_spacing", float,
     "past a burst, seconds per live delta event of a Watch stream (changes meanwhile go out merged)"),
    ("--log-keep", "log_keep", int, "changes the log keeps at least, for resuming Watch streams"),
    ("--log-keep-seconds", "log_keep_seconds", int, "the log also keeps every change younger than this"),
    ("--clock-skew", "clock_skew", int, "seconds other clocks may differ: revocations outlive expiry by this"),
    ("--rotation-grace", "rotation_grace", int, "seconds a retried rotation gets the same successor"),
    ("--follow", "follow", str, "HOST:PORT of a primary: run as a read-only follower (no data dir)"),
    ("--max-staleness", "max_staleness", float,
     "follower: seconds without a vouch from the primary before it answers UNAVAILABLE; "
     "cluster node: seconds without reading the database's change log"),
    ("--max-wait", "max_wait", float, "longest a read waits for its min_seq, whatever its deadline"),
    ("--tls-cert", "tls_cert", str, "PEM certificate chain of the server (TLS; reloaded when it changes)"),
    ("--tls-key", "tls_key", str, "PEM private key of the server"),
    ("--client-ca", "client_ca", str, "PEM CA bundle: callers must present a certificate it signed (mutual TLS)"),
    ("--policy", "policy", str, "TOML file granting roles to caller identities; reloaded when it changes"),
    ("--credentials", "credentials", str, "TOML file of bearer-credential names and secret hashes"),
    ("--max-streams-per-identity", "max_streams_per_identity", int,
     "concurrent Watch and AuditLog streams of one caller (0: no cap)"),
    ("--primary-cacert", "primary_cacert", str, "follower: CA bundle of its primary's certificate"),
    ("--primary-cert", "primary_cert", str, "follower: its own client certificate for the primary"),
    ("--primary-key", "primary_key", str, "follower: the key of that certificate"),
    ("--primary-token-file", "primary_token_file", str, "follower: file holding its bearer credential"),
    ("--freshness-skew", "freshness_skew", float,
     "follower: seconds the primary's clock may differ from this one when judging its vouches"),
    ("--http-listen", "http_listen", str,
     "HOST:PORT of the HTTP edge (forward-auth, RFC 7662, RFC 7009); off if empty"),
    ("--jwt-audience", "jwt_audience", str, "HTTP edge: a JWT must name this audience in aud"),
    ("--jwks-cacert", "jwks_cacert", str, "HTTP edge: CA bundle for fetching https:// JWKS (default: the system's)"),
    ("--oauth-clients", "oauth_clients", str, "HTTP edge: TOML file of OAuth client ids and secret hashes"),
    ("--status-list-uri", "status_list_uri", str,
     "base URI of the Token Status Lists (list n is URI/n); Register then returns each token's (idx, uri)"),
    ("--status-list-key", "status_list_key", str, "JWK file of the private key that signs the status lists"),
    ("--status-list-size", "status_list_size", int, "statuses in one status list"),
    ("--status-list-ttl", "status_list_ttl", int, "seconds a verifier may keep a status list (its ttl)"),
    ("--status-list-interval", "status_list_interval", float, "seconds between rebuilds of one status list at most"),
    ("--metrics-listen", "metrics_listen", str,
     "HOST:PORT of the Prometheus metrics listener (GET /metrics); off if empty; keep it on loopback"),
    ("--presented-interval", "presented_interval", float,
     "seconds between records of recalled tokens presented again"),
    ("--presented-webhook", "presented_webhook", str,
     "URL each recalled token presented again is POSTed to as JSON"),
    ("--presented-webhook-token-file", "presented_webhook_token_file", str,
     "file holding a bearer secret for the webhook"),
)
# Repeatable options: flag, Settings field, help. Their environment variable
# holds the values separated by commas; the config file, a list.
_LISTS = (
    ("--jwt-issuer", "jwt_issuers",
     "ISSUER=JWKS: accept JWTs of ISSUER, verified with JWKS (a file or an https:// URL); repeatable"),
    ("--jwt-algorithm", "jwt_algorithms", "a JWT signature algorithm to accept; repeatable"),
    ("--check-header", "check_headers",
     "FIELD=Header: what /v1/check hands an allowed request's upstream (sub, client_id, scope, iss, jti, exp, "
     "serial); repeatable"),
)


_PRECEDENCE = """Every option is taken from, in increasing precedence: its default; the
config file (--config FILE, or $RECALL_CONFIG), a TOML file whose keys are the
options' names with underscores (listen = "0.0.0.0:50051", tls_cert = "...", or
[tls] cert = "..."); the environment variable RECALL_<NAME> (RECALL_LISTEN); and
the flag. `recallcore check-config FILE` says what is wrong with a file.
Secrets never go in flags or the file: they name files that hold them."""


def _log_level(text: str) -> str:
    try:
        return config.log_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recallcore", description="OAuth 2.0 token revocation server")
    parser.add_argument("--version", action="version", version=f"recallcore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the server", description=_PRECEDENCE,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    # SUPPRESS: a flag not given leaves the option to the lower layers.
    serve_cmd.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                           help=f"TOML file of options (env {config.CONFIG_ENV})")
    for flag, field, kind, text in _OPTIONS:
        default = getattr(Settings, field)
        serve_cmd.add_argument(flag, dest=field, type=kind, default=argparse.SUPPRESS,
                               help=f"{text} (env {config.env_var(field)}; default {default})")
    for flag, field, text in _LISTS:
        default = getattr(Settings, field)
        serve_cmd.add_argument(flag, dest=field, action="append", default=argparse.SUPPRESS,
                               help=f"{text} (env {config.env_var(field)}, comma-separated; "
                                    f"default {','.join(default) or 'none'})")
    serve_cmd.add_argument("--insecure", action="store_true", default=argparse.SUPPRESS,
                           help="serve a non-loopback address without TLS or policy anyway (env RECALL_INSECURE=1)")
    serve_cmd.add_argument("--log-level", type=_log_level, default=argparse.SUPPRESS,
                           help=f"one of {', '.join(config.LOG_LEVELS)} (env RECALL_LOG_LEVEL; default INFO)")
    check = commands.add_parser("check-config", help="say what is wrong with a config file, or that it is fine")
    check.add_argument("file", metavar="FILE")
    commands.add_parser("hash-token", help="read a bearer secret on stdin; print its credentials-file value")
    move = commands.add_parser("migrate", help="copy an LMDB store (server stopped) into an empty PostgreSQL "
                               "cluster database")
    move.add_argument("--from", dest="source", metavar="DIR", required=True, help="the LMDB data directory")
    move.add_argument("--to", dest="target", metavar="CONNINFO", required=True, help="the database's conninfo")
    schema = commands.add_parser("migrate-schema", help="create or upgrade the recallcore schema in a PostgreSQL "
                                 "database")
    schema.add_argument("--store", metavar="CONNINFO", default=os.environ.get(config.env_var("store")) or None,
                        help=f"the database's conninfo (env {config.env_var('store')})")
    return parser


def _layers(ns: argparse.Namespace) -> config.Layers:
    """The file, the environment and the flags `ns` holds, in that order."""
    layers = config.Layers()
    path = getattr(ns, "config", None) or os.environ.get(config.CONFIG_ENV)
    if path:
        layers.read_file(path)
    layers.read_environment(os.environ)
    flags = [(flag, field) for flag, field, _, _ in _OPTIONS] + [("--insecure", "insecure"), ("--log-level", "log_level")]
    for flag, field in flags:
        if hasattr(ns, field):
            layers.add(field, getattr(ns, field), flag)
    for flag, field, _ in _LISTS:
        if hasattr(ns, field):
            layers.add(field, tuple(getattr(ns, field)), flag)
    return layers


def _problems(problems: list[str]) -> int:
    for problem in problems:
        print(f"recallcore: {problem}", file=sys.stderr)
    return 2


def _check_config(path: str) -> int:
    layers = config.Layers()
    layers.read_file(path)
    try:
        settings = layers.settings()
    except config.ConfigError as exc:
        return _problems(exc.problems)
    problems = config.check_files(settings)
    if problems:
        return _problems([f"{path}: {problem}" for problem in problems])
    print(f"{path}: ok")
    return 0


def _migrate_schema(conninfo: str | None) -> int:
    if not conninfo:
        return _problems(["migrate-schema: give --store CONNINFO (or RECALL_STORE)"])
    import psycopg

    from .storage import pg_schema
    from .storage.postgresql import describe

    where = describe(conninfo)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            before, after = pg_schema.migrate(conn, where)
    except psycopg.Error as exc:
        print(f"recallcore: cannot migrate {where}: {str(exc).strip()}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"recallcore: {exc}", file=sys.stderr)
        return 1
    if before == after:
        print(f"{where}: schema at version {after}, nothing to do")
    else:
        print(f"{where}: schema {'created at' if before == 0 else f'upgraded from {before} to'} version {after}")
    return 0


def _migrate(source: str, target: str) -> int:
    if _migrate_schema(target):
        return 1
    from .settings import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE
    from .storage.lmdb import LmdbStore
    from .storage.pg_migrate import copy_store
    from .storage.postgresql import PostgresStore

    try:
        if not (pathlib.Path(source) / "data.mdb").exists():
            raise StoreError(f"{source} holds no recallcore store")
        lmdb_store = LmdbStore(pathlib.Path(source), map_size=DEFAULT_MAP_SIZE, max_map_size=DEFAULT_MAX_MAP_SIZE)
        try:
            # An operator's command, one transaction that may be large: its waits (the COMMIT of
            # millions of rows) may be long, and whoever runs it sees a hang.
            pg_store = PostgresStore(target, timeout=MIGRATE_STORE_TIMEOUT)
            try:
                counts = copy_store(lmdb_store, pg_store)
            finally:
                pg_store.close()
        finally:
            lmdb_store.close()
    except StoreError as exc:
        print(f"recallcore: {exc}", file=sys.stderr)
        return 1
    print(f"{source} copied into {pg_store.where}: store {lmdb_store.store_id}, "
          + ", ".join(f"{count} {table}" for table, count in sorted(counts.items())))
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    if ns.command == "hash-token":
        secret = sys.stdin.readline().strip()
        if len(secret) < 16:
            print("recallcore: give a secret of at least 16 characters on stdin", file=sys.stderr)
            return 2
        print(hash_secret(secret))
        return 0
    if ns.command == "check-config":
        return _check_config(ns.file)
    if ns.command == "migrate-schema":
        return _migrate_schema(ns.store)
    if ns.command == "migrate":
        return _migrate(ns.source, ns.target)
    layers = _layers(ns)
    try:
        settings = layers.settings()
    except config.ConfigError as exc:
        return _problems(exc.problems)
    problems = config.check_files(settings)  # as check-config would: before the store is opened
    if problems:
        return _problems([problem + layers.source_of(problem) for problem in problems])
    logging.basicConfig(level=layers.values.get("log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(settings))
    except StoreError as exc:
        print(f"recallcore: {exc}", file=sys.stderr)
        return 1
    except RecallError as exc:  # a policy or credentials file that does not load
        print(f"recallcore: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"recallcore: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
