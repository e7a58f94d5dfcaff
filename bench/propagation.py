"""Scenario 4: propagation, from the start of a Revoke call to "applied" everywhere.

Theory of operation. Subscriber processes (bench.subscriber) each run a
share of the subscribers and stamp, with time.monotonic_ns(), every applied
delta with the seq it brings their replica to. This process revokes one
fresh serial per call at a steady rate and notes the instant each call
started and the seq it returned. For each revocation and subscriber the
latency is the first stamp at or past that seq minus the call's start (one
monotonic clock for the whole host); a revocation's latency is its slowest
subscriber's. p50/p99/max are over revocations; the CDF in the plot is over
every (revocation, subscriber) pair. The same machinery measures Redis
pub/sub (bench.redis_baseline) with a PUBLISH in place of the Revoke.

The storm sends single-serial revocations at a fixed rate (open loop, at
most `max_inflight` calls outstanding) to the 100-subscriber layout:
coalescing in the server's hub should keep latency bounded rather than
growing with the backlog.

A layout is a list of (target, subscribers in one process, driver);
"1000" in full mode goes through followers (primary -> followers ->
replicas), as the README recommends for fan-out on one host.
"""

import asyncio
import time

import grpc
import numpy as np
from recallclient import RecallClient
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

from .dataset import SerialPool
from .measure import cdf_points, progress, summary_ms
from .procs import Server, Worker, cpu_seconds, run_async


def latencies(sent: list[tuple[int, int]], records: list[list]) -> tuple[np.ndarray, np.ndarray, int]:
    """(slowest subscriber's latency per change, every pair's latency, pairs never seen), in ns.

    `sent` is [(seq, start_ns)], `records` per subscriber [[seq, t_ns], ...].
    """
    seqs_sent = np.array([s for s, _ in sent], dtype=np.int64)
    starts = np.array([t for _, t in sent], dtype=np.int64)
    per_change = np.zeros(len(sent), dtype=np.int64)
    pairs = []
    missing = 0
    for recs in records:
        if not recs:
            missing += len(sent)
            continue
        arr = np.array(recs, dtype=np.int64)
        reached, times = np.maximum.accumulate(arr[:, 0]), arr[:, 1]
        at = np.searchsorted(reached, seqs_sent, "left")
        seen = at < len(times)
        lat = times[np.minimum(at, len(times) - 1)] - starts
        missing += int((~seen).sum())
        pairs.append(lat[seen])
        per_change = np.maximum(per_change, np.where(seen, lat, 0))
    return per_change, np.concatenate(pairs) if pairs else np.array([]), missing


class Subscribers:
    """Subscriber processes for one layout."""

    def __init__(self, kind: str, layout: list[tuple[str, int, str]]) -> None:
        self.workers: list[Worker] = []
        try:
            for target, count, driver in layout:
                self.workers.append(Worker("bench.subscriber", kind, target, str(count), driver, name=f"sub-{kind}"))
        except BaseException:
            self.close()
            raise
        self.count = sum(c for _, c, _ in layout)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def ready(self, seq: int = 0, timeout: float = 120) -> None:
        for w in self.workers:
            w.proc.stdin.write(f'{{"cmd": "ready", "seq": {seq}, "timeout": {timeout}}}\n')
            w.proc.stdin.flush()
        for w in self.workers:
            w.answer(timeout + 10)

    def collect(self, seq: int, timeout: float = 30) -> list[list]:
        for w in self.workers:
            w.proc.stdin.write(f'{{"cmd": "collect", "seq": {seq}, "timeout": {timeout}}}\n')
            w.proc.stdin.flush()
        out = []
        for w in self.workers:
            out.extend(w.answer(timeout + 30)["records"])
        return out

    def close(self) -> None:
        for w in self.workers:
            w.close()


def paced(send, items: list, rate: float) -> tuple[list[tuple[int, int]], list[int]]:
    """Call send(item) -> seq at `rate` per second.

    Returns ([(seq, start_ns)], [ns each call took until it was answered]).
    """
    out, acks = [], []
    start = time.monotonic()
    for k, item in enumerate(items):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.monotonic_ns()
        out.append((send(item), t0))
        acks.append(time.monotonic_ns() - t0)
    return out, acks


class CpuMeter:
    """Cores used by the server, the subscriber processes and this process over a window."""

    def __init__(self, server_pids: list[int], subscriber_pids: list[int]) -> None:
        self.pids = {"server": server_pids, "subscribers": subscriber_pids}
        self.start = self._now()

    def _now(self) -> dict:
        out = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}
        out["bench"] = time.process_time()
        out["wall"] = time.monotonic()
        return out

    def cores(self) -> dict:
        end = self._now()
        wall = end.pop("wall") - self.start["wall"]
        return {name: round((v - self.start[name]) / wall, 3) for name, v in end.items()}


# The storm's calls in flight at most: half the server's concurrent calls per
# connection (MAX_STREAMS_PER_CONNECTION, 256), so that a backlog queues here
# instead of being refused by the server (RST_STREAM, REFUSED_STREAM).
STORM_INFLIGHT = 128


async def _storm(address: str, serials: list[int], rate: float,
                 max_inflight: int) -> tuple[list, float, list, int]:
    """Open-loop single-serial Revokes at `rate`: ([(seq, start_ns)], elapsed s, [ns to each answer], failed)."""
    sent: list[tuple[int, int]] = []
    acks: list[int] = []
    failed = 0
    async with grpc.aio.insecure_channel(address) as channel:
        revoke = recall_pb2_grpc.RecallStub(channel).Revoke
        slots = asyncio.Semaphore(max_inflight)

        async def one(serial: int) -> None:
            nonlocal failed
            try:
                t0 = time.monotonic_ns()
                resp = await revoke(pb.RevokeRequest(selector=pb.Selector(serials=[serial]), reason="storm"))
                sent.append((resp.seq, t0))
                acks.append(time.monotonic_ns() - t0)
            except grpc.aio.AioRpcError as exc:  # counted: "all acknowledged" is a target
                failed += 1
                if failed == 1:
                    progress(f"storm: a Revoke failed: {exc.code().name} {exc.details()}")
            finally:
                slots.release()

        loop = asyncio.get_running_loop()
        tasks = []
        start = loop.time()
        for k, serial in enumerate(serials):
            delay = start + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            tasks.append(asyncio.create_task(one(serial)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    sent.sort()
    return sent, elapsed, acks, failed


def layout_for(count: int, per_process: int, targets: list[str], driver: str) -> list[tuple[str, int, str]]:
    """`count` subscribers in processes of at most `per_process`, spread over `targets`."""
    procs = max(1, -(-count // per_process))
    sizes = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    return [(targets[i % len(targets)], n, driver) for i, n in enumerate(sizes)]


def run(primary: Server, pool: SerialPool, cfg, work_dir) -> dict:
    """propagation_ms per subscriber count, the storm, and CDF points for the plot."""
    results: dict = {"propagation_ms": {}, "propagation_cdf_ms": {}, "propagation_missing": {},
                     "propagation_layout": {}}
    with RecallClient(primary.address, timeout=30) as client:
        for key, spec in cfg.propagation_layouts.items():
            followers: list[Server] = []
            subs = None
            try:  # a layout that fails is reported; the others still run
                targets = [primary.address]
                if spec.get("followers"):
                    progress(f"propagation: starting {spec['followers']} followers")
                    followers = [Server(work_dir / f"follower-{i}", follow=primary.address, name="follower")
                                 for i in range(spec["followers"])]
                    targets = [f.address for f in followers]
                layout = layout_for(int(key), spec["per_process"], targets, spec.get("driver", "thread"))
                progress(f"propagation: {key} subscribers in {len(layout)} processes"
                         + (f" behind {len(followers)} followers" if followers else ""))
                started = time.monotonic()
                subs = Subscribers("replica", layout)
                subs.ready(client.stats().seq, timeout=max(120, 2 * int(key)))
                sync_s = time.monotonic() - started
                n = cfg.propagation_count
                progress(f"propagation: {key} subscribers, {n} revocations at {cfg.propagation_rate:g}/s")
                meter = CpuMeter([primary.pid] + [f.pid for f in followers], subs.pids)
                sent, acks = paced(lambda s: client.revoke(serials=[s], reason="bench").seq, pool.take(n),
                                   cfg.propagation_rate)
                cores = meter.cores()
                per_change, pairs, missing = latencies(sent, subs.collect(sent[-1][0]))
                results["propagation_ms"][key] = summary_ms(per_change)
                results.setdefault("propagation_ack_ms", {})[key] = summary_ms(acks)
                results["propagation_cdf_ms"][key] = cdf_points(pairs)
                results["propagation_missing"][key] = missing
                results["propagation_layout"][key] = {
                    "processes": len(layout), "followers": len(followers),
                    "driver": spec.get("driver", "thread"), "revocations": n, "rate": cfg.propagation_rate,
                    "cpu_cores": cores, "sync_s": round(sync_s, 2)}
                if key == cfg.storm_layout:
                    results.update(storm(primary, pool, cfg, subs))
            except Exception as exc:  # noqa: BLE001 - recorded, shown in the table's errors
                progress(f"propagation: {key} subscribers FAILED: {exc}")
                results.setdefault("propagation_errors", {})[key] = f"{type(exc).__name__}: {exc}"[:500]
            finally:
                if subs is not None:
                    subs.close()
                for f in followers:
                    f.close()
    return results


def storm(primary: Server, pool: SerialPool, cfg, subs: Subscribers) -> dict:
    n = int(cfg.storm_rate * cfg.storm_seconds)
    progress(f"propagation: storm, {n} revocations at {cfg.storm_rate:g}/s to {subs.count} subscribers")
    meter = CpuMeter([primary.pid], subs.pids)
    sent, elapsed, acks, failed = run_async(_storm(primary.address, pool.take(n), cfg.storm_rate, STORM_INFLIGHT))
    cores = meter.cores()
    if not sent:
        raise RuntimeError(f"storm: none of {n} revocations was acknowledged ({failed} failed)")
    records = subs.collect(sent[-1][0], timeout=60)
    per_change, pairs, missing = latencies(sent, records)
    return {
        "propagation_storm_ms": summary_ms(per_change),
        "propagation_storm_ack_ms": summary_ms(acks),
        "propagation_storm_cdf_ms": cdf_points(pairs),
        "propagation_storm_missing": missing,
        "propagation_storm_rate": len(sent) / elapsed,  # acknowledged revocations per second
        "propagation_storm_asked": cfg.storm_rate,
        "propagation_storm_failed": failed,
        "propagation_storm_subscribers": subs.count,
        "propagation_storm_cpu_cores": cores,
        "propagation_storm_events_per_subscriber_per_s": float(np.mean([len(r) for r in records])) / elapsed,
    }
