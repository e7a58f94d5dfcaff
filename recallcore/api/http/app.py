"""The HTTP listener, who is calling it, and the one mapping of errors to HTTP answers.

Callers authenticate as at the gRPC port: by TLS client certificate, or by a
bearer credential of the credentials file — in `X-Recall-Authorization` at
/v1/check (whose `Authorization` carries the token being checked) and in
`Authorization` elsewhere. The OAuth endpoints also take OAuth clients by
HTTP Basic (client_secret_basic) from the clients file. Without a policy
(loopback development) every caller is admitted, as for gRPC.
"""

import base64
import dataclasses
import functools
import logging
import ssl
import time
import urllib.parse

from aiohttp import web

from ...core.errors import RecallError, Unauthenticated
from ...replication.node import Node
from ...security import identity
from ...security.credentials import Credentials
from ...security.gate import Gate
from ...security.identity import Caller
from ...security.jwt_verifier import MAX_TOKEN
from ...security.reloading import Reloading
from ...security.set_verifier import SetRejected
from ..decision import Decider

log = logging.getLogger(__name__)


class _Throttle(logging.Filter):
    """One record per `every` seconds, without its traceback: what aiohttp logs about a
    malformed request (a header past the limit, bad framing) is the client's doing, and a
    client must not be able to fill the log."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__()
        self.every, self._last, self.held = every, -float("inf"), 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.every:
            self.held += 1
            return False
        self._last = now
        record.exc_info = record.exc_text = None
        if self.held:
            record.msg, self.held = f"{record.msg} ({self.held} more since the last report)", 0
        return True


_protocol_log = logging.getLogger(__name__ + ".protocol")
_protocol_throttle = _Throttle()
_protocol_log.addFilter(_protocol_throttle)

MAX_BODY = 64 << 10  # bytes of a form body (a token and a hint need far less)
MAX_FIELD = MAX_TOKEN + 1024  # bytes of one header line: a large JWT fits
MAX_HEADERS = 64
MAX_FORM_FIELDS = 16
KEEPALIVE = 75.0  # seconds an idle connection is kept (gateways reuse theirs)
CREDENTIAL_HEADER = "X-Recall-Authorization"
REALM = "recallcore"
FORM = "application/x-www-form-urlencoded"

# RecallError status -> (HTTP status, OAuth error code, seconds to Retry-After or 0).
_STATUS = {
    "INVALID_ARGUMENT": (400, "invalid_request", 0),
    "OUT_OF_RANGE": (400, "invalid_request", 0),
    "UNAUTHENTICATED": (401, "invalid_client", 0),
    "PERMISSION_DENIED": (403, "access_denied", 0),
    "RESOURCE_EXHAUSTED": (503, "temporarily_unavailable", 5),
    "UNAVAILABLE": (503, "temporarily_unavailable", 1),
    "FAILED_PRECONDITION": (503, "temporarily_unavailable", 1),
    "DEADLINE_EXCEEDED": (504, "temporarily_unavailable", 1),
}


class HttpError(Exception):
    """An answer with an OAuth error body (RFC 6749 section 5.2 form)."""

    def __init__(self, status: int, error: str, description: str, headers: dict | None = None) -> None:
        super().__init__(description)
        self.status, self.error, self.headers = status, error, headers or {}


def error_response(status: int, error: str, description: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status,
                             headers={"Cache-Control": "no-store", **(headers or {})})


def quoted(text: str) -> str:
    """`text` fit for a quoted-string of WWW-Authenticate (RFC 6750 allows %x20-21 / %x23-5B / %x5D-7E)."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in text)


def add_route(app: web.Application, method: str, path: str, handler) -> None:
    """Serve `handler` for `method` (GET also answers HEAD) at `path` of `app`, which holds the
    edge: what it raises mapped by answers(), each request counted under the path's template."""
    resource = app.router.add_resource(path)
    edge = app[EDGE]
    handle = answers(handler, edge, edge.metrics.http_path(resource.canonical))
    for each in ("GET", "HEAD") if method == "GET" else (method,):
        resource.add_route(each, handle)


def answers(handler, edge: "Edge", requests):
    """`handler(edge, request)` as an aiohttp handler, what it raises mapped to its HTTP answer
    (the one place errors meet HTTP statuses), each request counted in `requests` (a
    metrics.PathTally).

    A wrapper rather than an aiohttp middleware: a middleware costs every
    request a fifth of the stack's empty-handler rate (measured: 24.5k
    against 18k requests/s), a try block nothing. It is made per route when
    the route is added (add_route), the edge and the path's tallies bound
    then: looking them up each request cost the check path a tenth of its rate.
    """

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(edge, request)
        except HttpError as exc:
            response = error_response(exc.status, exc.error, str(exc), exc.headers)
        except SetRejected as exc:  # RFC 8935 section 2.3: {"err", "description"}
            response = web.json_response({"err": exc.err, "description": str(exc)}, status=exc.status,
                                         headers={"Cache-Control": "no-store"})
        except RecallError as exc:
            status, error, retry = _STATUS.get(exc.status, (500, "server_error", 0))
            headers = {"Retry-After": str(retry)} if retry else {}
            if status == 401:
                headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
            response = error_response(status, error, str(exc), headers)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(413, "invalid_request", f"the request body is larger than {MAX_BODY} bytes")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = error_response(500, "server_error", "internal error")
        requests.observe(response.status, time.perf_counter() - started)
        return response

    return handle


@dataclasses.dataclass
class Edge:
    """What the handlers share: the node, the gate, OAuth clients, the decider, the settings."""

    node: Node
    gate: Gate
    clients: Reloading[Credentials] | None
    decider: Decider
    metrics: object  # api.metrics.Metrics
    presented: object = None  # api.presented.Presented
    status_lists: object = None  # status_lists.StatusLists when lists are published
    receiver: object = None  # api.signals.Receiver when SSF transmitters are configured
    transmission: object = None  # api.ssf_transmit.Transmission when SSF receivers are configured

    @property
    def settings(self):
        return self.node.settings

    def identify(self, request: web.Request, authorization: str) -> Caller:
        """The caller by certificate or bearer credential; raises Unauthenticated."""
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        return self.gate.identify(identity.from_peercert(cert), authorization, peer_of(request))

    def api_caller(self, request: web.Request, role: str, authorization: bool = True) -> Caller:
        """The caller of a non-OAuth endpoint, authorized for `role`: its credential in
        X-Recall-Authorization, or (`authorization`) in Authorization."""
        header = request.headers.get(CREDENTIAL_HEADER, "")
        if not header and authorization:
            header = request.headers.get("Authorization", "")
        if not header and not self.gate.enforcing:
            return _LOCAL  # no policy and no credential to check: admitted, and nothing here is audited
        caller = self.identify(request, header)
        self.gate.authorize(caller, role)
        return caller

    def oauth_caller(self, request: web.Request, role: str) -> tuple[Caller, str]:
        """(caller, its client_id when it is an OAuth client acting on its own tokens, else "").

        An OAuth client (HTTP Basic) acts only on tokens issued to it, unless
        a grant naming its identity `client:<id>` gives it the role (a "*"
        grant does not: policy.py); any other caller needs the role (no
        policy: everyone has it).
        """
        authorization = request.headers.get("Authorization", "")
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            caller = self.identify(request, authorization)
            self.gate.authorize(caller, role)
            return caller, ""
        client_id, secret = _basic(value)
        if self.clients is None or not self.clients.current().verify(client_id, secret):
            raise Unauthenticated("client authentication failed")
        caller = Caller(f"client:{client_id}", peer_of(request))
        return caller, "" if self.gate.named(caller, role) else client_id


def _basic(value: str) -> tuple[str, str]:
    """client_id and secret of an HTTP Basic value (both form-encoded, RFC 6749 section 2.3.1)."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, and a value past ASCII
        raise Unauthenticated("authorization: HTTP Basic credentials are not base64 of client_id:secret") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id:
        raise Unauthenticated("authorization: HTTP Basic credentials are not client_id:secret")
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


def peer_of(request: web.Request) -> str:
    """The caller's address as gRPC writes it (ipv4:HOST:PORT), for the audit trail."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return ""
    host, port = peer[0], peer[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


async def read_form(request: web.Request) -> dict[str, str]:
    """The form parameters of a POST; raises HttpError (invalid_request) naming what is wrong."""
    if request.content_type != FORM:
        raise HttpError(400, "invalid_request", f"content type: expected {FORM}, got {request.content_type!r}")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
    body = await request.read()
    try:
        pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body),
                                       max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, "invalid_request", f"the form body does not parse: {exc}") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise HttpError(400, "invalid_request", f"{name}: given more than once")
        form[name] = value
    return form


def required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "")
    if not value:
        raise HttpError(400, "invalid_request", f"{name}: missing")
    return value


EDGE = web.AppKey("edge", Edge)
_LOCAL = Caller(identity.ANONYMOUS)


def make_app(edge: Edge) -> web.Application:
    """The aiohttp application of the edge."""
    from . import gateway, oauth, ssf, status_lists  # the handlers import this module's helpers

    app = web.Application(client_max_size=MAX_BODY)
    app[EDGE] = edge
    gateway.add_routes(app)
    oauth.add_routes(app)
    if edge.status_lists is not None:
        status_lists.add_routes(app, edge.status_lists)
    if edge.receiver is not None:
        ssf.add_routes(app)
    if edge.transmission is not None:
        ssf.add_transmitter_routes(app, status_too=edge.receiver is None)
    return app


class HttpListener:
    """The edge served on settings.http_listen (TLS from `tls` when given)."""

    def __init__(self, edge: Edge, tls_context: ssl.SSLContext | None) -> None:
        self.edge = edge
        self.tls_context = tls_context
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> str:
        """Start serving; return HOST:PORT bound. Raises OSError when the address cannot be bound."""
        listen = self.edge.settings.http_listen
        host, _, port = listen.rpartition(":")
        self._runner = web.AppRunner(
            make_app(self.edge), access_log=None, shutdown_timeout=5.0, keepalive_timeout=KEEPALIVE,
            max_line_size=MAX_FIELD, max_field_size=MAX_FIELD, max_headers=MAX_HEADERS, logger=_protocol_log,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=self.tls_context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(f"cannot listen on {listen} (http_listen): {exc.strerror or exc}") from exc
        bound = self._runner.addresses[0][1]
        self.address = f"{host}:{bound}"
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
