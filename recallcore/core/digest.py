"""Fixed-size digests of string tuples: index keys and request fingerprints."""

import hashlib
import struct

_LEN = struct.Struct(">Q")


def name_hash(*parts: str) -> bytes:
    """16 bytes identifying a tuple of strings (length-prefixed, so ("ab", "c") != ("a", "bc"))."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        raw = part.encode()
        h.update(_LEN.pack(len(raw)))
        h.update(raw)
    return h.digest()
