"""Request building and response parsing shared by the sync and asyncio clients.

Both clients are thin: each method builds its request here, makes one call,
and parses the answer here, so the mapping between the library's values
(`types`) and recall.v1 messages exists once. Nothing here does I/O.

The client checks only what it must to encode a request (packable serials,
well-formed token references, no ttl together with expires_at); the server
validates the meaning (e.g. an empty selector) and answers INVALID_ARGUMENT.
"""

import dataclasses
import json
import sys
import time
from array import array
from collections.abc import Iterable
from typing import Any

from ._proto.recall.v1 import recall_pb2 as pb
from .types import (
    BatchResult,
    CheckResult,
    CutoffResult,
    JtiRef,
    Registered,
    RegisterResult,
    RevokeResult,
    RotateResult,
    Stats,
    TokenSpec,
    TokenState,
    TokenType,
)

# Anything a caller may pass where a token reference is expected.
TokenRef = JtiRef | tuple[str, str] | tuple[str, str, int]

_STATES = tuple(TokenState)  # indexed by wire value: 0..4 are contiguous
_BIG_ENDIAN = sys.byteorder == "big"


# ---------------------------------------------------------------- encoding


def token_spec(
    subject: str,
    client_id: str,
    *,
    issuer: str = "",
    jti: str = "",
    scopes: Iterable[str] = (),
    type: TokenType = TokenType.ACCESS,
    issued_at: int = 0,
    expires_at: int = 0,
    ttl: int | None = None,
    origin: str = "",
    family: str = "",
) -> TokenSpec:
    """Return the TokenSpec for one token; `ttl` sets expires_at to
    (issued_at or now) + ttl. Raises ValueError when both ttl and
    expires_at are given."""
    if ttl is not None:
        if expires_at:
            raise ValueError("give ttl or expires_at, not both")
        expires_at = (issued_at or int(time.time())) + ttl
    return TokenSpec(
        subject=subject,
        client_id=client_id,
        issuer=issuer,
        jti=jti,
        scopes=tuple(scopes),
        type=TokenType(type),
        issued_at=issued_at,
        expires_at=expires_at,
        origin=origin,
        family=family,
    )


def register_request(tokens: Iterable[TokenSpec], actor: str) -> pb.RegisterRequest:
    """Return the RegisterRequest for `tokens`, in order."""
    return pb.RegisterRequest(
        tokens=[
            pb.TokenSpec(
                jti=t.jti,
                issuer=t.issuer,
                subject=t.subject,
                client_id=t.client_id,
                scopes=t.scopes,
                type=int(t.type),
                issued_at=t.issued_at,
                expires_at=t.expires_at,
                origin=t.origin,
                family=t.family,
            )
            for t in tokens
        ],
        actor=actor,
    )


def jti_ref(token: TokenRef) -> pb.JtiRef:
    """Return the wire JtiRef of a JtiRef or an (issuer, jti[, expires_at])
    tuple; raises TypeError for anything else."""
    if isinstance(token, JtiRef):
        return pb.JtiRef(
            issuer=token.issuer, jti=token.jti, expires_at=token.expires_at,
            sub=token.sub, client_id=token.client_id, issued_at=token.issued_at,
        )
    if isinstance(token, tuple) and len(token) in (2, 3):
        expires_at = token[2] if len(token) == 3 else 0
        return pb.JtiRef(issuer=token[0], jti=token[1], expires_at=expires_at)
    raise TypeError(f"expected JtiRef or (issuer, jti[, expires_at]), got {token!r}")


def revoke_request(
    *,
    serials: Iterable[int],
    tokens: Iterable[TokenRef],
    subject: str,
    client_id: str,
    family: str,
    reason: str,
    actor: str,
    origin: str = "",
) -> pb.RevokeRequest:
    """Return the RevokeRequest whose selector is the union of the parts."""
    selector = pb.Selector(
        serials=list(serials),
        tokens=[jti_ref(t) for t in tokens],
        subject=subject,
        client_id=client_id,
        family=family,
    )
    return pb.RevokeRequest(selector=selector, reason=reason, actor=actor, origin=origin)


def check_request(
    serial: int | None, issuer: str, jti: str, min_seq: int,
    sub: str = "", client_id: str = "", issued_at: int = 0,
) -> pb.CheckRequest:
    """Return the CheckRequest for a serial (None: by issuer and jti, with
    optional claims so cut-off rules apply to tokens never registered)."""
    return pb.CheckRequest(
        serial=serial or 0, issuer=issuer, jti=jti, min_seq=min_seq,
        sub=sub, client_id=client_id, issued_at=issued_at,
    )


def rotate_request(
    serial: int | None, issuer: str, jti: str, successor: TokenSpec | None,
    request_id: str, actor: str, origin: str,
) -> pb.RotateRequest:
    """Return the RotateRequest presenting a refresh token (serial, or issuer and jti)."""
    spec = successor or TokenSpec("", "")
    return pb.RotateRequest(
        serial=serial or 0, issuer=issuer, jti=jti, request_id=request_id, actor=actor, origin=origin,
        successor=pb.TokenSpec(
            subject=spec.subject, client_id=spec.client_id, issuer=spec.issuer, jti=spec.jti,
            scopes=list(spec.scopes), type=0,  # a successor is always a refresh token
            issued_at=spec.issued_at, expires_at=spec.expires_at, origin=spec.origin, family=spec.family,
        ),
    )


RULE_SCOPES = {"subject": pb.Rule.SUBJECT, "client": pb.Rule.CLIENT, "issuer": pb.Rule.ISSUER, "all": pb.Rule.ALL}


def cutoff_request(scope: str, value: str, before: int, reason: str, actor: str) -> pb.CutoffRequest:
    """Return the CutoffRequest; `scope` is "subject", "client", "issuer" or "all"."""
    if scope not in RULE_SCOPES:
        raise ValueError(f"scope must be one of {sorted(RULE_SCOPES)}, got {scope!r}")
    return pb.CutoffRequest(
        rule=pb.Rule(scope=RULE_SCOPES[scope], value=value, before=before), reason=reason, actor=actor,
    )


def audit_request(
    *, after_seq: int = 0, serial: int = 0, subject: str = "", client_id: str = "",
    since: int = 0, until: int = 0, limit: int = 0, follow: bool = False,
) -> pb.AuditRequest:
    """Return the AuditRequest for a query (all filters optional)."""
    return pb.AuditRequest(
        after_seq=after_seq, serial=serial, subject=subject, client_id=client_id,
        since=since, until=until, limit=limit, follow=follow,
    )


def pack_serials(serials: Iterable[int]) -> bytes:
    """Return `serials` packed as little-endian uint64; raises ValueError
    for a serial outside 0..2**64-1."""
    try:
        packed = array("Q", serials)
    except OverflowError as err:
        raise ValueError(f"serial does not fit in uint64: {err}") from None
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def check_batch_request(
    packed: bytes, tokens: Iterable[TokenRef], min_seq: int
) -> pb.CheckBatchRequest:
    """Return the CheckBatchRequest for packed serials and token refs."""
    return pb.CheckBatchRequest(
        serials=packed, tokens=[jti_ref(t) for t in tokens], min_seq=min_seq
    )


def introspect_request(serial: int | None, issuer: str, jti: str) -> pb.IntrospectRequest:
    """Return the IntrospectRequest for a serial (None: by issuer and jti)."""
    return pb.IntrospectRequest(serial=serial or 0, issuer=issuer, jti=jti)


# ---------------------------------------------------------------- decoding


def token_state(value: int) -> TokenState:
    """Return the TokenState of a wire value; raises ValueError if unknown."""
    if not 0 <= value < len(_STATES):
        raise ValueError(f"unknown token state {value}")
    return _STATES[value]


def unpack_states(data: bytes) -> tuple[TokenState, ...]:
    """Return the states in one-byte-per-serial `data`, in order; raises
    ValueError for a byte that is not a token state."""
    if data and max(data) >= len(_STATES):
        raise ValueError(f"unknown token state {max(data)}")
    return tuple(map(_STATES.__getitem__, data))


def register_result(resp: pb.RegisterResponse) -> RegisterResult:
    """Return the RegisterResult of a RegisterResponse."""
    return RegisterResult(tokens=tuple(registered(t) for t in resp.tokens), seq=resp.seq)


def only_token(result: RegisterResult) -> Registered:
    """Return the one token of a single-token Register; raises ValueError
    when the server answered some other number of tokens."""
    if len(result.tokens) != 1:
        raise ValueError(f"server answered {len(result.tokens)} tokens for one")
    return result.tokens[0]


def revoke_result(resp: pb.RevokeResponse) -> RevokeResult:
    """Return the RevokeResult of a RevokeResponse."""
    return RevokeResult(count=resp.count, seq=resp.seq)


def check_result(resp: pb.CheckResponse) -> CheckResult:
    """Return the CheckResult of a CheckResponse."""
    return CheckResult(
        state=token_state(resp.state),
        serial=resp.serial,
        revoked_at=resp.revoked_at,
        reason=resp.reason,
        seq=resp.seq,
    )


def batch_result(resp: pb.CheckBatchResponse) -> BatchResult:
    """Return the BatchResult of a CheckBatchResponse."""
    return BatchResult(
        states=unpack_states(resp.states),
        token_states=tuple(token_state(s) for s in resp.token_states),
        seq=resp.seq,
    )


def introspect_dict(resp: pb.IntrospectResponse) -> dict[str, Any]:
    """Return the RFC 7662 introspection dict of an IntrospectResponse.

    Active tokens get every field; for inactive tokens (RFC 7662 §2.2) only
    {"active": False} plus those of state, serial, revoked_at, reason and
    actor that are set. `state` is the TokenState name.
    """
    if resp.active:
        return {
            "active": True,
            "scope": resp.scope,
            "client_id": resp.client_id,
            "username": resp.username,
            "token_type": resp.token_type,
            "exp": resp.exp,
            "iat": resp.iat,
            "sub": resp.sub,
            "iss": resp.iss,
            "jti": resp.jti,
            "state": token_state(resp.state).name,
            "serial": resp.serial,
            "origin": resp.origin,
            "family": resp.family,
            "revoked_at": resp.revoked_at,
            "reason": resp.reason,
            "actor": resp.actor,
        }
    out: dict[str, Any] = {"active": False}
    if resp.state:
        out["state"] = token_state(resp.state).name
    for key in ("serial", "revoked_at", "reason", "actor"):
        value = getattr(resp, key)
        if value:
            out[key] = value
    return out


def stats_result(resp: pb.StatsResponse) -> Stats:
    """Return the Stats of a StatsResponse."""
    return Stats(**{field.name: getattr(resp, field.name) for field in dataclasses.fields(Stats)})


def registered(msg: pb.RegisteredToken) -> Registered:
    """The Registered of a wire RegisteredToken."""
    return Registered(msg.serial, msg.jti, msg.canonical_jti, msg.existing, msg.status_list.idx, msg.status_list.uri)


def rotate_result(resp: pb.RotateResponse) -> RotateResult:
    """Return the RotateResult of a RotateResponse."""
    return RotateResult(
        outcome=pb.RotateResponse.Outcome.Name(resp.outcome),
        successor=registered(resp.successor) if resp.HasField("successor") else None,
        state=token_state(resp.state), count=resp.count, seq=resp.seq, family=resp.family,
    )


def cutoff_result(resp: pb.CutoffResponse) -> CutoffResult:
    """Return the CutoffResult of a CutoffResponse."""
    return CutoffResult(resp.seq, resp.count, resp.before, resp.retires_at)


def audit_record(event: pb.AuditEvent) -> dict[str, Any]:
    """One audit event as a flat dict: seq, time, type, actor, origin, reason,
    count, plus the fields of its detail."""
    out: dict[str, Any] = {
        "seq": event.seq, "time": event.time, "type": event.type, "actor": event.actor,
        "origin": event.origin, "reason": event.reason, "count": event.count,
    }
    if event.detail:
        out.update(json.loads(event.detail))
    return out
