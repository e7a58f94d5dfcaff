"""Scenario 5: durable writes, single revocations and bulk revocations.

Each Revoke is answered only after its LMDB transaction is synced, so the
figures are only as good as the disk's fsync, which on a shared machine
drifts by 10x within a minute. The floors are therefore measured
interleaved with the figures, call by call, on the same filesystem:

  floor     a synced LMDB commit of one small put (what one durable change
            cannot avoid) and, for bulk, 10,000 puts in one synced txn;
  rpc floor the empty RPC (health check), for the gRPC share of a call;
  core      `Engine.revoke` in this process on its own store (same sizes,
            same filesystem): the write path without gRPC;
  rpc       the Revoke RPC on the server.

Single revocations: one caller at a time, each round doing floor, empty
RPC, core and RPC once (latency p50/p99, unloaded); then many callers at
once (throughput, where the writer's group commit shares one fsync among a
group), for the RPC and for the core. Bulk: 10,000 fresh serials per call.
"""

import pathlib
import shutil
import struct
import time

import grpc
import lmdb
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

from recallcore.core.model import Selector
from recallcore.engine import Engine
from recallcore.settings import Settings

from . import dataset
from .dataset import SerialPool
from .measure import closed_loop, progress, summary_ms
from .procs import Server, run_async

BULK = 10_000
_KEY = struct.Struct(">Q")


class _Floor:
    """A synced LMDB environment for floor commits (warmed up: the first commits grow the file)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.env = lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=True, readahead=False)
        self.n = 0
        for _ in range(50):
            self.commit()

    def commit(self) -> int:
        t0 = time.perf_counter_ns()
        with self.env.begin(write=True) as txn:
            txn.put(_KEY.pack(self.n), b"x" * 8)
        self.n += 1
        return time.perf_counter_ns() - t0

    def bulk(self, count: int) -> int:
        t0 = time.perf_counter_ns()
        with self.env.begin(write=True) as txn:
            base = self.n << 32
            txn.cursor().putmulti([(_KEY.pack(base + i), b"x" * 8) for i in range(count)])
        self.n += 1
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.env.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _requests(serials: list[int], per_call: int) -> list:
    return [pb.RevokeRequest(selector=pb.Selector(serials=serials[i : i + per_call]), reason="bench")
            for i in range(0, len(serials), per_call)]


async def _timed(coro) -> int:
    t0 = time.perf_counter_ns()
    await coro
    return time.perf_counter_ns() - t0


async def _measure(server: Server, pool: SerialPool, core_path: pathlib.Path, core_pool: SerialPool,
                   floor: _Floor, cfg) -> dict:
    engine = Engine(Settings(data_dir=core_path, listen="127.0.0.1:0", sweep_interval=3600))
    await engine.start()
    try:
        async with grpc.aio.insecure_channel(server.address,
                                             options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            revoke = recall_pb2_grpc.RecallStub(channel).Revoke
            health = health_pb2_grpc.HealthStub(channel).Check
            ping = health_pb2.HealthCheckRequest()
            d = cfg.write_seconds

            progress(f"writes: single revocations, one at a time x {2 * d:g}s (floor, empty RPC, core, RPC)")
            lat: dict = {"floor": [], "rpc_floor": [], "core": [], "rpc": []}
            stop_at = time.monotonic() + 2 * d
            while time.monotonic() < stop_at:
                lat["floor"].append(floor.commit())
                lat["rpc_floor"].append(await _timed(health(ping)))
                lat["core"].append(await _timed(engine.revoke(Selector(serials=tuple(core_pool.take(1))))))
                lat["rpc"].append(await _timed(revoke(_requests(pool.take(1), 1)[0])))
            rounds = len(lat["rpc"])
            rounds_s = 2 * d

            progress(f"writes: single revocations, {cfg.write_concurrency} callers x {d:g}s (RPC, then core)")
            budget = int(d * cfg.write_rate_cap)
            calls, elapsed, loaded = await closed_loop(revoke, iter(_requests(pool.take(budget), 1)),
                                                       cfg.write_concurrency, d)
            core_sel = iter([Selector(serials=(s,)) for s in core_pool.take(budget)])
            core_calls, core_elapsed, _ = await closed_loop(engine.revoke, core_sel, cfg.write_concurrency, d)
            if max(calls, core_calls) >= budget:
                raise RuntimeError(f"writes: {max(calls, core_calls)} calls used up {budget} fresh serials; "
                                   "raise write_rate_cap")

            progress(f"writes: bulk revocations of {BULK:,} serials x {cfg.bulk_calls} (floor, core, RPC)")
            bulk: dict = {"floor": [], "core": [], "rpc": []}
            for _ in range(cfg.bulk_calls):
                bulk["floor"].append(floor.bulk(BULK))
                bulk["core"].append(await _timed(engine.revoke(Selector(serials=tuple(core_pool.take(BULK))))))
                bulk["rpc"].append(await _timed(revoke(_requests(pool.take(BULK), BULK)[0])))
    finally:
        await engine.close()
    s = {k: summary_ms(v) for k, v in lat.items()}
    per_s = lambda v: BULK * len(v) / (sum(v) / 1e9)
    return {
        "revoke_single_p50_ms": s["rpc"]["p50"], "revoke_single_p99_ms": s["rpc"]["p99"],
        "revoke_single_max_ms": s["rpc"]["max"],
        "revoke_core_p50_ms": s["core"]["p50"], "revoke_core_p99_ms": s["core"]["p99"],
        "floor_commit_p50_ms": s["floor"]["p50"], "floor_commit_p99_ms": s["floor"]["p99"],
        "floor_commit_per_s": 1e9 / float(np.mean(lat["floor"])),
        "writes_rpc_floor_p50_ms": s["rpc_floor"]["p50"], "writes_rpc_floor_p99_ms": s["rpc_floor"]["p99"],
        "revoke_single_sequential_per_s": 1e9 / float(np.mean(lat["rpc"])),
        "writes_rounds": rounds, "writes_rounds_s": rounds_s,
        "revoke_single_per_s": calls / elapsed,
        "revoke_single_loaded_p99_ms": summary_ms(loaded)["p99"],
        "revoke_core_per_s": core_calls / core_elapsed,
        "revoke_bulk_serials_per_s": per_s(bulk["rpc"]),
        "revoke_bulk_core_serials_per_s": per_s(bulk["core"]),
        "floor_bulk_puts_per_s": per_s(bulk["floor"]),
        "write_concurrency": cfg.write_concurrency,
    }


def run(server: Server, pool: SerialPool, cfg, work_dir: pathlib.Path) -> dict:
    budget = int(cfg.write_seconds * cfg.write_rate_cap)
    core_size = 2 * budget + BULK * cfg.bulk_calls + 10_000
    progress(f"writes: building the core's own store ({core_size:,} fresh serials; not timed)")
    core = dataset.build(work_dir / "writes-core", max(core_size, cfg.base_registered), cfg.base_revoked,
                         core_size, 0)
    floor = _Floor(work_dir / "lmdb-floor")
    try:
        return run_async(_measure(server, pool, pathlib.Path(core.path),
                                  SerialPool(core.pool_start, core.registered), floor, cfg))
    finally:
        floor.close()
