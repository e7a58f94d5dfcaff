"""Scenario 3: CheckBatch, ids per second for batches of 100, 1,000 and 10,000.

Serials are packed little-endian uint64 (the fast path of the contract),
drawn uniformly from the registered range, with a few distinct batches
cycled so no cache helps. Two floors in the same run: the core
(`Mirror.states` on the same mirror, in process: what the server does per
batch once the bytes are decoded), and the RPC floor (the empty health
check's calls/s times the batch size: what the batch would reach if it cost
no more than an empty call). Server CPU per id comes from /proc.
"""

import time

import numpy as np
from recallclient._proto.recall.v1 import recall_pb2 as pb

from recallcore.core.mirror import Mirror

from .measure import median_ns_per_item, progress
from .procs import Server, run_async
from .unary import measure

SIZES = (100, 1000, 10_000)


def _batches(registered: int, size: int, count: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(size)
    return [rng.integers(1, registered + 1, size, dtype=np.uint64) for _ in range(count)]


def core(mirror: Mirror, registered: int, repeats: int) -> dict:
    """ids/s of Mirror.states per batch size (in process, on the mirror the server loaded)."""
    out = {}
    now = int(time.time())
    for size in SIZES:
        batches = _batches(registered, size)

        def run(batches=batches):
            t0 = time.perf_counter_ns()
            for ids in batches:
                mirror.states(ids, now)
            return time.perf_counter_ns() - t0

        out[str(size)] = 1e9 / median_ns_per_item(run, size * len(batches), repeats)
    return out


def run(server: Server, mirror: Mirror, registered: int, concurrency: int, duration: float,
        floor_rps: float, repeats: int) -> dict:
    progress("batch: core floor (Mirror.states in process)")
    core_rates = core(mirror, registered, repeats)
    rates, cpu = {}, {}
    for size in SIZES:
        progress(f"batch: CheckBatch of {size:,}, {concurrency} callers x {duration:g}s")
        requests = [pb.CheckBatchRequest(serials=ids.astype("<u8").tobytes()) for ids in _batches(registered, size)]
        got = run_async(measure(server, "CheckBatch", requests, concurrency, duration, 0))
        rates[str(size)] = got["rps"] * size
        cpu[str(size)] = got["server_cpu_us"] * 1000 / size
    return {
        "check_batch_ids_per_s": rates,
        "check_batch_core_ids_per_s": core_rates,
        "check_batch_rpc_floor_ids_per_s": {str(s): floor_rps * s for s in SIZES},
        "check_batch_server_cpu_ns_per_id": cpu,
        "batch_concurrency": concurrency,
    }
