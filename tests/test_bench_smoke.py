"""The bench keeps working: its smoke mode runs every scenario but Redis at tiny sizes.

Only the results file is checked (it is written, with the required keys and
numbers); no figure is asserted — timing belongs in bench/, not in tests.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from bench import cluster, report

REPO = pathlib.Path(__file__).resolve().parent.parent
REQUIRED = {
    "floor_bitmap_ns", "core_check_ns", "replica_check_ns",
    "floor_unary_rps", "check_unary_rps", "check_unary_p50_us", "check_unary_p99_us",
    "revoke_single_per_s", "revoke_single_p99_ms", "revoke_bulk_serials_per_s",
    "cold_start_s", "bytes_per_revoked",
}


def test_bench_smoke_writes_latest_json(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--mode", "smoke", "--no-redis", "--out", str(out),
         "--work-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "latest.json").read_text())
    assert set(results["meta"]) >= {"time", "host", "python", "versions", "mode"}
    assert results["meta"]["mode"] == "smoke"
    for key in REQUIRED:
        assert isinstance(results[key], (int, float)), key
    assert set(results["check_batch_ids_per_s"]) == {"100", "1000", "10000"}
    assert set(results["propagation_ms"]) == {"1", "10", "100"}
    for summary in [*results["propagation_ms"].values(), results["propagation_storm_ms"]]:
        assert set(summary) == {"p50", "p99", "max"}
    assert "redis" not in results
    assert_cluster_figures(results, proc.stdout)


def assert_cluster_figures(results: dict, table: str) -> None:
    """The cluster scenario ran (its figures, its target in the table), or, where PostgreSQL is
    not installed, was reported as skipped (a failure under RECALL_REQUIRE_EXTERNAL=1)."""
    why = cluster.available()
    if why:
        if os.environ.get("RECALL_REQUIRE_EXTERNAL") == "1":
            pytest.fail(f"{why} (RECALL_REQUIRE_EXTERNAL=1)")
        assert results["skipped"]["cluster"] == why and "cluster" not in results
        assert f"skipped: cluster ({why})" in table
        return
    single = results["cluster"]["single"]
    for summary in (single["floor_ms"], single["revoke_ms"], results["cluster"]["propagation"]["propagation_ms"]):
        assert set(summary) == {"p50", "p99", "max"}
    assert results["cluster"]["throughput"]["revocations_per_s"] > 0
    assert "cluster: durable single revoke p99 <= 2x bare 1-row synchronous commit p99" in table


def test_bench_only_cluster_runs_it_alone(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--mode", "smoke", "--only", "cluster", "--out", str(out),
         "--work-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    results = json.loads((out / "latest.json").read_text())
    why = cluster.available()
    if why:  # asked for by name, a scenario that cannot run is an error
        assert proc.returncode == 1 and results["errors"] == {"cluster": why}
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(results["seconds"]) == {"dataset check", "cluster"}  # no base store built, nothing else run
    assert_cluster_figures(results, proc.stdout)


def test_the_cluster_target_is_reported_skipped_not_missed_without_postgresql() -> None:
    results = {"skipped": {"cluster": "PostgreSQL server binaries (initdb, postgres) not installed"}}
    (found,) = [t for t in report.targets(results) if t[0].startswith("cluster:")]
    assert found[1:] == ("skipped: PostgreSQL server binaries (initdb, postgres) not installed", None)
    assert "skipped: cluster (PostgreSQL server binaries" in report.table(results)


def test_bench_cluster_runs_on_a_real_database(tmp_path: pathlib.Path, pg_database: str) -> None:
    out = tmp_path / "cluster.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cluster", "--store", pg_database, "--rounds", "20", "--seconds", "0.5",
         "--batches", "2", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for summary in (results["single"]["floor_ms"], results["single"]["revoke_ms"],
                    results["propagation"]["propagation_ms"]):
        assert set(summary) == {"p50", "p99", "max"}
    assert results["throughput"]["callers"] == 16 and results["throughput"]["nodes"] == 2
    assert results["throughput"]["revocations_per_s"] > 0 and results["register"]["tokens_per_s"] > 0
