"""What each write operation does, inside one write transaction.

Each function reads what it needs through `Txn`, raises a RecallError before
writing anything when the operation cannot proceed, writes its records, and,
when the operation changes the revocation state, logs a `Delta` and an audit
record under the next sequence number and applies the delta to `state` (the
writer's own mirror) so that later operations in the same transaction see it.
It returns (result, delta or None).
"""

import time as _time
from collections import defaultdict

import numpy as np
from pyroaring import BitMap64

from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.codec import delta_to_proto
from recallclient.jti import canonical_jti, foreign_key, looks_canonical
from recallclient.revoked_set import Delta
from recallclient.types import Registered, TokenSpec, RegisterResult, RevokeResult

from .errors import InvalidArgument
from .mirror import PURGED, Mirror
from .model import Register, Revoke, Selector, Sweep
from .settings import Settings
from .store import Txn, name_hash

INDEX_KINDS = {"subject": b"s", "client_id": b"c", "family": b"f"}
# Serials registered under a caller-chosen (not canonical) jti. When such a
# token is revoked, its (issuer, jti) key joins the foreign set too, so that
# replicas, which cannot look jtis up, still see it revoked by issuer + jti.
CUSTOM_JTI = b"j" + bytes(16)


def index_prefix(kind: str, name: str) -> bytes:
    """Key prefix of the per-subject / per-client / per-family bitmap of `name`."""
    return INDEX_KINDS[kind] + name_hash(name)


def _commit_change(txn: Txn, state: Mirror, delta: Delta, audit: dict) -> None:
    txn.put_meta_int(b"seq", delta.seq)
    txn.put_change(delta.seq, delta_to_proto(delta), {"seq": delta.seq, "time": delta.time, **audit})
    state.apply(delta)


def register(txn: Txn, state: Mirror, op: Register, now: int) -> tuple[RegisterResult, Delta | None]:
    """Assign serials to new tokens; known (issuer, jti) pairs keep theirs."""
    results: list[Registered] = []
    fresh: list[tuple[int, str, TokenSpec]] = []
    seen: dict[tuple[str, str], int] = {}
    serial = state.revocations.registered_through
    for i, spec in enumerate(op.tokens):
        if spec.jti:
            pair = (spec.issuer, spec.jti)
            known = seen.get(pair) or txn.serial_for(*pair)
            if known:
                results.append(Registered(known, spec.jti, canonical_jti(known), True))
                continue
            if looks_canonical(spec.jti):
                raise InvalidArgument(
                    f"tokens[{i}].jti: {spec.jti!r} has the canonical form this store "
                    "assigns (rc1.<serial>.<check>); leave jti empty to be given one"
                )
        serial += 1
        canonical = canonical_jti(serial)
        jti = spec.jti or canonical
        seen[(spec.issuer, jti)] = serial
        results.append(Registered(serial, jti, canonical, False))
        fresh.append((serial, jti, spec))
    if not fresh:
        return RegisterResult(tuple(results), state.seq), None

    indexes: dict[bytes, BitMap64] = defaultdict(BitMap64)
    expiring: dict[int, BitMap64] = defaultdict(BitMap64)
    for serial, jti, spec in fresh:
        txn.put_record(serial, pb.TokenSpec(
            jti=jti, issuer=spec.issuer, subject=spec.subject, client_id=spec.client_id,
            scopes=spec.scopes, type=int(spec.type), issued_at=spec.issued_at,
            expires_at=spec.expires_at, origin=spec.origin, family=spec.family,
        ))
        txn.put_jti(spec.issuer, jti, serial)
        for kind in INDEX_KINDS:
            name = getattr(spec, kind)
            if name:
                indexes[index_prefix(kind, name)].add(serial)
        if jti != canonical_jti(serial):
            indexes[CUSTOM_JTI].add(serial)
        expiring[spec.expires_at].add(serial)
    for prefix, serials in indexes.items():
        txn.update_bitmap("index", prefix, serials)
    txn.set_expiries(
        np.array([s for s, _, _ in fresh], dtype=np.uint64),
        np.array([spec.expires_at for _, _, spec in fresh], dtype=np.uint32),
    )
    txn.put_meta_int(b"serial", serial)

    first = fresh[0][0]
    delta = Delta(
        prev_seq=state.seq, seq=state.seq + 1, registered_through=serial,
        expiring=tuple(sorted(expiring.items())), time=now,
    )
    _commit_change(txn, state, delta, {
        "kind": "register", "actor": op.actor, "count": len(fresh),
        "first_serial": first, "last_serial": serial,
    })
    return RegisterResult(tuple(results), delta.seq), delta


def _covered(txn: Txn, state: Mirror, sel: Selector, now: int, settings: Settings) -> tuple[BitMap64, dict[int, int]]:
    """Registered serials and foreign keys (with expiry) the selector names."""
    serials = BitMap64(s for s in sel.serials if s <= state.revocations.registered_through)
    foreign: dict[int, int] = {}
    for ref in sel.tokens:
        serial = txn.serial_for(ref.issuer, ref.jti)
        if serial:
            serials.add(serial)
            continue
        expires_at = ref.expires_at or now + settings.max_token_lifetime
        if expires_at > now:
            foreign[foreign_key(ref.issuer, ref.jti)] = expires_at
    for kind in INDEX_KINDS:
        name = getattr(sel, kind)
        if name:
            serials |= txn.bitmap("index", index_prefix(kind, name))
    return serials, foreign


def revoke(txn: Txn, state: Mirror, op: Revoke, now: int, settings: Settings) -> tuple[RevokeResult, Delta | None]:
    """Revoke every registered, unexpired token and every foreign token selected."""
    serials, foreign = _covered(txn, state, op.selector, now, settings)
    serials -= state.revocations.revoked
    added = serials - state.expiry.expired_among(serials, now)
    new_foreign = {k: exp for k, exp in foreign.items() if not state.revocations.is_foreign_revoked(k)}
    if not added and not new_foreign:
        return RevokeResult(0, state.seq), None
    count = len(added) + len(new_foreign)
    for serial in txn.bitmap_over("index", CUSTOM_JTI, added).to_array():
        record = txn.record(serial)
        if record is not None:
            new_foreign[foreign_key(record.issuer, record.jti)] = record.expires_at
    seq = state.seq + 1
    txn.update_bitmap("revoked", b"", added)
    txn.put_revocations(added, seq)
    for key, expires_at in new_foreign.items():
        txn.put_foreign(key, expires_at, seq)
    delta = Delta(
        prev_seq=state.seq, seq=seq, added=added,
        foreign_added=frozenset(new_foreign), time=now,
    )
    _commit_change(txn, state, delta, {
        "kind": "revoke", "actor": op.actor, "reason": op.reason,
        "selector": op.selector.describe(), "count": count,
    })
    return RevokeResult(count, seq), delta


def sweep(txn: Txn, state: Mirror, op: Sweep, now: int, settings: Settings) -> tuple[int, Delta | None]:
    """Forget revocations of expired tokens; purge records past retention.

    Returns (seq of the change or 0, delta or None). Work per call is bounded
    by settings.purge_batch; the next sweep continues.
    """
    removed = state.expiry.expired_among(state.revocations.revoked, now)
    if removed:
        txn.update_bitmap("revoked", b"", BitMap64(), removed)
    foreign_due = txn.foreign_due(now, settings.purge_batch)
    for expires_at, key in foreign_due:
        txn.delete_foreign(key, expires_at)
    purged = state.expiry.purgeable(
        state.revocations.registered_through, now - settings.audit_retention, settings.purge_batch
    )
    if len(purged):
        _purge(txn, purged)
    txn.compact_log(state.seq - settings.log_keep, now - settings.log_keep_seconds, settings.purge_batch)
    if not (removed or foreign_due or len(purged)):
        return 0, None
    delta = Delta(
        prev_seq=state.seq, seq=state.seq + 1, removed=removed,
        foreign_removed=frozenset(key for _, key in foreign_due),
        expiring=((PURGED, BitMap64(purged)),) if len(purged) else (),
        time=now,
    )
    _commit_change(txn, state, delta, {
        "kind": "sweep", "actor": "sweeper", "reason": "expired",
        "count": len(removed) + len(foreign_due), "expired": len(removed),
        "foreign_expired": len(foreign_due), "purged": len(purged),
    })
    return delta.seq, delta


def _purge(txn: Txn, serials: np.ndarray) -> None:
    """Delete the records, indexes and revocation records of `serials`."""
    indexes: dict[bytes, BitMap64] = defaultdict(BitMap64)
    for serial in serials.tolist():
        record = txn.record(serial)
        if record is not None:
            txn.delete_jti(record.issuer, record.jti)
            for kind in INDEX_KINDS:
                name = getattr(record, kind)
                if name:
                    indexes[index_prefix(kind, name)].add(serial)
            if record.jti != canonical_jti(serial):
                indexes[CUSTOM_JTI].add(serial)
            txn.delete_record(serial)
        txn.delete_revocation(serial)
    for prefix, members in indexes.items():
        txn.update_bitmap("index", prefix, BitMap64(), members)
    txn.set_expiries(serials, np.full(len(serials), PURGED, dtype=np.uint32))


def now_seconds() -> int:
    """Wall-clock Unix seconds (the default clock)."""
    return int(_time.time())
