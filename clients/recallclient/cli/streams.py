"""Streams that outlive a server restart: `watch` and `audit --follow`.

A server that shuts down ends its Watch and AuditLog streams cleanly, and
one that is gone answers UNAVAILABLE. A pipeline that feeds a log system
must neither stop silently then nor print anything twice, so `follow`
reads a stream and, when it ends or fails that way, waits for the server
(at most `reconnect_for` seconds) and opens it again: `open_stream` builds
the request from what the command has printed so far, so the new stream
resumes right after it. On stderr it says why the stream broke, when it
is back, and why it gives up; every other failure ends it at once.
"""

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from ..errors import RecallError
from .common import EXIT_FAILED

T = TypeVar("T")

# Statuses a restart or an outage produces; anything else is an answer to the request.
RESUMABLE = frozenset({"UNAVAILABLE", "CANCELLED"})
DEFAULT_RECONNECT_FOR = 60.0  # seconds without the server before giving up
_PAUSE_FIRST, _PAUSE_MOST = 0.1, 2.0  # between attempts, doubling

# Reconnect soon after the server returns: gRPC's own backoff grows to two minutes.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"not a number of seconds (0 or more): {text}")
    return value


def add_reconnect_option(parser: argparse.ArgumentParser) -> None:
    """Add --reconnect-for to a streaming command's parser."""
    parser.add_argument("--reconnect-for", type=_seconds, default=DEFAULT_RECONNECT_FOR, metavar="SECONDS",
                        help="when the server goes away, wait this long for it and resume where the "
                             f"stream was; then exit 1 (default {DEFAULT_RECONNECT_FOR:g}; 0: exit 1 at once)")


def _say(what: str, text: str) -> None:
    print(f"recallctl: {what}: {text}", file=sys.stderr, flush=True)


def follow(
    what: str,
    channel: grpc.Channel,
    target: str,
    open_stream: Callable[[], Iterator[T]],
    handle: Callable[[T], bool],
    position: Callable[[], str],
    reconnect_for: float,
) -> int:
    """Pass every item of `open_stream()` to `handle` until it returns False,
    opening the stream again after a clean end or a RESUMABLE failure.

    Only a stream the server once answered is resumed: a server that cannot
    be reached at the start is an error at once. `position()` says where the
    stream resumes ("after seq 12"). Returns 0 when `handle` stops it or on
    Ctrl-C, EXIT_FAILED after `reconnect_for` seconds without the server (0:
    give up at once). Raises RecallError for any other failure.
    """
    pause, established = _PAUSE_FIRST, False
    try:
        while True:
            try:
                with contextlib.closing(open_stream()) as items:
                    for item in items:
                        pause, established = _PAUSE_FIRST, True
                        if not handle(item):
                            return 0
                why, established = "the server ended the stream", True
            except RecallError as err:
                if err.code_name not in RESUMABLE or not established:
                    raise  # a server never reached, or an answer to the request itself
                why = str(err)
            if reconnect_for <= 0:
                _say(what, f"{why} (resume {position()}); not reconnecting (--reconnect-for 0)")
                return EXIT_FAILED
            _say(what, f"{why}; reconnecting to {target} to resume {position()}")
            time.sleep(pause)
            pause = min(pause * 2, _PAUSE_MOST)
            try:
                grpc.channel_ready_future(channel).result(timeout=reconnect_for)
            except grpc.FutureTimeoutError:
                _say(what, f"gave up: no answer from {target} for {reconnect_for:g} s (last: {why})")
                return EXIT_FAILED
            _say(what, f"reconnected to {target}; resuming {position()}")
    except KeyboardInterrupt:
        return 0
