"""IETF OAuth Token Status Lists (draft-ietf-oauth-status-list): one bit per serial, built from the mirror.

List n covers the serials n*size+1 .. (n+1)*size; serial s has index
(s - 1) % size in list (s - 1) // size. With `bits: 1`, a bit is 1 (INVALID)
for a serial that is revoked, rotated or expired, and 0 (VALID) otherwise
(serials not issued yet included). The byte array packs index i into byte
i // 8 at bit i % 8 (least significant bit first), is compressed with
DEFLATE in the zlib format and base64url-encoded without padding, as the
draft specifies for `lst`.

Building works on whole arrays (the revoked and rotated bitmaps cut to the
range, the expiry array sliced); there is no Python loop per serial.
"""

import base64
import zlib

import numpy as np
from pyroaring import BitMap64

from .mirror import Mirror

BITS = 1  # bits per status: VALID 0, INVALID 1
ZLIB_LEVEL = 6  # measured on 1M statuses, 10% invalid: 22 ms for 73.8 KB; level 9 took 117 ms for 72.7 KB


def reference(serial: int, size: int) -> tuple[int, int]:
    """(list number, index in it) of `serial`."""
    return (serial - 1) // size, (serial - 1) % size


def uri(base: str, number: int) -> str:
    """The uri of list `number` under `base` (a token's status.status_list.uri, the list's `sub`)."""
    return f"{base.rstrip('/')}/{number}"


def bits(state: Mirror, number: int, size: int, now: int) -> bytes:
    """The packed bit array of list `number` (size // 8 bytes, rounded up) at `now`."""
    low = number * size + 1
    span = BitMap64()
    span.add_range(low, low + size)
    invalid = np.zeros(size, dtype=bool)
    for bitmap in (state.revocations.revoked, state.rotated):
        hits = bitmap & span
        if hits:
            invalid[np.frombuffer(hits.to_array(), dtype=np.uint64) - np.uint64(low)] = True
    expiry = state.expiry.array
    have = max(0, min(len(expiry) - low, size))
    if have:
        exp = expiry[low:low + have]
        invalid[:have] |= (exp != 0) & (exp <= now)
    return np.packbits(invalid, bitorder="little").tobytes()


def encode(packed: bytes) -> str:
    """`lst`: the packed array, zlib-compressed and base64url-encoded without padding."""
    return base64.urlsafe_b64encode(zlib.compress(packed, ZLIB_LEVEL)).rstrip(b"=").decode()
