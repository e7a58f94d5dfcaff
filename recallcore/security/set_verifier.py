"""Verifying a Security Event Token (RFC 8417, as the OpenID Shared Signals framework profiles it).

A SET of a configured transmitter must be a compact JWS typed
`secevent+jwt`, signed with an algorithm of the allow-list (asymmetric only)
by a key the transmitter publishes (its JWKS file or URL, or the jwks_uri of
its SSF metadata: a KeySource, fetched again when a SET names an unknown
kid), with `iss` the transmitter's issuer, `aud` naming this receiver, a
`jti`, an `iat` neither in the future (beyond the clock skew) nor older than
`max_age`, and no `sub` or `exp` (SSF forbids both, so that a SET can never
pass for an access token). Each failure raises SetRejected with the RFC 8935
error code the push answer carries.
"""

import json
import ssl
import time
from collections.abc import Callable

import aiohttp
from joserfc import jws
from joserfc.errors import JoseError

from ..core.errors import InvalidArgument, Unavailable
from . import jwks
from .jwks import Key, KeySource
from .jwt_verifier import ASYMMETRIC, MAX_TOKEN, signature_verifies

SET_TYPES = frozenset({"secevent+jwt", "application/secevent+jwt"})


class SetRejected(Exception):
    """A SET refused: `err` is its RFC 8935 error code, `status` the HTTP status of a push answer."""

    def __init__(self, err: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.err, self.status = err, status


class MetadataKeys:
    """The keys of a transmitter known by its SSF metadata URL: its `jwks_uri`, as a KeySource.

    The metadata is fetched when a key is first needed (and again after a
    failure, at most once per jwks.REFETCH_EVERY); its `issuer` must be the
    configured one.
    """

    def __init__(self, url: str, issuer: str, cacert: str = "") -> None:
        self.url, self.issuer, self.cacert = url, issuer, cacert
        self._metadata = KeySource(url, cacert)  # its fetch reads any https document
        self._keys: KeySource | None = None
        self._tried = -float("inf")  # monotonic time of the last fetch of the metadata

    async def key(self, kid: str) -> Key | None:
        """As KeySource.key; raises Unavailable when the metadata or keys cannot be had."""
        if self._keys is None:
            if time.monotonic() - self._tried < jwks.REFETCH_EVERY:  # a flood of SETs is not a flood of fetches
                raise Unavailable(f"the SSF metadata {self.url} could not be fetched lately; retry shortly")
            self._tried = time.monotonic()
            try:
                metadata = json.loads(await self._metadata.fetch())
            except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError, InvalidArgument, ValueError) as exc:
                raise Unavailable(f"the SSF metadata {self.url} could not be fetched: {exc}") from None
            metadata = metadata if isinstance(metadata, dict) else {}
            jwks_uri = metadata.get("jwks_uri")
            if metadata.get("issuer") != self.issuer or not isinstance(jwks_uri, str) or \
                    not jwks_uri.startswith("https://"):
                raise Unavailable(f"the SSF metadata {self.url} does not name issuer {self.issuer!r} and an "
                                  "https jwks_uri")
            self._keys = KeySource(jwks_uri, self.cacert)
        return await self._keys.key(kid)

    async def close(self) -> None:
        await self._metadata.close()
        if self._keys is not None:
            await self._keys.close()


class SetVerifier:
    """Verifies the SETs of one transmitter: `issuer`, `audience`, its `keys` (KeySource or MetadataKeys)."""

    def __init__(self, issuer: str, audience: str, keys: KeySource | MetadataKeys, *, algorithms: tuple[str, ...],
                 max_age: int, skew: int, clock: Callable[[], float]) -> None:
        self.issuer, self.audience, self.keys = issuer, audience, keys
        self.algorithms = frozenset(a for a in algorithms if a in ASYMMETRIC)
        self.max_age, self.skew, self.clock = max_age, skew, clock
        self._registry = jws.JWSRegistry(algorithms=sorted(self.algorithms))

    async def verify(self, token: str) -> dict:
        """The claims of a good SET; raises SetRejected, or Unavailable when keys cannot be had."""
        if len(token) > MAX_TOKEN:
            raise SetRejected("invalid_request", f"the SET is longer than {MAX_TOKEN} bytes")
        try:
            compact = jws.extract_compact(token.encode(), registry=self._registry)
            header = compact.headers()
            claims = json.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError) as exc:
            raise SetRejected("invalid_request", f"the body is not a compact JWS ({exc})") from None
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in SET_TYPES:
            raise SetRejected("invalid_request", f"the JWS is typed {typ!r}, not secevent+jwt")
        if not isinstance(claims, dict):
            raise SetRejected("invalid_request", "the SET's payload is not a JSON object")
        if claims.get("iss") != self.issuer:
            raise SetRejected("invalid_issuer", f"this stream takes SETs of issuer {self.issuer!r}, "
                                                f"not {claims.get('iss')!r}")
        alg, kid = header.get("alg"), header.get("kid", "")
        if alg not in self.algorithms:
            raise SetRejected("invalid_key", f"the signature algorithm {alg!r} is not accepted")
        if not isinstance(kid, str):
            raise SetRejected("invalid_request", "the SET's kid is not a string")
        key = await self.keys.key(kid)
        if key is None:
            raise SetRejected("invalid_key", f"issuer {self.issuer!r} publishes no signing key {kid!r}")
        if not signature_verifies(compact, key, self._registry):
            raise SetRejected("authentication_failed", "the SET's signature does not verify")
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: dict) -> None:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in audiences:
            raise SetRejected("invalid_audience", f"the SET is not meant for audience {self.audience!r}")
        for forbidden in ("sub", "exp"):
            if forbidden in claims:
                raise SetRejected("invalid_request", f"a SET must not carry a {forbidden} claim")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise SetRejected("invalid_request", "the SET has no jti")
        iat = claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise SetRejected("invalid_request", "the SET has no numeric iat")
        now = self.clock()
        if iat > now + self.skew:
            raise SetRejected("invalid_request", "the SET was issued in the future (iat)")
        if iat < now - self.max_age:
            raise SetRejected("invalid_request", f"the SET was issued more than {self.max_age} s ago (iat)")

    async def close(self) -> None:
        await self.keys.close()
