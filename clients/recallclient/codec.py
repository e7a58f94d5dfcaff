"""Conversions between recall.v1 messages and the library's values."""

import dataclasses
import hashlib

from pyroaring import BitMap64

from ._proto.recall.v1 import recall_pb2 as pb
from .revoked_set import Delta


def bitmap_bytes(bitmap: BitMap64) -> bytes:
    """Portable serialization of `bitmap`, empty bytes for an empty bitmap."""
    return bitmap.serialize() if bitmap else b""


def bitmap_from(data: bytes) -> BitMap64:
    """The BitMap64 in `data` (empty bytes for an empty bitmap)."""
    return BitMap64.deserialize(data) if data else BitMap64()


def delta_to_proto(delta: Delta) -> pb.Delta:
    """The wire form of `delta`."""
    return pb.Delta(
        prev_seq=delta.prev_seq,
        seq=delta.seq,
        added=bitmap_bytes(delta.added),
        removed=bitmap_bytes(delta.removed),
        foreign_added=sorted(delta.foreign_added),
        foreign_removed=sorted(delta.foreign_removed),
        registered_through=delta.registered_through,
        expiring=[
            pb.ExpiryBucket(expires_at=exp, serials=bitmap_bytes(serials))
            for exp, serials in delta.expiring
        ],
        time=delta.time,
        rules_added=[rule_to_proto(r) for r in sorted(delta.rules_added)],
        rules_removed=[rule_to_proto(r) for r in sorted(delta.rules_removed)],
        rotated=bitmap_bytes(delta.rotated),
        history=delta.history,
    )


def chained(previous: bytes, delta: Delta) -> tuple[Delta, bytes]:
    """(`delta` with its history, its wire form with the history).

    The history is BLAKE2b-128 of the previous history and the delta's wire
    form without it; the second wire form is what the change log stores.
    """
    msg = delta_to_proto(delta)
    msg.ClearField("history")
    h = hashlib.blake2b(previous, digest_size=16)
    h.update(msg.SerializeToString(deterministic=True))
    msg.history = h.digest()
    return dataclasses.replace(delta, history=msg.history), msg.SerializeToString()


def rule_to_proto(rule: tuple[int, str, int]) -> pb.Rule:
    scope, value, before = rule
    return pb.Rule(scope=scope, value=value, before=before)


def rule_from_proto(msg: pb.Rule) -> tuple[int, str, int]:
    return (msg.scope, msg.value, msg.before)


def delta_from_proto(msg: pb.Delta) -> Delta:
    """The Delta a wire message carries; raises ValueError when malformed."""
    return Delta(
        prev_seq=msg.prev_seq,
        seq=msg.seq,
        added=bitmap_from(msg.added),
        removed=bitmap_from(msg.removed),
        foreign_added=frozenset(msg.foreign_added),
        foreign_removed=frozenset(msg.foreign_removed),
        registered_through=msg.registered_through,
        expiring=tuple((b.expires_at, bitmap_from(b.serials)) for b in msg.expiring),
        time=msg.time,
        rules_added=frozenset(rule_from_proto(r) for r in msg.rules_added),
        rules_removed=frozenset(rule_from_proto(r) for r in msg.rules_removed),
        rotated=bitmap_from(msg.rotated),
        history=msg.history,
    )
