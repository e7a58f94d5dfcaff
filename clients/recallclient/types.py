"""Values the client library hands out: token states and call results."""

import dataclasses
import enum


class TokenState(enum.IntEnum):
    """The state of a token; the numbers are those of recall.v1.TokenState."""

    UNSPECIFIED = 0
    ACTIVE = 1
    REVOKED = 2
    EXPIRED = 3
    UNKNOWN = 4
    ROTATED = 5


class TokenType(enum.IntEnum):
    """The kind of a token; the numbers are those of recall.v1.TokenType."""

    ACCESS = 1
    REFRESH = 2


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """One issued token to register. Only `subject` and `client_id` are
    required; zero or empty fields take the server's defaults (issued_at:
    now, expires_at: issued_at + default lifetime, issuer: default issuer,
    jti: the canonical jti)."""

    subject: str
    client_id: str
    issuer: str = ""
    jti: str = ""
    scopes: tuple[str, ...] = ()
    type: TokenType = TokenType.ACCESS
    issued_at: int = 0
    expires_at: int = 0
    origin: str = ""
    family: str = ""


@dataclasses.dataclass(frozen=True)
class JtiRef:
    """A token by issuer and jti. `expires_at` matters only for tokens the
    store never registered (0: the server's maximum token lifetime)."""

    issuer: str
    jti: str
    expires_at: int = 0
    # Claims of a token never registered, so cut-off rules apply (Check only).
    sub: str = ""
    client_id: str = ""
    issued_at: int = 0


@dataclasses.dataclass(frozen=True)
class Registered:
    """One registered token: its serial, the jti it is registered under, its
    canonical jti, whether (issuer, jti) was registered before, and where
    its status is published (status_uri "" when the server publishes no
    Token Status Lists): put {"status_list": {"idx": status_idx, "uri":
    status_uri}} in the token's `status` claim."""

    serial: int
    jti: str
    canonical_jti: str
    existing: bool
    status_idx: int = 0
    status_uri: str = ""


@dataclasses.dataclass(frozen=True)
class RegisterResult:
    """The answer to a Register call, tokens in request order; `seq` is the
    change holding them (the current seq when every token already existed)."""

    tokens: tuple[Registered, ...]
    seq: int


@dataclasses.dataclass(frozen=True)
class RevokeResult:
    """Tokens newly revoked by a Revoke call and the seq that holds them."""

    count: int
    seq: int


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The state of one token; `serial` is 0 for tokens not registered here,
    `revoked_at` and `reason` are set when the state is REVOKED."""

    state: TokenState
    serial: int
    revoked_at: int
    reason: str
    seq: int


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """States of a CheckBatch call: `states` one per serial and
    `token_states` one per JtiRef, each in request order."""

    states: tuple[TokenState, ...]
    token_states: tuple[TokenState, ...]
    seq: int


@dataclasses.dataclass(frozen=True)
class Stats:
    """Counts and identity of a store (see recall.v1.StatsResponse)."""

    registered: int
    revoked: int
    active: int
    expired: int
    foreign_revoked: int
    seq: int
    store_id: str
    data_bytes: int
    map_bytes: int
    staleness: float = 0.0
    max_map_bytes: int = 0
    registrations_refused: bool = False
    insecure: bool = False


@dataclasses.dataclass(frozen=True)
class RotateResult:
    """What a rotation did.

    outcome: "ROTATED" (issue `successor`), "RETRIED" (a retry within the
    grace window: the same successor), "REUSE_DETECTED" (the family was
    revoked: refuse the refresh) or "REFUSED" (the presented token is not
    active: refuse the refresh). state: the presented token's state before.
    """

    outcome: str
    successor: Registered | None
    state: TokenState
    count: int
    seq: int
    family: str


@dataclasses.dataclass(frozen=True)
class CutoffResult:
    """A cut-off rule in force: its change, the registered tokens it revoked,
    its time, and when it retires by itself."""

    seq: int
    count: int
    before: int
    retires_at: int
