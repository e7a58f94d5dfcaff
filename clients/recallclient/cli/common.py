"""What every recallctl command shares: the target, argument types and output helpers."""

import argparse
import datetime
import getpass
import json
from typing import Any

from ..jti import MAX_SERIAL

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "RECALL_TARGET"


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
