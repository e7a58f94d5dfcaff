"""Build and run the gRPC server around an Engine: TLS, the caller gate, limits, signals."""

import asyncio
import contextlib
import logging
import signal
import sys
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from recallclient._proto.recall.v1 import recall_pb2

from .api import ext_authz
from .api.decision import Decider
from .api.grpc_service import GuardedHealth, RecallService, decoder
from .api.http.app import Edge, HttpListener
from .api.http.status_lists import StatusLists, load_signing_key
from .api.metrics import Metrics, MetricsListener
from .api.presented import Presented
from .api.signals import Receiver, streams
from .api.ssf_poll import Poller
from .api.ssf_transmit import Transmission
from .api.webhook import Webhook
from .core.errors import RecallError
from .engine import Engine
from .replication.follower import Follower
from .security.credentials import Credentials
from .security.gate import Gate
from .security.jwks import KeySource
from .security.jwt_verifier import JwtVerifier
from .security.policy import Policy
from .security.reloading import Reloading
from .security.tls import CertificateFiles
from .settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = recall_pb2.DESCRIPTOR.services_by_name["Recall"].full_name
# The largest request accepted: the documented per-call limit (100,000
# tokens, serials or references) of typical size (~300 bytes a token) fits
# with room to spare. Counts are checked on the decoded message before any
# work, so a request of many empty items is refused for what it is.
MAX_REQUEST = 32 << 20
MAX_MESSAGE = 64 << 20  # the largest answer (snapshot chunks are about 1 MiB)
MAX_STREAMS_PER_CONNECTION = 256  # concurrent calls on one HTTP/2 connection
MIN_PING_INTERVAL_MS = 5_000  # clients ping at most this often (followers: every 10 s)
SHUTDOWN_GRACE = 10.0


# Methods whose handlers return encoded bytes (encoded once, sent to many).
PRE_ENCODED = {"Watch", "AuditLog"}


def _add_recall_service(servicer: RecallService, server: grpc.aio.Server) -> None:
    """Register recall.v1.Recall like the generated code, minus re-encoding of PRE_ENCODED."""
    service = recall_pb2.DESCRIPTOR.services_by_name["Recall"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(recall_pb2, method.input_type.name)
        response_type = getattr(recall_pb2, method.output_type.name)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=decoder(request_type),
            response_serializer=None if method.name in PRE_ENCODED else response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


class Server:
    """An Engine served over gRPC on settings.listen."""

    def __init__(self, settings: Settings, **engine_args) -> None:
        self.settings = settings
        # The gate and the TLS files load first: a broken policy or certificate stops the
        # start before the store is opened.
        self.gate = Gate(
            Reloading(settings.policy, Policy.load) if settings.policy else None,
            Reloading(settings.credentials, Credentials.load) if settings.credentials else None,
            settings.max_streams_per_identity,
        )
        self.tls = CertificateFiles(settings.tls_cert, settings.tls_key, settings.client_ca or None) \
            if settings.tls_cert else None
        # Key files and OAuth clients too: a bad one names itself before the store opens.
        verifier = JwtVerifier(
            {issuer: KeySource(location, settings.jwks_cacert) for issuer, location in settings.issuer_keys.items()},
            algorithms=settings.jwt_algorithms, audience=settings.jwt_audience, skew=settings.clock_skew,
            clock=engine_args.get("clock", time.time), limits=settings,
        ) if settings.jwt_issuers else None
        clients = Reloading(settings.oauth_clients, Credentials.load_clients) if settings.oauth_clients else None
        signing_key = load_signing_key(settings.status_list_key) if settings.status_list_uri else None
        ssf_streams = streams(settings, engine_args.get("clock", time.time))
        ssf_key = load_signing_key(settings.ssf_key, "ssf_key") if settings.ssf_receivers else None
        self.engine = Follower(settings, **engine_args) if settings.follow else Engine(settings, **engine_args)
        self.decider = Decider(self.engine, verifier)
        self.metrics = Metrics(self.engine)
        writer = getattr(self.engine, "_writer", None)
        if writer is not None:
            writer.observe = self.metrics.committed
        webhook = Webhook(settings.presented_webhook, settings.presented_webhook_token_file) \
            if settings.presented_webhook else None
        self.presented = Presented(self.engine, self.metrics, settings.presented_interval, webhook)
        lists = StatusLists(settings, self.engine, signing_key, self.engine.clock) if signing_key else None
        self.receiver = Receiver(self.engine, ssf_streams) if ssf_streams else None
        self.pollers = [Poller(self.receiver, s, settings) for s in ssf_streams.values() if s.transmitter.poll]
        self.transmission = Transmission(self.engine, settings, ssf_key) if ssf_key else None
        self.http = HttpListener(Edge(self.engine, self.gate, clients, self.decider, self.metrics, self.presented,
                                      lists, self.receiver, self.transmission),
                                 self.tls.ssl_context() if self.tls else None) if settings.http_listen else None
        self.metrics_http = MetricsListener(
            self.metrics, settings, self.tls.ssl_context() if self.tls else None,
            self._scraper_admitted if self.gate.enforcing else None,
        ) if settings.metrics_listen else None
        self.health: health.aio.HealthServicer | None = None
        self.grpc: grpc.aio.Server | None = None
        self._health_task: asyncio.Task | None = None
        self.address = ""

    def _scraper_admitted(self, authorization: str) -> bool:
        """A scrape under a policy: a bearer credential whose identity holds the check role."""
        try:
            self.gate.authorize(self.gate.identify("", authorization, ""), "check")
        except RecallError:
            return False
        return True

    def _build(self) -> grpc.aio.Server:
        # grpc.aio objects bind to the running loop: build them inside it.
        self.health = GuardedHealth(self.gate)
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_REQUEST),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            # Keepalive enforcement: pings more often than this are answered with GOAWAY.
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        _add_recall_service(RecallService(self.engine, self.gate, self.metrics, self.presented), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        ext_authz.external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            ext_authz.ExtAuthz(self.decider, self.gate, self.metrics, self.presented), server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, ext_authz.SERVICE_NAME,
             reflection.SERVICE_NAME),
            server,
        )
        return server

    async def start(self) -> str:
        """Start serving; return the HOST:PORT actually bound."""
        self.grpc = self._build()
        host, _, _ = self.settings.listen.rpartition(":")
        try:
            if self.tls is not None:
                bound = self.grpc.add_secure_port(self.settings.listen, self.tls.credentials())
            else:
                bound = self.grpc.add_insecure_port(self.settings.listen)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.settings.listen}: {exc}") from exc
        if bound == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await self.engine.start()
        self.presented.start()
        if self.http is not None:
            await self.http.start()
        if self.metrics_http is not None:
            await self.metrics_http.start()
        for poller in self.pollers:
            poller.start()
        if self.transmission is not None:
            self.transmission.start()
        await self.grpc.start()
        await self._set_health("", health_pb2.HealthCheckResponse.SERVING)
        if self.settings.follow or self.settings.store:  # nodes that answer only while current
            self._health_task = asyncio.create_task(self._track_health(), name="recallcore-health")
        else:
            await self._set_health(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self.address = f"{host}:{bound}"
        if self.settings.insecure and not self.settings.loopback and (self.tls is None or not self.settings.policy):
            log.warning("serving %s without %s (--insecure): anyone who reaches it may call it", self.address,
                        "TLS" if self.tls is None else "a caller policy")
        return self.address

    def reload(self) -> None:
        """Load the policy, credentials, OAuth clients and TLS files again (SIGHUP)."""
        clients = self.http.edge.clients if self.http is not None else None
        for loaded in (self.gate.policy, self.gate.credentials, clients):
            if loaded is not None:
                loaded.reload()
        if self.tls is not None:
            self.tls.fetch()

    async def _track_health(self) -> None:
        """A follower's or cluster node's recall.v1.Recall is SERVING while it can answer: once
        synced, and while within max_staleness; the server as a whole ("") follows it once synced."""
        period = min(0.25, self.settings.max_staleness / 4)
        shown, served = None, False
        while True:
            answering = self.engine.answering()
            if answering != shown:
                status = health_pb2.HealthCheckResponse.SERVING if answering else \
                    health_pb2.HealthCheckResponse.NOT_SERVING
                names = (SERVICE_NAME, "") if self.engine.synced.is_set() else (SERVICE_NAME,)
                for name in names:
                    await self._set_health(name, status)
                if served:
                    log.warning("node %s: %s (staleness %.1f s)", self.address,
                                "serving again" if answering else "too stale to answer: NOT_SERVING",
                                self.engine.staleness())
                shown, served = answering, served or answering
            await asyncio.sleep(period)

    async def _set_health(self, name: str, status) -> None:
        await self.health.set(name, status)

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting calls, let in-flight calls finish, close the store."""
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        for poller in self.pollers:
            await poller.stop()
        if self.transmission is not None:
            await self.transmission.stop()
        if self.grpc is not None:
            for name in ("", SERVICE_NAME):
                await self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            self.engine.hub.close()  # streams end; subscribers reconnect elsewhere or later
            feed = getattr(self.engine, "audit_feed", None)
            if feed is not None:
                feed.close()  # and so do AuditLog follow streams
            await self.grpc.stop(grace)
        if self.http is not None:
            await self.http.stop()
        if self.metrics_http is not None:
            await self.metrics_http.stop()
        await self.presented.stop()  # what it saw goes into the trail before the store closes
        if self.decider.verifier is not None:
            await self.decider.verifier.close()
        if self.receiver is not None:
            await self.receiver.close()
        await self.engine.close()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; print the listening line once ready."""
    server = Server(settings)
    try:
        address = await server.start()
    except BaseException:
        await server.engine.close()
        raise
    print(f"recallcore listening on {address}", flush=True)
    if server.http is not None:
        print(f"recallcore HTTP edge on {server.http.address}", flush=True)
    if server.metrics_http is not None:
        print(f"recallcore metrics on {server.metrics_http.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, server.reload)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    print("recallcore stopped", file=sys.stderr, flush=True)
