"""Queries over the audit trail: by token (its trace), subject, client and time.

Every committed change writes exactly one audit record, keyed by the
change's sequence number, in the same transaction (operations.commit_change).
A token's trace is found through the indexes that already point at changes:
the registration that issued it (issuance), the rotation that replaced it
(rotations), the change that revoked it (revocations); its expiry is added
as a synthetic event once it is past. Records hold ids and metadata only.
"""

import dataclasses

from ..storage.base import ReadTxn


@dataclasses.dataclass(frozen=True)
class AuditQuery:
    after_seq: int = 0
    serial: int = 0
    subject: str = ""
    client_id: str = ""
    since: int = 0
    until: int = 0
    limit: int = 0


def trace_seqs(txn: ReadTxn, serial: int) -> set[int]:
    """Sequences of the changes that issued, rotated or revoked `serial`."""
    seqs = set()
    issued = txn.issued_by(serial)
    record = txn.audit(issued) if issued else None
    if record and (record.get("first_serial", 0) <= serial <= record.get("last_serial", 0)
                   or record.get("successor") == serial):
        seqs.add(issued)
    rotation = txn.rotation(serial)
    if rotation:
        seqs.add(rotation[2])
    revoked = txn.revoked_by(serial)
    if revoked:
        seqs.add(revoked)
    return seqs


def _in_range(record: dict, q: AuditQuery) -> bool:
    when = record.get("time", 0)
    return record.get("seq", 0) > q.after_seq and when >= q.since and (not q.until or when <= q.until)


def _names(txn: ReadTxn, record: dict, field: str, kind: str, name: str) -> bool:
    """True when `name` is among the record's subjects / clients.

    A record lists at most a few; past that it says so ("<field>_more") and
    the name's index is asked: which of its serials this change registered
    or revoked.
    """
    if name in record.get(field, ()):
        return True
    if not record.get(f"{field}_more"):
        return False
    serials = txn.index(kind, name)
    if "first_serial" in record:  # a registration: its serials are a range
        return serials.range_cardinality(record["first_serial"], record["last_serial"] + 1) > 0
    return any(txn.revoked_by(s) == record["seq"] for s in serials.to_array())


def matches(txn: ReadTxn, record: dict, q: AuditQuery) -> bool:
    """True when `record` passes the query's subject, client and time filters."""
    if not _in_range(record, q):
        return False
    if q.subject and not _names(txn, record, "subjects", "subject", q.subject):
        return False
    if q.client_id and not _names(txn, record, "clients", "client_id", q.client_id):
        return False
    return True


def query(txn: ReadTxn, q: AuditQuery, now: int) -> list[dict]:
    """Records matching `q`, oldest first, at most q.limit (0: all)."""
    if q.serial:
        out = [r for r in (txn.audit(s) for s in sorted(trace_seqs(txn, q.serial))) if r and matches(txn, r, q)]
        token = txn.record(q.serial)
        if token is not None and token.expires_at <= now and q.after_seq == 0:
            expired = {"seq": 0, "time": token.expires_at, "kind": "expired", "count": 1, "serial": q.serial}
            if matches(txn, expired, dataclasses.replace(q, after_seq=-1)):
                out.append(expired)
        out.sort(key=lambda r: (r["time"], r["seq"] or 2**63))
    else:
        out = []
        for record in txn.audit_after(q.after_seq):
            if matches(txn, record, q):
                out.append(record)
                if q.limit and len(out) >= q.limit:
                    break
    return out[: q.limit] if q.limit else out


def new_matches(txn: ReadTxn, q: AuditQuery, after: int) -> list[dict]:
    """Records after `after` that match `q` (a serial query matches its trace)."""
    out = []
    seqs = trace_seqs(txn, q.serial) if q.serial else None
    for record in txn.audit_after(after):
        if seqs is not None and record["seq"] not in seqs:
            continue
        if matches(txn, record, q):
            out.append(record)
    return out
