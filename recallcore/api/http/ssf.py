"""POST /ssf/push/{stream}: Security Event Tokens pushed by a transmitter (RFC 8935); GET /ssf/status.

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
its poller's state.
"""

from aiohttp import web

from ...core.errors import Unauthenticated
from ...security.identity import ANONYMOUS
from ...security.set_verifier import SetRejected
from .app import EDGE, MAX_BODY, HttpError, answers, peer_of

MEDIA_TYPE = "application/secevent+jwt"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/ssf/push/{stream}", push)
    app.router.add_get("/ssf/status", status)


@answers
async def push(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    stream = edge.receiver.streams.get(request.match_info["stream"])
    if stream is None:
        raise HttpError(404, "invalid_request", f"no SSF stream {request.match_info['stream']!r} here")
    if stream.transmitter.identity:
        try:
            caller = edge.identify(request, request.headers.get("Authorization", ""))
        except Unauthenticated as exc:
            raise SetRejected("authentication_failed", str(exc), 401) from None
        if caller.identity == ANONYMOUS:
            raise SetRejected("authentication_failed", f"stream {stream.name!r} needs the transmitter's "
                                                       "credential (Authorization) or client certificate", 401)
        if caller.identity != stream.transmitter.identity:
            raise SetRejected("access_denied", f"{caller.identity} may not push to stream {stream.name!r}", 403)
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


@answers
async def status(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    edge.api_caller(request, "check")
    return web.json_response({"streams": {name: s.status() for name, s in edge.receiver.streams.items()}},
                             headers={"Cache-Control": "no-store"})
