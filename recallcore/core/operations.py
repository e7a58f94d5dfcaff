"""What each write operation does, inside one write transaction.

Each function reads what it needs through the storage interface
(`recallcore.storage.base.WriteTxn`), raises a RecallError before
writing anything when the operation cannot proceed, writes its records, and,
when the operation changes the revocation state, logs a `Delta` and an audit
record under the next sequence number and applies the delta to `state` (the
writer's own mirror) so that later operations in the same transaction see it.
It returns (result, delta or None). Rotation and cut-off rules live in
lifecycle.py and build on the helpers here.
"""

import dataclasses
import time as _time
from collections import defaultdict

import numpy as np
from pyroaring import BitMap64
from recallclient.codec import chained
from recallclient.jti import canonical_jti, foreign_key, looks_canonical, serial_from_jti
from recallclient.revoked_set import Delta
from recallclient.types import Registered, RegisterResult, RevokeResult, TokenSpec

from ..settings import Settings
from ..storage.base import WriteTxn
from .errors import InvalidArgument
from .mirror import PURGED, Mirror
from .model import Presented, Register, Revoke, Selector, Sweep

# The name indexes every registration feeds: the token field of each.
NAME_INDEXES = ("subject", "client_id", "family", "issuer")
# Serials registered under a caller-chosen (not canonical) jti. When such a
# token is revoked, its (issuer, jti) key joins the foreign set too, so that
# replicas, which cannot look jtis up, still see it revoked by issuer + jti.
CUSTOM_JTI = ("custom_jti", "")


def commit_change(txn: WriteTxn, state: Mirror, delta: Delta, audit: dict) -> Delta:
    """Log `delta` and its audit record under delta.seq and apply it to `state`.

    Returns the delta as committed: with the store's history after it.
    """
    delta, wire = chained(state.revocations.history, delta)
    txn.set_head(delta.seq, delta.history)
    txn.put_change(delta, {"seq": delta.seq, "time": delta.time, **audit}, wire)
    state.apply(delta)
    return delta


def who(op) -> dict:
    """The audit fields naming who acted: the authenticated actor, and on whose behalf and from where."""
    out = {"actor": op.actor}
    if op.on_behalf_of:
        out["on_behalf_of"] = op.on_behalf_of
    if op.peer:
        out["peer"] = op.peer
    if getattr(op, "signal", ()):
        out["signal"] = dict(op.signal)
    return out


def distinct(values, cap: int = 16) -> list[str]:
    """Up to `cap` distinct non-empty values, in first-seen order (for audit records)."""
    return list(dict.fromkeys(v for v in values if v))[:cap]


NAMES_SAMPLE = 64


def affected_names(txn: WriteTxn, serials: BitMap64) -> dict:
    """Subjects and clients of revoked serials for the audit record.

    Reads the records of at most NAMES_SAMPLE serials; past that the record
    says "<field>_more" and audit filters ask the index instead.
    """
    sample = [int(s) for s in serials.to_array()[:NAMES_SAMPLE]]
    found = txn.records(sample)
    records = [found[s] for s in sample if s in found]
    out = {**_names("subjects", [r.subject for r in records]), **_names("clients", [r.client_id for r in records])}
    if len(serials) > NAMES_SAMPLE:
        out["subjects_more"] = out["clients_more"] = True
    return out


def _names(field: str, values: list[str], cap: int = 16) -> dict:
    """Up to `cap` distinct names for an audit record, and whether there were more."""
    names = distinct(values, cap + 1)
    return {field: names[:cap], f"{field}_more": True} if len(names) > cap else {field: names}


def revoke_serials(txn: WriteTxn, added: BitMap64, seq: int) -> dict[int, int]:
    """Write the revocation of `added` under `seq`.

    Returns the foreign keys (with expiry) of those registered under a
    caller-chosen jti and not yet revoked by key, which the change must also
    revoke by key.
    """
    txn.update_revoked(added)
    txn.put_revocations(added, seq)
    records = txn.records(int(serial) for serial in txn.index_among(*CUSTOM_JTI, added).to_array())
    keys = {foreign_key(record.issuer, record.jti): record.expires_at for record in records.values()}
    for key in txn.foreigns(list(keys)):  # revoked by key already: keep that record
        del keys[key]
    for key, expires_at in keys.items():
        txn.put_foreign(key, expires_at, seq)
    return keys


def assign_serials(txn: WriteTxn, state: Mirror, specs: tuple[TokenSpec, ...], field: str = "tokens"):
    """Serials for `specs`: (results in order, [(serial, jti, spec) of new ones]).

    Known (issuer, jti) pairs keep their serial. Raises InvalidArgument for a
    caller-chosen jti in the canonical form; writes nothing.
    """
    results: list[Registered] = []
    fresh: list[tuple[int, str, TokenSpec]] = []
    seen: dict[tuple[str, str], int] = {}
    serial = state.revocations.registered_through
    store_id = state.revocations.store_id
    for i, spec in enumerate(specs):
        if spec.jti:
            pair = (spec.issuer, spec.jti)
            known = seen.get(pair) or txn.serial_for(*pair)
            if known:
                results.append(Registered(known, spec.jti, canonical_jti(known, store_id), True))
                continue
            if looks_canonical(spec.jti):
                raise InvalidArgument(
                    f"{field}[{i}].jti: {spec.jti!r} has the canonical form stores "
                    "assign (rc2.<serial>.<check>, or rc1); leave jti empty to be given one"
                )
        serial += 1
        canonical = canonical_jti(serial, store_id)
        jti = spec.jti or canonical
        seen[(spec.issuer, jti)] = serial
        results.append(Registered(serial, jti, canonical, False))
        fresh.append((serial, jti, spec))
    return results, fresh


def store_tokens(txn: WriteTxn, state: Mirror, fresh: list[tuple[int, str, TokenSpec]], seq: int) -> tuple[dict, BitMap64]:
    """Write records and indexes of new tokens registered by change `seq`.

    Returns (expiry buckets for the delta, the new serials that a cut-off rule
    in force already revokes).
    """
    indexes: dict[tuple[str, str], BitMap64] = defaultdict(BitMap64)
    expiring: dict[int, BitMap64] = defaultdict(BitMap64)
    cut = BitMap64()
    rules = state.revocations
    store_id = rules.store_id
    for serial, jti, spec in fresh:
        txn.put_record(serial, dataclasses.replace(spec, jti=jti))
        txn.put_jti(spec.issuer, jti, serial)
        for kind in NAME_INDEXES:
            name = getattr(spec, kind)
            if name:
                indexes[(kind, name)].add(serial)
        if serial_from_jti(jti, store_id) != serial:
            indexes[CUSTOM_JTI].add(serial)
        expiring[spec.expires_at].add(serial)
        if rules.cut_off(spec.issuer, spec.subject, spec.client_id, spec.issued_at) or (
            rules.is_foreign_revoked(foreign_key(spec.issuer, jti))
        ):
            cut.add(serial)  # a rule covers it, or it was revoked by (issuer, jti) before registration
    txn.update_indexes((kind, name, serials) for (kind, name), serials in indexes.items())
    ids = np.array([s for s, _, _ in fresh], dtype=np.uint64)
    txn.set_expiries(ids, np.array([spec.expires_at for _, _, spec in fresh], dtype=np.uint32))
    txn.set_issue_times(ids, np.array([spec.issued_at for _, _, spec in fresh], dtype=np.uint32))
    txn.set_registered_through(fresh[-1][0])
    txn.put_issuance(fresh[0][0], seq)
    return expiring, cut


def register(txn: WriteTxn, state: Mirror, op: Register, now: int) -> tuple[RegisterResult, Delta | None]:
    """Assign serials to new tokens; known (issuer, jti) pairs keep theirs."""
    results, fresh = assign_serials(txn, state, op.tokens)
    if not fresh:
        return RegisterResult(tuple(results), state.seq), None
    seq = state.seq + 1
    expiring, cut = store_tokens(txn, state, fresh, seq)
    keys = revoke_serials(txn, cut, seq) if cut else {}
    delta = Delta(
        prev_seq=state.seq, seq=seq, registered_through=fresh[-1][0],
        expiring=tuple(sorted(expiring.items())), added=cut, foreign_added=frozenset(keys), time=now,
    )
    specs = [spec for _, _, spec in fresh]
    delta = commit_change(txn, state, delta, {
        "kind": "register", **who(op), "count": len(fresh),
        "first_serial": fresh[0][0], "last_serial": fresh[-1][0],
        **_names("subjects", [s.subject for s in specs]), **_names("clients", [s.client_id for s in specs]),
        "origin": ", ".join(distinct((s.origin for s in specs), 4)),
        "cut_off": len(cut), **({"reason": "revoked before registration or by a cut-off rule"} if cut else {}),
    })
    return RegisterResult(tuple(results), seq), delta


def _covered(txn: WriteTxn, state: Mirror, sel: Selector, now: int, settings: Settings) -> tuple[BitMap64, dict[int, int]]:
    """Registered serials and foreign keys (with expiry) the selector names."""
    serials = BitMap64(s for s in sel.serials if s <= state.revocations.registered_through)
    foreign: dict[int, int] = {}
    through = state.revocations.registered_through
    for ref in sel.tokens:
        serial = txn.serial_for(ref.issuer, ref.jti)
        if serial:
            serials.add(serial)
            continue
        encoded = serial_from_jti(ref.jti, state.revocations.store_id)
        if encoded:
            # A canonical jti names a serial of this store, whatever issuer
            # spelling comes with it (as Check reads it): revoke that serial
            # if issued, and never keep it as a foreign key that would later
            # revoke the token issued under that serial.
            if encoded <= through:
                serials.add(encoded)
            continue
        expires_at = ref.expires_at or now + settings.max_token_lifetime
        if expires_at > now:
            key = foreign_key(ref.issuer, ref.jti)
            foreign[key] = max(foreign.get(key, 0), expires_at)  # named twice: the later expiry holds
    for kind in ("subject", "client_id", "family"):
        name = getattr(sel, kind)
        if name:
            serials |= txn.index(kind, name)
    return serials, foreign


def revoke(txn: WriteTxn, state: Mirror, op: Revoke, now: int, settings: Settings) -> tuple[RevokeResult, Delta | None]:
    """Revoke every registered, unexpired token and every foreign token selected."""
    serials, foreign = _covered(txn, state, op.selector, now, settings)
    serials -= state.revocations.revoked
    added = serials - state.expiry.expired_among(serials, now)
    new_foreign = {k: exp for k, exp in foreign.items() if not state.revocations.is_foreign_revoked(k)}
    # Revoked again with a later explicit expiry: keep it revoked that much
    # longer. (A defaulted expiry says nothing new about the token.)
    extended = {}
    for ref in op.selector.tokens:
        key = foreign_key(ref.issuer, ref.jti)
        if ref.expires_at and key in foreign and key not in new_foreign:
            stored = txn.foreign(key)
            later = max(ref.expires_at, extended.get(key, (0, 0))[0])
            if stored is not None and later > stored[0]:
                extended[key] = (later, stored[1])
    if not added and not new_foreign and not extended:
        return RevokeResult(0, state.seq), None
    count = len(added) + len(new_foreign)
    seq = state.seq + 1
    for key, expires_at in new_foreign.items():
        txn.put_foreign(key, expires_at, seq)
    for key, (expires_at, revoked_by) in extended.items():
        txn.put_foreign(key, expires_at, revoked_by)
    new_foreign.update(revoke_serials(txn, added, seq))
    delta = Delta(prev_seq=state.seq, seq=seq, added=added, foreign_added=frozenset(new_foreign), time=now)
    delta = commit_change(txn, state, delta, {
        "kind": "revoke", **who(op), "reason": op.reason, "origin": op.origin,
        "selector": op.selector.describe(), "count": count, **affected_names(txn, added),
        **({"extended": len(extended)} if extended else {}),
    })
    return RevokeResult(count, seq), delta


def sweep(txn: WriteTxn, state: Mirror, op: Sweep, now: int, settings: Settings) -> tuple[int, Delta | None]:
    """Forget revocations of expired tokens, retire rules, purge what is past retention.

    Returns (seq of the change or 0, delta or None). Work per call is bounded
    by settings.purge_batch; the next sweep continues.
    """
    # Forget a revocation only clock_skew after expiry: a node or relying
    # party whose clock lags must not see the token valid and unrevoked.
    forget_before = now - settings.clock_skew
    removed = state.expiry.expired_among(state.revocations.revoked, forget_before)
    if removed:
        txn.update_revoked(BitMap64(), removed)
    foreign_due = txn.foreign_due(forget_before, settings.purge_batch)
    for expires_at, key in foreign_due:
        txn.delete_foreign(key, expires_at)
    retired = frozenset(r for r in state.revocations.rules if r[2] + settings.max_token_lifetime <= now)
    for rule in retired:
        txn.delete_rule(rule)
    purged = state.expiry.purgeable(
        state.revocations.registered_through, now - settings.audit_retention, settings.purge_batch
    )
    if len(purged):
        _purge(txn, purged, state.revocations.store_id)
    txn.compact_log(state.seq - settings.log_keep, now - settings.log_keep_seconds, settings.purge_batch)
    # A record may explain a revocation until the token expires: keep it for
    # the longest lifetime a token can have, then for the retention.
    txn.compact_audit(now - settings.max_token_lifetime - settings.audit_retention, settings.purge_batch)
    # A SET older than ssf_max_age is refused by its age: its jti need not be kept past that.
    txn.compact_signals(now - settings.ssf_max_age - settings.clock_skew, settings.purge_batch)
    if not (removed or foreign_due or len(purged) or retired):
        return 0, None
    delta = Delta(
        prev_seq=state.seq, seq=state.seq + 1, removed=removed,
        foreign_removed=frozenset(key for _, key in foreign_due),
        expiring=((PURGED, BitMap64(purged)),) if len(purged) else (),
        rules_removed=retired, time=now,
    )
    delta = commit_change(txn, state, delta, {
        "kind": "sweep", "actor": "sweeper", "reason": "expired",
        "count": len(removed) + len(foreign_due), "expired": len(removed),
        "foreign_expired": len(foreign_due), "purged": len(purged),
        "rules_retired": [list(r) for r in sorted(retired)],
    })
    return delta.seq, delta


def presented(txn: WriteTxn, state: Mirror, op: Presented, now: int) -> tuple[int, Delta]:
    """Record recalled tokens presented again: an audit record under a change that changes nothing.

    Returns (its seq, the empty delta), which replicas apply as a no-op.
    """
    delta = Delta(prev_seq=state.seq, seq=state.seq + 1, time=now)
    delta = commit_change(txn, state, delta, {
        "kind": "presented_after_recall", "actor": op.actor, "reason": "a recalled token was presented again",
        "count": sum(t["count"] for t in op.tokens), "tokens": list(op.tokens),
        **_names("clients", [t["client"] for t in op.tokens]), **({"dropped": op.dropped} if op.dropped else {}),
    })
    return delta.seq, delta


def _purge(txn: WriteTxn, serials: np.ndarray, store_id: str) -> None:
    """Delete the records, indexes and revocation records of `serials`."""
    indexes: dict[tuple[str, str], BitMap64] = defaultdict(BitMap64)
    for serial in serials.tolist():
        record = txn.record(serial)
        if record is not None:
            txn.delete_jti(record.issuer, record.jti)
            for kind in NAME_INDEXES:
                name = getattr(record, kind)
                if name:
                    indexes[(kind, name)].add(serial)
            if serial_from_jti(record.jti, store_id) != serial:
                indexes[CUSTOM_JTI].add(serial)
            txn.delete_record(serial)
        txn.delete_revocation(serial)
        txn.delete_rotation(serial)
    for (kind, name), members in indexes.items():
        txn.update_index(kind, name, BitMap64(), members)
    txn.update_rotated(BitMap64(), BitMap64(serials))
    txn.set_expiries(serials, np.full(len(serials), PURGED, dtype=np.uint32))


def now_seconds() -> int:
    """Wall-clock Unix seconds (the default clock)."""
    return int(_time.time())
