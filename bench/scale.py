"""Scenario 6: scale of the set, cold start and bytes per revoked token.

The store (e.g. 1M revoked of 10M registered) is built by bench.dataset in
a child process, outside any timing. Cold start is then measured in fresh
processes (`python -m bench.scale cold PATH`): opening the Store and loading
the mirror (`Store.load()`), the median of a few runs; the page cache is warm
(the file was just written), the process is cold. Its floor, measured in the
same child: deserializing the revoked bitmap from its bytes plus copying the
expiry array (what any loader must at least do). `serve_ready_s` is the
whole `recallcore serve` start on that store, up to its listening line
(imports, store, gRPC).

Bytes per revoked token: the revoked BitMap64 in its portable serialized
form (what a snapshot ships and a replica holds), divided by the revoked
count; its floor is a plain bitset over the registered serials (1 bit
each). The in-memory figure is roaring's own container payload. The server
additionally keeps a 4-byte expiry per registered serial (reported apart).
"""

import json
import pathlib
import statistics
import sys
import time

from .measure import progress
from .procs import Server, Worker, read_line, spawn, stop


def _child_cold(path: str) -> dict:
    t0 = time.perf_counter()
    import numpy as np
    from pyroaring import BitMap64

    from bench.dataset import open_store
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = open_store(pathlib.Path(path))
    mirror = store.load()
    cold = time.perf_counter() - t0
    store.close()
    revoked = mirror.revocations.revoked
    data = revoked.serialize()
    exp = mirror.expiry.array
    floors = []
    for _ in range(3):
        t0 = time.perf_counter()
        BitMap64.deserialize(data)
        exp.copy()
        floors.append(time.perf_counter() - t0)
    stats = revoked.get_statistics()
    mem = sum(v for k, v in stats.items() if k.startswith("n_bytes_"))
    registered = mirror.revocations.registered_through
    return {
        "cold_start_s": cold, "import_s": t_import, "floor_cold_start_s": min(floors),
        "revoked": len(revoked), "registered": registered,
        "serialized_bytes": len(data), "bitmap_payload_bytes": mem,
        "expiry_bytes": int(exp.nbytes), "expiry_dtype": str(np.asarray(exp).dtype),
    }


def run(work_dir: pathlib.Path, registered: int, revoked: int, cold_runs: int) -> dict:
    path = work_dir / "scale"
    progress(f"scale: building {revoked:,} revoked of {registered:,} registered (not timed)")
    builder = spawn([sys.executable, "-m", "bench.dataset", "build", str(path), str(registered),
                     str(revoked), "0", "0"], "scale-build")
    try:
        while True:
            reply = json.loads(read_line(builder, 1800))
            if "progress" in reply:
                progress(f"scale: {reply['progress']}")
            else:
                break
    finally:
        stop(builder)
    progress(f"scale: cold start x {cold_runs} (fresh processes)")
    colds = []
    for _ in range(cold_runs):
        worker = Worker("bench.scale", "cold", str(path), name="scale-cold")
        try:
            colds.append(worker.answer(600))
        finally:
            worker.close()
    progress("scale: recallcore serve start-up on that store")
    with Server(path, name="scale-serve") as server:
        serve_ready = server.ready_s
    c = colds[0]
    n = c["revoked"]
    return {
        "cold_start_s": statistics.median(x["cold_start_s"] for x in colds),
        "floor_cold_start_s": statistics.median(x["floor_cold_start_s"] for x in colds),
        "serve_ready_s": serve_ready,
        "bytes_per_revoked": c["serialized_bytes"] / n,
        "bytes_per_revoked_in_memory": c["bitmap_payload_bytes"] / n,
        "floor_bytes_per_revoked": c["registered"] / 8 / n,
        "expiry_bytes_per_registered": c["expiry_bytes"] / max(c["registered"], 1),
        "scale_registered": c["registered"],
        "scale_revoked": n,
        "scale_build_s": reply.get("build_s"),
    }


def main(argv: list[str]) -> int:
    if argv[:1] != ["cold"] or len(argv) != 2:
        print("usage: python -m bench.scale cold PATH", file=sys.stderr)
        return 2
    print(json.dumps(_child_cold(argv[1])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
