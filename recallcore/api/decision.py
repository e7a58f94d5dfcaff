"""The one decision every edge adapter asks: may this bearer token pass?

Theory of operation. The adapters (the HTTP edge; Envoy's ext_authz) hand
over the raw token as the gateway saw it. A JWT (RFC 9068) is verified
against its issuer's keys (security/jwt_verifier.py) and then checked from
memory: a canonical jti by its serial, any other by its (issuer, jti) key
and the cut-off rules over its sub, client_id/azp and iat. A signed token
that was never registered passes unless a revocation or a rule covers it:
its signature is the proof it was issued. Any other token is opaque: it
passes only if the authorization server registered it, under the issuer
`settings.issuer` and the jti base64url(SHA-256(token))
(recallclient.jti.opaque_jti).

The revocation check is never cached. A node that cannot vouch for its
state raises (Unavailable, FailedPrecondition): the adapters answer an
error, so a gateway fails closed instead of reading a stale "pass".
"""

import dataclasses

from recallclient.jti import foreign_key, opaque_jti
from recallclient.types import JtiRef, TokenState

from ..core.model import Claims
from ..replication.node import Node
from ..security.jwt_verifier import MAX_TOKEN, InvalidToken, JwtVerifier, Verified, looks_like_jwt

_DENIED_STATES = {
    TokenState.REVOKED: ("revoked", "the token has been revoked"),
    TokenState.EXPIRED: ("expired", "the token has expired"),
    TokenState.ROTATED: ("revoked", "the token was rotated and is no longer valid"),
}


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to tell the gateway. `cause` is "ok" or why the token is refused (for counting);
    `description` is fit for an RFC 6750 error_description (no reasons, no personal data)."""

    allowed: bool
    cause: str
    description: str = ""
    issuer: str = ""
    jti: str = ""
    subject: str = ""
    client_id: str = ""
    scope: str = ""
    expires_at: int = 0
    serial: int = 0
    kind: str = ""  # "jwt" or "opaque"
    claims: dict = dataclasses.field(default_factory=dict)
    # What adapters derive from an allowed decision (its upstream headers), when it is reused.
    memo: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def refused(cls, cause: str, description: str, **fields) -> "Decision":
        return cls(False, cause, description, **fields)


class Decider:
    """Decides over `node`'s state with `verifier` for JWTs (None: JWTs are refused)."""

    def __init__(self, node: Node, verifier: JwtVerifier | None) -> None:
        self.node = node
        self.verifier = verifier

    async def decide(self, token: str) -> Decision:
        """The decision for `token`; raises Unavailable / FailedPrecondition when the node cannot answer."""
        if not token:
            return Decision.refused("missing", "no bearer token")
        if len(token) > MAX_TOKEN:
            return Decision.refused("malformed", f"the token is longer than {MAX_TOKEN} bytes")
        if not token.isascii():  # a header's raw bytes past ASCII: no bearer token is made of those
            return Decision.refused("malformed", "the token holds characters no bearer token has (RFC 6750)")
        if not looks_like_jwt(token):
            return await self._opaque(token)
        if self.verifier is None:
            self.node.require_ready()
            return Decision.refused("unknown_issuer", "no JWT issuer is configured here", kind="jwt")
        try:  # a token verified before is answered from memory (known() is that, without an await)
            v = await self.verifier.verify(token)
        except InvalidToken as exc:
            return self._invalid(exc)
        return self._signed(v)

    def known(self, token: str) -> Decision | None:
        """The decision for a JWT verified before, without an await (the gateways' hot path:
        adapters ask this first, then decide()); None for any other token. The revocation
        check is made all the same; only the signature is remembered."""
        if self.verifier is None or not token or len(token) > MAX_TOKEN or not token.isascii():
            return None
        try:
            v = self.verifier.remembered(token)
        except InvalidToken as exc:  # its times, judged again: expired since
            return self._invalid(exc)
        return self._signed(v) if v is not None else None

    def _invalid(self, exc: InvalidToken) -> Decision:
        self.node.require_ready()  # a node that cannot answer says so first
        return Decision.refused(exc.cause, str(exc), kind="jwt")

    def _signed(self, v: Verified) -> Decision:
        """The decision for a JWT whose signature and times were verified."""
        # What follows from the claims alone is worked out once per verified token.
        fixed = v.memo.get(self)
        if fixed is None:
            scope = v.claims.get("scope", "")
            fixed = v.memo[self] = (
                JtiRef(v.issuer, v.jti), Claims(v.subject, v.client_id, v.issued_at), foreign_key(v.issuer, v.jti),
                dict(issuer=v.issuer, jti=v.jti, subject=v.subject, client_id=v.client_id,
                     scope=scope if isinstance(scope, str) else "", expires_at=v.expires_at, kind="jwt",
                     claims=v.claims),
                {},  # serial -> the Decision that lets it pass
            )
        ref, claims, key, fields, passes = fixed
        state, serial = self.node.check_in_memory(ref, claims, key)
        if state in _DENIED_STATES:
            return Decision.refused(*_DENIED_STATES[state], serial=serial, **fields)
        allowed = passes.get(serial)
        if allowed is None:
            allowed = passes[serial] = Decision(True, "ok", serial=serial, **fields)
        return allowed

    async def _opaque(self, token: str) -> Decision:
        ref = JtiRef(self.node.settings.issuer, opaque_jti(token))
        info = await self.node.introspect(ref)
        state = info["state"]
        fields = dict(issuer=ref.issuer, jti=ref.jti, subject=info.get("sub", ""),
                      client_id=info.get("client_id", ""), scope=info.get("scope", ""),
                      expires_at=info.get("exp", 0), serial=info.get("serial", 0), kind="opaque", claims=info)
        if state in _DENIED_STATES:
            return Decision.refused(*_DENIED_STATES[state], **fields)
        if state != TokenState.ACTIVE:
            return Decision.refused("unregistered", "the token is not one this server knows", kind="opaque")
        return Decision(True, "ok", **fields)
