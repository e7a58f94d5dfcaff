"""RFC 7662 introspection, RFC 7009 revocation, and RFC 8414 metadata naming them.

Introspection answers `{"active": false}` and nothing else for any token
that is not good here: revoked, expired, unknown, badly signed, of an
issuer not configured, or issued to another client than the OAuth client
asking. Revocation answers 200 also for tokens it does not know (RFC 7009
section 2.2); revoking a registered refresh token revokes its whole family.
A change is answered only once it is durable; when it cannot be committed
the answer is 503 with Retry-After.
"""

from aiohttp import web
from recallclient.jti import opaque_jti
from recallclient.types import JtiRef, TokenState

from ...core.model import Selector
from ...security.identity import Caller
from ...security.jwt_verifier import InvalidToken, looks_like_jwt
from .app import Edge, HttpError, add_route, read_form, required

TOKEN_TYPES = ("access_token", "refresh_token")
# The RFC 7662 fields an active token's answer may carry, from a registration or a JWT's claims.
INTROSPECTION_FIELDS = ("scope", "client_id", "username", "token_type", "exp", "iat", "nbf", "sub", "aud",
                        "iss", "jti")
INACTIVE = {"active": False}
REVOKE_REASON = "revoked by its client (RFC 7009)"


def add_routes(app: web.Application) -> None:
    add_route(app, "POST", "/oauth2/introspect", introspect)
    add_route(app, "POST", "/oauth2/revoke", revoke)  # a follower answers 503 naming its primary
    add_route(app, "GET", "/.well-known/oauth-authorization-server", metadata)


def _answer(body: dict) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def _token_request(edge: Edge, request: web.Request, role: str) -> tuple[Caller, str, str]:
    """(caller, its own client_id or "", the token) of an introspection or revocation request.

    The caller is authenticated before the body is read.
    """
    caller, own_client = edge.oauth_caller(request, role)
    form = await read_form(request)
    token = required(form, "token")
    hint = form.get("token_type_hint", "")
    if hint and hint not in TOKEN_TYPES:
        raise HttpError(400, "unsupported_token_type", f"token_type_hint: {hint!r} is not one of {list(TOKEN_TYPES)}")
    return caller, own_client, token


async def introspect(edge: Edge, request: web.Request) -> web.Response:
    _, own_client, token = await _token_request(edge, request, "introspect")
    decision = await edge.decider.decide(token)
    if not decision.allowed or (own_client and decision.client_id != own_client):
        return _answer(INACTIVE)
    if decision.kind == "jwt":
        claims = decision.claims
        fields = {**claims, "username": claims.get("sub", ""), "client_id": decision.client_id,
                  "token_type": "access_token"}
    else:
        fields = decision.claims
    out = {"active": True}
    out.update((k, fields[k]) for k in INTROSPECTION_FIELDS if fields.get(k) not in (None, "", 0))
    return _answer(out)


async def _target(edge: Edge, token: str) -> tuple[JtiRef, dict] | None:
    """The token to revoke and what the registry knows of it; None when there is nothing to revoke."""
    if looks_like_jwt(token):
        if edge.decider.verifier is None:
            return None
        verifier = edge.decider.verifier
        try:
            v = await verifier.verify(token)
        except InvalidToken as exc:
            if exc.cause != "not_yet_valid":
                return None  # not a token of ours (or already expired): nothing to do
            v = verifier.remembered(token, judge_times=False)  # signed, and soon valid: revoked all the same
            if v is None:
                return None
        ref = JtiRef(v.issuer, v.jti, expires_at=v.expires_at)
        info = await edge.node.introspect(ref)
        if not info.get("client_id"):  # never registered: the token's own claims speak
            info = {**info, "client_id": v.client_id}
        return ref, info
    ref = JtiRef(edge.settings.issuer, opaque_jti(token))
    info = await edge.node.introspect(ref)
    return (ref, info) if info.get("serial") else None


async def revoke(edge: Edge, request: web.Request) -> web.Response:
    caller, own_client, token = await _token_request(edge, request, "revoke")
    target = await _target(edge, token)
    if target is None:
        return web.Response(status=200, headers={"Cache-Control": "no-store"})
    ref, info = target
    if own_client and info.get("client_id") != own_client:
        raise HttpError(400, "unauthorized_client", f"the token was not issued to client {own_client!r}")
    if info["state"] in (TokenState.ACTIVE, TokenState.UNKNOWN, TokenState.ROTATED):
        serial, family = info.get("serial", 0), info.get("family", "")
        refresh = info.get("token_type") == "refresh_token"
        selector = Selector(serials=(serial,), family=family if refresh else "") if serial else \
            Selector(tokens=(ref,))
        await edge.node.revoke(selector, REVOKE_REASON, "", "oauth2/revoke", caller=caller)
    return web.Response(status=200, headers={"Cache-Control": "no-store"})


async def metadata(edge: Edge, request: web.Request) -> web.Response:
    if edge.gate.enforcing:  # any caller known here, whatever its roles: an OAuth client too
        authorization = request.headers.get("Authorization", "")
        if authorization.strip().lower().startswith("basic "):
            edge.oauth_caller(request, "check")  # the client authenticated; what it may do is not asked
        else:
            edge.identify(request, authorization)
    base = f"{request.scheme}://{request.host}"
    out = {
        "issuer": edge.settings.issuer,
        "introspection_endpoint": f"{base}/oauth2/introspect",
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
    }
    if not edge.settings.follow:
        out["revocation_endpoint"] = f"{base}/oauth2/revoke"
        out["revocation_endpoint_auth_methods_supported"] = ["client_secret_basic"]
    out["recall_check_endpoint"] = f"{base}/v1/check"
    return _answer(out)
