"""Limits are checked before the work: an oversized request costs the server little.

A real server process; its memory high-water mark is read from /proc, so
what a refused request cost is a number the test can hold, not a timing.
(bench/abuse.py measures the same requests' time, CPU and loop stall.)
"""

import pathlib

import grpc
import pytest
from recallclient._proto.recall.v1 import recall_pb2 as pb

from ..support import ServerProcess


def peak_growth_mb(pid: int, before_kb: int) -> float:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return (hwm - before_kb) / 1024


def rss_kb(pid: int) -> int:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))


@pytest.fixture
def server(data_dir):
    proc = ServerProcess(data_dir)
    yield proc
    proc.close()


def raw_call(address: str, method: str, payload: bytes):
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20)]) as channel:
        call = channel.unary_unary(f"/recall.v1.Recall/{method}", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            call(payload, timeout=120)
    return err.value


# Each is refused for its count; converting it into the server's values first
# cost (before counts were checked on the message) 1 GB, 320 MB and 170 MB.
OVERSIZED = [
    ("Revoke", pb.RevokeRequest(selector=pb.Selector(tokens=[pb.JtiRef()] * 4_000_000)), 700,
     "selector.serials+tokens: 4000000 items exceed"),
    ("Register", pb.RegisterRequest(tokens=[pb.TokenSpec()] * 1_000_000), 250, "tokens: 1000000 items exceed"),
]


@pytest.mark.parametrize("method,request_,budget_mb,message", OVERSIZED, ids=[c[0] for c in OVERSIZED])
def test_an_oversized_batch_is_refused_for_its_count_before_it_is_converted(server, method, request_, budget_mb,
                                                                             message):
    pid = server.proc.pid
    before = rss_kb(pid)
    err = raw_call(server.address, method, request_.SerializeToString())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and err.details().startswith(message), err.details()
    assert peak_growth_mb(pid, before) < budget_mb  # decoding it is all it cost


def test_a_request_larger_than_the_documented_limits_need_is_refused_by_grpc(server):
    huge = pb.RegisterRequest(tokens=[pb.TokenSpec(subject="x" * (33 << 20), client_id="web")])
    err = raw_call(server.address, "Register", huge.SerializeToString())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.details()


def test_a_token_with_too_many_scopes_is_refused_naming_it(server):
    spec = pb.TokenSpec(subject="alice", client_id="web")
    many = pb.RegisterRequest(tokens=[spec, pb.TokenSpec(subject="a", client_id="b", scopes=["s"] * 300_000)])
    err = raw_call(server.address, "Register", many.SerializeToString())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().startswith("tokens[1].scopes: 300000 scopes exceed the limit of 256")
