"""Every RPC rejects bad input with the fitting status, names the field, and changes nothing."""

import logging
import time

import grpc
import pytest
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

from recallcore.settings import Settings

from ..support import ServerThread

LONG = "x" * 1025
BIG = 2**63
MAX_BATCH = 50

TOKEN = dict(subject="alice", client_id="web")


def tok(**fields) -> pb.TokenSpec:
    return pb.TokenSpec(**{**TOKEN, **fields})


def sel(**fields) -> pb.RevokeRequest:
    return pb.RevokeRequest(selector=pb.Selector(**fields), reason="test")


STREAMING = {m.name for m in pb.DESCRIPTOR.services_by_name["Recall"].methods if m.server_streaming}
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

CASES = [
    # Register
    ("Register", pb.RegisterRequest(), INVALID, "tokens"),
    ("Register", pb.RegisterRequest(tokens=[tok(subject="")]), INVALID, "tokens[0].subject"),
    ("Register", pb.RegisterRequest(tokens=[tok(client_id="")]), INVALID, "tokens[0].client_id"),
    ("Register", pb.RegisterRequest(tokens=[tok(), tok(subject=LONG)]), INVALID, "tokens[1].subject"),
    ("Register", pb.RegisterRequest(tokens=[tok(issuer=LONG)]), INVALID, "tokens[0].issuer"),
    ("Register", pb.RegisterRequest(tokens=[tok(jti=LONG)]), INVALID, "tokens[0].jti"),
    ("Register", pb.RegisterRequest(tokens=[tok(origin=LONG)]), INVALID, "tokens[0].origin"),
    ("Register", pb.RegisterRequest(tokens=[tok(family=LONG)]), INVALID, "tokens[0].family"),
    ("Register", pb.RegisterRequest(tokens=[tok(scopes=["read", ""])]), INVALID, "tokens[0].scopes[1]"),
    ("Register", pb.RegisterRequest(tokens=[tok(scopes=["a b"])]), INVALID, "tokens[0].scopes[0]"),
    ("Register", pb.RegisterRequest(tokens=[tok(scopes=[LONG])]), INVALID, "tokens[0].scopes[0]"),
    ("Register", pb.RegisterRequest(tokens=[tok(subject="a\x00b")]), INVALID, "tokens[0].subject"),
    ("Register", pb.RegisterRequest(tokens=[tok(issued_at=2000, expires_at=2000)]), INVALID, "tokens[0].expires_at"),
    ("Register", pb.RegisterRequest(tokens=[tok(issued_at=2000, expires_at=1000)]), INVALID, "tokens[0].expires_at"),
    ("Register", pb.RegisterRequest(tokens=[tok(issued_at=-5)]), INVALID, "tokens[0].issued_at"),
    ("Register", pb.RegisterRequest(tokens=[tok(issued_at=1000, expires_at=1000 + 10**9)]), INVALID, "tokens[0].expires_at"),
    ("Register", pb.RegisterRequest(tokens=[tok(type=7)]), INVALID, "tokens[0].type"),
    ("Register", pb.RegisterRequest(tokens=[tok(expires_at=2**32)]), INVALID, "tokens[0].expires_at"),
    ("Register", pb.RegisterRequest(tokens=[tok(issued_at=2**32 - 100)]), INVALID, "tokens[0].issued_at"),
    ("Register", pb.RegisterRequest(tokens=[tok(issued_at=int(time.time()) + 86400)]), INVALID, "tokens[0].issued_at"),
    ("Register", pb.RegisterRequest(tokens=[tok(jti="rc1.999.abcd")]), INVALID, "tokens[0].jti"),
    ("Register", pb.RegisterRequest(tokens=[tok()], actor=LONG), INVALID, "actor"),
    ("Register", pb.RegisterRequest(tokens=[tok()] * (MAX_BATCH + 1)), EXHAUSTED, "tokens"),
    # Revoke
    ("Revoke", pb.RevokeRequest(), INVALID, "selector"),
    ("Revoke", sel(serials=[0]), INVALID, "selector.serials[0]"),
    ("Revoke", sel(serials=[1, BIG]), INVALID, "selector.serials[1]"),
    ("Revoke", sel(tokens=[pb.JtiRef(issuer=LONG, jti="a")]), INVALID, "selector.tokens[0].issuer"),
    ("Revoke", sel(tokens=[pb.JtiRef(issuer="i", jti="")]), INVALID, "selector.tokens[0].jti"),
    ("Revoke", sel(tokens=[pb.JtiRef(issuer="i", jti=LONG)]), INVALID, "selector.tokens[0].jti"),
    ("Revoke", sel(tokens=[pb.JtiRef(issuer="i", jti="j", expires_at=-1)]), INVALID, "selector.tokens[0].expires_at"),
    ("Revoke", sel(tokens=[pb.JtiRef(issuer="i", jti="j", expires_at=2**40)]), INVALID, "selector.tokens[0].expires_at"),
    ("Revoke", sel(tokens=[pb.JtiRef(issuer="i", jti="j", expires_at=2**32 - 2)]), INVALID, "selector.tokens[0].expires_at"),
    ("Revoke", sel(subject=LONG), INVALID, "selector.subject"),
    ("Revoke", sel(client_id=LONG), INVALID, "selector.client_id"),
    ("Revoke", sel(family=LONG), INVALID, "selector.family"),
    ("Revoke", pb.RevokeRequest(selector=pb.Selector(subject="a"), reason=LONG), INVALID, "reason"),
    ("Revoke", pb.RevokeRequest(selector=pb.Selector(subject="a"), actor=LONG), INVALID, "actor"),
    ("Revoke", sel(serials=list(range(1, MAX_BATCH + 2))), EXHAUSTED, "selector.serials"),
    # Check
    ("Check", pb.CheckRequest(), INVALID, "serial"),
    ("Check", pb.CheckRequest(serial=BIG), INVALID, "serial"),
    ("Check", pb.CheckRequest(serial=1, issuer="i", jti="j"), INVALID, "serial"),
    ("Check", pb.CheckRequest(issuer="i"), INVALID, "jti"),
    ("Check", pb.CheckRequest(issuer=LONG, jti="j"), INVALID, "issuer"),
    # CheckBatch
    ("CheckBatch", pb.CheckBatchRequest(serials=b"\x01\x00\x00"), INVALID, "serials"),
    ("CheckBatch", pb.CheckBatchRequest(serials=(1).to_bytes(8, "little") + (0).to_bytes(8, "little")), INVALID, "serials[1]"),
    ("CheckBatch", pb.CheckBatchRequest(serials=BIG.to_bytes(8, "little")), INVALID, "serials[0]"),
    ("CheckBatch", pb.CheckBatchRequest(serials=b"\x01" + b"\x00" * 7 * 1 + b"\x00" * 8 * MAX_BATCH), EXHAUSTED, "serials"),
    ("CheckBatch", pb.CheckBatchRequest(tokens=[pb.JtiRef(issuer="i", jti="")]), INVALID, "tokens[0].jti"),
    ("Check", pb.CheckRequest(issuer="i", jti="j", sub=LONG), INVALID, "sub"),
    ("Check", pb.CheckRequest(issuer="i", jti="j", issued_at=-1), INVALID, "issued_at"),
    ("CheckBatch", pb.CheckBatchRequest(tokens=[pb.JtiRef(issuer="i", jti="j", client_id=LONG)]), INVALID, "tokens[0].client_id"),
    # Rotate (serial 3 is a refresh token, serial 1 an access token)
    ("Rotate", pb.RotateRequest(), INVALID, "serial"),
    ("Rotate", pb.RotateRequest(serial=BIG), INVALID, "serial"),
    ("Rotate", pb.RotateRequest(serial=1), INVALID, "serial"),
    ("Rotate", pb.RotateRequest(serial=3, successor=pb.TokenSpec(family="other")), INVALID, "successor.family"),
    ("Rotate", pb.RotateRequest(serial=3, successor=pb.TokenSpec(type=pb.ACCESS)), INVALID, "successor.type"),
    ("Rotate", pb.RotateRequest(serial=3, successor=pb.TokenSpec(subject=LONG)), INVALID, "successor.subject"),
    ("Rotate", pb.RotateRequest(serial=3, successor=pb.TokenSpec(jti="rc1.77.abcd")), INVALID, "successor[0].jti"),
    ("Rotate", pb.RotateRequest(serial=3, successor=pb.TokenSpec(expires_at=1)), INVALID, "successor.expires_at"),
    ("Rotate", pb.RotateRequest(serial=3, actor=LONG), INVALID, "actor"),
    ("Rotate", pb.RotateRequest(serial=3, request_id=LONG), INVALID, "request_id"),
    # Cutoff
    ("Cutoff", pb.CutoffRequest(), INVALID, "rule.scope"),
    ("Cutoff", pb.CutoffRequest(rule=pb.Rule(scope=pb.Rule.SUBJECT)), INVALID, "rule.value"),
    ("Cutoff", pb.CutoffRequest(rule=pb.Rule(scope=pb.Rule.ALL, value="x")), INVALID, "rule.value"),
    ("Cutoff", pb.CutoffRequest(rule=pb.Rule(scope=pb.Rule.CLIENT, value=LONG)), INVALID, "rule.value"),
    ("Cutoff", pb.CutoffRequest(rule=pb.Rule(scope=pb.Rule.ALL, before=2**40)), INVALID, "rule.before"),
    ("Cutoff", pb.CutoffRequest(rule=pb.Rule(scope=pb.Rule.ALL), reason=LONG), INVALID, "reason"),
    # streams
    ("AuditLog", pb.AuditRequest(subject=LONG), INVALID, "subject"),
    ("AuditLog", pb.AuditRequest(serial=BIG), INVALID, "serial"),
    ("AuditLog", pb.AuditRequest(after_seq=2**64 - 1), INVALID, "after_seq"),
    ("Watch", pb.WatchRequest(store_id=LONG), INVALID, "store_id"),
    # Introspect
    ("Introspect", pb.IntrospectRequest(), INVALID, "serial"),
    ("Introspect", pb.IntrospectRequest(serial=BIG), INVALID, "serial"),
    ("Introspect", pb.IntrospectRequest(serial=1, jti="j"), INVALID, "serial"),
    ("Introspect", pb.IntrospectRequest(issuer="i", jti=LONG), INVALID, "jti"),
]


@pytest.fixture(scope="module")
def bad_server(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("bad") / "data", listen="127.0.0.1:0",
        sweep_interval=3600, max_batch=MAX_BATCH,
    )
    srv = ServerThread(settings)
    with grpc.insecure_channel(srv.address) as channel:
        stub = recall_pb2_grpc.RecallStub(channel)
        stub.Register(pb.RegisterRequest(tokens=[tok(), tok(subject="bob"), tok(type=pb.REFRESH)]))
        stub.Revoke(sel(serials=[2]))
        yield stub
    srv.stop()


def _case_id(case) -> str:
    return f"{case[0]}-{case[3]}-{case[2].name}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_rejected_and_changes_nothing(bad_server, case):
    method, request, code, field = case
    before = bad_server.Stats(pb.StatsRequest())
    with pytest.raises(grpc.RpcError) as err:
        answer = getattr(bad_server, method)(request)
        if method in STREAMING:
            next(iter(answer))
    assert err.value.code() == code
    assert err.value.details().startswith(field), err.value.details()
    after = bad_server.Stats(pb.StatsRequest())
    assert after == before


def test_every_rpc_with_input_has_cases():
    service = pb.DESCRIPTOR.services_by_name["Recall"]
    covered = {case[0] for case in CASES}
    without_input = {"Stats"}
    assert {m.name for m in service.methods} - without_input <= covered


# Bytes that are no protobuf of the method's request type: strings that are
# not UTF-8 (RegisterRequest.tokens[0].jti, WatchRequest.store_id), and a
# varint that never ends (any method).
UNDECODABLE = [
    ("Register", b"\x0a\x04\x0a\x02\xff\xfe"),
    ("Watch", b"\x0a\x02\xff\xfe"),
    *((method, b"\x08" + b"\xff" * 11) for method in ("Register", "Revoke", "Check", "CheckBatch", "Watch")),
]


def test_an_undecodable_request_is_invalid_argument_changes_nothing_and_logs_one_line(data_dir, caplog):
    srv = ServerThread(Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600))
    try:
        with grpc.insecure_channel(srv.address) as channel:
            for method, payload in UNDECODABLE:
                stream = method in STREAMING
                call = (channel.unary_stream if stream else channel.unary_unary)(f"/recall.v1.Recall/{method}")
                for _ in range(10):
                    with pytest.raises(grpc.RpcError) as err:
                        answer = call(payload, timeout=10)
                        if stream:
                            next(iter(answer))
                    assert err.value.code() == INVALID, (method, err.value.code())
                    assert err.value.details().startswith("request could not be decoded"), err.value.details()
            stats = recall_pb2_grpc.RecallStub(channel).Stats(pb.StatsRequest())
            assert stats.seq == 0 and stats.registered == 0
    finally:
        srv.stop()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].startswith("undecodable"), lines  # 70 bad requests, one line
    assert not any(r.exc_info for r in caplog.records)
