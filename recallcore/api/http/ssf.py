"""Shared Signals over HTTP: receiving pushed SETs (RFC 8935), and serving those recallcore transmits.

Receiving: POST /ssf/push/{stream}, GET /ssf/status. Transmitting: POST
/ssf/poll/{stream} (RFC 8936), GET /.well-known/ssf-configuration (SSF
metadata) and GET /ssf/jwks.json (the key SETs are signed with).

A push carries one SET as `application/secevent+jwt`. It is answered 202
(no body) only once what it asks is durable (api/signals.py), or once it is
known as a SET applied before; 400 with `{"err", "description"}` and the
RFC 8935 error code when it is not good (invalid_request, invalid_key,
invalid_issuer, invalid_audience, authentication_failed); 503 with
Retry-After when the change cannot be committed now (the transmitter sends
it again). The SET's signature authenticates the transmitter; a stream
configured with an `identity` also needs the push to authenticate as it
(bearer credential in Authorization, or client certificate), else 401
authentication_failed. /ssf/status (role `check`) gives each stream's
counts of applied, duplicate, ignored (by event type) and rejected SETs, and
its poller's state; and with receivers configured, each pusher's cursor,
SETs sent, failures and last error.
"""

import json

from aiohttp import web

from ...core.errors import Unauthenticated
from ...core.signals import CAEP
from ...security.identity import ANONYMOUS
from ...security.set_verifier import SetRejected
from .app import MAX_BODY, Edge, HttpError, add_route, peer_of

MEDIA_TYPE = "application/secevent+jwt"
SESSION_REVOKED = CAEP + "session-revoked"
EVENTS_SENT = [SESSION_REVOKED, CAEP + "credential-change"]
PUSH_METHOD, POLL_METHOD = "urn:ietf:rfc:8935", "urn:ietf:rfc:8936"


def add_routes(app: web.Application) -> None:
    add_route(app, "POST", "/ssf/push/{stream}", push)
    add_route(app, "GET", "/ssf/status", status)


def _require(edge, request: web.Request, identity: str, what: str) -> None:
    """Raise SetRejected unless the caller authenticates (Authorization or certificate) as `identity`."""
    try:
        caller = edge.identify(request, request.headers.get("Authorization", ""))
    except Unauthenticated as exc:
        raise SetRejected("authentication_failed", str(exc), 401) from None
    if caller.identity == ANONYMOUS:
        raise SetRejected("authentication_failed", f"to {what} needs a credential (Authorization) or a client "
                                                   "certificate", 401)
    if caller.identity != identity:
        raise SetRejected("access_denied", f"{caller.identity} may not {what}", 403)


async def push(edge: Edge, request: web.Request) -> web.Response:
    stream = edge.receiver.streams.get(request.match_info["stream"])
    if stream is None:
        raise HttpError(404, "invalid_request", f"no SSF stream {request.match_info['stream']!r} here")
    if stream.transmitter.identity:
        _require(edge, request, stream.transmitter.identity, f"push to stream {stream.name!r}")
    if request.content_type != MEDIA_TYPE:
        raise SetRejected("invalid_request", f"content type: expected {MEDIA_TYPE}, got {request.content_type!r}")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
    try:
        token = (await request.read()).decode("ascii").strip()
    except UnicodeDecodeError:
        raise SetRejected("invalid_request", "the body is not a compact JWS") from None
    await edge.receiver.receive(stream, token, peer_of(request))
    return web.Response(status=202, headers={"Cache-Control": "no-store"})


async def status(edge: Edge, request: web.Request) -> web.Response:
    edge.api_caller(request, "check")
    out = {"streams": {name: s.status() for name, s in edge.receiver.streams.items()} if edge.receiver else {}}
    if edge.transmission is not None:
        out["receivers"] = {**{name: dict(p.state) for name, p in edge.transmission.pushers.items()},
                            **{name: {"delivery": "poll"} for name in edge.transmission.polls}}
    return web.json_response(out, headers={"Cache-Control": "no-store"})


def add_transmitter_routes(app: web.Application, status_too: bool) -> None:
    add_route(app, "POST", "/ssf/poll/{stream}", poll)
    if status_too:
        add_route(app, "GET", "/ssf/status", status)
    add_route(app, "GET", "/.well-known/ssf-configuration", configuration)
    add_route(app, "GET", "/ssf/streams", streams)
    add_route(app, "GET", "/ssf/jwks.json", jwks)


async def poll(edge: Edge, request: web.Request) -> web.Response:
    """RFC 8936: `ack` the SETs taken, get the next ones (always at once: returnImmediately)."""
    stream = edge.transmission.polls.get(request.match_info["stream"])
    if stream is None:
        raise HttpError(404, "invalid_request", f"no SSF poll stream {request.match_info['stream']!r} here")
    if stream.outbox.downstream.identity:
        _require(edge, request, stream.outbox.downstream.identity, f"poll stream {stream.outbox.name!r}")
    else:
        edge.api_caller(request, "audit")  # the SETs name subjects
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise SetRejected("invalid_request", "the poll request is not JSON") from None
    acks = body.get("ack", []) if isinstance(body, dict) else None
    limit = body.get("maxEvents", 100) if isinstance(body, dict) else None
    if not isinstance(acks, list) or not all(isinstance(a, str) for a in acks) or \
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise SetRejected("invalid_request", "ack must be a list of jtis and maxEvents a count")
    sets, more = await stream.poll(acks, min(limit, 1000))
    return web.json_response({"sets": sets, "moreAvailable": more}, headers={"Cache-Control": "no-store"})


async def configuration(edge: Edge, request: web.Request) -> web.Response:
    base = f"{request.scheme}://{request.host}"
    return web.json_response({
        "spec_version": "1_0", "issuer": edge.transmission.issuer, "jwks_uri": f"{base}/ssf/jwks.json",
        "delivery_methods_supported": [PUSH_METHOD, POLL_METHOD],
        "configuration_endpoint": f"{base}/ssf/streams",
        "default_subjects": "ALL",
    }, headers={"Cache-Control": "max-age=300"})


async def jwks(edge: Edge, request: web.Request) -> web.Response:
    return web.json_response(edge.transmission.signer.jwks, headers={"Cache-Control": "max-age=300"})


async def streams(edge: Edge, request: web.Request) -> web.Response:
    """SSF stream configuration, read only (streams are configured in the config file): every
    stream the caller may take, or the one `stream_id` names."""
    base = f"{request.scheme}://{request.host}"
    transmission = edge.transmission
    out = []
    for name, downstream in sorted(transmission.downstreams.items()):
        if downstream.identity:
            try:
                _require(edge, request, downstream.identity, f"read stream {name!r}")
            except SetRejected:
                continue
        else:
            edge.api_caller(request, "audit")
        delivery = {"method": PUSH_METHOD, "endpoint_url": downstream.push} if downstream.push else \
            {"method": POLL_METHOD, "endpoint_url": f"{base}/ssf/poll/{name}"}
        out.append({"stream_id": name, "iss": transmission.issuer, "aud": downstream.audience, "delivery": delivery,
                    "events_supported": EVENTS_SENT, "events_requested": EVENTS_SENT,
                    "events_delivered": EVENTS_SENT})
    wanted = request.query.get("stream_id")
    if wanted is None:
        return web.json_response(out, headers={"Cache-Control": "no-store"})
    for stream in out:
        if stream["stream_id"] == wanted:
            return web.json_response(stream, headers={"Cache-Control": "no-store"})
    raise HttpError(404, "invalid_request", f"no SSF stream {wanted!r} for this caller")
