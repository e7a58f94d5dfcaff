"""Verifying a JWT access token (RFC 9068) against the keys of its configured issuer.

The token's unverified `iss` picks the issuer; tokens of an issuer that is
not configured are refused before any key is looked at. The header's `alg`
must be on the allow-list (asymmetric algorithms only: `none` and HMAC are
never accepted) and its `kid` must name a key of that issuer. Then the
signature, and the claims: `exp` is required, `exp`, `nbf` and `iat` are
judged with the clock skew, `aud` must name the configured audience when
one is configured, and a `jti` is required (a token without one cannot be
recalled one by one). A token this server could not recall is refused as
well: one whose `exp` lies past the longest token lifetime it keeps a
revocation for (max_token_lifetime), and one whose `iss` or `jti` is past
the longest string it takes (max_string) or holds a NUL.

Verified signatures are remembered by the token's SHA-256 for as long as the
token lives (a bounded LRU), so a token presented again costs a hash; the
time-dependent claims are judged again at each use, and an entry is dropped
when its issuer no longer holds the key that signed it.
"""

import collections
import dataclasses
import hashlib
import json
from collections.abc import Callable

from joserfc import jws
from joserfc.errors import JoseError

from ..core import validate
from ..core.errors import InvalidArgument
from ..settings import DEFAULT_JWT_ALGORITHMS as DEFAULT_ALGORITHMS
from ..settings import Settings
from .jwks import Key, KeySource

ASYMMETRIC = frozenset(DEFAULT_ALGORITHMS)
# Access tokens come typed at+jwt (RFC 9068) or, from many issuers, JWT or
# untyped; other types (a secevent+jwt, a statuslist+jwt) are not access tokens.
ACCESS_TOKEN_TYPES = frozenset({"", "jwt", "at+jwt", "application/at+jwt"})
SIGNATURE_CACHE = 65536  # verified tokens remembered
MAX_TOKEN = 16 << 10  # bytes of a token at most


class InvalidToken(Exception):
    """The token is not good: `cause` for counting, the message for the RFC 6750 error_description."""

    def __init__(self, cause: str, description: str) -> None:
        super().__init__(description)
        self.cause = cause


@dataclasses.dataclass(frozen=True)
class Verified:
    """The claims of a verified token that recall decisions use, and all of them in `claims`."""

    issuer: str
    jti: str
    subject: str
    client_id: str
    issued_at: int
    expires_at: int
    not_before: int
    claims: dict
    # What adapters derive from these claims alone, kept with them while the
    # verification is remembered (a decision's fixed parts, its headers).
    memo: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


def _number(claims: dict, name: str, required: bool = False) -> int:
    value = claims.get(name)
    if value is None:
        if required:
            raise InvalidToken("malformed", f"the token has no {name} claim")
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("malformed", f"the token's {name} claim is not a number")
    return int(value)


def _string(claims: dict, name: str) -> str:
    value = claims.get(name, "")
    if not isinstance(value, str):
        raise InvalidToken("malformed", f"the token's {name} claim is not a string")
    return value


def signature_verifies(compact, key: Key, registry: jws.JWSRegistry) -> bool:
    """True when the extracted compact JWS is signed by `key` (with an algorithm of `registry`)."""
    try:
        return jws.validate_compact(compact, key, registry=registry)
    except JoseError:
        return False


def looks_like_jwt(token: str) -> bool:
    """True for a compact JWS: three dot-separated parts (an opaque token has none of that shape)."""
    return token.count(".") == 2 and token.startswith("eyJ")


class JwtVerifier:
    """Verifies tokens of the issuers in `issuers` (issuer -> its KeySource)."""

    def __init__(self, issuers: dict[str, KeySource], *, algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS,
                 audience: str = "", skew: int = 60, clock: Callable[[], float],
                 limits: Settings | None = None) -> None:
        unsafe = [a for a in algorithms if a not in ASYMMETRIC]
        if unsafe:
            raise ValueError(f"jwt_algorithms: {unsafe} are not asymmetric signature algorithms")
        self.issuers = issuers
        self.algorithms = frozenset(algorithms)
        self.audience = audience
        self.skew = skew
        self.clock = clock
        self.limits = limits or Settings()  # what a revocation takes: max_token_lifetime, max_string
        self._registry = jws.JWSRegistry(algorithms=list(algorithms))
        self._cache: collections.OrderedDict[bytes, tuple[Verified, KeySource, str, Key, tuple[int, int]]] = \
            collections.OrderedDict()

    def remembered(self, token: str, judge_times: bool = True) -> Verified | None:
        """The claims of `token` when it was verified before, with a key its issuer still holds,
        its times judged again (raises InvalidToken; not with `judge_times` false: a token not
        valid yet may be revoked all the same); None when it has to be verified. Not a
        coroutine: the answer for a token seen before costs no await."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is None:
            return None
        verified, source, kid, key, (valid_from, valid_until) = cached
        if not source.holds(kid, key):
            del self._cache[digest]
            return None
        self._cache.move_to_end(digest)
        if not valid_from <= self.clock() < valid_until and judge_times:
            self._judge_times(verified)
        return verified

    async def verify(self, token: str) -> Verified:
        """The verified claims of `token`; raises InvalidToken, or Unavailable when keys cannot be had."""
        if len(token) > MAX_TOKEN:
            raise InvalidToken("malformed", f"the token is longer than {MAX_TOKEN} bytes")
        verified = self.remembered(token)
        if verified is not None:
            return verified
        digest = hashlib.sha256(token.encode()).digest()
        verified, source, kid, key = await self._verify(token)
        # Remembered before the times are judged: an expired token presented
        # again and again costs a hash, not a signature check each time.
        self._cache[digest] = (verified, source, kid, key, self._window(verified))
        if len(self._cache) > SIGNATURE_CACHE:
            self._cache.popitem(last=False)
        self._judge_times(verified)
        return verified

    async def _verify(self, token: str) -> tuple[Verified, KeySource, str, Key]:
        try:
            compact = jws.extract_compact(token.encode(), registry=self._registry)
            header = compact.headers()
            claims = json.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError) as exc:
            raise InvalidToken("malformed", f"the token is not a well-formed JWT ({exc})") from None
        if not isinstance(claims, dict):
            raise InvalidToken("malformed", "the token's payload is not a JSON object")
        issuer = claims.get("iss")
        source = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if source is None:
            raise InvalidToken("unknown_issuer", f"tokens of issuer {issuer!r} are not accepted here")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("bad_signature", f"the signature algorithm {alg!r} is not accepted")
        typ = header.get("typ", "")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidToken("malformed", f"a token of type {typ!r} is not an access token")
        kid = header.get("kid", "")
        if not isinstance(kid, str):
            raise InvalidToken("malformed", "the token's kid is not a string")
        key = await source.key(kid)
        if key is None:
            raise InvalidToken("bad_signature", f"issuer {issuer!r} has no signing key {kid!r}")
        if not signature_verifies(compact, key, self._registry):
            raise InvalidToken("bad_signature", "the token's signature does not verify")
        verified = self._claims(issuer, claims)
        return verified, source, kid, key

    def _claims(self, issuer: str, claims: dict) -> Verified:
        jti = _string(claims, "jti")
        if not jti:
            raise InvalidToken("malformed", "the token has no jti claim, so it cannot be recalled")
        if self.audience:
            aud = claims.get("aud", [])
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if self.audience not in audiences:
                raise InvalidToken("audience", f"the token is not meant for audience {self.audience!r}")
        for name, value in (("iss", issuer), ("jti", jti)):
            try:
                validate.string(value, name, self.limits)  # as a revocation of it would be judged
            except InvalidArgument:
                raise InvalidToken("malformed", f"the token's {name} is longer than {self.limits.max_string} bytes "
                                                "or holds a NUL, so it could not be recalled") from None
        verified = Verified(
            issuer=issuer, jti=jti, subject=_string(claims, "sub"),
            client_id=_string(claims, "client_id") or _string(claims, "azp"),
            issued_at=_number(claims, "iat"), expires_at=_number(claims, "exp", required=True),
            not_before=_number(claims, "nbf"), claims=claims,
        )
        lifetime = self.limits.max_token_lifetime
        if verified.expires_at > self.clock() + lifetime + self.skew:
            raise InvalidToken("lifetime", f"the token lives past the longest lifetime this server can recall "
                                           f"a token for ({lifetime} s, max_token_lifetime)")
        return verified

    def _window(self, v: Verified) -> tuple[int, int]:
        """[from, until): the clock readings at which `v` is valid, within the clock skew."""
        return max(v.not_before, v.issued_at) - self.skew, v.expires_at + self.skew

    def _judge_times(self, v: Verified) -> None:
        valid_from, valid_until = self._window(v)
        now = self.clock()
        if now >= valid_until:
            raise InvalidToken("expired", "the token has expired")
        if now < valid_from:
            raise InvalidToken("not_yet_valid", "the token is not valid yet")

    async def close(self) -> None:
        for source in self.issuers.values():
            await source.close()
