"""Scenario 7: the Redis baseline (the do-it-yourself revocation list).

Runs only when `redis-server` is on PATH: the bench starts its own on a
free 127.0.0.1 port with persistence off, and stops it. The revoked set is
the same one scenario 6 builds (same seeded serials, loaded with pipelined
SADD), so memory per id compares like with like. Lookups go through
redis-py from this process (another process than the server, as for
recallcore): SISMEMBER one at a time on one connection; SMISMEMBER with
100 / 1,000 / 10,000 ids per command; pipelined SISMEMBER, 1,000 per
round trip. Pub/sub fan-out uses the subscriber layout of scenario 4
(bench.subscriber, kind redis) with PUBLISH in place of Revoke.
"""

import shutil
import sys
import time

import numpy as np

from . import propagation
from .dataset import revoked_blocks
from .measure import cdf_points, progress, summary_ms
from .procs import free_port, spawn, stop

SIZES = (100, 1000, 10_000)


def available() -> bool:
    """True when redis-server and redis-py are both installed."""
    if shutil.which("redis-server") is None:
        return False
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    return True


class RedisServer:
    def __init__(self) -> None:
        import redis

        self.port = free_port()
        self.proc = spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                           "--maxclients", "4096", "--logfile", ""], "redis")
        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    stop(self.proc)
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        self.version = self.client.info("server")["redis_version"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.client.close()
        stop(self.proc)


def _rate(fn, duration: float) -> tuple[int, float]:
    """(calls of fn() returning ids done, elapsed) over `duration` seconds."""
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        done += fn()
    return done, time.perf_counter() - start


def run(cfg, pool_layouts: dict) -> dict:
    progress("redis: starting redis-server on a free loopback port")
    server = RedisServer()
    try:
        r = server.client
        before = r.info("memory")["used_memory"]
        progress(f"redis: loading the scale set ({cfg.scale_revoked:,} revoked of {cfg.scale_registered:,})")
        count = 0
        pipe = r.pipeline(transaction=False)
        for ids in revoked_blocks(cfg.scale_registered, cfg.scale_revoked, 0):
            for i in range(0, len(ids), 10_000):
                pipe.sadd("revoked", *ids[i : i + 10_000].tolist())
            pipe.execute()
            count += len(ids)
        bytes_per_id = (r.info("memory")["used_memory"] - before) / max(count, 1)

        rng = np.random.default_rng(3)
        ids = rng.integers(1, cfg.scale_registered + 1, 100_000).tolist()
        d = cfg.redis_seconds
        progress(f"redis: SISMEMBER one by one x {d:g}s")
        it = iter(range(10**12))

        def one():
            r.sismember("revoked", ids[next(it) % len(ids)])
            return 1

        n, elapsed = _rate(one, d)
        out = {"version": server.version, "sismember_rps": n / elapsed, "bytes_per_id": bytes_per_id,
               "ids": count}
        smis = {}
        for size in SIZES:
            progress(f"redis: SMISMEMBER {size:,} ids per command x {d:g}s")
            batches = [ids[k : k + size] for k in range(0, len(ids) - size + 1, size)][:8]
            cycle = iter(range(10**12))

            def batch(size=size, batches=batches, cycle=cycle):
                r.smismember("revoked", batches[next(cycle) % len(batches)])
                return size

            n, elapsed = _rate(batch, d)
            smis[str(size)] = n / elapsed
        out["smismember_ids_per_s"] = smis
        out["batch_ids_per_s"] = smis["10000"]
        progress(f"redis: pipelined SISMEMBER, 1,000 per round trip x {d:g}s")

        def piped():
            p = r.pipeline(transaction=False)
            for x in ids[:1000]:
                p.sismember("revoked", x)
            p.execute()
            return 1000

        n, elapsed = _rate(piped, d)
        out["pipelined_sismember_ids_per_s"] = n / elapsed
        out.update(_pubsub(server, cfg, pool_layouts))
        return out
    finally:
        server.close()


def _pubsub(server: RedisServer, cfg, layouts: dict) -> dict:
    r = server.client
    out = {"pubsub_ms": {}, "pubsub_cdf_ms": {}, "pubsub_missing": {}}
    for key, spec in layouts.items():
        layout = propagation.layout_for(int(key), spec["per_process"], [server.address], spec.get("driver", "thread"))
        progress(f"redis: pub/sub to {key} subscribers in {len(layout)} processes, "
                 f"{cfg.propagation_count} messages at {cfg.propagation_rate:g}/s")
        subs = propagation.Subscribers("redis", layout)
        try:
            subs.ready()
            seqs = list(range(1, cfg.propagation_count + 1))

            def publish(seq: int) -> int:
                r.publish("recall", seq)
                return seq

            sent, _ = propagation.paced(publish, seqs, cfg.propagation_rate)
            per_change, pairs, missing = propagation.latencies(sent, subs.collect(seqs[-1]))
        finally:
            subs.close()
        out["pubsub_ms"][key] = summary_ms(per_change)
        out["pubsub_cdf_ms"][key] = cdf_points(pairs)
        out["pubsub_missing"][key] = missing
    return out


if __name__ == "__main__":
    sys.exit("run through python -m bench.run")
