"""Client library of recallcore: register, revoke and check OAuth 2.0 tokens.

`RecallClient` (blocking) and `AsyncRecallClient` (asyncio) call a
recall.v1 server; failed calls raise `RecallError`. Results are the frozen
dataclasses of `recallclient.types`. `Replica` (thread) and `AsyncReplica`
(asyncio) keep a local copy of the revoked set current over Watch and answer
`is_revoked` from memory; past their staleness limit they fail closed or
raise `StaleReplica`.
"""

from .aio import AsyncRecallClient
from .client import RecallClient
from .errors import RecallError
from .jti import canonical_jti, foreign_key, serial_from_jti
from .replica import AsyncReplica, Replica, StaleReplica
from .types import (
    BatchResult,
    CheckResult,
    JtiRef,
    Registered,
    RegisterResult,
    RevokeResult,
    Stats,
    TokenSpec,
    TokenState,
    TokenType,
)

__all__ = [
    "AsyncRecallClient",
    "AsyncReplica",
    "BatchResult",
    "CheckResult",
    "JtiRef",
    "RecallClient",
    "RecallError",
    "RegisterResult",
    "Registered",
    "Replica",
    "RevokeResult",
    "StaleReplica",
    "Stats",
    "TokenSpec",
    "TokenState",
    "TokenType",
    "canonical_jti",
    "foreign_key",
    "serial_from_jti",
]
