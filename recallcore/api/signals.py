"""Receiving Security Event Tokens: the one path that push (RFC 8935) and poll (RFC 8936) share.

Theory of operation. Each configured transmitter is a `Stream`: its SET
verifier and its counts. `Receiver.receive` verifies a SET
(security/set_verifier.py), reads what it asks (core/signals.py) and has the
node apply it (Engine.signal), which returns only once the change — or the
mark that the SET was seen, when it changes nothing — is committed. So a
push is answered 202, and a polled SET acknowledged, only for what is
durable; a SET delivered again is recognised by its (issuer, jti) and
changes nothing. A SET that is not good raises SetRejected (the transmitter
hears the RFC 8935 error code); when the node cannot write now, the
RecallError goes up (503 to a pusher; a poller leaves the SET
unacknowledged and backs off), and the transmitter delivers it again.

Every recall is made as the actor `ssf:<stream>` and its audit record holds
the transmitter, issuer, jti and event type.
"""

import collections
import dataclasses
import logging
import time
from collections.abc import Callable

from ..core.errors import InvalidArgument
from ..core.signals import BadEvent, cause, recall_of
from ..security.identity import Caller
from ..security.jwks import KeySource
from ..security.set_verifier import MetadataKeys, SetRejected, SetVerifier
from ..settings import Settings, Transmitter

log = logging.getLogger(__name__)

OUTCOMES = ("applied", "duplicate", "ignored", "rejected")


@dataclasses.dataclass
class Stream:
    """One transmitter: its configuration, verifier and what became of its SETs."""

    transmitter: Transmitter
    verifier: SetVerifier
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # by outcome
    ignored_events: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # by event type
    poll_state: dict = dataclasses.field(default_factory=dict)  # the poller's, for status

    @property
    def name(self) -> str:
        return self.transmitter.stream

    def status(self) -> dict:
        out = {"issuer": self.transmitter.issuer, "delivery": "poll" if self.transmitter.poll else "push",
               **{o: self.counts[o] for o in OUTCOMES}, "ignored_events": dict(self.ignored_events)}
        if self.transmitter.poll:
            out["poll"] = dict(self.poll_state)
        return out


def streams(settings: Settings, clock: Callable[[], float] = time.time) -> dict[str, Stream]:
    """The streams of settings.transmitters; a transmitter's key file that cannot be read raises
    (OSError, InvalidArgument) now, before the server starts."""
    out = {}
    for t in settings.transmitters:
        cacert = t.cacert or settings.jwks_cacert
        keys = MetadataKeys(t.metadata, t.issuer, cacert) if t.metadata else KeySource(t.jwks, cacert)
        out[t.stream] = Stream(t, SetVerifier(t.issuer, t.audience, keys, algorithms=settings.jwt_algorithms,
                                              max_age=settings.ssf_max_age, skew=settings.clock_skew, clock=clock))
    return out


class Receiver:
    """The streams of a primary and the node that applies their SETs."""

    def __init__(self, node, by_name: dict[str, Stream]) -> None:
        self.node = node
        self.streams = by_name

    async def receive(self, stream: Stream, token: str, peer: str = "") -> str:
        """Verify `token` and apply it durably; returns the outcome (applied, duplicate, ignored).

        Raises SetRejected for a SET that is not good, and the node's RecallError
        (UNAVAILABLE, RESOURCE_EXHAUSTED) when it cannot be applied now.
        """
        try:
            claims = await stream.verifier.verify(token)
            recall = recall_of(claims, int(self.node.clock()))
        except BadEvent as exc:
            stream.counts["rejected"] += 1
            raise SetRejected(exc.err, str(exc)) from None
        except SetRejected:
            stream.counts["rejected"] += 1
            raise
        fields = {"transmitter": stream.name, "issuer": claims["iss"], "jti": claims["jti"], "event": recall.event,
                  **cause(recall.event, claims["events"][recall.event])}
        try:
            result = await self.node.signal(claims["iss"], claims["jti"], recall, fields, issued_at=int(claims["iat"]),
                                            caller=Caller(f"ssf:{stream.name}", peer))
        except InvalidArgument as exc:  # a subject or jti past the store's limits
            stream.counts["rejected"] += 1
            raise SetRejected("invalid_request", str(exc)) from None
        if result.duplicate:
            outcome = "duplicate"
        elif recall.subject or recall.token is not None:
            outcome = "applied"
            log.info("ssf %s: %s %s (SET %s): seq %d, %d tokens", stream.name, recall.short_event,
                     recall.subject or f"token {recall.token.jti}", claims["jti"], result.seq, result.count)
        else:
            outcome = "ignored"
            stream.ignored_events[recall.event] += 1
            log.info("ssf %s: SET %s ignored: %s (%s)", stream.name, claims["jti"], recall.why, recall.event)
        stream.counts[outcome] += 1
        return outcome

    async def close(self) -> None:
        for stream in self.streams.values():
            await stream.verifier.close()
