"""Prometheus metrics of one node, and the listener that serves them (--metrics-listen).

Counters and histograms are updated where things happen: every RPC and
HTTP request (by method or path and code, with latency), Check outcomes by
state, edge decisions by outcome and cause, recalled tokens presented again
(by the token's client and the revocation's reason), commits (latency and
group size). What describes the node's state — head and applied sequence,
staleness, whether it answers, Watch streams and how far behind the slowest
is, map use, the follower's link — is read when scraped. Each Server has a
registry of its own (tests run several in one process).

Label values that come from data (clients, reasons) are capped at
MAX_LABEL_VALUES distinct values each; past that they count as "other", so
a flood of made-up client ids cannot grow the exposition without bound.
"""

import bisect
import collections

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from recallclient.types import TokenState

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MAX_LABEL_VALUES = 64
_STATES = {int(s): s.name for s in TokenState}


class _Capped:
    """Label values as given until MAX_LABEL_VALUES distinct ones were seen; "other" after."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= MAX_LABEL_VALUES:
            return "other"
        self._seen.add(value)
        return value


class Metrics:
    """The metrics of one node; `node` is read at each scrape."""

    def __init__(self, node) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        # Updated on the event loop, per request: plain tallies (no lock, no labels() lookup),
        # turned into metric families when scraped. A prometheus_client counter and histogram
        # update cost ~3.3 us a request; these cost a dict increment and a bisect.
        self.rpcs = _Tally("recall_rpc_requests", "gRPC calls by method and status code", ("method", "code"))
        self.rpc_seconds = _Latency("recall_rpc_duration_seconds", "gRPC call latency", ("method",))
        self.http = _Tally("recall_http_requests", "HTTP requests by path and status", ("path", "code"))
        self.http_seconds = _Latency("recall_http_duration_seconds", "HTTP request latency", ("path",))
        self.checks = _Tally("recall_check_outcomes", "tokens checked, by the state found", ("state",))
        self.edge = _Tally("recall_edge_decisions", "gateway decisions (HTTP edge, ext_authz) by outcome and cause",
                           ("outcome", "cause"))
        # Edge decisions as {allowed: {cause: count}}, counted by api/http/gateway.noted.
        self.decisions = {True: self.edge.child(("allowed",)), False: self.edge.child(("denied",))}
        for tally in (self.rpcs, self.rpc_seconds, self.http, self.http_seconds, self.checks, self.edge):
            r.register(tally)
        self.presented = Counter("recall_recalled_token_presented",
                                 "checks that found a recalled token: a stolen token in use, or a client not told",
                                 ["client", "reason"], registry=r)
        self.commit_seconds = Histogram("recall_commit_duration_seconds", "durable commit of one group of writes",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.commit_group = Histogram("recall_commit_group_size", "writes committed together", buckets=GROUP_BUCKETS,
                                      registry=r)
        self._clients, self._reasons = _Capped(), _Capped()
        self._sizes = (0, 0, 0)
        r.register(_NodeState(self))

    def rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpcs.add((method, code))
        self.rpc_seconds.observe((method,), seconds)

    def http_path(self, path: str) -> "PathTally":
        """The request tallies of one HTTP path, bound once when its route is added, so that a
        request costs one call (PathTally.observe) and no label lookup."""
        return PathTally(self.http.child((path,)), self.http_seconds.child((path,)))

    def checked(self, state: int) -> None:
        self.checks.add((_STATES.get(state, str(state)),))

    def checked_many(self, states: bytes) -> None:
        """One count per state byte of a CheckBatch answer, without a loop per token."""
        if states:
            counts = np.bincount(np.frombuffer(states, dtype=np.uint8), minlength=len(_STATES))
            for state in np.flatnonzero(counts):
                self.checks.add((_STATES.get(int(state), str(state)),), int(counts[state]))

    def recalled(self, client: str, reason: str, count: int = 1) -> None:
        self.presented.labels(self._clients(client or "unknown"), self._reasons(reason or "unknown")).inc(count)

    def committed(self, seconds: float, size: int) -> None:
        """Called on the writer thread after each group."""
        self.commit_seconds.observe(seconds)
        self.commit_group.observe(size)

    async def render(self) -> bytes:
        """The exposition text, the store's sizes read first (off the event loop)."""
        data, mapped, limit, _ = await self.node.sizes()
        self._sizes = (data, mapped, limit)
        return generate_latest(self.registry)


class _Tally:
    """A counter family kept as {label values: count}; updated on the event loop only."""

    def __init__(self, name: str, text: str, labels: tuple[str, ...]) -> None:
        self.name, self.text, self.labels = name, text, labels
        self.counts: collections.Counter = collections.Counter()
        self._children: dict[tuple, dict] = {}

    def add(self, values: tuple, amount: int = 1) -> None:
        self.counts[values] += amount

    def child(self, leading: tuple) -> dict:
        """The counts under the leading label values `leading`, as {last label's value: count}, for
        a caller that knows those values up front (a route its path). Counted as add() would."""
        return self._children.setdefault(leading, {})

    def collect(self):
        family = CounterMetricFamily(self.name, self.text, labels=self.labels)
        totals = collections.Counter(self.counts)
        for leading, child in list(self._children.items()):
            for last, count in list(child.items()):
                totals[(*leading, last)] += count
        for values, count in totals.items():
            family.add_metric([str(v) for v in values], count)
        yield family


class _Latency:
    """A histogram family of LATENCY_BUCKETS kept as {label values: [bucket counts..., sum]}."""

    def __init__(self, name: str, text: str, labels: tuple[str, ...]) -> None:
        self.name, self.text, self.labels = name, text, labels
        self.series: dict[tuple, list] = {}

    def observe(self, values: tuple, seconds: float) -> None:
        series = self.series.get(values)
        if series is None:
            series = self.child(values)
        _observe(series, seconds)

    def child(self, values: tuple) -> list:
        """The series of label values `values`: [count a bucket..., sum], updated by _observe."""
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        return series

    def collect(self):
        family = HistogramMetricFamily(self.name, self.text, labels=self.labels)
        for values, series in list(self.series.items()):
            running, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), series[:-1]):
                running += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", running))
            family.add_metric([str(v) for v in values], buckets, series[-1])
        yield family


def _observe(series: list, seconds: float) -> None:
    series[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    series[-1] += seconds


class PathTally:
    """recall_http_requests by code and recall_http_duration_seconds of one HTTP path."""

    __slots__ = ("codes", "series")

    def __init__(self, codes: dict, series: list) -> None:
        self.codes, self.series = codes, series

    def observe(self, code: int, seconds: float) -> None:
        """One request answered `code` after `seconds` (on the event loop)."""
        codes = self.codes
        codes[code] = codes.get(code, 0) + 1
        _observe(self.series, seconds)


class _NodeState:
    """The gauges read off the node at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        node = self.metrics.node
        state = node.state
        cursors = list(node.hub.cursors.values())
        gauges = [
            ("recall_applied_seq", "newest change applied to this node's memory (a primary's head)", state.seq),
            ("recall_staleness_seconds", "seconds since this node last knew it was current", node.staleness()),
            ("recall_answering", "1 while the node answers reads (synced, within max staleness)",
             int(node.answering())),
            ("recall_watch_streams", "open Watch streams", node.hub.streams),
            ("recall_watch_lag_max_seq", "changes the slowest Watch stream is behind",
             max((state.seq - c for c in cursors), default=0)),
            ("recall_watch_streams_behind", "Watch streams not yet sent the newest change",
             sum(1 for c in cursors if c < state.seq)),
            ("recall_map_used_bytes", "bytes of data in the store", self.metrics._sizes[0]),
            ("recall_map_bytes", "bytes the store has reserved", self.metrics._sizes[1]),
            ("recall_map_max_bytes", "the most the store may grow to", self.metrics._sizes[2]),
        ]
        link = getattr(node, "link_state", None)
        if link is not None:
            connected, vouching = link()
            gauges += [("recall_follower_connected", "1 while the follower has a stream to its primary", connected),
                       ("recall_follower_vouched", "1 while the primary's vouches are fresh", vouching)]
        for name, text, value in gauges:
            family = GaugeMetricFamily(name, text)
            family.add_metric([], float(value))
            yield family


class MetricsListener:
    """GET /metrics on settings.metrics_listen (TLS and a bearer credential when configured)."""

    def __init__(self, metrics: Metrics, settings, tls_context, token_check) -> None:
        self.metrics = metrics
        self.settings = settings
        self.tls_context = tls_context
        self.token_check = token_check  # authorization header -> bool; None: open (loopback)
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def _scrape(self, request: web.Request) -> web.Response:
        if self.token_check is not None and not self.token_check(request.headers.get("Authorization", "")):
            return web.Response(status=401, text="a bearer credential of the credentials file is required\n",
                                headers={"WWW-Authenticate": 'Bearer realm="recallcore-metrics"'})
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        host, _, port = self.settings.metrics_listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=self.tls_context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(f"cannot listen on {self.settings.metrics_listen} (metrics_listen): {exc}") from exc
        self.address = f"{host}:{self._runner.addresses[0][1]}"
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
