"""recallctl commands of the token lifecycle: rotate, cutoff, audit and trace.

`commands` builds the parser and runs every command; it registers these
with `add_commands`, checks their argument combinations with `validate` and
dispatches through `COMMANDS`. Each runner returns its exit code. The small
argument and output helpers both use are in `common`.

A rotation's outcome is an answer, not a failure, so it has exit codes of
its own: 3 when the presented token was already rotated (reuse detected:
its whole family is now revoked) and 4 when it was refused (revoked,
expired or unknown). A caller that issues tokens from a script must not
issue a successor on either. An audit query or trace that matches nothing
exits 5 (see common.EXIT_CODES).
"""

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..client import RecallClient
from ..errors import RecallError
from ..requests import token_spec
from . import common, streams

_SCOPES = ("subject", "client", "issuer", "all")
# The keys every audit record has; the rest are its detail.
_AUDIT_KEYS = ("seq", "time", "type", "actor", "origin", "reason", "count")


def add_commands(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add rotate, cutoff, audit and trace through `command(name, summary)`,
    which returns a new subcommand parser."""
    rot = command("rotate", "rotate a refresh token: register its successor in its family")
    rot.add_argument("serial", nargs="?", type=common.positive_int, metavar="SERIAL",
                     help="the presented refresh token (or --issuer and --jti)")
    common.add_jti_options(rot)
    rot.add_argument("--ttl", type=common.positive_seconds, metavar="SECONDS",
                     help="successor lifetime from now (default: the presented token's)")
    rot.add_argument("--request-id", default="", metavar="ID",
                     help="identifies this rotation: a retry with the same ID gets the same successor")
    rot.add_argument("--actor", default=None, help="who rotates (default: your user name)")
    rot.add_argument("--origin", default="")

    cut = command("cutoff", "revoke every token of a subject, client, issuer or everyone issued "
                            "before a time (the kill switch)")
    scope = cut.add_mutually_exclusive_group(required=True)
    scope.add_argument("--subject")
    scope.add_argument("--client", help="client_id")
    scope.add_argument("--issuer")
    scope.add_argument("--all", action="store_true", help="every token of every issuer")
    cut.add_argument("--before", type=common.unix_time, default=0, metavar="TIME",
                     help="tokens issued before this time (default: now)")
    cut.add_argument("--reason", default="", help="why (required with --issuer and --all)")
    cut.add_argument("--actor", default=None, help="who cuts off (default: your user name)")
    cut.add_argument("--yes", action="store_true",
                     help="with --issuer or --all: act without asking (else asked on a terminal; refused elsewhere)")

    aud = command("audit", "print audit records, oldest first")
    aud.add_argument("--serial", type=common.positive_int, default=0, metavar="N",
                     help="only the trace of this token")
    aud.add_argument("--subject", default="")
    aud.add_argument("--client", default="", help="client_id")
    aud.add_argument("--since", type=common.unix_time, default=0, metavar="TIME",
                     help="only records at or after this time")
    aud.add_argument("--until", type=common.unix_time, default=0, metavar="TIME",
                     help="only records at or before this time")
    aud.add_argument("--after-seq", type=common.nonnegative_int, default=0, metavar="N",
                     help="only records after seq N")
    aud.add_argument("--limit", type=common.positive_int, default=0, metavar="N",
                     help="at most N records (with --follow: in all)")
    aud.add_argument("--follow", action="store_true",
                     help="then print new records as they are committed, until Ctrl-C; resumes after the "
                          "last record printed when the server restarts")
    aud.add_argument("--count", type=common.positive_int, default=None, metavar="N",
                     help="stop after N records")
    streams.add_reconnect_option(aud)

    trace = command("trace", "print the audit trace of one token: issued, rotated, revoked, expired")
    trace.add_argument("serial", type=common.positive_int, metavar="SERIAL")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 (via parser.error) for argument combinations argparse cannot check."""
    if args.command == "rotate":
        if args.issuer and not args.jti:
            parser.error("rotate: --issuer needs --jti")
        if (args.serial is None) == (not args.jti):
            parser.error("rotate: give SERIAL or --jti (not both)")
    elif args.command == "cutoff" and _kill_switch(args):
        flag = "--all" if args.all else "--issuer"
        if not args.reason.strip():
            parser.error(f"cutoff {flag}: give --reason: the kill switch is recorded with why it was used")
        if not args.yes and not sys.stdin.isatty():
            parser.error(f"cutoff {flag}: give --yes to confirm (no terminal to ask on)")
    elif args.command == "audit" and args.until and args.since > args.until:
        parser.error("audit: --since is after --until")


def _kill_switch(args: argparse.Namespace) -> bool:
    """True for the scopes of the kill switch (the killswitch role): an issuer, or everyone."""
    return bool(args.all or args.issuer)


def _confirmed(whom: str, before: int) -> bool:
    """Ask on the terminal whether to revoke every token of `whom`; True for "yes"."""
    when = common.iso(before) if before else "now"
    print(f"recallctl: this revokes every token of {whom} issued before {when}, on every node, at once.\n"
          "Type yes to go on: ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() == "yes"


def _run_rotate(client: RecallClient, args: argparse.Namespace) -> int:
    successor = token_spec("", "", ttl=args.ttl) if args.ttl is not None else None
    result = client.rotate(
        args.serial, issuer=args.issuer, jti=args.jti, successor=successor,
        request_id=args.request_id, origin=args.origin,
        actor=common.default_actor() if args.actor is None else args.actor,
    )
    presented = args.serial or args.jti
    if result.outcome in ("ROTATED", "RETRIED") and result.successor is not None:
        new = result.successor
        obj: dict[str, Any] = {"outcome": result.outcome, "serial": new.serial, "jti": new.jti,
                               "family": result.family, "seq": result.seq}
        verb = "rotated"
        if result.outcome == "RETRIED":
            obj["retried"] = True
            verb = "retried the rotation of"
        common.emit(args, obj, f"{verb} {presented}: successor serial {new.serial} jti {new.jti} "
                            f"(family {result.family}, seq {result.seq})")
        return 0
    if result.outcome == "REUSE_DETECTED":
        noun = "token" if result.count == 1 else "tokens"
        obj = {"outcome": result.outcome, "reuse_detected": True, "count": result.count,
               "family": result.family, "seq": result.seq}
        common.emit(args, obj, f"REUSE DETECTED: {presented} was already rotated; family "
                            f"{result.family} revoked ({result.count} {noun}, seq {result.seq})")
        return common.EXIT_REUSE
    obj = {"outcome": result.outcome, "state": result.state.name, "family": result.family,
           "seq": result.seq}
    common.emit(args, obj, f"refused: {presented} is {result.state.name}")
    return common.EXIT_NOT_ACTIVE


def _run_cutoff(client: RecallClient, args: argparse.Namespace) -> int:
    scope = next(name for name in _SCOPES if getattr(args, name))
    value = "" if scope == "all" else getattr(args, scope)
    covered = "every issuer" if scope == "all" else f"issuer {value}"
    if _kill_switch(args) and not args.yes and not _confirmed(covered, args.before):
        print("recallctl: cutoff: not confirmed; nothing was revoked", file=sys.stderr)
        return common.EXIT_USAGE
    result = client.cutoff(scope, value, before=args.before, reason=args.reason,
                           actor=common.default_actor() if args.actor is None else args.actor)
    noun = "token" if result.count == 1 else "tokens"
    whom = "everyone" if scope == "all" else f"{scope} {value}"
    obj = {"seq": result.seq, "count": result.count, "before": result.before,
           "retires_at": result.retires_at}
    common.emit(args, obj, f"cut off {whom} before {common.iso(result.before)}: {result.count} {noun} "
                        f"revoked (seq {result.seq}); the rule retires at {common.iso(result.retires_at)}")
    return 0


def _word(text: str) -> str:
    """`text` as one word of a human line: "-" when empty, quoted when it has spaces."""
    return json.dumps(text) if any(c.isspace() for c in text) else text or "-"


def _flat(key: str, value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for inner, item in value.items():
            yield from _flat(f"{key}.{inner}", item)
    elif value not in ("", 0, None, [], False):
        yield f"{key}={_word(','.join(map(str, value)) if isinstance(value, list) else str(value))}"


AUDIT_HEADER = "seq  time  type  actor  reason  count  detail"


def audit_line(record: dict[str, Any]) -> str:
    """The human line of one audit record, under AUDIT_HEADER:
    seq  time  type  actor  reason  count  key=value of the origin and detail."""
    detail = {"origin": record.get("origin", ""),
              **{k: v for k, v in record.items() if k not in _AUDIT_KEYS}}
    summary = " ".join(part for key, value in detail.items() for part in _flat(key, value))
    return "  ".join([
        str(record.get("seq", 0)), common.iso(record.get("time", 0)), _word(record.get("type", "")),
        _word(record.get("actor", "")), _word(record.get("reason", "")),
        str(record.get("count", 0)), summary,
    ]).rstrip()


def _run_audit(client: RecallClient, args: argparse.Namespace) -> int:
    # The server stops a followed stream at --limit only between batches.
    stop = min((n for n in (args.count, args.limit) if n), default=0)
    cursor, seen = args.after_seq, 0

    def records() -> Iterator[dict[str, Any]]:
        return client.audit(
            serial=args.serial, subject=args.subject, client_id=args.client, since=args.since,
            until=args.until, after_seq=cursor, limit=args.limit - seen if args.limit else 0,
            follow=args.follow,
        )

    def handle(record: dict[str, Any]) -> bool:
        nonlocal cursor, seen
        if not seen and not args.json:
            print(AUDIT_HEADER)
        print(json.dumps(record) if args.json else audit_line(record), flush=True)
        cursor = max(cursor, record.get("seq", 0))  # a resumed stream starts after it
        seen += 1
        return seen != stop

    if args.follow:
        return streams.follow("audit", client.channel, args.target, records, handle,
                              lambda: f"after seq {cursor}", args.reconnect_for)
    with contextlib.closing(records()) as found:
        try:
            for record in found:
                if not handle(record):
                    break
        except KeyboardInterrupt:
            return 0
    if seen:
        return 0
    print(f"recallctl: {_nothing_matched(client, args.serial)}", file=sys.stderr)
    return common.EXIT_NO_RECORDS


def _nothing_matched(client: RecallClient, serial: int) -> str:
    """Why an audit query printed nothing, as exactly as the server lets us tell."""
    if serial:
        try:
            highest = client.stats().registered
        except RecallError:  # e.g. a caller granted audit but not check
            highest = None
        if highest is not None and serial > highest:
            return f"no audit records: serial {serial} was never registered here (the highest is {highest})"
        return f"no audit records of serial {serial} match"
    return "no audit records match"


def _run_trace(client: RecallClient, args: argparse.Namespace) -> int:
    query = {"subject": "", "client": "", "since": 0, "until": 0, "after_seq": 0, "limit": 0,
             "follow": False, "count": None}
    return _run_audit(client, argparse.Namespace(**{**vars(args), **query}))


COMMANDS: dict[str, Callable[[RecallClient, argparse.Namespace], int]] = {
    "rotate": _run_rotate,
    "cutoff": _run_cutoff,
    "audit": _run_audit,
    "trace": _run_trace,
}
