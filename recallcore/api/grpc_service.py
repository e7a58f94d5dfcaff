"""The gRPC adapter: decode a request, call the engine, encode the answer.

Expected errors (RecallError) become their status with the error's message;
anything else is logged and answers INTERNAL. This is the one place where
errors meet gRPC status codes.
"""

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import time

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc
from recallclient.types import JtiRef, TokenSpec, TokenState

from ..core import audit, status_list, validate
from ..core.audit import AuditQuery
from ..core.errors import InvalidArgument, RecallError, ResourceExhausted
from ..core.model import Claims, Selector
from ..engine import Engine, off_loop
from ..replication import watch
from ..security import identity
from ..security.gate import Gate
from ..security.identity import Caller
from ..security.policy import required_role
from .metrics import Metrics

log = logging.getLogger(__name__)

_RECALLED = (TokenState.REVOKED, TokenState.ROTATED)
# The keys every audit record has; the rest of a record goes to AuditEvent.detail.
_AUDIT_FIELDS = ("seq", "time", "kind", "actor", "origin", "reason", "count")


def audit_event(record: dict) -> pb.AuditEvent:
    """The AuditEvent of a stored audit record."""
    rest = {k: v for k, v in record.items() if k not in _AUDIT_FIELDS}
    return pb.AuditEvent(
        seq=record.get("seq", 0), time=record.get("time", 0), type=record.get("kind", ""),
        actor=record.get("actor", ""), origin=record.get("origin", ""), reason=record.get("reason", ""),
        count=record.get("count", 0), detail=json.dumps(rest, sort_keys=True, separators=(",", ":")),
    )


class Undecodable:
    """A request whose bytes did not decode: its handler answers INVALID_ARGUMENT."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class _RateLimitedLog:
    """One log line per `every` seconds at most, counting the ones held back."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last = -float("inf")
        self._held = 0

    def warning(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._held += 1
            return
        held, self._held, self._last = self._held, 0, now
        log.warning(message + (f" ({held} more since the last report)" if held else ""), *args)


_undecodable_log = _RateLimitedLog()


def decoder(message_type):
    """The request deserializer for `message_type`: bad bytes give an Undecodable, not a traceback."""

    def decode(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            why = str(exc) or "malformed protobuf"
            _undecodable_log.warning("undecodable %s: %s", message_type.DESCRIPTOR.name, why)
            return Undecodable(why)

    return decode


def _decoded(request) -> None:
    if isinstance(request, Undecodable):
        raise InvalidArgument(f"request could not be decoded: {request.error}")


async def _fail(context: grpc.aio.ServicerContext, name: str, exc: Exception) -> None:
    if isinstance(exc, RecallError):
        await context.abort(getattr(grpc.StatusCode, exc.status), str(exc))
    log.exception("%s failed", name)
    await context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error")


def admit(gate: Gate, context: grpc.aio.ServicerContext, method: str, request=None) -> Caller:
    """The caller of this call, authenticated and authorized for `method` (raises the RecallError)."""
    cert_identity = identity.from_certificate(context.auth_context())
    authorization = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), "")
    caller = gate.identify(cert_identity, authorization, context.peer())
    scope = request.rule.scope if method == "Cutoff" else 0
    gate.authorize(caller, required_role(method, scope))
    return caller


def _registered(token, settings) -> pb.RegisteredToken:
    """The wire form of a registered token, with its status list reference when lists are published."""
    out = pb.RegisteredToken(serial=token.serial, jti=token.jti, canonical_jti=token.canonical_jti,
                             existing=token.existing)
    if settings.status_list_uri:
        number, idx = status_list.reference(token.serial, settings.status_list_size)
        out.status_list.idx, out.status_list.uri = idx, status_list.uri(settings.status_list_uri, number)
    return out


def _rpc(method):
    """Admit the caller (the gate), map RecallError to its status and bugs to INTERNAL.

    The wrapped handler is called as method(self, request, context, caller).
    """
    name = method.__name__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self, request, context: grpc.aio.ServicerContext):
            started, code = time.perf_counter(), "OK"
            try:
                _decoded(request)
                caller = self.admit(context, name, request)
                async for item in method(self, request, context, caller):
                    yield item
            except (grpc.aio.AbortError, grpc.RpcError):
                code = _code(context)
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                code = _status_of(exc)
                await _fail(context, name, exc)
            finally:
                self.metrics.rpc(name, code, time.perf_counter() - started)

        return streaming

    @functools.wraps(method)
    async def handler(self, request, context: grpc.aio.ServicerContext):
        started, code = time.perf_counter(), "OK"
        try:
            _decoded(request)
            caller = self.admit(context, name, request)
            return await method(self, request, context, caller)
        except (grpc.aio.AbortError, grpc.RpcError):
            code = _code(context)
            raise
        except Exception as exc:
            code = _status_of(exc)
            await _fail(context, name, exc)
        finally:
            self.metrics.rpc(name, code, time.perf_counter() - started)

    return handler


def _status_of(exc: Exception) -> str:
    return exc.status if isinstance(exc, RecallError) else "INTERNAL"


def _code(context) -> str:
    code = context.code()
    return getattr(code, "name", None) or str(code or "UNKNOWN")


def _spec(msg: pb.TokenSpec, field: str, settings) -> TokenSpec:
    """The TokenSpec of a message; its scope count is checked before they are copied."""
    if len(msg.scopes) > settings.max_scopes:
        raise ResourceExhausted(f"{field}.scopes: {len(msg.scopes)} scopes exceed the limit of {settings.max_scopes}")
    return TokenSpec(
        subject=msg.subject, client_id=msg.client_id, issuer=msg.issuer, jti=msg.jti,
        scopes=tuple(msg.scopes), type=msg.type, issued_at=msg.issued_at,
        expires_at=msg.expires_at, origin=msg.origin, family=msg.family,
    )


def _specs(tokens, settings) -> list[TokenSpec]:
    return [_spec(t, f"tokens[{i}]", settings) for i, t in enumerate(tokens)]


def _selector(msg: pb.Selector) -> Selector:
    return Selector(
        serials=tuple(msg.serials),
        tokens=tuple(JtiRef(t.issuer, t.jti, t.expires_at) for t in msg.tokens),
        subject=msg.subject, client_id=msg.client_id, family=msg.family,
    )


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e9 else None


class GuardedHealth(health.aio.HealthServicer):
    """The gRPC health service behind the gate: it needs the role "check"."""

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    async def _admitted(self, context) -> bool:
        try:
            admit(self.gate, context, "Health")
        except RecallError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.status), str(exc))
        return True

    async def Check(self, request, context):
        await self._admitted(context)
        return await super().Check(request, context)

    async def Watch(self, request, context):
        await self._admitted(context)
        await super().Watch(request, context)  # writes with context.write


class RecallService(recall_pb2_grpc.RecallServicer):
    """recall.v1.Recall over an Engine."""

    def __init__(self, engine: Engine, gate: Gate | None = None, metrics=None, presented=None) -> None:
        self.engine = engine
        self.gate = gate if gate is not None else Gate()
        self.metrics = metrics if metrics is not None else Metrics(engine)
        self.presented = presented

    def admit(self, context, method: str, request) -> Caller:
        return admit(self.gate, context, method, request)

    # Counts are checked on the message itself, before anything is converted:
    # an oversized request costs what decoding it did, nothing more.

    @_rpc
    async def Register(self, request, context, caller):
        settings = self.engine.settings
        validate.count(len(request.tokens), "tokens", settings)
        tokens = await off_loop(len(request.tokens), _specs, request.tokens, settings)
        result = await self.engine.register(tokens, request.actor, caller=caller)
        return pb.RegisterResponse(tokens=[_registered(t, settings) for t in result.tokens], seq=result.seq)

    @_rpc
    async def Revoke(self, request, context, caller):
        sel = request.selector
        size = len(sel.serials) + len(sel.tokens)
        validate.count(size, "selector.serials+tokens", self.engine.settings)
        selector = await off_loop(size, _selector, sel)
        result = await self.engine.revoke(selector, request.reason, request.actor, request.origin, caller=caller)
        return pb.RevokeResponse(count=result.count, seq=result.seq)

    @_rpc
    async def Check(self, request, context, caller):
        settings = self.engine.settings
        ref = validate.token_ref(request.serial, request.issuer, request.jti, settings)
        validate.claims(request.sub, request.client_id, request.issued_at, settings)
        if request.min_seq:
            await self.engine.wait_for_seq(request.min_seq, _timeout(context))
        result = await self.engine.check(ref, Claims(request.sub, request.client_id, request.issued_at))
        self.metrics.checked(result.state)
        if result.state in _RECALLED and self.presented is not None:
            issuer, jti = (ref.issuer, ref.jti) if not isinstance(ref, int) else ("", "")
            self.presented.saw(result.serial, issuer, jti, request.client_id, caller.identity)
        return pb.CheckResponse(
            state=result.state, serial=result.serial, revoked_at=result.revoked_at,
            reason=result.reason, seq=result.seq,
        )

    @_rpc
    async def CheckBatch(self, request, context, caller):
        settings = self.engine.settings
        validate.count(len(request.serials) // 8 + len(request.tokens), "serials+tokens", settings)
        refs, claims = [], []
        for i, t in enumerate(request.tokens):
            refs.append(validate.jti_ref(JtiRef(t.issuer, t.jti), f"tokens[{i}]", settings))
            validate.claims(t.sub, t.client_id, t.issued_at, settings, f"tokens[{i}].")
            claims.append(Claims(t.sub, t.client_id, t.issued_at))
        if request.min_seq:
            await self.engine.wait_for_seq(request.min_seq, _timeout(context))
        states = self.engine.check_packed(request.serials)
        seq = self.engine.state.seq
        token_states = await self.engine.check_refs(refs, claims)
        self.metrics.checked_many(states)
        self.metrics.checked_many(bytes(token_states))
        if self.presented is not None:
            for ref, state, claim in zip(refs, token_states, claims):
                if state in _RECALLED:
                    self.presented.saw(0, ref.issuer, ref.jti, claim.client_id, caller.identity)
        return pb.CheckBatchResponse(states=states, token_states=token_states, seq=seq)

    @_rpc
    async def Introspect(self, request, context, caller):
        ref = validate.token_ref(request.serial, request.issuer, request.jti, self.engine.settings)
        return pb.IntrospectResponse(**await self.engine.introspect(ref))

    @_rpc
    async def Stats(self, request, context, caller):
        stats = await self.engine.stats()
        return pb.StatsResponse(**{f: getattr(stats, f) for f in pb.StatsResponse.DESCRIPTOR.fields_by_name})

    @_rpc
    async def Rotate(self, request, context, caller):
        ref = validate.token_ref(request.serial, request.issuer, request.jti, self.engine.settings)
        result = await self.engine.rotate(
            ref, _spec(request.successor, "successor", self.engine.settings), request.actor, request.origin,
            request.request_id, caller=caller,
        )
        successor = result.successor
        return pb.RotateResponse(
            outcome=getattr(pb.RotateResponse, result.outcome), state=result.state, count=result.count,
            seq=result.seq, family=result.family,
            successor=pb.RegisteredToken(
                serial=successor.serial, jti=successor.jti, canonical_jti=successor.canonical_jti,
                existing=successor.existing,
            ) if successor else None,
        )

    @_rpc
    async def Cutoff(self, request, context, caller):
        rule = request.rule
        result = await self.engine.cutoff(rule.scope, rule.value, rule.before, request.reason, request.actor,
                                          caller=caller)
        return pb.CutoffResponse(seq=result.seq, count=result.count, before=result.before,
                                 retires_at=result.retires_at)

    @_rpc
    async def AuditLog(self, request, context, caller):
        """Matching audit records, then (with follow) new ones as they commit.

        Encoded bytes (registered without a response serializer): records
        from the follow feed are encoded once for every stream.
        """
        with self.gate.stream(caller, "AuditLog"):
            left = request.limit
            async with contextlib.aclosing(self._audit_log(request)) as payloads:
                async for payload in payloads:
                    yield payload
                    left -= 1
                    if not left:  # with no limit, `left` goes negative and never reaches 0
                        break

    async def _audit_log(self, request):
        settings = self.engine.settings
        validate.string(request.subject, "subject", settings)
        validate.string(request.client_id, "client_id", settings)
        if request.serial:
            validate.serial(request.serial, "serial")
        if request.after_seq > validate.MAX_SERIAL:
            raise InvalidArgument(f"after_seq: {request.after_seq} is beyond any sequence")
        q = AuditQuery(request.after_seq, request.serial, request.subject, request.client_id,
                       request.since, request.until, request.limit)
        head = self.engine.state.seq  # the query reads up to here; following goes on from here
        # A follower keeps no trail: it has no feed, and audit_pages says where the trail is.
        feed = getattr(self.engine, "audit_feed", None) if request.follow else None
        if feed is not None:
            feed.followers += 1  # before the first await: the feed keeps what commits meanwhile
        try:
            async for payload in self._stored(q, request.after_seq, head):
                yield payload
            cursor = max(request.after_seq, head)
            while feed is not None and not feed.closed:
                entries = feed.since(cursor)
                if entries is None:  # fell behind the feed: catch up from the store
                    upto = feed.read_to
                    async for payload in self._stored(dataclasses.replace(q, after_seq=cursor), cursor, upto):
                        yield payload
                    cursor = upto
                    continue
                if not entries:
                    await feed.wait(settings.heartbeat_interval)
                    continue
                cursor = entries[-1].seq
                for entry in await self._following(q, entries):
                    if entry.payload is None:
                        entry.payload = audit_event(entry.record).SerializeToString()
                    yield entry.payload
        finally:
            if feed is not None:
                feed.followers -= 1

    async def _stored(self, q: AuditQuery, after: int, upto: int):
        """The encoded records matching `q` with after < seq <= upto, read from the store in pages.

        A token's trace comes whole: its records past `upto` are the feed's to send; its
        synthetic expiry (seq 0) is sent with the rest.
        """
        async for records in self.engine.audit_pages(q, upto):
            for record in records:
                if record["seq"] == 0 or after < record["seq"] <= upto:
                    yield audit_event(record).SerializeToString()

    async def _following(self, q: AuditQuery, entries: list) -> list:
        """The feed entries a follow stream sends: filters by name or token read the store."""
        if not (q.subject or q.client_id or q.serial):
            return [e for e in entries if audit.in_range(e.record, q)]
        wanted = {r["seq"] for r in await self.engine.audit_follows(q, [e.record for e in entries])}
        return [e for e in entries if e.seq in wanted]

    @_rpc
    async def Watch(self, request, context, caller):
        """Stream encoded WatchEvents (registered without a response serializer)."""
        validate.string(request.store_id, "store_id", self.engine.settings)
        with self.gate.stream(caller, "Watch"):
            async for payload in watch.stream(self.engine, request):
                yield payload
