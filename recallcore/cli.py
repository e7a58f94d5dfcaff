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
from .core.errors import StoreError
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
    ("--freshness-skew", "freshness_skew", float,
     "follower: seconds the primary's clock may differ from this one when judging its vouches"),
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
    serve_cmd.add_argument("--log-level", default=os.environ.get("RECALL_LOG_LEVEL", "INFO"))
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(**{field: kind(getattr(ns, field)) for _, field, kind, _ in _OPTIONS})
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
    except OSError as exc:
        print(f"recallcore: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
