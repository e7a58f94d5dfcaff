"""Values both engines store alike: token records (a recall.v1.TokenSpec protobuf) and bitmap chunks."""

from pyroaring import BitMap64
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.revoked_set import split
from recallclient.types import TokenSpec, TokenType


def encode_record(spec: TokenSpec) -> bytes:
    return pb.TokenSpec(
        jti=spec.jti, issuer=spec.issuer, subject=spec.subject, client_id=spec.client_id,
        scopes=spec.scopes, type=int(spec.type), issued_at=spec.issued_at,
        expires_at=spec.expires_at, origin=spec.origin, family=spec.family,
    ).SerializeToString()


def decode_record(data: bytes) -> TokenSpec:
    m = pb.TokenSpec.FromString(data)
    return TokenSpec(
        subject=m.subject, client_id=m.client_id, issuer=m.issuer, jti=m.jti, scopes=tuple(m.scopes),
        type=TokenType(m.type) if m.type in (TokenType.ACCESS, TokenType.REFRESH) else m.type,
        issued_at=m.issued_at, expires_at=m.expires_at, origin=m.origin, family=m.family,
    )


def touched_chunks(add: BitMap64, remove: BitMap64, bits: int) -> list[int]:
    """The chunks (serial >> bits) that adding `add` and removing `remove` change, in order."""
    return sorted({c for c, _ in split(add, bits)} | {c for c, _ in split(remove, bits)})


def updated_chunk(stored: BitMap64 | None, chunk: int, add: BitMap64, remove: BitMap64, bits: int) -> BitMap64:
    """Chunk `chunk` of a bitmap (`stored`, None: empty) with `add` added and `remove` removed, run-optimised.

    `stored` is changed in place and returned (callers pass one they just
    deserialized: copying a chunk cost as much as the rest of a revocation).
    """
    bitmap = stored if stored is not None else BitMap64()
    span = BitMap64()
    span.add_range(chunk << bits, (chunk + 1) << bits)
    bitmap |= add & span
    bitmap -= remove & span
    bitmap.run_optimize()
    return bitmap
