"""Results: the JSON file, the table printed at the end, the targets, and the PNG.

The PNG (matplotlib, Agg backend, drawn only when matplotlib is installed)
has four panels: propagation latency as a CDF per subscriber count (solid:
recallcore replicas; dashed, same colour: Redis pub/sub with the same
layout; black: the storm), throughput bars against their floors, per-check
lookup cost against its floor, and the targets with their ratios.
"""

import json
import math
import pathlib

REQUIRED = (
    "meta", "floor_bitmap_ns", "core_check_ns", "replica_check_ns",
    "floor_unary_rps", "check_unary_rps", "check_unary_p50_us", "check_unary_p99_us",
    "check_batch_ids_per_s", "propagation_ms", "propagation_storm_ms", "propagation_storm_asked",
    "floor_str_set_ns",
    "revoke_single_per_s", "revoke_single_p99_ms", "revoke_bulk_serials_per_s",
    "cold_start_s", "bytes_per_revoked",
)


def missing_keys(results: dict) -> list[str]:
    return [k for k in REQUIRED if k not in results]


def _get(results: dict, *path):
    value = results
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured as a ratio or figure, met? — None when not measured)."""
    out = []

    def add(name, ok, text):
        out.append((name, text, ok))

    def ratio(name, value, floor, limit, unit, higher_is_better=False):
        """A target `value` against `floor`: met when value/floor <= limit (>= when higher is better)."""
        if not value or not floor:
            add(name, None, "not measured")
            return
        r = value / floor
        add(name, r >= limit if higher_is_better else r <= limit, f"{r:.2f}x ({value:,.{_digits(value)}f} vs "
            f"{floor:,.{_digits(floor)}f} {unit})")

    f = _get(results, "replica_floor_bitmap_ns") or _get(results, "floor_bitmap_ns")
    ratio("replica check by serial <= 3x bare bitmap", _get(results, "replica_check_ns"), f, 3, "ns")
    fs = _get(results, "floor_str_set_ns")
    ratio("replica check by canonical jti <= 2.5x jti in a str set", _get(results, "replica_canonical_jti_ns"),
          fs, 2.5, "ns")
    ratio("replica check by issuer+jti <= 1.5x jti in a str set", _get(results, "replica_jti_check_ns"), fs, 1.5,
          "ns")
    ratio("Check unary >= 0.8x empty RPC", _get(results, "check_unary_rps"), _get(results, "floor_unary_rps"),
          0.8, "calls/s", higher_is_better=True)
    b = _get(results, "check_batch_ids_per_s", "10000")
    add("CheckBatch of 10,000 >= 5M ids/s", b >= 5e6 if b else None,
        f"{b / 5e6:.2f}x of 5M ({b / 1e6:.2f}M ids/s)" if b else "not measured")
    commit50, rpc50 = _get(results, "floor_commit_p50_ms"), _get(results, "writes_rpc_floor_p50_ms")
    ratio("propagation to 1 p50 <= 1.5x (synced commit + empty RPC p50)", _get(results, "propagation_ms", "1", "p50"),
          commit50 + rpc50 if commit50 and rpc50 else None, 1.5, "ms")
    p, rp = _get(results, "propagation_ms", "100", "p99"), _get(results, "redis", "pubsub_ms", "100", "p99")
    add("propagation p99 to 100 <= Redis pub/sub p99", p <= rp if p is not None and rp is not None else None,
        f"{p / rp:.2f}x ({p:.2f} vs {rp:.2f} ms)" if p is not None and rp else
        (f"{p:.2f} ms; Redis not measured" if p is not None else "not measured"))
    ratio("durable single revoke p99 <= 1.5x synced commit p99", _get(results, "revoke_single_p99_ms"),
          _get(results, "floor_commit_p99_ms"), 1.5, "ms")
    asked, got = _get(results, "propagation_storm_asked"), _get(results, "propagation_storm_rate")
    failed = _get(results, "propagation_storm_failed")
    if asked and got is not None:
        add(f"storm: {asked:,.0f}/s asked, >= 0.95 of it acknowledged, none failed",
            got / asked >= 0.95 and not failed, f"{got / asked:.2f}x ({got:,.0f}/s, {failed or 0} failed)")
    else:
        add("storm: >= 0.95 of the asked rate acknowledged, none failed", None, "not measured")
    s99 = _get(results, "propagation_storm_ms", "p99")
    add("storm propagation p99 to 100 <= 50 ms", s99 <= 50 if s99 is not None else None,
        f"{s99 / 50:.2f}x of 50 ms ({s99:.1f} ms)" if s99 is not None else "not measured")
    bulk = _get(results, "revoke_bulk_serials_per_s")
    add("bulk revoke > 50k serials/s", bulk > 50e3 if bulk else None,
        f"{bulk / 50e3:.2f}x of 50k ({bulk:,.0f}/s)" if bulk else "not measured")
    bpr = _get(results, "bytes_per_revoked")
    add("<= 2 bytes per revoked registered token", bpr <= 2 if bpr else None,
        f"{bpr / 2:.2f}x of 2 ({bpr:.2f} B)" if bpr else "not measured")
    cold, reg = _get(results, "cold_start_s"), _get(results, "scale_registered")
    add(f"cold start < 1 s ({(reg or 0) / 1e6:g}M tokens)", cold < 1 if cold is not None else None,
        f"{cold:.2f}x of 1 s ({cold:.3f} s)" if cold is not None else "not measured")
    c99, f99 = _get(results, "cluster", "single", "revoke_ms", "p99"), _get(results, "cluster", "single",
                                                                          "floor_ms", "p99")
    skipped = _get(results, "skipped", "cluster")
    add("cluster: durable single revoke p99 <= 2x bare 1-row synchronous commit p99",
        c99 <= 2 * f99 if c99 is not None and f99 else None,
        f"{c99 / f99:.2f}x ({c99:.2f} vs {f99:.2f} ms)" if c99 is not None and f99 else
        (f"skipped: {skipped}" if skipped else "not measured"))
    return out


def _digits(value: float) -> int:
    return 0 if value >= 100 else 2


def _fmt(value, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("/s", "ids/s", "calls/s", "serials/s"):
        return f"{value / 1e6:.2f}M {unit}" if value >= 1e6 else f"{value:,.0f} {unit}"
    return f"{value:,.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(scenario, figure, value, floor, ratio) for the table."""
    g = lambda *p: _get(results, *p)
    out = []

    def row(scen, what, value, unit, floor_name="", floor=None, higher_is_better=False):
        ratio = ""
        if value is not None and floor:
            ratio = f"{(floor / value if higher_is_better else value / floor):.2f}x"
        out.append((scen, what, _fmt(value, unit), f"{floor_name} {_fmt(floor, unit)}".strip() if floor else "", ratio))

    row("1 lookup", "core Mirror.state (serial)", g("core_check_ns"), "ns", "x in BitMap64", g("floor_bitmap_ns"))
    row("1 lookup", "core foreign (issuer+jti)", g("core_jti_check_ns"), "ns", "hash+in set", g("floor_jti_ns"))
    row("1 lookup", "Replica.is_revoked (serial)", g("replica_check_ns"), "ns", "x in BitMap64",
        g("replica_floor_bitmap_ns"))
    row("1 lookup", "  vs a bare method call doing it", g("replica_check_ns"), "ns", "method",
        g("replica_floor_method_ns"))
    row("1 lookup", "Replica.is_revoked (issuer+jti)", g("replica_jti_check_ns"), "ns", "hash+in set",
        g("replica_floor_jti_ns"))
    row("1 lookup", "  vs jti in a set of strings", g("replica_jti_check_ns"), "ns", "str set",
        g("floor_str_set_ns"))
    row("1 lookup", "Replica.is_revoked (canonical jti)", g("replica_canonical_jti_ns"), "ns", "str set",
        g("floor_str_set_ns"))
    row("2 unary", "Check calls/s", g("check_unary_rps"), "calls/s", "health", g("floor_unary_rps"), True)
    row("2 unary", "Check p50", g("check_unary_p50_us"), "us", "health", g("floor_unary_p50_us"))
    row("2 unary", "Check p99", g("check_unary_p99_us"), "us", "health", g("floor_unary_p99_us"))
    row("2 unary", "server CPU per Check", g("check_unary_server_cpu_us"), "us", "health",
        g("floor_unary_server_cpu_us"))
    for size in ("100", "1000", "10000"):
        row("3 batch", f"CheckBatch {int(size):,} ids/s", g("check_batch_ids_per_s", size), "ids/s",
            "core", g("check_batch_core_ids_per_s", size), True)
        row("3 batch", f"  vs empty RPC x {int(size):,}", g("check_batch_ids_per_s", size), "ids/s",
            "rpc", g("check_batch_rpc_floor_ids_per_s", size), True)
    for key, s in (g("propagation_ms") or {}).items():
        red = g("redis", "pubsub_ms", key)
        for q in ("p50", "p99", "max"):
            row("4 propagation", f"{key} subscribers {q}", s[q], "ms", "redis", red[q] if red else None)
    storm = g("propagation_storm_ms")
    if storm:
        rate = g("propagation_storm_rate") or 0
        for q in ("p50", "p99", "max"):
            row("4 propagation", f"storm {rate:,.0f}/s {q}", storm[q], "ms")
    row("5 writes", "synced LMDB commit p50 (floor)", g("floor_commit_p50_ms"), "ms")
    row("5 writes", "synced LMDB commit p99 (floor)", g("floor_commit_p99_ms"), "ms")
    row("5 writes", "core Engine.revoke p50", g("revoke_core_p50_ms"), "ms", "commit", g("floor_commit_p50_ms"))
    row("5 writes", "core Engine.revoke p99", g("revoke_core_p99_ms"), "ms", "commit", g("floor_commit_p99_ms"))
    row("5 writes", "single Revoke RPC p50", g("revoke_single_p50_ms"), "ms", "commit", g("floor_commit_p50_ms"))
    row("5 writes", "single Revoke RPC p99", g("revoke_single_p99_ms"), "ms", "commit", g("floor_commit_p99_ms"))
    row("5 writes", "  empty RPC p50 / p99 (interleaved)", g("writes_rpc_floor_p50_ms"), "ms", "p99",
        g("writes_rpc_floor_p99_ms"))
    row("5 writes", f"core revokes/s ({g('write_concurrency')} callers)", g("revoke_core_per_s"), "/s",
        "commits 1 by 1", g("floor_commit_per_s"), True)
    row("5 writes", f"Revoke RPCs/s ({g('write_concurrency')} callers)", g("revoke_single_per_s"), "/s",
        "core", g("revoke_core_per_s"), True)
    row("5 writes", "bulk core serials/s", g("revoke_bulk_core_serials_per_s"), "serials/s", "LMDB puts",
        g("floor_bulk_puts_per_s"), True)
    row("5 writes", "bulk Revoke RPC serials/s", g("revoke_bulk_serials_per_s"), "serials/s", "core",
        g("revoke_bulk_core_serials_per_s"), True)
    row("6 scale", f"cold start, {(g('scale_revoked') or 0) / 1e6:g}M of {(g('scale_registered') or 0) / 1e6:g}M",
        g("cold_start_s"), "s", "deser+copy", g("floor_cold_start_s"))
    row("6 scale", "recallcore serve ready", g("serve_ready_s"), "s")
    row("6 scale", "bytes per revoked (serialized)", g("bytes_per_revoked"), "B", "bitset", g("floor_bytes_per_revoked"))
    row("6 scale", "bytes per revoked (in memory)", g("bytes_per_revoked_in_memory"), "B")
    row("6 scale", "expiry bytes per registered", g("expiry_bytes_per_registered"), "B")
    if g("redis"):
        row("7 vs Redis", "Check calls/s vs SISMEMBER", g("check_unary_rps"), "calls/s", "Redis",
            g("redis", "sismember_rps"), True)
        for size in ("100", "1000", "10000"):
            row("7 vs Redis", f"CheckBatch {int(size):,} vs SMISMEMBER", g("check_batch_ids_per_s", size), "ids/s",
                "Redis", g("redis", "smismember_ids_per_s", size), True)
        row("7 vs Redis", "  Redis pipelined SISMEMBER (1,000)", g("redis", "pipelined_sismember_ids_per_s"), "ids/s")
        row("7 vs Redis", "bytes per revoked id vs Redis set", g("bytes_per_revoked"), "B", "Redis",
            g("redis", "bytes_per_id"))
    if g("cluster"):
        single = g("cluster", "single")
        for q in ("p50", "p99"):
            row("8 cluster", f"durable single Revoke RPC {q}", single["revoke_ms"][q], "ms", "1-row commit",
                single["floor_ms"][q])
        row("8 cluster", "Revoke RPCs/s (16 callers, 2 nodes)", g("cluster", "throughput", "revocations_per_s"), "/s")
        prop = g("cluster", "propagation", "propagation_ms")
        rate = g("cluster", "propagation", "rate")
        for q in ("p50", "p99"):
            row("8 cluster", f"revoke on A -> replica of B {q}" + (f" ({rate:g}/s)" if rate else ""), prop[q], "ms")
        row("8 cluster", "Register, batches of 1,000", g("cluster", "register", "tokens_per_s"), "/s")
    return out


def table(results: dict) -> str:
    body = rows(results)
    header = ("scenario", "figure", "value", "floor or reference (same run)", "cost vs it")
    widths = [max(len(r[i]) for r in body + [header]) for i in range(5)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    out = [line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in body]
    out.append("")
    out.append("targets:")
    for name, text, ok in targets(results):
        mark = "met   " if ok else ("MISSED" if ok is False else "n/a   ")
        out.append(f"  {mark} {name}: {text}")
    cpus = _get(results, "meta", "host", "cpus") or 1
    load = max(_get(results, "meta", "loadavg_at_start") or 0, _get(results, "meta", "loadavg_at_end") or 0)
    if load > cpus / 2:
        out.append("")
        out.append(f"warning: load average {load:.1f} on {cpus} cores around this run: other processes "
                   "competed for the CPU; trust the ratios more than the absolute figures")
    if results.get("skipped"):
        out.append("")
        out.append("skipped: " + ", ".join(f"{name} ({why})" for name, why in results["skipped"].items()))
    if results.get("errors"):
        out.append("")
        out.append("errors: " + ", ".join(results["errors"]))
    return "\n".join(out)


def write_json(results: dict, out_dir: pathlib.Path) -> pathlib.Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "latest.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True, default=float) + "\n")
    return path


def plot(results: dict, path: pathlib.Path) -> pathlib.Path | None:
    """Draw the PNG; None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(16, 11))
    mode = _get(results, "meta", "mode") or "?"
    fig.suptitle(f"recallcore bench ({mode} mode, {_get(results, 'meta', 'time') or ''}, "
                 f"{_get(results, 'meta', 'host', 'cpus') or '?'} cores)", fontsize=13)

    ax = axes[0][0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (key, points) in enumerate((results.get("propagation_cdf_ms") or {}).items()):
        if points:
            ax.plot(points, np.linspace(0, 1, len(points)), color=colours[i % 10], label=f"replicas, {key} subscribers")
        red = _get(results, "redis", "pubsub_cdf_ms", key)
        if red:
            ax.plot(red, np.linspace(0, 1, len(red)), "--", color=colours[i % 10], label=f"Redis pub/sub, {key}")
    storm = results.get("propagation_storm_cdf_ms")
    if storm:
        ax.plot(storm, np.linspace(0, 1, len(storm)), color="black",
                label=f"storm {results.get('propagation_storm_rate', 0):,.0f}/s, "
                      f"{results.get('propagation_storm_subscribers', '?')} subscribers")
    if ax.lines:
        ax.set_xscale("log")
    ax.set_xlabel("Revoke call start -> applied in the replica (ms, log)")
    ax.set_ylabel("fraction of (revocation, subscriber) pairs")
    ax.set_title("4. propagation latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")

    ax = axes[0][1]
    g = lambda *p: _get(results, *p)
    groups = [("Check\ncalls/s\n(Redis:\nSISMEMBER)", g("check_unary_rps"),
               {"empty RPC floor": g("floor_unary_rps"), "Redis": g("redis", "sismember_rps")})]
    for size in ("100", "1000", "10000"):
        groups.append((f"CheckBatch\n{int(size):,} ids/s\n(Redis:\nSMISMEMBER)", g("check_batch_ids_per_s", size),
                       {"core (in process)": g("check_batch_core_ids_per_s", size),
                        "empty RPC floor": g("check_batch_rpc_floor_ids_per_s", size),
                        "Redis": g("redis", "smismember_ids_per_s", size)}))
    groups.append((f"single\nrevokes/s\n({g('write_concurrency')} callers)", g("revoke_single_per_s"),
                   {"core (in process)": g("revoke_core_per_s"), "LMDB floor": g("floor_commit_per_s")}))
    groups.append(("bulk revoke\nserials/s\n(10,000\na call)", g("revoke_bulk_serials_per_s"),
                   {"core (in process)": g("revoke_bulk_core_serials_per_s"),
                    "LMDB floor": g("floor_bulk_puts_per_s")}))
    kinds = {"recallcore (RPC)": "tab:red", "core (in process)": "tab:blue", "empty RPC floor": "silver",
             "LMDB floor": "dimgrey", "Redis": "tab:green"}
    width = 0.8 / len(kinds)
    for k, (kind, colour) in enumerate(kinds.items()):
        xs, ys = [], []
        for i, (_, ours, floors) in enumerate(groups):
            value = ours if k == 0 else floors.get(kind)
            if value:
                xs.append(i + (k - (len(kinds) - 1) / 2) * width)
                ys.append(value)
        bars = ax.bar(xs, ys, width, label=kind, color=colour)
        for bar, y in zip(bars, ys):
            ax.annotate(f"{y:,.3g}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=6, rotation=90)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    if any(ours for _, ours, _ in groups):
        ax.set_yscale("log")
    ax.set_title("throughput against floors (higher is better, log)")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", which="both", alpha=0.3)

    ax = axes[1][0]
    names = ["x in BitMap64", "Mirror.state", "Replica serial", "Replica canonical jti",
             "hash + in set", "core issuer+jti", "Replica issuer+jti"]
    keys = ["floor_bitmap_ns", "core_check_ns", "replica_check_ns", "replica_canonical_jti_ns",
            "floor_jti_ns", "core_jti_check_ns", "replica_jti_check_ns"]
    vals = [results.get(k) or 0 for k in keys]
    colour = ["grey", "tab:blue", "tab:red", "tab:red", "grey", "tab:blue", "tab:red"]
    bars = ax.bar(range(len(vals)), vals, color=colour)
    for bar, v in zip(bars, vals):
        ax.annotate(f"{v:.0f} ns", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(vals)), names, fontsize=8, rotation=15)
    ax.set_ylabel("ns per check (same loop; grey = floor)")
    ax.set_title("1. lookup in process (lower is better)")

    ax = axes[1][1]
    ax.axis("off")
    lines = []
    for name, text, ok in targets(results):
        lines.append(("MET    " if ok else "MISSED " if ok is False else "n/a    ") + name + "\n        " + text)
    ax.text(0, 1, "targets (ratios from this run)\n\n" + "\n".join(lines), va="top", family="monospace", fontsize=9)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
