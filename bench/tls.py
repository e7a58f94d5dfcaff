"""`python -m bench.tls`: what TLS costs the unary path and propagation, beside floors of the same run.

Two servers on the same kind of store: one in the clear, one with TLS (a CA
and certificate made here; callers authenticate nowhere, as on loopback).
Reported: Check calls/s over TLS beside the health check over TLS (the
floor: same transport, no work), and the p50 / p99 of propagation to one
AsyncReplica (from sending a Revoke to the replica holding it) over TLS
beside the same in the clear.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recallclient import AsyncRecallClient, AsyncReplica, TokenSpec
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

from .procs import Server, run_async, stop_all


def _certificates(root: Path) -> tuple[Path, Path, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.security.certs import CA

    ca = CA(root / "pki")
    leaf = ca.server()
    return ca.path, leaf.cert, leaf.key


async def _rate(call, request, concurrency: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker():
        nonlocal done
        while time.perf_counter() < deadline:
            await call(request)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def unary(address: str, cacert: Path, concurrency: int, seconds: float) -> dict:
    creds = grpc.ssl_channel_credentials(cacert.read_bytes())
    async with grpc.aio.secure_channel(address, creds) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check
        check = recall_pb2_grpc.RecallStub(channel).Check
        await _rate(health, health_pb2.HealthCheckRequest(), concurrency, 0.5)  # warm
        floor = await _rate(health, health_pb2.HealthCheckRequest(), concurrency, seconds)
        rps = await _rate(check, pb.CheckRequest(serial=1), concurrency, seconds)
    return {"tls_check_rps": rps, "tls_floor_health_rps": floor, "tls_check_vs_floor": rps / floor}


async def propagation(address: str, cacert: Path | None, count: int) -> list[float]:
    seen: dict[int, float] = {}
    replica = AsyncReplica(address, max_staleness=30.0, cacert=str(cacert) if cacert else None,
                           on_change=lambda o: seen.setdefault(o.seq, time.perf_counter()))
    await replica.start()
    try:
        async with AsyncRecallClient(address, cacert=str(cacert) if cacert else None) as client:
            serials = [t.serial for t in (await client.register([TokenSpec(f"u{i}", "web") for i in range(count)])).tokens]
            await replica.wait_for((await client.stats()).seq, 30)
            out = []
            for serial in serials:
                sent = time.perf_counter()
                seq = (await client.revoke(serials=[serial])).seq
                while seq not in seen:
                    await asyncio.sleep(0.0005)
                out.append(seen[seq] - sent)
                await asyncio.sleep(0.01)
            return out
    finally:
        await replica.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--revocations", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recall-tls-") as tmp:
        root = Path(tmp)
        cacert, cert, key = _certificates(root)
        try:
            plain = Server(root / "plain", "--heartbeat-interval", "1", name="plain")
            tls = Server(root / "tls", "--tls-cert", str(cert), "--tls-key", str(key), "--heartbeat-interval", "1",
                         name="tls")
            results = run_async(unary(tls.address, cacert, args.concurrency, args.seconds))

            async def both():
                p = await propagation(plain.address, None, args.revocations)
                t = await propagation(tls.address, cacert, args.revocations)
                return p, t

            p, t = run_async(both())
            q = lambda xs, f: statistics.quantiles(xs, n=100)[f - 1] * 1000  # noqa: E731
            results.update(plain_p50_ms=statistics.median(p) * 1000, plain_p99_ms=q(p, 99),
                           tls_p50_ms=statistics.median(t) * 1000, tls_p99_ms=q(t, 99))
            results["tls_p50_vs_plain"] = results["tls_p50_ms"] / results["plain_p50_ms"]
        finally:
            stop_all()
    for name, value in results.items():
        print(f"{name:24} {value:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
