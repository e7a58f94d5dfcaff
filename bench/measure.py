"""Small measuring helpers shared by the scenarios: percentiles, timed loops, progress."""

import asyncio
import gc
import itertools
import sys
import time

import numpy as np

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, with the seconds since the bench started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def summary_ms(samples_ns) -> dict:
    """{p50, p99, max} in milliseconds of nanosecond samples (NaN when empty)."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if not len(a):
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def cdf_points(samples_ns, points: int = 201) -> list[float]:
    """`points` evenly spaced quantiles (0..100%) in ms, to redraw a CDF from JSON."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if not len(a):
        return []
    return [round(float(v), 4) for v in np.percentile(a, np.linspace(0, 100, points))]


def median_ns_per_item(run, items: int, repeats: int) -> float:
    """Median over `repeats` of run()'s elapsed ns divided by `items` (GC off while timing)."""
    return interleaved({"x": (run, items)}, repeats)["x"]


def interleaved(loops: dict, repeats: int) -> dict:
    """{name: median ns per item} of loops {name: (run, items)} timed in turn, round after round.

    Interleaving puts the drift of a shared, noisy machine into every loop
    alike, so their ratios hold even when the absolute figures wander.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        for run, _ in loops.values():
            run()  # warm up
        times: dict = {name: [] for name in loops}
        for _ in range(repeats):
            for name, (run, items) in loops.items():
                times[name].append(run() / items)
    finally:
        if enabled:
            gc.enable()
    return {name: float(np.median(t)) for name, t in times.items()}


async def closed_loop(call, requests, concurrency: int, duration: float) -> tuple[int, float, list[int]]:
    """`concurrency` callers each awaiting call(next request) back to back for `duration` s.

    `requests` is a list (cycled) or an iterator shared with earlier loops, so
    requests that must not repeat (revocations) are never sent twice as long
    as there are enough. Returns (calls completed, elapsed s, latency of each call in ns).
    """
    stop_at = time.monotonic() + duration
    latencies: list[int] = []
    source = itertools.cycle(requests) if isinstance(requests, list) else requests

    async def caller() -> None:
        while time.monotonic() < stop_at:
            request = next(source)
            t0 = time.perf_counter_ns()
            await call(request)
            latencies.append(time.perf_counter_ns() - t0)

    start = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return len(latencies), time.monotonic() - start, latencies
