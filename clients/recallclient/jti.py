"""Canonical jtis and foreign token keys.

A canonical jti encodes the token's serial, so a service holding the token
derives the serial with no lookup: ``rc1.<serial>.<check>``, where ``check``
is four hex digits of a CRC-32 over the serial. The check digits catch
mistyped or truncated jtis; they are not a secret (the jti sits inside a
signed token).

Tokens revoked by (issuer, jti) without being registered are keyed by a
64-bit hash of the pair: `foreign_key`.
"""

import hashlib
import re
import zlib

CANONICAL_PREFIX = "rc1."
MAX_SERIAL = 2**63 - 1

_CANONICAL = re.compile(r"rc1\.([1-9][0-9]{0,18})\.([0-9a-f]{4})")


def _check_digits(serial: int) -> str:
    return format(zlib.crc32(b"rc1:%d" % serial) & 0xFFFF, "04x")


def canonical_jti(serial: int) -> str:
    """Return the canonical jti of `serial`; raise ValueError out of range."""
    if not 1 <= serial <= MAX_SERIAL:
        raise ValueError(f"serial {serial} is outside 1..{MAX_SERIAL}")
    return f"{CANONICAL_PREFIX}{serial}.{_check_digits(serial)}"


def serial_from_jti(jti: str) -> int | None:
    """Return the serial a canonical jti encodes, or None for any other jti."""
    match = _CANONICAL.fullmatch(jti)
    if match is None:
        return None
    serial = int(match.group(1))
    if serial > MAX_SERIAL or match.group(2) != _check_digits(serial):
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
