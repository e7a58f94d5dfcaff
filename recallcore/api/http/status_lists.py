"""GET /statuslists/{n}: Token Status Lists as signed `statuslist+jwt`; GET /statuslists/jwks.json.

Each list is built from the node's mirror (core/status_list.py), signed with
the configured key and kept: it is built again only when the node has
changed since, and at most once per `status_list_interval` however many
changes a storm brings; it is signed again before half its `ttl` has passed,
so what a verifier caches is never older than that. The answer carries an
ETag and Cache-Control max-age up to the `ttl`; If-None-Match gets 304.
Only the JWT form is served (a request that accepts only the CWT form gets
406). Behind the gate: with a policy, callers need the `check` role (put a
cache holding a credential in front of them for verifiers at large).
"""

import dataclasses
import hashlib
import json
import pathlib
import time

from aiohttp import web
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from ...core import status_list
from ...core.errors import InvalidArgument
from .app import Edge, HttpError, add_route

MEDIA_TYPE = "application/statuslist+jwt"
CWT_MEDIA_TYPE = "application/statuslist+cwt"
_ALGORITHMS = {("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384", ("EC", "P-521"): "ES512",
               ("RSA", None): "RS256", ("OKP", "Ed25519"): "EdDSA"}
_KEY_TYPES = {"EC": ECKey, "RSA": RSAKey, "OKP": OKPKey}
EXPIRY_TTLS = 5  # a list expires this many ttl after it was signed


def load_signing_key(path: str, name: str = "status_list_key"):
    """(key, alg, kid) of a private JWK file; raises InvalidArgument naming `name`, the file and what is wrong."""
    try:
        jwk = json.loads(pathlib.Path(path).read_text())
    except ValueError as exc:
        raise InvalidArgument(f"{name}: {path}: not JSON: {exc}") from None
    kty = jwk.get("kty") if isinstance(jwk, dict) else None
    if kty not in _KEY_TYPES or "d" not in jwk:
        raise InvalidArgument(f"{name}: {path}: expected a private EC, RSA or OKP JWK")
    alg = jwk.get("alg") or _ALGORITHMS.get((kty, jwk.get("crv")))
    if alg is None:
        raise InvalidArgument(f"{name}: {path}: no signature algorithm for a {kty} {jwk.get('crv')} key")
    try:
        key = _KEY_TYPES[kty].import_key(jwk)
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"{name}: {path}: {exc}") from None
    return key, alg, jwk.get("kid") or key.thumbprint()


@dataclasses.dataclass
class _Signed:
    token: str
    etag: str
    seq: int
    built: float  # monotonic
    signed_at: int  # Unix seconds (iat)


class StatusLists:
    """The signed lists of one node, kept between requests."""

    def __init__(self, settings, node, signing_key: tuple, clock=time.time) -> None:
        """`signing_key` as load_signing_key returns it."""
        self.settings = settings
        self.node = node
        self.clock = clock
        self.key, self.alg, self.kid = signing_key
        public = self.key.as_dict(private=False)
        self.jwks = {"keys": [{**public, "kid": self.kid, "alg": self.alg, "use": "sig"}]}
        self._registry = jws.JWSRegistry(algorithms=[self.alg])
        self._signed: dict[int, _Signed] = {}
        self.builds = 0

    def get(self, number: int) -> _Signed:
        """The signed list `number`, built or signed again when due."""
        state, now = self.node.state, time.monotonic()
        held = self._signed.get(number)
        fresh = held is not None and (held.seq == state.seq or now - held.built < self.settings.status_list_interval)
        if fresh and self.clock() - held.signed_at < self.settings.status_list_ttl / 2:
            return held
        self._signed[number] = signed = self._sign(number, state.seq, now)
        return signed

    def _sign(self, number: int, seq: int, now: float) -> _Signed:
        iat = int(self.clock())
        packed = status_list.bits(self.node.state, number, self.settings.status_list_size, iat)
        self.builds += 1
        claims = {
            "sub": status_list.uri(self.settings.status_list_uri, number), "iat": iat,
            "exp": iat + EXPIRY_TTLS * self.settings.status_list_ttl, "ttl": self.settings.status_list_ttl,
            "status_list": {"bits": status_list.BITS, "lst": status_list.encode(packed)},
        }
        header = {"alg": self.alg, "kid": self.kid, "typ": "statuslist+jwt"}
        token = jws.serialize_compact(header, json.dumps(claims, separators=(",", ":")).encode(), self.key,
                                      registry=self._registry)
        etag = '"' + hashlib.sha256(token.encode()).hexdigest()[:32] + '"'
        return _Signed(token, etag, seq, now, iat)


STATUS_LISTS = web.AppKey("status_lists", StatusLists)


def add_routes(app: web.Application, lists: StatusLists) -> None:
    app[STATUS_LISTS] = lists
    add_route(app, "GET", r"/statuslists/{number:\d+}", status_list_handler)
    add_route(app, "GET", "/statuslists/jwks.json", jwks_handler)


async def status_list_handler(edge: Edge, request: web.Request) -> web.Response:
    edge.api_caller(request, "check")
    edge.node.require_ready()  # a list from a node that cannot vouch would mark revoked tokens valid
    accept = request.headers.get("Accept", "")
    if CWT_MEDIA_TYPE in accept and MEDIA_TYPE not in accept and "*/*" not in accept:
        raise HttpError(406, "invalid_request", f"only {MEDIA_TYPE} is served")
    lists = request.app[STATUS_LISTS]
    number = int(request.match_info["number"])
    size = lists.settings.status_list_size
    if number * size + 1 > edge.node.state.revocations.registered_through:
        raise HttpError(404, "invalid_request", f"status list {number} holds no token issued yet")
    signed = lists.get(number)
    age = int(lists.clock()) - signed.signed_at
    headers = {"ETag": signed.etag, "Cache-Control": f"max-age={max(0, lists.settings.status_list_ttl - age)}"}
    if signed.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(text=signed.token, content_type=MEDIA_TYPE, headers=headers)


async def jwks_handler(edge: Edge, request: web.Request) -> web.Response:
    edge.api_caller(request, "check")
    return web.json_response(request.app[STATUS_LISTS].jwks, headers={"Cache-Control": "max-age=300"})
