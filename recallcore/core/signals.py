"""What a Security Event Token asks of recallcore, and applying it exactly once.

Theory of operation. A SET (RFC 8417) of the OpenID Shared Signals framework
carries one event, keyed by its type URI, about one subject (`sub_id`, in an
RFC 9493 format). `recall_of` reads the verified claims and says what to do:
cut off every token of a subject issued before the event (CAEP
session-revoked and credential-change, the RISC account and credential
events), revoke one token (a subject in the `jwt_id` format, or the OAuth
token-revoked event), or nothing (an event type that recalls no token,
acknowledged and ignored). It raises BadEvent for a SET that cannot be read.

`apply` runs in the writer's transaction: a SET whose (issuer, jti) was
applied before changes nothing; otherwise its recall is made and the
(issuer, jti) recorded in the same transaction, so a replay — pushed again,
or polled again after a crash before the acknowledgement — is recognised
even after a restart. The sweeper forgets a SET ssf_max_age + clock_skew
after its iat, when the verifier refuses it as too old anyway.
"""

import dataclasses

from recallclient.types import JtiRef

from ..settings import Settings
from ..storage.base import WriteTxn
from . import lifecycle, operations
from .mirror import Mirror
from .model import Advance, Cutoff, Signal, SignalResult

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
# Events after which no token of the subject issued before them may be used.
CUTOFF_EVENTS = frozenset({
    CAEP + "session-revoked", CAEP + "credential-change",
    RISC + "sessions-revoked", RISC + "account-disabled", RISC + "account-purged",
    RISC + "credential-compromise", RISC + "account-credential-change-required",
})
TOKEN_EVENTS = frozenset({OAUTH + "token-revoked"})
CREDENTIAL_CHANGE = CAEP + "credential-change"
SUBJECT_FORMATS = ("iss_sub", "email", "opaque")  # their value names a subject: sub, email, id


class BadEvent(Exception):
    """The SET's events or subject cannot be read; `err` is the RFC 8935 error code."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(description)
        self.err = err


@dataclasses.dataclass(frozen=True)
class Recall:
    """What one SET asks: a cut-off of `subject` before `before`, a revocation of `token`,
    or, with neither, nothing (`why` says why it is ignored)."""

    event: str
    subject: str = ""
    before: int = 0
    token: JtiRef | None = None
    why: str = ""

    @property
    def short_event(self) -> str:
        """The event type's last path segment (session-revoked), for reasons and counts."""
        return self.event.rstrip("/").rsplit("/", 1)[-1]


def recall_of(claims: dict, now: int) -> Recall:
    """The recall the verified SET `claims` ask for. Raises BadEvent."""
    events = claims.get("events")
    if not isinstance(events, dict) or len(events) != 1:
        raise BadEvent("invalid_request", "the SET must carry exactly one event in its events claim")
    (event, payload), = events.items()
    if not isinstance(payload, dict):
        raise BadEvent("invalid_request", f"event {event}: its payload is not an object")
    if event not in CUTOFF_EVENTS and event not in TOKEN_EVENTS:
        return Recall(event, why="an event type that recalls no token")
    subject = claims.get("sub_id", payload.get("subject"))  # SSF puts it in the SET; older CAEP in the event
    if not isinstance(subject, dict):
        raise BadEvent("invalid_request", f"event {event}: no subject (sub_id)")
    token = _token(subject)
    if token is not None:
        return Recall(event, token=token)
    if event in TOKEN_EVENTS:
        return Recall(event, why=f"a token identified as {subject.get('format') or subject.get('subject_type')!r},"
                                 " which cannot be matched to a token here")
    name = _subject(subject)
    if not name:
        return Recall(event, why=f"a subject of format {subject.get('format')!r}, which names no subject here")
    return Recall(event, subject=name, before=_event_time(claims, payload, now))


def _token(subject: dict) -> JtiRef | None:
    if subject.get("format") != "jwt_id":
        return None
    iss, jti = subject.get("iss"), subject.get("jti")
    if not isinstance(iss, str) or not isinstance(jti, str) or not iss or not jti:
        raise BadEvent("invalid_request", "sub_id: a jwt_id subject needs the strings iss and jti")
    return JtiRef(iss, jti)


def _subject(subject: dict) -> str:
    kind = subject.get("format")
    if kind == "complex":  # SSF: a subject of several parts; its user is whose tokens go
        user = subject.get("user")
        return _subject(user) if isinstance(user, dict) else ""
    member = {"iss_sub": "sub", "email": "email", "opaque": "id"}.get(kind)
    value = subject.get(member) if member else None
    if member and (not isinstance(value, str) or not value):
        raise BadEvent("invalid_request", f"sub_id: a subject of format {kind} needs the string {member}")
    return value or ""


def _event_time(claims: dict, payload: dict, now: int) -> int:
    """When the event happened (CAEP event_timestamp, else the SET's iat), never later than now."""
    when = payload.get("event_timestamp", claims.get("iat"))
    if isinstance(when, bool) or not isinstance(when, int | float) or when <= 0:
        return now
    return min(int(when), now)


def apply(txn: WriteTxn, state: Mirror, op: Signal, now: int, settings: Settings):
    """Make the recall of `op` unless its SET was applied before; returns (SignalResult, delta or None)."""
    seen = txn.signal(op.issuer, op.jti)
    if seen is not None:
        return SignalResult(seen or state.seq, duplicate=True), None
    if op.action is None:
        result, delta = None, None
    elif isinstance(op.action, Cutoff):
        result, delta = lifecycle.cutoff(txn, state, op.action, now, settings)
    else:
        result, delta = operations.revoke(txn, state, op.action, now, settings)
    txn.put_signal(op.issuer, op.jti, delta.seq if delta is not None else 0, op.issued_at or now)
    return SignalResult(delta.seq if delta is not None else state.seq, result.count if result else 0), delta



def advance(txn: WriteTxn, op: Advance) -> tuple[int, None]:
    """Move a receiver's cursor forward; returns (its cursor now, no delta)."""
    current = txn.cursor(op.name)
    if op.seq > current:
        txn.put_cursor(op.name, op.seq)
        current = op.seq
    return current, None


def outgoing(record: dict, issuer: str, audience: str, store_id: str) -> dict | None:
    """The claims of the CAEP session-revoked SET that audit `record` calls for, or None
    (credential-change instead when an incoming credential-change, with its types, caused it).

    A revocation by subject and a cut-off of a subject call for one: the
    subject (an `opaque` subject identifier) has no session issued before
    the change left. Its jti is the store's id and the change's seq, the
    same each time it is sent, so a receiver recognises it sent again.
    """
    if record.get("kind") == "revoke":
        subject, when = record.get("selector", {}).get("subject", ""), record["time"]
    elif record.get("kind") == "cutoff" and record.get("rule", {}).get("scope") == "subject":
        subject, when = record["rule"]["value"], record["rule"]["before"]
    else:
        return None
    if not subject:
        return None
    signal = record.get("signal", {})
    event = {"event_timestamp": when, "initiating_entity": "admin" if not signal else "policy"}
    if record.get("reason"):
        event["reason_admin"] = {"en": record["reason"]}
    kind = CAEP + "session-revoked"
    if signal.get("event") == CREDENTIAL_CHANGE and signal.get("credential_type") and signal.get("change_type"):
        kind = CREDENTIAL_CHANGE  # the cause, passed on
        event.update(credential_type=signal["credential_type"], change_type=signal["change_type"])
    return {"iss": issuer, "aud": audience, "iat": record["time"], "jti": f"{store_id}-{record['seq']}",
            "sub_id": {"format": "opaque", "id": subject}, "events": {kind: event}}


def cause(event: str, payload: dict) -> dict:
    """The parts of an event's payload worth keeping with its recall (a credential change's
    credential_type and change_type, passed on when recallcore transmits)."""
    if event != CREDENTIAL_CHANGE:
        return {}
    return {k: payload[k] for k in ("credential_type", "change_type") if isinstance(payload.get(k), str)}
