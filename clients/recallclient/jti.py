"""Canonical jtis and foreign token keys.

A canonical jti encodes the token's serial, so a service holding the token
derives the serial with no lookup. Stores issue the form bound to them,
``rc2.<serial>.<check>``, where ``check`` is eight hex digits of a CRC-32
over the store's id and the serial: a jti issued by another deployment (a
serial of another store) does not read as one of this store's. The check
digits also catch mistyped or truncated jtis; they are not a secret (the
jti sits inside a signed token, and the store id is no secret either).

The older form ``rc1.<serial>.<check4>`` (four hex digits over the serial
alone) is still read, so tokens issued before stores bound their jtis stay
checkable until they expire; it is no longer issued. `canonical_jti(serial)`
without a store id gives that form, for those tokens and for tests.

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
from collections.abc import Callable

CANONICAL_PREFIX = "rc2."  # bound to a store
UNBOUND_PREFIX = "rc1."  # read, no longer issued
MAX_SERIAL = 2**63 - 1


def _check_digits(serial: int) -> str:
    return "%04x" % (zlib.crc32(b"rc1:%d" % serial) & 0xFFFF)


@functools.lru_cache(maxsize=64)
def _store_crc(store_id: str) -> int:
    """The CRC-32 of a store's check-digit prefix, from which each serial's check continues."""
    return zlib.crc32(b"rc2:%s:" % store_id.encode())


def _bound_check(digits: bytes, store_id: str) -> str:
    return "%08x" % zlib.crc32(digits, _store_crc(store_id))


def canonical_jti(serial: int, store_id: str = "") -> str:
    """The canonical jti of `serial` in the store `store_id` (rc2); without a store id the
    unbound rc1 form. Raises ValueError out of range."""
    if not 1 <= serial <= MAX_SERIAL:
        raise ValueError(f"serial {serial} is outside 1..{MAX_SERIAL}")
    if store_id:
        return f"{CANONICAL_PREFIX}{serial}.{_bound_check(b'%d' % serial, store_id)}"
    return f"{UNBOUND_PREFIX}{serial}.{_check_digits(serial)}"


def _unbound_serial(rest: str) -> int | None:
    digits, dot, check = rest.partition(".")
    if not dot or len(check) != 4 or not 0 < len(digits) <= 19 or not (digits.isascii() and digits.isdigit()) \
            or digits[0] == "0":
        return None
    serial = int(digits)
    return serial if serial <= MAX_SERIAL and check == _check_digits(serial) else None


def _no_serial(jti: str) -> None:
    return None


@functools.lru_cache(maxsize=64)
def bound_parser(store_id: str) -> Callable[[str], int | None]:
    """A function giving the serial of a jti bound to the store `store_id` (rc2, its check
    digits those of this store), and None for any other jti (rc1 included).

    This is the lookup path of replicas, written for speed and measured in
    bench/lookup.py uncached (a uniform draw over millions of tokens defeats
    any cache): a prefix test, one bounded split, the check continued from
    the store's precomputed CRC, no regular expression.
    """
    if not store_id:
        return _no_serial
    base = _store_crc(store_id)
    crc32, prefix = zlib.crc32, CANONICAL_PREFIX

    def parse(jti: str) -> int | None:
        if not jti.startswith(prefix):  # most foreign jtis end here, before any allocation
            return None
        parts = jti.split(".", 3)
        if len(parts) != 3:
            return None
        _, digits, check = parts
        # The digits are the serial's decimal form (no sign, no leading zero,
        # ASCII only): checked as they are, then read.
        if (
            len(check) != 8 or not 0 < len(digits) <= 19 or not (digits.isascii() and digits.isdigit())
            or digits[0] == "0" or check != "%08x" % crc32(digits.encode(), base)
        ):
            return None
        serial = int(digits)
        return serial if serial <= MAX_SERIAL else None

    return parse


@functools.lru_cache(maxsize=1 << 16)
def serial_from_jti(jti: str, store_id: str = "") -> int | None:
    """The serial a canonical jti encodes, or None for any other jti.

    An rc2 jti counts only when its check digits are those of `store_id`
    (with no store id, none does); an rc1 jti counts in any store. Cached:
    a server or gateway sees the same tokens again and again (a replica's
    lookups use bound_parser, which a wide spread of tokens would make miss).
    """
    if jti.startswith(UNBOUND_PREFIX):
        return _unbound_serial(jti[4:])
    return bound_parser(store_id)(jti)


def looks_canonical(jti: str) -> bool:
    """True when `jti` has a canonical prefix, rc2 or rc1 (valid check digits or not)."""
    return jti.startswith((CANONICAL_PREFIX, UNBOUND_PREFIX))


@functools.lru_cache(maxsize=1024)
def _issuer_state(issuer: str):
    """BLAKE2b (8 bytes, personalised) having hashed the issuer and its separator."""
    state = hashlib.blake2b(digest_size=8, person=b"recall.v1")
    state.update(issuer.encode() + b"\x00")
    return state


def foreign_key(issuer: str, jti: str) -> int:
    """Return the nonzero 64-bit key of a token by (issuer, jti).

    BLAKE2b-64 (personalised "recall.v1") of issuer, NUL, jti, little-endian;
    0 becomes 1. The hash continues from the issuer's state, kept per issuer:
    half the cost of hashing the pair from scratch.
    """
    state = _issuer_state(issuer).copy()
    state.update(jti.encode())
    return int.from_bytes(state.digest(), "little") or 1


def opaque_jti(token: str) -> str:
    """The jti an opaque token is registered under: base64url(SHA-256(token)), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()
