"""Forward-auth (`/v1/check`) and health for gateways.

nginx auth_request, Traefik forwardAuth and Caddy forward_auth send the
request's `Authorization` header in a subrequest and read the status: 200
lets the request through (with the configured identity headers for the
upstream), 401 with an RFC 6750 `WWW-Authenticate` header refuses it and
tells the client to authenticate again. When this node cannot vouch for its
state the answer is 503: gateways treat anything but 2xx/401/403 as a
failure and refuse the request (fail closed).
"""

import urllib.parse

from aiohttp import web

from ...core.errors import Unauthenticated
from ...security.identity import bearer
from ..decision import Decision
from .app import REALM, Edge, add_route, error_response, peer_of, quoted

_HEADER_SAFE = " !#$%&'()*+,-./:;<=>?@[]^_`{|}~"
# What the identity headers of an allowed request may carry.
DECISION_FIELDS = {"sub": "subject", "client_id": "client_id", "scope": "scope", "iss": "issuer",
                   "jti": "jti", "exp": "expires_at", "serial": "serial"}


def add_routes(app: web.Application) -> None:
    add_route(app, "*", "/v1/check", check)
    add_route(app, "GET", "/healthz", healthz)
    add_route(app, "GET", "/readyz", readyz)


def noted(metrics, presented, decision: Decision, presented_by, *args) -> None:
    """Count an edge decision; a recalled token presented again goes to the `presented`
    monitor, with presented_by(*args) (who asked: the gateway) computed only then."""
    counts, cause = metrics.decisions[decision.allowed], decision.cause
    counts[cause] = counts.get(cause, 0) + 1
    if cause == "revoked" and presented is not None:
        presented.saw(decision.serial, decision.issuer, decision.jti, decision.client_id, presented_by(*args))


def _presented_by(request: web.Request, caller) -> str:
    return peer_of(request) if caller.anonymous else f"{caller.identity} ({peer_of(request)})"


def identity_headers(decision: Decision, wanted: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The upstream headers (header -> value) of an allowed decision; non-ASCII percent-encoded."""
    out = {}
    for field, header in wanted:
        value = getattr(decision, DECISION_FIELDS[field])
        if value:
            out[header] = urllib.parse.quote(str(value), safe=_HEADER_SAFE)
    return out


async def check(edge: Edge, request: web.Request) -> web.Response:
    try:
        caller = edge.api_caller(request, "check", authorization=False)  # Authorization holds the token checked
    except Unauthenticated as exc:
        # The gateway itself is not known: not the client's token's fault, so not 401.
        return error_response(403, "access_denied", f"gateway: {exc}")
    token = bearer(request.headers.get("Authorization", "")) or ""
    decision = edge.decider.known(token) or await edge.decider.decide(token)
    noted(edge.metrics, edge.presented, decision, _presented_by, request, caller)
    if decision.allowed:
        headers = decision.memo.get("headers")
        if headers is None:
            headers = decision.memo["headers"] = {
                "Cache-Control": "no-store", **identity_headers(decision, edge.settings.identity_headers)}
        return web.Response(status=200, headers=headers)
    challenge = f'Bearer realm="{REALM}"'
    if decision.cause != "missing":
        challenge += f', error="invalid_token", error_description="{quoted(decision.description)}"'
    return web.Response(status=401, text=decision.description, headers={
        "WWW-Authenticate": challenge, "Cache-Control": "no-store"})


async def healthz(edge: Edge, request: web.Request) -> web.Response:
    edge.api_caller(request, "check")
    return web.Response(text="serving\n", headers={"Cache-Control": "no-store"})


async def readyz(edge: Edge, request: web.Request) -> web.Response:
    edge.api_caller(request, "check")
    edge.node.require_ready()  # 503 saying why (not synced; past max staleness)
    return web.Response(text="ready\n", headers={"Cache-Control": "no-store"})
