"""recallctl's parser, its core commands (register, revoke, check, introspect, stats,
watch) and `main`; the lifecycle commands are in lifecycle.py, shared helpers in common.py."""


import argparse
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .._proto.recall.v1 import recall_pb2 as pb
from .._proto.recall.v1 import recall_pb2_grpc
from ..client import RecallClient
from ..codec import bitmap_from
from ..errors import RecallError, rpc_errors
from ..transport import CACERT_ENV, CERT_ENV, KEY_ENV, TOKEN_ENV, Transport
from ..types import CheckResult, TokenState, TokenType
from . import lifecycle as cli_lifecycle
from . import streams
from .common import (
    DEFAULT_TARGET,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_NOT_ACTIVE,
    EXIT_USAGE,
    TARGET_ENV,
    TIME_FORMATS,
    add_jti_options,
    default_actor,
    emit,
    iso,
    nonnegative_int,
    positive_int,
    positive_seconds,
    target_address,
    target_type,
    unix_time,
)

_EPILOG = EXIT_CODES + """
The server is --target, else $RECALL_TARGET, else 127.0.0.1:50051 (HOST[:PORT],
port 50051 unless given). Times (--before, --since, --until, --iat, --exp) are
""" + TIME_FORMATS + "."

_TIME_KEYS = ("exp", "iat", "revoked_at")


def build_parser() -> argparse.ArgumentParser:
    """Return the recallctl argument parser."""
    # SUPPRESS defaults: an option given after the command is not overwritten
    # by the main parser's default, nor the reverse; `main` fills them in.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=argparse.SUPPRESS, metavar="HOST[:PORT]", type=target_type,
                        help=f"server address (default: ${TARGET_ENV} or {DEFAULT_TARGET})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON object per result")
    for flag, env, text in (
        ("--cacert", CACERT_ENV, "PEM CA bundle of the server's certificate: use TLS"),
        ("--cert", CERT_ENV, "PEM client certificate (mutual TLS)"),
        ("--key", KEY_ENV, "PEM key of the client certificate"),
        ("--token-file", None, f"file holding a bearer credential (else ${TOKEN_ENV})"),
    ):
        common.add_argument(flag, default=argparse.SUPPRESS, metavar="FILE",
                            help=text + (f" (default: ${env})" if env else ""))

    parser = argparse.ArgumentParser(
        prog="recallctl", description="Register, revoke and check OAuth 2.0 tokens.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=summary, epilog=_EPILOG, parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    reg = command("register", "register an issued token")
    reg.add_argument("--subject", required=True)
    reg.add_argument("--client", required=True, help="client_id")
    add_jti_options(reg)
    reg.add_argument("--scope", action="append", default=[],
                     help="space-separated scopes (repeatable)")
    reg.add_argument("--type", choices=["access", "refresh"], default="access")
    reg.add_argument("--ttl", type=positive_seconds, metavar="SECONDS",
                     help="lifetime from now (default: the server's)")
    reg.add_argument("--family", default="")
    reg.add_argument("--origin", default="")
    reg.add_argument("--actor", default="")

    rev = command("revoke", "revoke tokens (the selectors combine as a union)")
    rev.add_argument("--serial", type=positive_int, action="append", default=[],
                     help="token serial (repeatable)")
    add_jti_options(rev)
    rev.add_argument("--exp", type=unix_time, default=0, metavar="TIME",
                     help="expiry of a --jti token this store never registered")
    rev.add_argument("--subject", default="")
    rev.add_argument("--client", default="", help="client_id")
    rev.add_argument("--family", default="")
    rev.add_argument("--reason", default="")
    rev.add_argument("--actor", default=None, help="who revokes (default: your user name)")

    for name, summary in (("check", "print the state of tokens"),
                       ("introspect", "print RFC 7662 introspection of tokens")):
        sub = command(name, summary)
        sub.add_argument("serials", nargs="*", type=positive_int, metavar="SERIAL")
        add_jti_options(sub)
        if name == "check":
            sub.add_argument("--min-seq", type=nonnegative_int, default=0, metavar="N",
                             help="wait until the server has applied seq N")
            # Claims of a --jti token never registered here, so cut-off rules apply.
            sub.add_argument("--sub", default="", help="with --jti: the token's subject")
            sub.add_argument("--client", default="", help="with --jti: the token's client_id")
            sub.add_argument("--iat", type=unix_time, default=0, metavar="TIME",
                             help="with --jti: when the token was issued")

    command("stats", "print counts and identity of the store")

    watch = command("watch", "print the Watch stream: one line per event, until Ctrl-C; resumes "
                             "where it was when the server restarts")
    watch.add_argument("--after-seq", type=nonnegative_int, default=0, metavar="N",
                       help="resume after seq N (0: start with a snapshot)")
    watch.add_argument("--store-id", default="", metavar="ID",
                       help="the store seq N belongs to (another store: reset, then snapshot)")
    watch.add_argument("--count", type=positive_int, default=None, metavar="N",
                       help="stop after N events")
    streams.add_reconnect_option(watch)
    cli_lifecycle.add_commands(command)
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 (via parser.error) for argument combinations argparse cannot check."""
    if args.command in ("revoke", "check", "introspect") and args.issuer and not args.jti:
        parser.error(f"{args.command}: --issuer needs --jti")
    if args.command == "revoke":
        if args.exp and not args.jti:
            parser.error("revoke: --exp needs --jti")
        if not (args.serial or args.jti or args.subject or args.client or args.family):
            parser.error("revoke: give --serial, --jti, --subject, --client or --family")
    elif args.command in ("check", "introspect"):
        if bool(args.serials) == bool(args.jti):
            parser.error(f"{args.command}: give SERIAL ... or --jti (not both)")
        if args.command == "check" and (args.sub or args.client or args.iat) and not args.jti:
            parser.error("check: --sub, --client and --iat need --jti")
    cli_lifecycle.validate(parser, args)


def _known(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` without the fields the answer left blank (empty, or a time of 0); `active` stays."""
    return {key: value for key, value in obj.items() if key == "active" or value not in ("", 0)}


def _aligned(obj: dict[str, Any]) -> str:
    width = max(len(key) for key in obj) + 1
    lines = []
    for key, value in obj.items():
        if key in _TIME_KEYS and isinstance(value, int) and value:
            value = f"{value} ({iso(value)})"
        lines.append(f"{key + ':':<{width}} {value}")
    return "\n".join(lines)


def _run_register(client: RecallClient, args: argparse.Namespace) -> None:
    token = client.register_one(
        args.subject, args.client, issuer=args.issuer, jti=args.jti,
        scopes=[scope for text in args.scope for scope in text.split()],
        type=TokenType.REFRESH if args.type == "refresh" else TokenType.ACCESS,
        ttl=args.ttl, origin=args.origin, family=args.family, actor=args.actor,
    )
    human = f"registered serial {token.serial} jti {token.jti}" + (" (existing)" if token.existing else "")
    obj = dataclasses.asdict(token)
    if token.status_uri:  # the server publishes status lists
        human += f" status {token.status_uri} idx {token.status_idx}"
    else:
        del obj["status_uri"], obj["status_idx"]
    emit(args, obj, human)


def _run_revoke(client: RecallClient, args: argparse.Namespace) -> None:
    result = client.revoke(
        serials=args.serial, tokens=[(args.issuer, args.jti, args.exp)] if args.jti else (),
        subject=args.subject, client_id=args.client, family=args.family, reason=args.reason,
        actor=default_actor() if args.actor is None else args.actor,
    )
    noun = "token" if result.count == 1 else "tokens"
    emit(args, {"seq": result.seq, "count": result.count},
         f"revoked {result.count} {noun} (seq {result.seq})")


def _check_line(result: CheckResult, name: str) -> tuple[dict[str, Any], str]:
    obj: dict[str, Any] = {"serial": result.serial, "state": result.state.name}
    human = f"{name} {result.state.name}"
    if result.state is TokenState.REVOKED:
        obj.update(revoked_at=result.revoked_at, reason=result.reason)
        detail = f"at {iso(result.revoked_at)}" if result.revoked_at else ""
        if result.reason:
            detail = f"reason: {result.reason}" + (f", {detail}" if detail else "")
        human += f" ({detail or 'why and when: this node does not know; ask the primary'})"
    obj["seq"] = result.seq
    return obj, human


def _run_check(client: RecallClient, args: argparse.Namespace) -> int:
    """Print each token's state; EXIT_NOT_ACTIVE unless every one is ACTIVE."""
    if args.jti:
        result = client.check(issuer=args.issuer, jti=args.jti, min_seq=args.min_seq,
                              sub=args.sub, client_id=args.client, issued_at=args.iat)
        emit(args, *_check_line(result, str(result.serial or args.jti)))
        results = [result]
    else:
        results = []
        for serial in args.serials:
            results.append(client.check(serial, min_seq=args.min_seq))
            emit(args, *_check_line(results[-1], str(serial)))
    return 0 if all(r.state is TokenState.ACTIVE for r in results) else EXIT_NOT_ACTIVE


def _run_introspect(client: RecallClient, args: argparse.Namespace) -> int:
    """Print each token's introspection; EXIT_NOT_ACTIVE unless every one is active."""
    if args.jti:
        found = [client.introspect(issuer=args.issuer, jti=args.jti)]
    else:
        found = [client.introspect(serial) for serial in args.serials]
    for index, obj in enumerate(map(_known, found)):
        if index and not args.json:
            print()
        human = _aligned(obj)
        if obj["active"] and "iat" not in obj:  # an active token has one, where its record is kept
            human += "\n(this node keeps only the state, serial and expiry: ask the primary for the rest)"
        emit(args, obj, human)
    return 0 if all(obj["active"] for obj in found) else EXIT_NOT_ACTIVE


def _run_stats(client: RecallClient, args: argparse.Namespace) -> None:
    obj = dataclasses.asdict(client.stats())
    emit(args, obj, _aligned(obj))


def _watch_line(event: pb.WatchEvent) -> tuple[dict[str, Any], str]:
    """(JSON object, human line) describing one WatchEvent."""
    kind = event.WhichOneof("event")
    obj: dict[str, Any] = {"type": kind}
    if kind == "snapshot":
        snap = event.snapshot
        obj.update(seq=snap.seq, index=snap.index, count=snap.count, cardinality=snap.cardinality,
                   foreign_cardinality=snap.foreign_cardinality,
                   registered_through=snap.registered_through, digest=snap.digest.hex())
        human = (f"snapshot seq {snap.seq} chunk {snap.index + 1}/{snap.count}: "
                 f"{snap.cardinality} revoked, {snap.foreign_cardinality} foreign")
    elif kind == "delta":
        delta = event.delta
        added, removed = len(bitmap_from(delta.added)), len(bitmap_from(delta.removed))
        obj.update(seq=delta.seq, prev_seq=delta.prev_seq, added=added, removed=removed,
                   foreign_added=len(delta.foreign_added),
                   foreign_removed=len(delta.foreign_removed),
                   registered_through=delta.registered_through, time=delta.time)
        human = (f"delta {delta.prev_seq}->{delta.seq}: +{added} -{removed} revoked, "
                 f"+{len(delta.foreign_added)} -{len(delta.foreign_removed)} foreign")
    elif kind == "heartbeat":
        beat = event.heartbeat
        obj.update(seq=beat.seq, cardinality=beat.cardinality,
                   foreign_cardinality=beat.foreign_cardinality, digest=beat.digest.hex(),
                   time=beat.time, interval_ms=beat.interval_ms)
        human = (f"heartbeat seq {beat.seq}: {beat.cardinality} revoked, "
                 f"{beat.foreign_cardinality} foreign")
    else:
        reset = event.reset
        obj.update(seq=reset.current_seq, reason=reset.reason, oldest_seq=reset.oldest_seq,
                   current_seq=reset.current_seq)
        human = f"reset: {reset.reason} (current seq {reset.current_seq})"
    obj.update(store_id=event.store_id, head_seq=event.head_seq)
    return obj, human


class _WatchPosition:
    """Where a watch resumes: the store, seq and history of the last complete state printed."""

    def __init__(self, store_id: str, after_seq: int) -> None:
        self.store_id, self.after_seq, self.history = store_id, after_seq, b""

    def request(self) -> pb.WatchRequest:
        return pb.WatchRequest(store_id=self.store_id, after_seq=self.after_seq, history=self.history)

    def apply(self, event: pb.WatchEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "snapshot" and event.snapshot.index + 1 == event.snapshot.count:  # complete
            self.store_id, self.after_seq, self.history = event.store_id, event.snapshot.seq, event.snapshot.history
        elif kind == "delta":
            self.store_id, self.after_seq, self.history = event.store_id, event.delta.seq, event.delta.history
        elif kind == "reset":  # a snapshot follows; until it is whole, start over
            self.store_id, self.after_seq, self.history = "", 0, b""

    def __str__(self) -> str:
        return f"after seq {self.after_seq}" if self.after_seq else "with a snapshot"


def _run_watch(client: RecallClient, args: argparse.Namespace) -> int:
    position = _WatchPosition(args.store_id, args.after_seq)
    stub = recall_pb2_grpc.RecallStub(client.channel)
    seen = 0

    def events() -> Iterator[pb.WatchEvent]:
        call = stub.Watch(position.request())
        try:
            with rpc_errors():
                yield from call
        finally:
            call.cancel()

    def handle(event: pb.WatchEvent) -> bool:
        nonlocal seen
        position.apply(event)
        obj, human = _watch_line(event)
        print(json.dumps(obj) if args.json else human, flush=True)
        seen += 1
        return seen != args.count

    return streams.follow("watch", client.channel, args.target, events, handle, position.__str__,
                          args.reconnect_for)


_COMMANDS: dict[str, Callable[[RecallClient, argparse.Namespace], int | None]] = {
    "register": _run_register,
    "revoke": _run_revoke,
    "check": _run_check,
    "introspect": _run_introspect,
    "stats": _run_stats,
    "watch": _run_watch,
}


def _transport(args: argparse.Namespace) -> Transport:
    """TLS material and bearer credential: flags, else the environment. Secrets never come
    from a flag (process listings show flags): --token-file names a file that holds one."""
    token_file = getattr(args, "token_file", None)
    token = pathlib.Path(token_file).read_text().strip() if token_file else None
    return Transport.from_environment(cacert=getattr(args, "cacert", None), cert=getattr(args, "cert", None),
                                      key=getattr(args, "key", None), token=token)


def main(argv: Sequence[str] | None = None) -> int:
    """Run recallctl with `argv` (default: sys.argv[1:]).

    Returns the exit code (common.EXIT_CODES): 0 on success, 1 when a call
    fails (message on stderr), 3 to 5 for answers a script must tell apart.
    Usage errors raise SystemExit(2) from argparse.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    args.json = getattr(args, "json", False)
    target = getattr(args, "target", None)
    try:
        target = target or target_address(os.environ.get(TARGET_ENV) or DEFAULT_TARGET)
    except ValueError as exc:
        print(f"recallctl: {TARGET_ENV}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        channel = _transport(args).channel(target, streams.CHANNEL_OPTIONS)
    except (OSError, ValueError) as exc:
        print(f"recallctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args.target = target
    try:
        with RecallClient(target, channel=channel) as client:
            code = (_COMMANDS | cli_lifecycle.COMMANDS)[args.command](client, args)
    except RecallError as err:
        where = f" (target {target})" if err.code_name == "UNAVAILABLE" else ""
        print(f"recallctl: {err}{where}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        channel.close()
    return code or 0
