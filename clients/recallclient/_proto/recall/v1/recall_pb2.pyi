from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_TYPE_UNSPECIFIED: _ClassVar[TokenType]
    ACCESS: _ClassVar[TokenType]
    REFRESH: _ClassVar[TokenType]

class TokenState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_STATE_UNSPECIFIED: _ClassVar[TokenState]
    ACTIVE: _ClassVar[TokenState]
    REVOKED: _ClassVar[TokenState]
    EXPIRED: _ClassVar[TokenState]
    UNKNOWN: _ClassVar[TokenState]
    ROTATED: _ClassVar[TokenState]
TOKEN_TYPE_UNSPECIFIED: TokenType
ACCESS: TokenType
REFRESH: TokenType
TOKEN_STATE_UNSPECIFIED: TokenState
ACTIVE: TokenState
REVOKED: TokenState
EXPIRED: TokenState
UNKNOWN: TokenState
ROTATED: TokenState

class TokenSpec(_message.Message):
    __slots__ = ("jti", "issuer", "subject", "client_id", "scopes", "type", "issued_at", "expires_at", "origin", "family")
    JTI_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    jti: str
    issuer: str
    subject: str
    client_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    type: TokenType
    issued_at: int
    expires_at: int
    origin: str
    family: str
    def __init__(self, jti: _Optional[str] = ..., issuer: _Optional[str] = ..., subject: _Optional[str] = ..., client_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., type: _Optional[_Union[TokenType, str]] = ..., issued_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., origin: _Optional[str] = ..., family: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("tokens", "actor")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenSpec]
    actor: str
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenSpec, _Mapping]]] = ..., actor: _Optional[str] = ...) -> None: ...

class RegisteredToken(_message.Message):
    __slots__ = ("serial", "jti", "canonical_jti", "existing", "status_list")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_JTI_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    STATUS_LIST_FIELD_NUMBER: _ClassVar[int]
    serial: int
    jti: str
    canonical_jti: str
    existing: bool
    status_list: StatusListReference
    def __init__(self, serial: _Optional[int] = ..., jti: _Optional[str] = ..., canonical_jti: _Optional[str] = ..., existing: _Optional[bool] = ..., status_list: _Optional[_Union[StatusListReference, _Mapping]] = ...) -> None: ...

class StatusListReference(_message.Message):
    __slots__ = ("idx", "uri")
    IDX_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    idx: int
    uri: str
    def __init__(self, idx: _Optional[int] = ..., uri: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("tokens", "seq")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[RegisteredToken]
    seq: int
    def __init__(self, tokens: _Optional[_Iterable[_Union[RegisteredToken, _Mapping]]] = ..., seq: _Optional[int] = ...) -> None: ...

class JtiRef(_message.Message):
    __slots__ = ("issuer", "jti", "expires_at", "sub", "client_id", "issued_at")
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SUB_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    issuer: str
    jti: str
    expires_at: int
    sub: str
    client_id: str
    issued_at: int
    def __init__(self, issuer: _Optional[str] = ..., jti: _Optional[str] = ..., expires_at: _Optional[int] = ..., sub: _Optional[str] = ..., client_id: _Optional[str] = ..., issued_at: _Optional[int] = ...) -> None: ...

class Selector(_message.Message):
    __slots__ = ("serials", "tokens", "subject", "client_id", "family")
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    serials: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedCompositeFieldContainer[JtiRef]
    subject: str
    client_id: str
    family: str
    def __init__(self, serials: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[_Union[JtiRef, _Mapping]]] = ..., subject: _Optional[str] = ..., client_id: _Optional[str] = ..., family: _Optional[str] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("selector", "reason", "actor", "origin")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    selector: Selector
    reason: str
    actor: str
    origin: str
    def __init__(self, selector: _Optional[_Union[Selector, _Mapping]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("count", "seq")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    count: int
    seq: int
    def __init__(self, count: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("serial", "issuer", "jti", "min_seq", "sub", "client_id", "issued_at")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    SUB_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    serial: int
    issuer: str
    jti: str
    min_seq: int
    sub: str
    client_id: str
    issued_at: int
    def __init__(self, serial: _Optional[int] = ..., issuer: _Optional[str] = ..., jti: _Optional[str] = ..., min_seq: _Optional[int] = ..., sub: _Optional[str] = ..., client_id: _Optional[str] = ..., issued_at: _Optional[int] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("state", "serial", "revoked_at", "reason", "seq")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    state: TokenState
    serial: int
    revoked_at: int
    reason: str
    seq: int
    def __init__(self, state: _Optional[_Union[TokenState, str]] = ..., serial: _Optional[int] = ..., revoked_at: _Optional[int] = ..., reason: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class CheckBatchRequest(_message.Message):
    __slots__ = ("serials", "tokens", "min_seq")
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    serials: bytes
    tokens: _containers.RepeatedCompositeFieldContainer[JtiRef]
    min_seq: int
    def __init__(self, serials: _Optional[bytes] = ..., tokens: _Optional[_Iterable[_Union[JtiRef, _Mapping]]] = ..., min_seq: _Optional[int] = ...) -> None: ...

class CheckBatchResponse(_message.Message):
    __slots__ = ("states", "token_states", "seq")
    STATES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_STATES_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    states: bytes
    token_states: _containers.RepeatedScalarFieldContainer[TokenState]
    seq: int
    def __init__(self, states: _Optional[bytes] = ..., token_states: _Optional[_Iterable[_Union[TokenState, str]]] = ..., seq: _Optional[int] = ...) -> None: ...

class IntrospectRequest(_message.Message):
    __slots__ = ("serial", "issuer", "jti")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    serial: int
    issuer: str
    jti: str
    def __init__(self, serial: _Optional[int] = ..., issuer: _Optional[str] = ..., jti: _Optional[str] = ...) -> None: ...

class IntrospectResponse(_message.Message):
    __slots__ = ("active", "scope", "client_id", "username", "token_type", "exp", "iat", "sub", "iss", "jti", "state", "serial", "origin", "family", "revoked_at", "reason", "actor")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXP_FIELD_NUMBER: _ClassVar[int]
    IAT_FIELD_NUMBER: _ClassVar[int]
    SUB_FIELD_NUMBER: _ClassVar[int]
    ISS_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    active: bool
    scope: str
    client_id: str
    username: str
    token_type: str
    exp: int
    iat: int
    sub: str
    iss: str
    jti: str
    state: TokenState
    serial: int
    origin: str
    family: str
    revoked_at: int
    reason: str
    actor: str
    def __init__(self, active: _Optional[bool] = ..., scope: _Optional[str] = ..., client_id: _Optional[str] = ..., username: _Optional[str] = ..., token_type: _Optional[str] = ..., exp: _Optional[int] = ..., iat: _Optional[int] = ..., sub: _Optional[str] = ..., iss: _Optional[str] = ..., jti: _Optional[str] = ..., state: _Optional[_Union[TokenState, str]] = ..., serial: _Optional[int] = ..., origin: _Optional[str] = ..., family: _Optional[str] = ..., revoked_at: _Optional[int] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("registered", "revoked", "active", "expired", "foreign_revoked", "seq", "store_id", "data_bytes", "map_bytes", "staleness", "max_map_bytes", "registrations_refused", "insecure")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_REVOKED_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    MAX_MAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    REGISTRATIONS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    registered: int
    revoked: int
    active: int
    expired: int
    foreign_revoked: int
    seq: int
    store_id: str
    data_bytes: int
    map_bytes: int
    staleness: float
    max_map_bytes: int
    registrations_refused: bool
    insecure: bool
    def __init__(self, registered: _Optional[int] = ..., revoked: _Optional[int] = ..., active: _Optional[int] = ..., expired: _Optional[int] = ..., foreign_revoked: _Optional[int] = ..., seq: _Optional[int] = ..., store_id: _Optional[str] = ..., data_bytes: _Optional[int] = ..., map_bytes: _Optional[int] = ..., staleness: _Optional[float] = ..., max_map_bytes: _Optional[int] = ..., registrations_refused: _Optional[bool] = ..., insecure: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("store_id", "after_seq", "with_expiries", "history")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    WITH_EXPIRIES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    after_seq: int
    with_expiries: bool
    history: bytes
    def __init__(self, store_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., with_expiries: _Optional[bool] = ..., history: _Optional[bytes] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("prev_seq", "seq", "added", "removed", "foreign_added", "foreign_removed", "registered_through", "expiring", "time", "rules_added", "rules_removed", "rotated", "history")
    PREV_SEQ_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_ADDED_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_REMOVED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RULES_ADDED_FIELD_NUMBER: _ClassVar[int]
    RULES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    ROTATED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    prev_seq: int
    seq: int
    added: bytes
    removed: bytes
    foreign_added: _containers.RepeatedScalarFieldContainer[int]
    foreign_removed: _containers.RepeatedScalarFieldContainer[int]
    registered_through: int
    expiring: _containers.RepeatedCompositeFieldContainer[ExpiryBucket]
    time: int
    rules_added: _containers.RepeatedCompositeFieldContainer[Rule]
    rules_removed: _containers.RepeatedCompositeFieldContainer[Rule]
    rotated: bytes
    history: bytes
    def __init__(self, prev_seq: _Optional[int] = ..., seq: _Optional[int] = ..., added: _Optional[bytes] = ..., removed: _Optional[bytes] = ..., foreign_added: _Optional[_Iterable[int]] = ..., foreign_removed: _Optional[_Iterable[int]] = ..., registered_through: _Optional[int] = ..., expiring: _Optional[_Iterable[_Union[ExpiryBucket, _Mapping]]] = ..., time: _Optional[int] = ..., rules_added: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., rules_removed: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., rotated: _Optional[bytes] = ..., history: _Optional[bytes] = ...) -> None: ...

class ExpiryBucket(_message.Message):
    __slots__ = ("expires_at", "serials")
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    expires_at: int
    serials: bytes
    def __init__(self, expires_at: _Optional[int] = ..., serials: _Optional[bytes] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("seq", "index", "count", "revoked", "foreign", "cardinality", "foreign_cardinality", "digest", "registered_through", "expiries_from", "expiries", "rules", "history", "rotated")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_FIELD_NUMBER: _ClassVar[int]
    CARDINALITY_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_CARDINALITY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    EXPIRIES_FROM_FIELD_NUMBER: _ClassVar[int]
    EXPIRIES_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ROTATED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    index: int
    count: int
    revoked: bytes
    foreign: _containers.RepeatedScalarFieldContainer[int]
    cardinality: int
    foreign_cardinality: int
    digest: bytes
    registered_through: int
    expiries_from: int
    expiries: bytes
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    history: bytes
    rotated: bytes
    def __init__(self, seq: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., revoked: _Optional[bytes] = ..., foreign: _Optional[_Iterable[int]] = ..., cardinality: _Optional[int] = ..., foreign_cardinality: _Optional[int] = ..., digest: _Optional[bytes] = ..., registered_through: _Optional[int] = ..., expiries_from: _Optional[int] = ..., expiries: _Optional[bytes] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., history: _Optional[bytes] = ..., rotated: _Optional[bytes] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("scope", "value", "before")
    class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SCOPE_UNSPECIFIED: _ClassVar[Rule.Scope]
        SUBJECT: _ClassVar[Rule.Scope]
        CLIENT: _ClassVar[Rule.Scope]
        ISSUER: _ClassVar[Rule.Scope]
        ALL: _ClassVar[Rule.Scope]
    SCOPE_UNSPECIFIED: Rule.Scope
    SUBJECT: Rule.Scope
    CLIENT: Rule.Scope
    ISSUER: Rule.Scope
    ALL: Rule.Scope
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    scope: Rule.Scope
    value: str
    before: int
    def __init__(self, scope: _Optional[_Union[Rule.Scope, str]] = ..., value: _Optional[str] = ..., before: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq", "cardinality", "foreign_cardinality", "digest", "time", "interval_ms")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CARDINALITY_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_CARDINALITY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    cardinality: int
    foreign_cardinality: int
    digest: bytes
    time: int
    interval_ms: int
    def __init__(self, seq: _Optional[int] = ..., cardinality: _Optional[int] = ..., foreign_cardinality: _Optional[int] = ..., digest: _Optional[bytes] = ..., time: _Optional[int] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class Reset(_message.Message):
    __slots__ = ("reason", "oldest_seq", "current_seq")
    REASON_FIELD_NUMBER: _ClassVar[int]
    OLDEST_SEQ_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    reason: str
    oldest_seq: int
    current_seq: int
    def __init__(self, reason: _Optional[str] = ..., oldest_seq: _Optional[int] = ..., current_seq: _Optional[int] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("store_id", "snapshot", "delta", "heartbeat", "reset", "head_seq", "vouched_at_us")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    VOUCHED_AT_US_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    snapshot: SnapshotChunk
    delta: Delta
    heartbeat: Heartbeat
    reset: Reset
    head_seq: int
    vouched_at_us: int
    def __init__(self, store_id: _Optional[str] = ..., snapshot: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reset: _Optional[_Union[Reset, _Mapping]] = ..., head_seq: _Optional[int] = ..., vouched_at_us: _Optional[int] = ...) -> None: ...

class RotateRequest(_message.Message):
    __slots__ = ("serial", "issuer", "jti", "successor", "actor", "origin", "request_id")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    SUCCESSOR_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    serial: int
    issuer: str
    jti: str
    successor: TokenSpec
    actor: str
    origin: str
    request_id: str
    def __init__(self, serial: _Optional[int] = ..., issuer: _Optional[str] = ..., jti: _Optional[str] = ..., successor: _Optional[_Union[TokenSpec, _Mapping]] = ..., actor: _Optional[str] = ..., origin: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RotateResponse(_message.Message):
    __slots__ = ("outcome", "successor", "state", "count", "seq", "family")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[RotateResponse.Outcome]
        ROTATED: _ClassVar[RotateResponse.Outcome]
        RETRIED: _ClassVar[RotateResponse.Outcome]
        REUSE_DETECTED: _ClassVar[RotateResponse.Outcome]
        REFUSED: _ClassVar[RotateResponse.Outcome]
    OUTCOME_UNSPECIFIED: RotateResponse.Outcome
    ROTATED: RotateResponse.Outcome
    RETRIED: RotateResponse.Outcome
    REUSE_DETECTED: RotateResponse.Outcome
    REFUSED: RotateResponse.Outcome
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SUCCESSOR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    outcome: RotateResponse.Outcome
    successor: RegisteredToken
    state: TokenState
    count: int
    seq: int
    family: str
    def __init__(self, outcome: _Optional[_Union[RotateResponse.Outcome, str]] = ..., successor: _Optional[_Union[RegisteredToken, _Mapping]] = ..., state: _Optional[_Union[TokenState, str]] = ..., count: _Optional[int] = ..., seq: _Optional[int] = ..., family: _Optional[str] = ...) -> None: ...

class CutoffRequest(_message.Message):
    __slots__ = ("rule", "reason", "actor")
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    rule: Rule
    reason: str
    actor: str
    def __init__(self, rule: _Optional[_Union[Rule, _Mapping]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class CutoffResponse(_message.Message):
    __slots__ = ("seq", "count", "before", "retires_at")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    RETIRES_AT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    count: int
    before: int
    retires_at: int
    def __init__(self, seq: _Optional[int] = ..., count: _Optional[int] = ..., before: _Optional[int] = ..., retires_at: _Optional[int] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ("after_seq", "serial", "subject", "client_id", "since", "until", "limit", "follow")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    serial: int
    subject: str
    client_id: str
    since: int
    until: int
    limit: int
    follow: bool
    def __init__(self, after_seq: _Optional[int] = ..., serial: _Optional[int] = ..., subject: _Optional[str] = ..., client_id: _Optional[str] = ..., since: _Optional[int] = ..., until: _Optional[int] = ..., limit: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("seq", "time", "type", "actor", "origin", "reason", "count", "detail")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: int
    type: str
    actor: str
    origin: str
    reason: str
    count: int
    detail: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[int] = ..., type: _Optional[str] = ..., actor: _Optional[str] = ..., origin: _Optional[str] = ..., reason: _Optional[str] = ..., count: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...
