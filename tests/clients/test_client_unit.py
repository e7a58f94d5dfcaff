"""RecallClient and AsyncRecallClient against a fake servicer on a real grpc server.

`FakeRecall` records every request and answers from small in-memory tables;
test_recallctl_unit.py reuses it through `running`.
"""

import asyncio
import contextlib
import socket
import sys
import time
from array import array
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from recallclient import (
    AsyncRecallClient,
    BatchResult,
    CheckResult,
    JtiRef,
    RecallClient,
    RecallError,
    Registered,
    RegisterResult,
    RevokeResult,
    Stats,
    TokenSpec,
    TokenState,
    TokenType,
    canonical_jti,
)
from recallclient import requests as rq
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

REVOKED_AT = 1795773600  # 2026-11-27T10:00:00Z
STATS = pb.StatsResponse(
    registered=10, revoked=2, active=7, expired=1, foreign_revoked=3, seq=17,
    store_id="store-a", data_bytes=4096, map_bytes=1 << 20, max_map_bytes=1 << 30,
)


class FakeRecall(recall_pb2_grpc.RecallServicer):
    """Records (method, request) pairs; answers from `states` (serial →
    TokenState), `foreign` (revoked (issuer, jti) pairs) and canned values.
    Set `fail` to (code, message) to make every call abort with it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, object]] = []
        self.fail: tuple[grpc.StatusCode, str] | None = None
        self.states: dict[int, TokenState] = {12: TokenState.REVOKED, 13: TokenState.EXPIRED}
        self.foreign: set[tuple[str, str]] = {("https://idp", "ext-1")}
        self.seq = 17

    def _record(self, name: str, request: object, context: grpc.ServicerContext) -> None:
        self.requests.append((name, request))
        if self.fail is not None:
            context.abort(*self.fail)

    def _state(self, serial: int) -> TokenState:
        return self.states.get(serial, TokenState.ACTIVE if serial <= 100 else TokenState.UNKNOWN)

    def Register(self, request, context):
        self._record("Register", request, context)
        tokens = []
        for index, spec in enumerate(request.tokens):
            serial = 101 + index
            tokens.append(pb.RegisteredToken(
                serial=serial, jti=spec.jti or canonical_jti(serial),
                canonical_jti=canonical_jti(serial), existing=spec.jti == "old",
            ))
        return pb.RegisterResponse(tokens=tokens, seq=self.seq)

    def Revoke(self, request, context):
        self._record("Revoke", request, context)
        sel = request.selector
        return pb.RevokeResponse(count=len(sel.serials) + len(sel.tokens), seq=self.seq)

    def Check(self, request, context):
        self._record("Check", request, context)
        if request.jti:
            revoked = (request.issuer, request.jti) in self.foreign
            state = TokenState.REVOKED if revoked else TokenState.UNKNOWN
        else:
            state = self._state(request.serial)
        if state is TokenState.REVOKED:
            return pb.CheckResponse(state=state, serial=request.serial, revoked_at=REVOKED_AT,
                                    reason="leaked", seq=self.seq)
        return pb.CheckResponse(state=state, serial=request.serial, seq=self.seq)

    def CheckBatch(self, request, context):
        self._record("CheckBatch", request, context)
        serials = array("Q", request.serials)
        if sys.byteorder == "big":
            serials.byteswap()
        token_states = [
            TokenState.REVOKED if (t.issuer, t.jti) in self.foreign else TokenState.UNKNOWN
            for t in request.tokens
        ]
        return pb.CheckBatchResponse(
            states=bytes(self._state(s) for s in serials), token_states=token_states,
            seq=self.seq,
        )

    def Introspect(self, request, context):
        self._record("Introspect", request, context)
        if self._state(request.serial) is TokenState.REVOKED:
            return pb.IntrospectResponse(
                active=False, state=TokenState.REVOKED, serial=request.serial,
                revoked_at=REVOKED_AT, reason="leaked", actor="alice", sub="hidden",
            )
        if request.jti:
            return pb.IntrospectResponse(active=False, state=TokenState.UNKNOWN)
        return pb.IntrospectResponse(
            active=True, scope="read write", client_id="app", username="u1",
            token_type="access_token", exp=2000, iat=1000, sub="u1", iss="https://idp",
            jti=canonical_jti(request.serial), state=TokenState.ACTIVE, serial=request.serial,
            origin="node-1", family="fam",
        )

    def Stats(self, request, context):
        self._record("Stats", request, context)
        return STATS


@contextlib.contextmanager
def running(servicer: FakeRecall) -> Iterator[str]:
    """Serve `servicer` on 127.0.0.1:0; yield its target, stop it after."""
    with futures.ThreadPoolExecutor(max_workers=4) as pool:
        server = grpc.server(pool)
        recall_pb2_grpc.add_RecallServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(None).wait()


def closed_target() -> str:
    """A 127.0.0.1 address nothing listens on (a port just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def fake() -> FakeRecall:
    return FakeRecall()


@pytest.fixture
def fake_client(fake: FakeRecall) -> Iterator[RecallClient]:
    with running(fake) as target, RecallClient(target) as recall:
        yield recall


def test_register_maps_every_field_and_keeps_order(fake_client, fake):
    full = TokenSpec(
        subject="u1", client_id="app", issuer="https://idp", jti="old", scopes=("read", "write"),
        type=TokenType.REFRESH, issued_at=1000, expires_at=2000, origin="node-1", family="fam",
    )
    result = fake_client.register([full, TokenSpec("u2", "app")], actor="ops")
    assert result == RegisterResult(
        tokens=(Registered(101, "old", canonical_jti(101), True),
                Registered(102, canonical_jti(102), canonical_jti(102), False)),
        seq=17,
    )
    (name, request), = fake.requests
    assert name == "Register" and request.actor == "ops"
    assert request.tokens[0] == pb.TokenSpec(
        jti="old", issuer="https://idp", subject="u1", client_id="app", scopes=["read", "write"],
        type=pb.REFRESH, issued_at=1000, expires_at=2000, origin="node-1", family="fam",
    )
    assert request.tokens[1] == pb.TokenSpec(subject="u2", client_id="app", type=pb.ACCESS)


def test_register_one_ttl_counts_from_issued_at(fake_client, fake):
    token = fake_client.register_one("u1", "app", issued_at=1000, ttl=300, scopes=["a"],
                                     actor="ops")
    assert token == Registered(101, canonical_jti(101), canonical_jti(101), False)
    request = fake.requests[0][1]
    assert request.tokens[0].expires_at == 1300 and request.tokens[0].issued_at == 1000
    assert list(request.tokens[0].scopes) == ["a"] and request.actor == "ops"


def test_register_one_ttl_counts_from_now_without_issued_at(fake_client, fake):
    before = int(time.time())
    fake_client.register_one("u1", "app", ttl=60)
    after = int(time.time())
    spec = fake.requests[0][1].tokens[0]
    assert spec.issued_at == 0 and before + 60 <= spec.expires_at <= after + 60


def test_register_one_rejects_ttl_with_expires_at_before_calling(fake_client, fake):
    with pytest.raises(ValueError, match="ttl or expires_at"):
        fake_client.register_one("u1", "app", expires_at=5, ttl=60)
    assert fake.requests == []


def test_revoke_maps_selector_and_token_ref_forms(fake_client, fake):
    result = fake_client.revoke(
        serials=[3, 4], tokens=[JtiRef("i1", "j1", 99), ("i2", "j2"), ("i3", "j3", 7)],
        subject="u1", client_id="app", family="fam", reason="leaked", actor="ops",
    )
    assert result == RevokeResult(count=5, seq=17)
    request = fake.requests[0][1]
    assert request.selector == pb.Selector(
        serials=[3, 4],
        tokens=[pb.JtiRef(issuer="i1", jti="j1", expires_at=99),
                pb.JtiRef(issuer="i2", jti="j2"), pb.JtiRef(issuer="i3", jti="j3", expires_at=7)],
        subject="u1", client_id="app", family="fam",
    )
    assert (request.reason, request.actor) == ("leaked", "ops")


def test_revoke_rejects_malformed_token_ref(fake_client, fake):
    with pytest.raises(TypeError, match="JtiRef"):
        fake_client.revoke(tokens=[("only-issuer",)])
    assert fake.requests == []


def test_check_by_serial_and_by_jti(fake_client, fake):
    assert fake_client.check(12, min_seq=5) == CheckResult(TokenState.REVOKED, 12, REVOKED_AT,
                                                      "leaked", 17)
    assert fake_client.check(issuer="https://idp", jti="nope") == CheckResult(
        TokenState.UNKNOWN, 0, 0, "", 17)
    assert [r for _, r in fake.requests] == [
        pb.CheckRequest(serial=12, min_seq=5), pb.CheckRequest(issuer="https://idp", jti="nope"),
    ]


def test_check_batch_round_trips_packed_serials_and_keeps_order(fake_client, fake):
    serials = [13, 1, 2**63 - 1, 12, 5]
    result = fake_client.check_batch(serials, tokens=[("https://idp", "ext-1"), JtiRef("x", "y")],
                                min_seq=3)
    assert result == BatchResult(
        states=(TokenState.EXPIRED, TokenState.ACTIVE, TokenState.UNKNOWN, TokenState.REVOKED,
                TokenState.ACTIVE),
        token_states=(TokenState.REVOKED, TokenState.UNKNOWN), seq=17,
    )
    request = fake.requests[0][1]
    assert request.serials == b"".join(s.to_bytes(8, "little") for s in serials)
    assert request.min_seq == 3


def test_check_batch_raw_returns_state_bytes(fake_client):
    packed = b"".join(s.to_bytes(8, "little") for s in (12, 1, 500))
    assert fake_client.check_batch_raw(packed) == bytes([2, 1, 4])


def test_check_batch_rejects_unpackable_serial(fake_client, fake):
    with pytest.raises(ValueError, match="uint64"):
        fake_client.check_batch([1, -1])
    assert fake.requests == []


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=50))
def test_pack_serials_is_little_endian_uint64(serials):
    assert rq.pack_serials(serials) == b"".join(s.to_bytes(8, "little") for s in serials)


def test_unpack_states_rejects_unknown_state_byte():
    assert rq.unpack_states(bytes([0, 4, 1])) == (TokenState.UNSPECIFIED, TokenState.UNKNOWN,
                                                  TokenState.ACTIVE)
    with pytest.raises(ValueError, match="unknown token state 9"):
        rq.unpack_states(bytes([1, 9]))


def test_introspect_active_has_every_field(fake_client):
    assert fake_client.introspect(5) == {
        "active": True, "scope": "read write", "client_id": "app", "username": "u1",
        "token_type": "access_token", "exp": 2000, "iat": 1000, "sub": "u1",
        "iss": "https://idp", "jti": canonical_jti(5), "state": "ACTIVE", "serial": 5,
        "origin": "node-1", "family": "fam", "revoked_at": 0, "reason": "", "actor": "",
    }


def test_introspect_inactive_keeps_only_set_recall_fields(fake_client, fake):
    assert fake_client.introspect(12) == {
        "active": False, "state": "REVOKED", "serial": 12, "revoked_at": REVOKED_AT,
        "reason": "leaked", "actor": "alice",
    }
    assert fake_client.introspect(issuer="i", jti="j") == {"active": False, "state": "UNKNOWN"}
    assert fake.requests[1][1] == pb.IntrospectRequest(issuer="i", jti="j")


def test_stats(fake_client):
    assert fake_client.stats() == Stats(10, 2, 7, 1, 3, 17, "store-a", 4096, 1 << 20, max_map_bytes=1 << 30)


def test_server_error_becomes_recall_error(fake_client, fake):
    fake.fail = (grpc.StatusCode.INVALID_ARGUMENT, "selector is empty")
    with pytest.raises(RecallError) as caught:
        fake_client.revoke()
    err = caught.value
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (err.code_name, err.details) == ("INVALID_ARGUMENT", "selector is empty")
    assert str(err) == "INVALID_ARGUMENT: selector is empty"


def test_unreachable_server_is_unavailable():
    with RecallClient(closed_target(), timeout=30) as recall, pytest.raises(RecallError) as caught:
        recall.stats()
    assert caught.value.code_name == "UNAVAILABLE"


def test_given_channel_is_exposed_and_left_open(fake):
    with running(fake) as target, grpc.insecure_channel(target) as channel:
        with RecallClient(target, channel=channel) as recall:
            assert recall.channel is channel
        stub = recall_pb2_grpc.RecallStub(channel)
        assert stub.Stats(pb.StatsRequest(), timeout=10) == STATS


def _every_call(recall):
    """The results of one call of each method; `recall` is sync or async."""
    return [
        recall.register([TokenSpec("u1", "app", jti="old")], actor="ops"),
        recall.register_one("u2", "app", issued_at=1000, ttl=5),
        recall.revoke(serials=[1], tokens=[("i", "j")], reason="r"),
        recall.check(12),
        recall.check(issuer="https://idp", jti="ext-1"),
        recall.check_batch([13, 1, 12], tokens=[("https://idp", "ext-1")]),
        recall.check_batch_raw(rq.pack_serials([12, 1])),
        recall.introspect(12),
        recall.introspect(5),
        recall.stats(),
    ]


def test_async_client_gives_the_same_results_and_requests(fake):
    async def run_async(target):
        async with AsyncRecallClient(target) as recall:
            return [await call for call in _every_call(recall)]

    with running(fake) as target:
        with RecallClient(target) as recall:
            sync_results = _every_call(recall)
        sync_requests, fake.requests = fake.requests, []
        async_results = asyncio.run(run_async(target))
    assert async_results == sync_results
    assert fake.requests == sync_requests


def test_async_client_raises_recall_error(fake):
    async def revoke(target):
        async with AsyncRecallClient(target) as recall:
            await recall.revoke(serials=[1])

    fake.fail = (grpc.StatusCode.INVALID_ARGUMENT, "serial 1 is out of range")
    with running(fake) as target, pytest.raises(RecallError) as caught:
        asyncio.run(revoke(target))
    assert str(caught.value) == "INVALID_ARGUMENT: serial 1 is out of range"
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
