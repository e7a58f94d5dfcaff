"""Scenario 2: the Check unary RPC against an empty RPC on the same server stack.

The floor is the gRPC health check (grpc.health.v1.Health/Check) served by
the same grpc.aio server in the same process: the same transport, HTTP/2,
protobuf and Python handler dispatch, and no work. Both run through the same
client harness in this (another) process: raw generated stubs on grpc.aio
and uvloop, requests built ahead of time, so only the server side differs.
Throughput is `concurrency` callers back to back; latency is one caller at a
time (no queueing). The server's CPU time per call (from /proc) is reported
too: on a shared 2-core machine it is steadier than calls/s.
"""

import itertools
import random

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

from .measure import closed_loop, progress, summary_ms
from .procs import Server, run_async

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


async def measure(server: Server, method: str, requests: list, concurrency: int,
                  duration: float, latency_duration: float) -> dict:
    """{rps, p50_us, p99_us, server_cpu_us} of one method (`Health.Check` or a Recall method)."""
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        if method == "Health.Check":
            call = health_pb2_grpc.HealthStub(channel).Check
        else:
            call = getattr(recall_pb2_grpc.RecallStub(channel), method)
        source = itertools.cycle(requests)
        warm, _, _ = await closed_loop(call, source, concurrency, min(0.5, duration / 4))
        cpu0 = server.cpu()
        calls, elapsed, _ = await closed_loop(call, source, concurrency, duration)
        cpu = server.cpu() - cpu0
        out = {"rps": calls / elapsed, "server_cpu_us": cpu / max(calls, 1) * 1e6, "calls": warm + calls}
        if latency_duration:
            _, _, latencies = await closed_loop(call, source, 1, latency_duration)
            lat = summary_ms(latencies)
            out.update(p50_us=lat["p50"] * 1000, p99_us=lat["p99"] * 1000)
            out["calls"] += len(latencies)
    return out


def run(server: Server, registered: int, concurrency: int, duration: float, latency_duration: float) -> dict:
    rng = random.Random(2)
    checks = [pb.CheckRequest(serial=rng.randint(1, registered)) for _ in range(4096)]
    health = [health_pb2.HealthCheckRequest(service="")]
    progress(f"unary: floor (health check), {concurrency} callers x {duration:g}s + latency {latency_duration:g}s")
    floor = run_async(measure(server, "Health.Check", health, concurrency, duration, latency_duration))
    progress(f"unary: Check, {concurrency} callers x {duration:g}s + latency {latency_duration:g}s")
    check = run_async(measure(server, "Check", checks, concurrency, duration, latency_duration))
    return {
        "floor_unary_rps": floor["rps"],
        "floor_unary_p50_us": floor["p50_us"],
        "floor_unary_p99_us": floor["p99_us"],
        "floor_unary_server_cpu_us": floor["server_cpu_us"],
        "check_unary_rps": check["rps"],
        "check_unary_p50_us": check["p50_us"],
        "check_unary_p99_us": check["p99_us"],
        "check_unary_server_cpu_us": check["server_cpu_us"],
        "unary_concurrency": concurrency,
    }
