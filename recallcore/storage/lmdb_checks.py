"""What the LMDB engine checks before it serves from a data directory.

Theory of operation. LMDB keeps no checksums of its own: one flipped bit
in a stored bitmap chunk silently turns a revoked token active, and a
data.mdb shorter than its metadata says kills the process with SIGBUS on
the first read past the end. So:

- The file must hold every page LMDB's metadata counts, checked right after
  the environment is opened and before any table is read.
- Each value of the tables Check answers from (`CHECKED`: the revoked and
  rotated bitmaps, the expiry blocks) has a CRC-32 in table "sums", written
  in the same transaction as the value. At start every such value is read
  and checked against its sum (and must decode); a mismatch names the table
  and key and the server refuses to start.
- A store of format 1 (before sums) gets its sums computed once, when it is
  first opened, and becomes format 2 (which a format-1 server refuses).

Every failure is a StoreError whose message says what is wrong and how to
recover; none of them lets the server serve from the directory.
"""

import os
import pathlib
import zlib

from ..core.errors import StoreError

CHECKED = {"revoked": b"r", "rotated": b"o", "exp": b"e"}  # table -> tag of its sums

RECOVER = ("restore the data directory from a backup (a copy taken with mdb_copy, or a copy of a stopped "
           "server's directory); do not serve from this one")


def checksum(value: bytes) -> bytes:
    """The 4-byte CRC-32 kept for a checked value."""
    return zlib.crc32(value).to_bytes(4, "big")


def sum_key(table: str, key: bytes) -> bytes:
    """The key in table "sums" of `key` in checked table `table`."""
    return CHECKED[table] + key


def check_file_size(path: pathlib.Path, last_pgno: int, page_size: int) -> None:
    """Raise StoreError when data.mdb is shorter than LMDB's metadata says it is."""
    data = path / "data.mdb"
    needed = (last_pgno + 1) * page_size
    actual = os.path.getsize(data)
    if actual < needed:
        raise StoreError(
            f"{data} is truncated: LMDB's metadata counts {last_pgno + 1} pages ({needed} bytes) but the file "
            f"has {actual} bytes; {RECOVER}"
        )


def corrupt(path: pathlib.Path, table: str, key: bytes, why: str) -> StoreError:
    """The StoreError for a checked value that failed its check."""
    return StoreError(f"{path}: table {table!r}, key {key.hex()}: {why}; {RECOVER}")


def verify(path: pathlib.Path, table: str, key: bytes, value: bytes, stored: bytes | None) -> None:
    """Raise StoreError unless `value` matches its stored sum."""
    if stored is None:
        raise corrupt(path, table, key, "the value has no checksum")
    if checksum(value) != stored:
        raise corrupt(path, table, key, "the value does not match its checksum (corrupted on disk)")
