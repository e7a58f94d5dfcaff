"""What every recallctl command shares: the target, argument types and output helpers."""

import argparse
import datetime
import getpass
import json
from typing import Any

from ..jti import MAX_SERIAL

DEFAULT_PORT = 50051
DEFAULT_TARGET = f"127.0.0.1:{DEFAULT_PORT}"
TARGET_ENV = "RECALL_TARGET"
# Exit codes: stable, documented in EXIT_CODES, the README and every --help.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REUSE, EXIT_NOT_ACTIVE, EXIT_NO_RECORDS = range(6)
EXIT_CODES = """exit codes (stable: scripts may rely on them):
  0  success; check and introspect: every token is ACTIVE
  1  the call failed; stderr holds "recallctl: CODE_NAME: message"
  2  usage error, or a kill switch (cutoff --issuer, --all) not confirmed;
     no call was made
  3  rotate: reuse detected; the token's family is revoked
  4  not active: check or introspect found a token that is not ACTIVE
     (REVOKED, EXPIRED, ROTATED or UNKNOWN); rotate refused the presented
     token (revoked, expired or unknown)
  5  audit, trace: no record matched (stderr says so)
"""
MAX_TIME = 2**32 - 1  # the server keeps times as uint32 Unix seconds
TIME_FORMATS = "Unix seconds, a date (2026-12-01) or an ISO 8601 time (2026-12-01T10:00:00Z; UTC unless it has a zone)"


def _int_in(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text}") from None
    if not low <= value <= MAX_SERIAL:
        raise argparse.ArgumentTypeError(f"must be in {low}..{MAX_SERIAL}: {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer in 1..MAX_SERIAL."""
    return _int_in(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer in 0..MAX_SERIAL."""
    return _int_in(text, 0)


def positive_seconds(text: str) -> int:
    """argparse type: a duration of at least one second."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text}") from None
    if not 1 <= value <= MAX_TIME:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_TIME} seconds: {text}")
    return value


def unix_time(text: str) -> int:
    """argparse type: a time as Unix seconds, a date or an ISO 8601 time (see TIME_FORMATS);
    returns Unix seconds."""
    if text.isascii() and text.isdigit():
        value = int(text)
    else:
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a time: {text!r}; give {TIME_FORMATS}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        value = int(moment.timestamp())
    if not 0 <= value <= MAX_TIME:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 1970-01-01..{iso(MAX_TIME)}")
    return value


def target_address(text: str) -> str:
    """HOST[:PORT] (IPv6 in brackets) as HOST:PORT, the port DEFAULT_PORT when
    none is given; a gRPC target with a scheme (dns:///..., unix:...) as it is.
    Raises ValueError naming what is wrong."""
    if "://" in text or text.startswith("unix:"):
        return text
    if text.startswith("["):
        host, bracket, rest = text.partition("]")
        host, port = host + bracket, rest.removeprefix(":")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not HOST[:PORT] (an IPv6 address goes in brackets: [::1]:50051)")
    elif text.count(":") > 1:
        host, port = f"[{text}]", ""  # a bare IPv6 address
    else:
        host, _, port = text.partition(":")
        if not port and text.endswith(":"):
            raise ValueError(f"{text!r} has no port after the colon")
    if not host or host == "[]":
        raise ValueError(f"{text!r} has no host")
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{text!r}: the port must be a number in 1..65535")
    return f"{host}:{port or DEFAULT_PORT}"


def target_type(text: str) -> str:
    """argparse type for --target: target_address, usage errors as argparse's."""
    try:
        return target_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def default_actor() -> str:
    """The OS user name, the default --actor of writes."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "recallctl"


def add_jti_options(parser: argparse.ArgumentParser) -> None:
    """Add --issuer and --jti (a token by issuer and jti) to `parser`."""
    parser.add_argument("--issuer", default="", help="token issuer (default: the server's)")
    parser.add_argument("--jti", default="", help="token jti")


def iso(seconds: int) -> str:
    """Unix `seconds` as an ISO 8601 UTC time, e.g. 2026-11-27T10:00:00Z."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def emit(args: argparse.Namespace, obj: dict[str, Any], human: str) -> None:
    """Print `obj` as one JSON line with --json, else the `human` text."""
    print(json.dumps(obj) if args.json else human)
