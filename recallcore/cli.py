"""`recallcore serve`: the command line, the only reader of the environment.

Every option can also come from an environment variable RECALL_<OPTION>
(e.g. RECALL_DATA_DIR, RECALL_LISTEN); the command line wins.
"""

import argparse
import asyncio
import logging
import os
import sys

from . import __version__
from .core.errors import RecallError, StoreError
from .security.credentials import hash_secret
from .server import serve
from .settings import Settings

_OPTIONS = (
    # flag, Settings field, type, help
    ("--data-dir", "data_dir", str, "data directory (LMDB environment)"),
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
    ("--log-keep", "log_keep", int, "changes the log keeps at least, for resuming Watch streams"),
    ("--log-keep-seconds", "log_keep_seconds", int, "the log also keeps every change younger than this"),
    ("--clock-skew", "clock_skew", int, "seconds other clocks may differ: revocations outlive expiry by this"),
    ("--rotation-grace", "rotation_grace", int, "seconds a retried rotation gets the same successor"),
    ("--follow", "follow", str, "HOST:PORT of a primary: run as a read-only follower (no data dir)"),
    ("--max-staleness", "max_staleness", float,
     "follower: seconds without a vouch from the primary before it answers UNAVAILABLE"),
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
)
# Repeatable options: flag, Settings field, help. Their environment variable
# holds the values separated by whitespace.
_LISTS = (
    ("--jwt-issuer", "jwt_issuers",
     "ISSUER=JWKS: accept JWTs of ISSUER, verified with JWKS (a file or an https:// URL); repeatable"),
    ("--jwt-algorithm", "jwt_algorithms", "a JWT signature algorithm to accept; repeatable"),
    ("--check-header", "check_headers",
     "FIELD=Header: what /v1/check hands an allowed request's upstream (sub, client_id, scope, iss, jti, exp, "
     "serial); repeatable"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recallcore", description="OAuth 2.0 token revocation server")
    parser.add_argument("--version", action="version", version=f"recallcore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the server")
    for flag, field, kind, text in _OPTIONS:
        env = "RECALL_" + field.upper()
        default = getattr(Settings, field)
        serve_cmd.add_argument(flag, dest=field, type=kind, default=os.environ.get(env, default),
                               help=f"{text} (env {env}; default {default})")
    for flag, field, text in _LISTS:
        env = "RECALL_" + field.upper()
        default = getattr(Settings, field)
        serve_cmd.add_argument(flag, dest=field, action="append", default=None,
                               help=f"{text} (env {env}, space-separated; default {' '.join(default) or 'none'})")
    serve_cmd.add_argument("--insecure", action="store_true", default=os.environ.get("RECALL_INSECURE") == "1",
                           help="serve a non-loopback address without TLS or policy anyway (env RECALL_INSECURE=1)")
    serve_cmd.add_argument("--log-level", default=os.environ.get("RECALL_LOG_LEVEL", "INFO"))
    commands.add_parser("hash-token", help="read a bearer secret on stdin; print its credentials-file value")
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    if ns.command == "hash-token":
        secret = sys.stdin.readline().strip()
        if len(secret) < 16:
            print("recallcore: give a secret of at least 16 characters on stdin", file=sys.stderr)
            return 2
        print(hash_secret(secret))
        return 0
    logging.basicConfig(level=ns.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        lists = {}
        for _, field, _ in _LISTS:
            given = getattr(ns, field)
            env = os.environ.get("RECALL_" + field.upper())
            if given is not None or env is not None:
                lists[field] = tuple(given if given is not None else env.split())
        settings = Settings(insecure=ns.insecure, **lists,
                            **{field: kind(getattr(ns, field)) for _, field, kind, _ in _OPTIONS})
    except ValueError as exc:
        print(f"recallcore: {exc}", file=sys.stderr)
        return 2
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
