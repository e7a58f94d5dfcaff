"""Refresh-token rotation with reuse detection, and cut-off rules.

Rotation. Presenting an ACTIVE refresh token with a successor request
marks it ROTATED and registers the successor in the same family, in one
change. Presenting a ROTATED token again is reuse, unless it is a retry of
the same request within the grace window, which gets the same successor
back. A retry is recognised only by a request_id or a successor jti chosen
by the caller: a bare replay of a stolen token is always reuse. Reuse revokes every unexpired
token of the family (the refresh tokens and the access tokens registered
with that family) and is recorded with its caller and origin; it never
reaches beyond the family. A token with no family founds one named
after its canonical jti when it is first rotated.

Cut-off rules. "Every token of <scope> issued before T is revoked." Adding
a rule revokes, in the same change, every registered unexpired token it
covers (by the issue times kept per serial), and the rule itself travels in
the change log to replicas, which apply it to tokens they only know by their
claims. Tokens registered later but issued before T are revoked as they are
registered (operations.store_tokens). The sweeper retires a rule once
T + max_token_lifetime has passed: nothing it could match is alive then.
"""

import dataclasses

from pyroaring import BitMap64
from recallclient.jti import canonical_jti
from recallclient.revoked_set import ALL, CLIENT, ISSUER, SUBJECT, Delta, span
from recallclient.types import Registered, TokenSpec, TokenState, TokenType

from ..settings import Settings
from ..storage.base import WriteTxn
from . import validate
from .digest import name_hash
from .errors import InvalidArgument, ResourceExhausted
from .mirror import Mirror, as_array
from .model import Cutoff, CutoffResult, Rotate, RotateResult
from .operations import affected_names, assign_serials, commit_change, revoke_serials, store_tokens, who

_SCOPE_INDEX = {SUBJECT: "subject", CLIENT: "client_id", ISSUER: "issuer"}
SCOPE_NAMES = {SUBJECT: "subject", CLIENT: "client", ISSUER: "issuer", ALL: "all"}


def _fingerprint(op: Rotate) -> bytes:
    """What identifies a retry of this rotation; empty when nothing does.

    Only a request_id or a successor jti chosen by the caller tells a retry
    from a replay: without either, every second presentation is reuse.
    """
    s = op.successor
    if not (op.request_id or s.jti):
        return b""
    return name_hash(op.request_id, s.jti, s.issuer, s.subject, s.client_id, " ".join(s.scopes))


def rotate(txn: WriteTxn, state: Mirror, op: Rotate, now: int, settings: Settings,
           no_room: str = "") -> tuple[RotateResult, Delta | None]:
    """Rotate, retry, detect reuse or refuse; see the module docstring.

    `no_room`: why the store takes no registrations now (then a rotation
    that would issue a successor raises ResourceExhausted; retries and reuse
    detection, which register nothing, go on).
    """
    ref = op.ref
    serial = ref if isinstance(ref, int) else txn.serial_for(ref.issuer, ref.jti)
    record = txn.record(serial) if serial else None
    if record is None:
        return RotateResult("REFUSED", None, TokenState.UNKNOWN, 0, state.seq, ""), None
    if record.type != TokenType.REFRESH:
        raise InvalidArgument(f"serial: token {serial} is an access token; only refresh tokens rotate")
    current = state.state(serial, now)
    if current == TokenState.ROTATED:
        successor, when, _, fingerprint = txn.rotation(serial)
        if fingerprint and now - when <= settings.rotation_grace and fingerprint == _fingerprint(op):
            found = txn.record(successor)
            canonical = canonical_jti(successor, state.revocations.store_id)
            again = Registered(successor, found.jti if found is not None else canonical, canonical, True)
            return RotateResult("RETRIED", again, current, 0, state.seq, record.family), None
        return _reuse(txn, state, op, serial, record, now)
    if current != TokenState.ACTIVE:
        return RotateResult("REFUSED", None, current, 0, state.seq, record.family), None

    if no_room:
        raise ResourceExhausted(no_room)
    family = record.family or canonical_jti(serial, state.revocations.store_id)  # an id, never a caller's jti
    s = op.successor
    issued_at = s.issued_at or now
    spec = validate.token_spec(TokenSpec(
        subject=s.subject or record.subject, client_id=s.client_id or record.client_id,
        issuer=s.issuer or record.issuer, jti=s.jti, scopes=tuple(s.scopes) or tuple(record.scopes),
        type=TokenType.REFRESH, issued_at=issued_at,
        expires_at=s.expires_at or issued_at + (record.expires_at - record.issued_at),
        origin=s.origin or op.origin or record.origin, family=family,
    ), "successor", settings, now)
    results, fresh = assign_serials(txn, state, (spec,), field="successor")
    if not fresh:
        raise InvalidArgument(
            f"successor.jti: {spec.jti!r} is already registered as serial {results[0].serial}"
        )
    seq = state.seq + 1
    if not record.family:
        record = dataclasses.replace(record, family=family)
        txn.update_record(serial, record)
        txn.update_index("family", family, BitMap64([serial]))
    expiring, cut = store_tokens(txn, state, fresh, seq)
    successor = fresh[0][0]
    rotated = BitMap64([serial])
    txn.update_rotated(rotated)
    txn.put_rotation(serial, successor, now, seq, _fingerprint(op))
    keys = revoke_serials(txn, cut, seq) if cut else {}
    delta = Delta(
        prev_seq=state.seq, seq=seq, registered_through=successor, rotated=rotated,
        expiring=tuple(sorted(expiring.items())), added=cut, foreign_added=frozenset(keys), time=now,
    )
    delta = commit_change(txn, state, delta, {
        "kind": "rotate", **who(op), "origin": spec.origin, "count": 1,
        "serial": serial, "successor": successor, "family": family,
        "subjects": [record.subject], "clients": [record.client_id],
    })
    return RotateResult("ROTATED", results[0], current, 0, seq, family), delta


def _reuse(txn: WriteTxn, state: Mirror, op: Rotate, serial: int, record, now: int) -> tuple[RotateResult, Delta]:
    """Revoke the whole family of a reused refresh token and record the event."""
    members = txn.index("family", record.family) if record.family else BitMap64([serial])
    members -= state.revocations.revoked
    added = members - state.expiry.expired_among(members, now)
    seq = state.seq + 1
    keys = revoke_serials(txn, added, seq) if added else {}
    delta = Delta(prev_seq=state.seq, seq=seq, added=added, foreign_added=frozenset(keys), time=now)
    delta = commit_change(txn, state, delta, {
        "kind": "reuse_detected", **who(op), "origin": op.origin,
        "reason": "refresh token reuse detected", "count": len(added),
        "serial": serial, "family": record.family, **affected_names(txn, added | BitMap64([serial])),
    })
    return RotateResult("REUSE_DETECTED", None, TokenState.ROTATED, len(added), seq, record.family), delta


def cutoff(txn: WriteTxn, state: Mirror, op: Cutoff, now: int, settings: Settings) -> tuple[CutoffResult, Delta | None]:
    """Add the rule and revoke the registered tokens it covers, in one change."""
    before = op.before or now
    existing = frozenset(r for r in state.revocations.rules if r[:2] == (op.scope, op.value))
    in_force = max((r[2] for r in existing), default=0)
    if in_force >= before:
        return CutoffResult(state.seq, 0, in_force, in_force + settings.max_token_lifetime), None
    through = state.revocations.registered_through
    if op.scope == ALL:
        candidates = span(1, through + 1) if through else BitMap64()
    else:
        candidates = txn.index(_SCOPE_INDEX[op.scope], op.value)
    candidates -= state.revocations.revoked
    candidates -= state.expiry.expired_among(candidates, now)
    ids = as_array(candidates)
    # A rule "as of now" covers every token registered by now, including
    # those issued earlier in this very second. Otherwise, and for tokens
    # seen later (registered or checked by claims), "issued strictly before".
    issued = txn.issue_times(ids) if len(ids) else ids
    covered = issued <= before if not op.before else issued < before
    added = BitMap64(ids[covered]) if len(ids) else BitMap64()
    seq = state.seq + 1
    keys = revoke_serials(txn, added, seq) if added else {}
    rule = (op.scope, op.value, before)
    txn.put_rule(rule, seq)
    delta = Delta(
        prev_seq=state.seq, seq=seq, added=added, foreign_added=frozenset(keys),
        rules_added=frozenset([rule]), rules_removed=existing, time=now,
    )
    delta = commit_change(txn, state, delta, {
        "kind": "cutoff", **who(op), "reason": op.reason, "count": len(added),
        "rule": {"scope": SCOPE_NAMES[op.scope], "value": op.value, "before": before},
        **_with_rule_name(affected_names(txn, added), op),
    })
    return CutoffResult(seq, len(added), before, before + settings.max_token_lifetime), delta


def _with_rule_name(names: dict, op: Cutoff) -> dict:
    """The audit names of a cut-off: its subject or client comes first, affected or not."""
    field = {SUBJECT: "subjects", CLIENT: "clients"}.get(op.scope)
    if field and op.value not in names[field]:
        names[field] = [op.value, *names[field]][:16]
    return names
