"""Queries over the audit trail: by token (its trace), subject, client and time.

Every committed change writes exactly one audit record, keyed by the
change's sequence number, in the same transaction (operations.commit_change).
A token's trace is found through the indexes that already point at changes:
the registration that issued it (issuance), the rotation that replaced it
(rotations), the change that revoked it (revocations); its expiry is added
as a synthetic event once it is past. Records hold ids and metadata only.

Queries read in pages of at most PAGE records from a cursor (the last seq
looked at), so a query over millions of records holds one page at a time;
a subject or client filter reads only the records that its name index
points at (`ReadTxn.audit_naming`), and those that name more than they
list are checked against the name's token index once per page.
"""

import dataclasses

from ..storage.base import ReadTxn

PAGE = 256  # records read in one go: a query's memory is bounded by a page, never its whole result


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


def in_range(record: dict, q: AuditQuery) -> bool:
    """True when `record` passes the query's seq and time bounds (its other filters need the store)."""
    when = record.get("time", 0)
    return record.get("seq", 0) > q.after_seq and when >= q.since and (not q.until or when <= q.until)


_FIELDS = {"subject": ("subjects", "subject"), "client_id": ("clients", "client_id")}


class _Filter:
    """The subject and client filters of one query, inside one read transaction.

    A record lists at most a few names; past that it says so
    ("<field>_more") and the name's own index answers: which of its serials
    the change registered (a range) or revoked (its logged delta; once the
    log is compacted, the revocation records of the name's serials, read
    once per filter). The name's serials are read once per filter, too.
    """

    def __init__(self, txn: ReadTxn, q: AuditQuery) -> None:
        self.txn, self.q = txn, q
        self._serials: dict[str, object] = {}
        self._revoking: dict[str, set[int]] = {}

    def matches(self, record: dict) -> bool:
        if not in_range(record, self.q):
            return False
        return all(self._names(record, kind, name) for kind, name in
                   (("subject", self.q.subject), ("client_id", self.q.client_id)) if name)

    def _names(self, record: dict, kind: str, name: str) -> bool:
        field, index = _FIELDS[kind]
        if name in record.get(field, ()):
            return True
        if not record.get(f"{field}_more"):
            return False
        serials = self._serials.get(kind)
        if serials is None:
            serials = self._serials[kind] = self.txn.index(index, name)
        if "first_serial" in record:  # a registration: its serials are a range
            return serials.range_cardinality(record["first_serial"], record["last_serial"] + 1) > 0
        serial = record.get("serial")  # the presented token of a reuse
        if serial and serial in serials:
            return True
        delta = self.txn.delta(record["seq"])
        if delta is not None:
            return bool(delta.added & serials)
        revoking = self._revoking.get(kind)
        if revoking is None:
            revoking = self._revoking[kind] = {self.txn.revoked_by(s) for s in serials.to_array()}
        return record["seq"] in revoking


def trace(txn: ReadTxn, q: AuditQuery, now: int) -> list[dict]:
    """The records of token q.serial matching `q` (its trace; a few records), oldest first."""
    f = _Filter(txn, q)
    out = [r for r in (txn.audit(s) for s in sorted(trace_seqs(txn, q.serial))) if r and f.matches(r)]
    token = txn.record(q.serial)
    if token is not None and token.expires_at <= now and q.after_seq == 0:
        expired = {"seq": 0, "time": token.expires_at, "kind": "expired", "count": 1, "serial": q.serial}
        if _Filter(txn, dataclasses.replace(q, after_seq=-1)).matches(expired):
            out.append(expired)
    out.sort(key=lambda r: (r["time"], r["seq"] or 2**63))
    return out[: q.limit] if q.limit else out


def page(txn: ReadTxn, q: AuditQuery, after: int, upto: int, limit: int, scan: int = 4 * PAGE) -> tuple[list[dict], int]:
    """Records matching `q` (not a trace) with after < seq <= upto, oldest first.

    At most `limit` records, looking at most at `scan` candidates: returns
    (records, the last seq looked at); the next page starts after it, and
    the query is done when that is `upto`. A subject or client filter reads
    only the records its name index lists (see storage: audit_naming).
    """
    f = _Filter(txn, q)
    out: list[dict] = []
    name_kind = "subject" if q.subject else "client_id" if q.client_id else ""
    if name_kind:
        candidates = ((seq, None) for seq in txn.audit_naming(name_kind, q.subject or q.client_id, after))
    else:
        candidates = ((r["seq"], r) for r in txn.audit_after(after))
    looked = 0
    for seq, record in candidates:
        if seq > upto:
            break
        record = record if record is not None else txn.audit(seq)
        looked += 1
        if record is not None and f.matches(record):
            out.append(record)
        if len(out) >= limit or looked >= scan:
            return out, seq
    return out, upto


def follows(txn: ReadTxn, q: AuditQuery, records: list[dict]) -> list[dict]:
    """Those of `records` (new ones, oldest first) that match `q`; a serial query matches its trace."""
    seqs = trace_seqs(txn, q.serial) if q.serial else None
    f = _Filter(txn, q)
    return [r for r in records if (seqs is None or r["seq"] in seqs) and f.matches(r)]
