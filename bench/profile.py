"""Profile the server under one load: `python -m bench.profile LOAD [--seconds N]`.

LOAD is one of check, batch (CheckBatch of 10,000), revoke (one caller),
revoke16 (16 callers), storm (1,000 revocations/s to 100 replicas) or
fanout (50 revocations/s to 100 replicas; with --process subscriber the
sampled process is one of the four that run 25 Replicas each). Builds the quick mode's base
store, starts `recallcore serve` on it, and samples the server with py-spy
(which must be installed: it is in the `bench` extra) while the load runs.
Prints the functions where the server spends its samples, by own time and
including callees, and leaves py-spy's raw collapsed stacks in
bench/results/profile-LOAD.txt (feed them to a flame graph tool). With
--idle the samples include waiting threads (where wall time goes).
"""

import argparse
import collections
import pathlib
import shutil
import subprocess
import sys
import tempfile

from . import dataset, procs, propagation
from . import run as bench_run
from .measure import progress
from .unary import measure
from .writes import _requests

LOADS = ("check", "batch", "revoke", "revoke16", "storm", "fanout")


def top(raw: pathlib.Path, n: int = 25) -> str:
    """The hottest frames of py-spy's raw output: own samples and inclusive samples."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        count = int(count)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    out = [f"{total} samples", "", "own time:"]
    out += [f"  {c / total:6.1%}  {f}" for f, c in own.most_common(n)]
    out += ["", "including callees:"]
    out += [f"  {c / total:6.1%}  {f}" for f, c in incl.most_common(n)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("load", choices=LOADS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--driver", choices=("thread", "async"), default="thread",
                        help="subscribers (storm, fanout): Replica threads or AsyncReplica tasks")
    parser.add_argument("--idle", action="store_true", help="sample waiting threads too")
    parser.add_argument("--process", choices=("server", "subscriber"), default="server",
                        help="what to sample: the server, or (storm, fanout) one of the 4 subscriber processes")
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--out", type=pathlib.Path, default=procs.REPO / "bench" / "results")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
    mode = bench_run.MODES["quick"]
    work = pathlib.Path(tempfile.mkdtemp(prefix="recallprof-"))
    procs.set_log_dir(work / "logs")
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / f"profile-{args.load}{'-subscriber' if args.process == 'subscriber' else ''}.txt"
    raw.unlink(missing_ok=True)
    try:
        ds = dataset.build(work / "base", mode.base_registered, mode.base_revoked, mode.base_pool,
                           mode.base_foreign)
        pool = dataset.SerialPool(ds.pool_start, ds.registered)
        with procs.Server(pathlib.Path(ds.path)) as server:
            subs = None
            if args.load in ("storm", "fanout"):
                subs = propagation.Subscribers("replica", propagation.layout_for(100, 25, [server.address], args.driver))
                subs.ready(ds.seq)
            pid = subs.pids[0] if args.process == "subscriber" and subs is not None else server.pid
            cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds) + 1),
                   "--rate", "250", "--format", "raw", "--nonblocking", "-o", str(raw)]
            if args.idle:
                cmd.append("--idle")
            if args.native:  # py-spy must pause the process to unwind C stacks
                cmd = [c for c in cmd if c != "--nonblocking"] + ["--native"]
            sampler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            progress(f"profile: {args.load} for {args.seconds:g}s under py-spy")
            s = args.seconds
            if args.load == "check":
                import random

                from recallclient._proto.recall.v1 import recall_pb2 as pb
                reqs = [pb.CheckRequest(serial=random.randint(1, ds.registered)) for _ in range(4096)]
                got = procs.run_async(measure(server, "Check", reqs, 32, s, 0))
            elif args.load == "batch":
                import numpy as np
                from recallclient._proto.recall.v1 import recall_pb2 as pb
                rng = np.random.default_rng(0)
                reqs = [pb.CheckBatchRequest(serials=rng.integers(1, ds.registered, 10_000, dtype=np.uint64)
                                             .astype("<u8").tobytes()) for _ in range(8)]
                got = procs.run_async(measure(server, "CheckBatch", reqs, 4, s, 0))
            elif args.load in ("revoke", "revoke16"):
                conc = 1 if args.load == "revoke" else 16
                got = procs.run_async(measure(server, "Revoke", _requests(pool.take(int(s * 10_000)), 1),
                                              conc, s, 0))
            else:
                rate = 1000 if args.load == "storm" else 50
                sent, elapsed, _, _ = procs.run_async(propagation._storm(server.address, pool.take(int(rate * s)), rate,
                                                                     propagation.STORM_INFLIGHT))
                per_change, _, _ = propagation.latencies(sent, subs.collect(sent[-1][0], timeout=60))
                got = {"rate": len(sent) / elapsed, "p50_ms": float(sorted(per_change)[len(per_change) // 2] / 1e6)}
            _, err = sampler.communicate(timeout=60)
            if subs is not None:
                subs.close()
            print(f"load: {got}")
            if sampler.returncode or not raw.exists():
                print(f"py-spy wrote nothing: {err}", file=sys.stderr)
                return 1
            print(top(raw))
            print(f"\nraw stacks: {raw}")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
