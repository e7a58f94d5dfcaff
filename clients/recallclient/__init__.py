"""Client library of recallcore: register, revoke and check OAuth 2.0 tokens.

`RecallClient` (blocking) and `AsyncRecallClient` (asyncio) call a
recall.v1 server; failed calls raise `RecallError`. Results are the frozen
dataclasses of `recallclient.types`. `Replica` (thread) and `AsyncReplica`
(asyncio) keep a local copy of the revoked set current over Watch and answer
`is_revoked` from memory; past their staleness limit they fail closed or
raise `StaleReplica`.
"""

import importlib

# Exports are loaded on first use, so that the protocol modules (jti,
# revoked_set, types, codec) can be imported without grpc: the server's pure
# core imports them.
_EXPORTS = {
    "AsyncRecallClient": "aio", "RecallClient": "client", "RecallError": "errors",
    "canonical_jti": "jti", "foreign_key": "jti", "opaque_jti": "jti", "serial_from_jti": "jti",
    "AsyncReplica": "replica", "Replica": "replica", "StaleReplica": "replica",
    "BatchResult": "types", "CheckResult": "types", "JtiRef": "types", "Registered": "types",
    "RegisterResult": "types", "RevokeResult": "types", "Stats": "types", "TokenSpec": "types",
    "TokenState": "types", "TokenType": "types",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
    "opaque_jti",
    "serial_from_jti",
]
