"""The blocking client of the recall.v1 service.

Each method builds its request and parses the answer with `requests`, the
same helpers `AsyncRecallClient` uses; a failed call raises `RecallError`.
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc

from . import requests as rq
from ._proto.recall.v1 import recall_pb2 as pb
from ._proto.recall.v1 import recall_pb2_grpc
from .errors import rpc_errors
from .transport import Transport
from .types import (
    BatchResult,
    CheckResult,
    CutoffResult,
    Registered,
    RegisterResult,
    RevokeResult,
    RotateResult,
    Stats,
    TokenSpec,
    TokenType,
)


class RecallClient:
    """A connection to a recall.v1 server at `target` ("host:port").

    `timeout` is the deadline of every call in seconds (None: no deadline).
    Pass `channel` to reuse a channel you own; the client then leaves it
    open on close(). Usable as a context manager.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 10.0,
        channel: grpc.Channel | None = None,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        token: str | None = None,
    ) -> None:
        """`cacert` (TLS), `cert` and `key` (mutual TLS): paths of PEM files; `token`: a
        bearer credential's secret (see transport.Transport)."""
        self._owns_channel = channel is None
        self._channel = Transport(cacert, cert, key, token).channel(target) if channel is None else channel
        self._stub = recall_pb2_grpc.RecallStub(self._channel)
        self._timeout = timeout

    @property
    def channel(self) -> grpc.Channel:
        """The grpc channel the client calls over."""
        return self._channel

    def close(self) -> None:
        """Close the channel if the client created it."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "RecallClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def register(self, tokens: Iterable[TokenSpec], *, actor: str = "") -> RegisterResult:
        """Register issued tokens; return their serials in request order.

        Raises RecallError when the call fails.
        """
        with rpc_errors():
            resp = self._stub.Register(
                rq.register_request(tokens, actor), timeout=self._timeout
            )
        return rq.register_result(resp)

    def register_one(
        self,
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
        actor: str = "",
    ) -> Registered:
        """Register one token; `ttl` sets expires_at to (issued_at or now) + ttl.

        Returns its Registered. Raises ValueError for ttl with expires_at,
        RecallError when the call fails.
        """
        spec = rq.token_spec(
            subject, client_id, issuer=issuer, jti=jti, scopes=scopes, type=type,
            issued_at=issued_at, expires_at=expires_at, ttl=ttl, origin=origin, family=family,
        )
        return rq.only_token(self.register([spec], actor=actor))

    def revoke(
        self,
        *,
        serials: Iterable[int] = (),
        tokens: Iterable[rq.TokenRef] = (),
        subject: str = "",
        client_id: str = "",
        family: str = "",
        reason: str = "",
        actor: str = "",
        origin: str = "",
    ) -> RevokeResult:
        """Revoke every token the parts select (their union).

        `tokens` are JtiRef or (issuer, jti[, expires_at]) tuples. Returns
        the count newly revoked and the seq. Raises RecallError when the
        call fails (INVALID_ARGUMENT for an empty selector).
        """
        request = rq.revoke_request(
            serials=serials, tokens=tokens, subject=subject, client_id=client_id,
            family=family, reason=reason, actor=actor, origin=origin,
        )
        with rpc_errors():
            resp = self._stub.Revoke(request, timeout=self._timeout)
        return rq.revoke_result(resp)

    def check(
        self, serial: int | None = None, *, issuer: str = "", jti: str = "", min_seq: int = 0,
        sub: str = "", client_id: str = "", issued_at: int = 0,
    ) -> CheckResult:
        """Return the state of one token, by serial or by issuer and jti (an
        empty issuer is the server's default issuer).

        `min_seq` makes the server wait (within the deadline) until it has
        applied that seq. Raises RecallError when the call fails.
        """
        with rpc_errors():
            resp = self._stub.Check(
                rq.check_request(serial, issuer, jti, min_seq, sub, client_id, issued_at),
                timeout=self._timeout,
            )
        return rq.check_result(resp)

    def check_batch(
        self,
        serials: Sequence[int] = (),
        *,
        tokens: Iterable[rq.TokenRef] = (),
        min_seq: int = 0,
    ) -> BatchResult:
        """Return the states of many tokens, each list in request order.

        Raises ValueError for a serial that does not fit in uint64,
        RecallError when the call fails.
        """
        request = rq.check_batch_request(rq.pack_serials(serials), tokens, min_seq)
        with rpc_errors():
            resp = self._stub.CheckBatch(request, timeout=self._timeout)
        return rq.batch_result(resp)

    def check_batch_raw(self, packed: bytes, *, min_seq: int = 0) -> bytes:
        """Check packed little-endian uint64 serials; return the raw states
        bytes (one TokenState value per serial). Raises RecallError."""
        request = rq.check_batch_request(packed, (), min_seq)
        with rpc_errors():
            resp = self._stub.CheckBatch(request, timeout=self._timeout)
        return resp.states

    def introspect(
        self, serial: int | None = None, *, issuer: str = "", jti: str = ""
    ) -> dict[str, Any]:
        """Return RFC 7662 introspection of one token plus the recall fields
        (see requests.introspect_dict). Raises RecallError."""
        with rpc_errors():
            resp = self._stub.Introspect(
                rq.introspect_request(serial, issuer, jti), timeout=self._timeout
            )
        return rq.introspect_dict(resp)

    def stats(self) -> Stats:
        """Return the counts and identity of the store. Raises RecallError."""
        with rpc_errors():
            resp = self._stub.Stats(pb.StatsRequest(), timeout=self._timeout)
        return rq.stats_result(resp)

    def rotate(
        self,
        serial: int | None = None,
        *,
        issuer: str = "",
        jti: str = "",
        successor: TokenSpec | None = None,
        request_id: str = "",
        actor: str = "",
        origin: str = "",
    ) -> RotateResult:
        """Present a refresh token (serial, or issuer and jti) for rotation.

        `successor` may leave subject, client_id, scopes and issuer empty to
        inherit them. A reuse is an answer (outcome "REUSE_DETECTED"), not an
        error. Raises RecallError when the call fails.
        """
        request = rq.rotate_request(serial, issuer, jti, successor, request_id, actor, origin)
        with rpc_errors():
            resp = self._stub.Rotate(request, timeout=self._timeout)
        return rq.rotate_result(resp)

    def cutoff(
        self, scope: str, value: str = "", *, before: int = 0, reason: str = "", actor: str = ""
    ) -> CutoffResult:
        """Revoke every token of `scope` ("subject", "client", "issuer" or
        "all") `value` issued before `before` (0: now). Raises ValueError
        for an unknown scope, RecallError when the call fails."""
        request = rq.cutoff_request(scope, value, before, reason, actor)
        with rpc_errors():
            resp = self._stub.Cutoff(request, timeout=self._timeout)
        return rq.cutoff_result(resp)

    def audit(self, **query: Any) -> Iterator[dict[str, Any]]:
        """Yield audit records (see requests.audit_record) matching `query`:
        after_seq, serial, subject, client_id, since, until, limit, follow.
        With follow=True it keeps yielding new records until closed; no
        deadline applies then. Raises RecallError when the call fails."""
        request = rq.audit_request(**query)
        call = self._stub.AuditLog(request, timeout=None if request.follow else self._timeout)
        try:
            with rpc_errors():
                for event in call:
                    yield rq.audit_record(event)
        finally:
            call.cancel()
