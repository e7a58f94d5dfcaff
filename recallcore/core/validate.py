"""Input checks: every rule a request must pass before it reaches the store.

Each function raises InvalidArgument (or ResourceExhausted for size limits)
with a message that starts with the offending field's path, e.g.
``tokens[2].expires_at: ...``, and otherwise returns the value with defaults
filled in. Pure: the caller passes the settings and `now`.
"""

import dataclasses
import sys
from array import array

from recallclient.jti import MAX_SERIAL
from recallclient.types import JtiRef, TokenSpec, TokenType

from ..settings import Settings
from .errors import InvalidArgument, ResourceExhausted
from .model import Cutoff, Register, Revoke, Rotate, Selector

MAX_TIME = 2**32 - 1  # expiries are kept as uint32 Unix seconds (until 2106)


def string(value: str, field: str, settings: Settings, *, required: bool = False) -> str:
    """Return `value` if it fits; raise when empty (and required) or too long."""
    if required and not value:
        raise InvalidArgument(f"{field}: must not be empty")
    size = len(value.encode())
    if size > settings.max_string:
        raise InvalidArgument(f"{field}: {size} bytes exceed the limit of {settings.max_string}")
    if "\x00" in value:
        raise InvalidArgument(f"{field}: must not contain NUL characters")
    return value


def serial(value: int, field: str) -> int:
    """Return `value` if it is a serial (1 ≤ serial < 2**63)."""
    if not 1 <= value <= MAX_SERIAL:
        raise InvalidArgument(f"{field}: {value} is not a serial (1..{MAX_SERIAL})")
    return value


def count(n: int, field: str, settings: Settings) -> None:
    """Raise ResourceExhausted when `n` items exceed the per-call limit."""
    if n > settings.max_batch:
        raise ResourceExhausted(f"{field}: {n} items exceed the limit of {settings.max_batch} per call")


def token_spec(spec: TokenSpec, field: str, settings: Settings, now: int) -> TokenSpec:
    """Return `spec` checked, with issuer, type, issued_at and expires_at filled in."""
    string(spec.subject, f"{field}.subject", settings, required=True)
    string(spec.client_id, f"{field}.client_id", settings, required=True)
    for name in ("jti", "issuer", "origin", "family"):
        string(getattr(spec, name), f"{field}.{name}", settings)
    if len(spec.scopes) > settings.max_scopes:
        raise ResourceExhausted(
            f"{field}.scopes: {len(spec.scopes)} scopes exceed the limit of {settings.max_scopes}"
        )
    for i, scope in enumerate(spec.scopes):
        string(scope, f"{field}.scopes[{i}]", settings, required=True)
        if " " in scope:
            raise InvalidArgument(f"{field}.scopes[{i}]: a scope must not contain spaces")
    if spec.type not in (0, TokenType.ACCESS, TokenType.REFRESH):
        raise InvalidArgument(f"{field}.type: {spec.type} is not ACCESS or REFRESH")
    if spec.issued_at < 0:
        raise InvalidArgument(f"{field}.issued_at: must not be negative")
    for name in ("issued_at", "expires_at"):
        if getattr(spec, name) > MAX_TIME:
            raise InvalidArgument(f"{field}.{name}: {getattr(spec, name)} is after {MAX_TIME} (year 2106)")
    if spec.expires_at < 0:
        raise InvalidArgument(f"{field}.expires_at: must not be negative")
    if spec.issued_at > now + settings.clock_skew:
        raise InvalidArgument(
            f"{field}.issued_at: {spec.issued_at} is in the future (now is {now}, "
            f"clock_skew {settings.clock_skew}s)"
        )
    issued_at = spec.issued_at or now
    expires_at = spec.expires_at or issued_at + settings.token_ttl
    if expires_at > MAX_TIME:
        raise InvalidArgument(f"{field}.expires_at: {expires_at} is after {MAX_TIME} (year 2106)")
    if expires_at <= issued_at:
        raise InvalidArgument(
            f"{field}.expires_at: {expires_at} is not after issued_at {issued_at}"
        )
    if expires_at - issued_at > settings.max_token_lifetime:
        raise InvalidArgument(
            f"{field}.expires_at: a lifetime of {expires_at - issued_at}s exceeds "
            f"the maximum token lifetime of {settings.max_token_lifetime}s"
        )
    return dataclasses.replace(
        spec,
        issuer=spec.issuer or settings.issuer,
        type=TokenType(spec.type or TokenType.ACCESS),
        issued_at=issued_at,
        expires_at=expires_at,
        scopes=tuple(spec.scopes),
    )


def register(tokens: list[TokenSpec], actor: str, settings: Settings, now: int) -> Register:
    """Return the Register operation for a request."""
    if not tokens:
        raise InvalidArgument("tokens: at least one token is required")
    count(len(tokens), "tokens", settings)
    string(actor, "actor", settings)
    return Register(
        tuple(token_spec(t, f"tokens[{i}]", settings, now) for i, t in enumerate(tokens)),
        actor,
    )


def jti_ref(ref: JtiRef, field: str, settings: Settings) -> JtiRef:
    """Return `ref` if its jti is present and everything fits; an empty issuer
    becomes the server's (as a registration's does)."""
    string(ref.issuer, f"{field}.issuer", settings)
    string(ref.jti, f"{field}.jti", settings, required=True)
    if not 0 <= ref.expires_at <= MAX_TIME:
        raise InvalidArgument(f"{field}.expires_at: {ref.expires_at} is not a time in 0..{MAX_TIME}")
    return ref if ref.issuer else dataclasses.replace(ref, issuer=settings.issuer)


def selector(sel: Selector, settings: Settings, now: int, field: str = "selector") -> Selector:
    """Return `sel` if it selects something and every part is valid."""
    if sel.empty:
        raise InvalidArgument(
            f"{field}: empty; give serials, tokens, subject, client_id or family"
        )
    count(len(sel.serials) + len(sel.tokens), f"{field}.serials+tokens", settings)
    for i, value in enumerate(sel.serials):
        serial(value, f"{field}.serials[{i}]")
    tokens = tuple(jti_ref(ref, f"{field}.tokens[{i}]", settings) for i, ref in enumerate(sel.tokens))
    for i, ref in enumerate(tokens):
        if ref.expires_at > now + settings.max_token_lifetime:
            raise InvalidArgument(
                f"{field}.tokens[{i}].expires_at: {ref.expires_at} is more than the maximum token "
                f"lifetime ({settings.max_token_lifetime}s) from now; raise --max-token-lifetime"
            )
    for name in ("subject", "client_id", "family"):
        string(getattr(sel, name), f"{field}.{name}", settings)
    return dataclasses.replace(sel, tokens=tokens)


def revoke(sel: Selector, reason: str, actor: str, settings: Settings, now: int, origin: str = "") -> Revoke:
    """Return the Revoke operation for a request."""
    string(reason, "reason", settings)
    string(actor, "actor", settings)
    string(origin, "origin", settings)
    return Revoke(selector(sel, settings, now), reason, actor, origin)


def claims(sub: str, client_id: str, issued_at: int, settings: Settings, field: str = "") -> None:
    """Check the optional claims of a token never registered here."""
    string(sub, f"{field}sub", settings)
    string(client_id, f"{field}client_id", settings)
    if not 0 <= issued_at <= MAX_TIME:
        raise InvalidArgument(f"{field}issued_at: {issued_at} is not a time in 0..{MAX_TIME}")


def token_ref(serial_value: int, issuer: str, jti: str, settings: Settings) -> int | JtiRef:
    """Return a serial, or a JtiRef: exactly one of serial or (issuer, jti); an
    empty issuer is the server's (as a registration's is)."""
    if serial_value and (issuer or jti):
        raise InvalidArgument("serial: give either serial or issuer and jti, not both")
    if serial_value:
        return serial(serial_value, "serial")
    if not (issuer or jti):
        raise InvalidArgument("serial: give a serial, or issuer and jti")
    string(issuer, "issuer", settings)
    string(jti, "jti", settings, required=True)
    return JtiRef(issuer or settings.issuer, jti)


def packed_serials(data: bytes, settings: Settings, field: str = "serials") -> array:
    """Return the little-endian uint64 serials in `data` as array('Q')."""
    if len(data) % 8:
        raise InvalidArgument(f"{field}: {len(data)} bytes is not a whole number of uint64 values")
    count(len(data) // 8, field, settings)
    values = array("Q")
    values.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover - wire order is little-endian
        values.byteswap()
    return values


def rotate(ref: int | JtiRef, successor: TokenSpec, actor: str, origin: str, request_id: str,
           settings: Settings) -> Rotate:
    """Return the Rotate operation; the successor is checked fully once its defaults are known."""
    for name, value in (("actor", actor), ("origin", origin), ("request_id", request_id)):
        string(value, name, settings)
    for name in ("subject", "client_id", "issuer", "jti", "origin", "family"):
        string(getattr(successor, name), f"successor.{name}", settings)
    if successor.family:
        raise InvalidArgument("successor.family: the successor always joins the presented token's family")
    if successor.type not in (0, TokenType.REFRESH):
        raise InvalidArgument("successor.type: a successor is a REFRESH token")
    return Rotate(ref, successor, actor, origin, request_id)


def cutoff(scope: int, value: str, before: int, reason: str, actor: str, settings: Settings, now: int) -> Cutoff:
    """Return the Cutoff operation (before = 0 means now)."""
    if scope not in (1, 2, 3, 4):
        raise InvalidArgument(f"rule.scope: {scope} is not SUBJECT, CLIENT, ISSUER or ALL")
    if scope == 4 and value:
        raise InvalidArgument("rule.value: must be empty for scope ALL")
    string(value, "rule.value", settings, required=scope != 4)
    if before < 0 or before > now + settings.clock_skew:
        raise InvalidArgument(f"rule.before: {before} is not a time between 0 and now")
    string(reason, "reason", settings)
    string(actor, "actor", settings)
    return Cutoff(scope, value, before, reason, actor)
