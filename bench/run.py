"""`python -m bench.run --mode quick|full|smoke`: every scenario, one results file.

Theory of operation. One base store is built in process (bench.dataset,
not timed) and measured in process first (scenario 1's core and floor, and
the core floor of scenario 3); then one `recallcore serve` child opens it
and scenarios 1 (Replica), 2, 3, 4 and 5 run against it in that order (the
writing ones last; they take fresh serials from the store's never-revoked
pool). Scenario 6 builds its own larger store in a child; scenario 7 runs
when redis-server is installed; scenario 8 (cluster, bench/cluster.py)
starts a PostgreSQL server of its own and two `recallcore serve --store`
nodes, and runs when PostgreSQL's server binaries are installed (otherwise
it is reported under "skipped"; asked for with --only, it is an error). The
base store is built only for the scenarios that use it. A scenario that
fails is reported under "errors" and the others still run. Every child process is stopped at the
end, on Ctrl-C and on SIGTERM; the work directory is removed.

Writes bench/results/latest.json and latest.png (or under --out), prints
the table, and exits 1 when a scenario failed or a required key is missing.
"""

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from . import batch, cluster, dataset, lookup, procs, propagation, redis_baseline, report, scale, unary, writes
from .measure import progress


@dataclasses.dataclass(frozen=True)
class Mode:
    """Sizes and durations of one run."""

    name: str
    base_registered: int
    base_revoked: int
    base_pool: int  # top serials never revoked by the build: fresh for the writing scenarios
    base_foreign: int
    lookup_ids: int
    repeats: int
    unary_concurrency: int
    unary_seconds: float
    latency_seconds: float
    batch_concurrency: int
    batch_seconds: float
    propagation_layouts: dict  # subscriber count -> {per_process, followers?, driver?}
    propagation_count: int
    propagation_rate: float
    storm_layout: str
    storm_rate: float
    storm_seconds: float
    write_seconds: float
    write_concurrency: int
    write_rate_cap: int  # fresh serials reserved per second of single-revoke load
    floor_commits: int
    bulk_calls: int
    scale_registered: int
    scale_revoked: int
    cold_runs: int
    redis: bool
    redis_seconds: float
    cluster_rounds: int  # single revokes (each with its floor commit) and propagation samples
    cluster_seconds: float  # the 16-caller throughput run
    cluster_batches: int  # registrations of 1,000 tokens


_LAYOUTS = {"1": {"per_process": 1}, "10": {"per_process": 5}, "100": {"per_process": 25, "driver": "async"}}

MODES = {
    "quick": Mode(
        name="quick", base_registered=2_000_000, base_revoked=150_000, base_pool=500_000, base_foreign=10_000,
        lookup_ids=200_000, repeats=5, unary_concurrency=32, unary_seconds=3, latency_seconds=2,
        batch_concurrency=4, batch_seconds=2, propagation_layouts=_LAYOUTS, propagation_count=100,
        propagation_rate=50, storm_layout="100", storm_rate=1000, storm_seconds=3,
        write_seconds=2, write_concurrency=16, write_rate_cap=10_000, floor_commits=300, bulk_calls=5,
        scale_registered=10_000_000, scale_revoked=1_000_000, cold_runs=3, redis=True, redis_seconds=1.5,
        cluster_rounds=300, cluster_seconds=3, cluster_batches=10,
    ),
    "full": Mode(
        name="full", base_registered=10_000_000, base_revoked=1_000_000, base_pool=2_000_000,
        base_foreign=100_000, lookup_ids=1_000_000, repeats=7, unary_concurrency=32, unary_seconds=10,
        latency_seconds=5, batch_concurrency=4, batch_seconds=5,
        propagation_layouts={**_LAYOUTS, "1000": {"per_process": 125, "followers": 4, "driver": "async"}},
        propagation_count=500, propagation_rate=50, storm_layout="100", storm_rate=1000, storm_seconds=10,
        write_seconds=5, write_concurrency=16, write_rate_cap=10_000, floor_commits=1000, bulk_calls=20,
        scale_registered=100_000_000, scale_revoked=10_000_000, cold_runs=3, redis=True, redis_seconds=5,
        cluster_rounds=1000, cluster_seconds=10, cluster_batches=50,
    ),
    "smoke": Mode(
        name="smoke", base_registered=40_000, base_revoked=2_000, base_pool=30_000, base_foreign=100,
        lookup_ids=5_000, repeats=3, unary_concurrency=4, unary_seconds=0.3, latency_seconds=0.2,
        batch_concurrency=2, batch_seconds=0.3,
        propagation_layouts={"1": {"per_process": 1}, "10": {"per_process": 10}, "100": {"per_process": 50}},
        propagation_count=5, propagation_rate=50, storm_layout="100", storm_rate=200, storm_seconds=0.5,
        write_seconds=0.3, write_concurrency=4, write_rate_cap=10_000, floor_commits=20, bulk_calls=1,
        scale_registered=200_000, scale_revoked=20_000, cold_runs=1, redis=False, redis_seconds=0.2,
        cluster_rounds=20, cluster_seconds=0.5, cluster_batches=2,
    ),
}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _fs_type(path: pathlib.Path) -> str:
    best, kind = "", "?"
    try:
        for line in pathlib.Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype = line.split()[:3]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def _loadavg() -> float:
    try:
        return float(pathlib.Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def meta(mode: Mode, work_dir: pathlib.Path) -> dict:
    import lmdb

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=procs.REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"name": platform.node(), "cpus": os.cpu_count(), "cpu": cpu, "system": platform.platform()},
        "python": platform.python_version(),
        "versions": {
            **{n: _version(n) for n in ("recallcore", "recallclient", "grpcio", "protobuf", "pyroaring", "lmdb",
                                          "numpy", "uvloop", "redis", "matplotlib")},
            "liblmdb": ".".join(map(str, lmdb.version())), "commit": commit,
        },
        "mode": mode.name,
        "loadavg_at_start": _loadavg(),
        "sizes": {"base_registered": mode.base_registered, "base_revoked": mode.base_revoked,
                  "scale_registered": mode.scale_registered, "scale_revoked": mode.scale_revoked},
        "work_dir_fs": _fs_type(work_dir),
    }


class _Scenarios:
    """Runs scenarios, keeping going past a failed one."""

    def __init__(self, results: dict, only: set[str]) -> None:
        self.results = results
        self.only = only

    def run(self, name: str, fn, *args, **kwargs):
        if name.split()[0] not in self.only and name != "dataset check":
            return None
        started = time.monotonic()
        try:
            got = fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is reported; the other scenarios still run
            progress(f"{name}: FAILED: {exc}")
            traceback.print_exc()
            self.results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            return None
        self.results.setdefault("seconds", {})[name] = round(time.monotonic() - started, 1)
        if isinstance(got, dict):
            self.results.update(got)
            for key, failed in got.get("propagation_errors", {}).items():
                self.results.setdefault("errors", {})[f"{name} {key}"] = failed
        return got


SCENARIOS = ("lookup", "unary", "batch", "propagation", "writes", "scale", "redis", "cluster")
_ON_BASE = {"lookup", "unary", "batch", "propagation", "writes"}  # the scenarios that use the base store


def run(mode: Mode, work_dir: pathlib.Path, with_redis: bool, only: set[str], asked: bool = False) -> dict:
    """Every scenario in `only`; `asked`: `only` was given (a scenario that cannot run is then
    an error, not skipped)."""
    results: dict = {"meta": meta(mode, work_dir)}
    s = _Scenarios(results, only)
    s.run("dataset check", dataset.check_equivalence, work_dir / "equivalence")
    if only & _ON_BASE:
        _on_base(s, mode, work_dir, results)
    s.run("scale", scale.run, work_dir, mode.scale_registered, mode.scale_revoked, mode.cold_runs)
    if with_redis:
        s.run("redis", lambda: {"redis": redis_baseline.run(mode, mode.propagation_layouts)})
    elif mode.redis and "redis" in only:
        progress("redis: skipped (redis-server or redis-py not installed; see bench/README.md)")
    if "cluster" in only:
        why = cluster.available()
        if not why:
            s.run("cluster", lambda: {"cluster": cluster.run(mode.cluster_rounds, mode.cluster_seconds,
                                                             mode.cluster_batches, rate=mode.propagation_rate)})
        elif asked:
            results.setdefault("errors", {})["cluster"] = why
        else:
            progress(f"cluster: skipped ({why})")
            results.setdefault("skipped", {})["cluster"] = why
    return results


def _on_base(s: _Scenarios, mode: Mode, work_dir: pathlib.Path, results: dict) -> None:
    """Scenarios 1-5, on the base store (built here, not timed) and one server on it."""
    progress(f"dataset: building {mode.base_revoked:,} revoked of {mode.base_registered:,} (not timed)")
    ds = dataset.build(work_dir / "base", mode.base_registered, mode.base_revoked, mode.base_pool,
                       mode.base_foreign, say=lambda m: progress(f"dataset: {m}"))
    pool = dataset.SerialPool(ds.pool_start, ds.registered)
    ids, refs = lookup.samples(ds.registered, ds.foreign, mode.lookup_ids)
    store = dataset.open_store(pathlib.Path(ds.path))
    try:
        mirror = store.load()
    finally:
        store.close()
    s.run("lookup core", lookup.run_core, mirror, ids, refs, mode.repeats)
    progress("server: starting recallcore serve on the base store")
    with procs.Server(pathlib.Path(ds.path)) as server:
        s.run("lookup replica", lookup.run_replica, server.address, ds.seq, ids, refs, mode.repeats,
              ds.registered)
        s.run("unary", unary.run, server, ds.registered, mode.unary_concurrency, mode.unary_seconds,
              mode.latency_seconds)
        s.run("batch", batch.run, server, mirror, ds.registered, mode.batch_concurrency, mode.batch_seconds,
              results.get("floor_unary_rps", 0), mode.repeats)
        del mirror
        s.run("propagation", propagation.run, server, pool, mode, work_dir)
        s.run("writes", writes.run, server, pool, mode, work_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--out", type=pathlib.Path, default=procs.REPO / "bench" / "results",
                        help="directory for latest.json and latest.png")
    parser.add_argument("--work-dir", type=pathlib.Path, default=None,
                        help="where stores are built (default: a new temporary directory; "
                             "use a disk, not tmpfs, for meaningful fsync figures)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis baseline")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)}; "
                             "redis and cluster only where redis-server and PostgreSQL are installed)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if not only <= set(SCENARIOS):
        parser.error(f"--only: unknown scenario {', '.join(sorted(only - set(SCENARIOS)))}")
    mode = MODES[args.mode]
    with_redis = mode.redis and not args.no_redis and redis_baseline.available()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work_dir = pathlib.Path(tempfile.mkdtemp(prefix="recallbench-", dir=args.work_dir))
    procs.set_log_dir(work_dir / "logs")
    progress(f"bench: {mode.name} mode, work dir {work_dir}")
    try:
        results = run(mode, work_dir, with_redis and "redis" in only, only, asked=only != set(SCENARIOS))
    except KeyboardInterrupt:
        progress("bench: interrupted; stopping every child process")
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            progress(f"bench: kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    results["meta"]["loadavg_at_end"] = _loadavg()
    path = report.write_json(results, args.out)
    try:
        png = report.plot(results, args.out / "latest.png")
    except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose the table
        png = None
        progress(f"plot: FAILED: {exc}")
    print(report.table(results))
    print(f"\nwrote {path}" + (f" and {png}" if png else " (no PNG: matplotlib is not installed)"))
    missing = report.missing_keys(results) if only == set(SCENARIOS) else []
    if missing:
        print(f"missing keys: {', '.join(missing)}", file=sys.stderr)
    return 1 if results.get("errors") or missing else 0


if __name__ == "__main__":
    sys.exit(main())
