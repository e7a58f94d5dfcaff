"""Canonical jtis and foreign token keys.

A canonical jti encodes the token's serial, so a service holding the token
derives the serial with no lookup: ``rc1.<serial>.<check>``, where ``check``
is four hex digits of a CRC-32 over the serial. The check digits catch
mistyped or truncated jtis; they are not a secret (the jti sits inside a
signed token).

Tokens revoked by (issuer, jti) without being registered are keyed by a
64-bit hash of the pair: `foreign_key`.

An opaque (non-JWT) access token is registered under the jti
`opaque_jti(token)`, base64url(SHA-256(token)): the HTTP edge finds it by
that, and the token itself is never stored.
"""

import base64
import functools
import hashlib
import zlib

CANONICAL_PREFIX = "rc1."
MAX_SERIAL = 2**63 - 1



def _check_digits(serial: int) -> str:
    return "%04x" % (zlib.crc32(b"rc1:%d" % serial) & 0xFFFF)


def canonical_jti(serial: int) -> str:
    """Return the canonical jti of `serial`; raise ValueError out of range."""
    if not 1 <= serial <= MAX_SERIAL:
        raise ValueError(f"serial {serial} is outside 1..{MAX_SERIAL}")
    return f"{CANONICAL_PREFIX}{serial}.{_check_digits(serial)}"


@functools.lru_cache(maxsize=1 << 16)
def serial_from_jti(jti: str) -> int | None:
    """Return the serial a canonical jti encodes, or None for any other jti.

    Cached: a service sees the same tokens again and again.
    """
    if not jti.startswith(CANONICAL_PREFIX):
        return None
    digits, dot, check = jti[4:].partition(".")
    if (
        not dot or len(check) != 4 or not 0 < len(digits) <= 19
        or not (digits.isascii() and digits.isdigit()) or digits[0] == "0"
    ):
        return None
    serial = int(digits)
    if serial > MAX_SERIAL or check != _check_digits(serial):
        return None
    return serial


def looks_canonical(jti: str) -> bool:
    """True when `jti` has the canonical prefix (valid check digits or not)."""
    return jti.startswith(CANONICAL_PREFIX)


def foreign_key(issuer: str, jti: str) -> int:
    """Return the nonzero 64-bit key of a token by (issuer, jti)."""
    digest = hashlib.blake2b(
        issuer.encode() + b"\x00" + jti.encode(), digest_size=8, person=b"recall.v1"
    ).digest()
    return int.from_bytes(digest, "little") or 1


def opaque_jti(token: str) -> str:
    """The jti an opaque token is registered under: base64url(SHA-256(token)), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()
