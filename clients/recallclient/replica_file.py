"""The replica file: a replica's revoked set on local disk, for warm starts.

Theory of operation. A `Replica` with a path saves its `RevokedSet` here on
close, after every snapshot it installs and every 30 s while it changes; on
start it loads the file, answers from it at once and resumes the Watch
stream from its sequence. The file also records the wall-clock time at which
the server last vouched for the replica, so a replica that starts warm knows
how stale it is (and a file saved long ago starts stale, not trusted).

Layout (little-endian), written to a temporary file, fsynced and renamed
over the old one, so a reader sees the old file or the new one, never half:

    magic     8 bytes  b"RCREPLIC"
    version   u32      VERSION
    store_id  u32 length + UTF-8 bytes
    seq, registered_through   u64, u64
    vouched_at                f64 (Unix seconds; 0 = never vouched)
    revoked   u64 length + portable BitMap64 serialization
    foreign   u64 count + count × u64 keys
    rules     u32 count + per cut-off rule: u32 scope, i64 before,
              u32 length + UTF-8 value
    history   u32 length + the store's history at seq (version 2 on; see
              recall.v1.Delta.history), so a resume is checked against it
    checksum  16 bytes: BLAKE2b-128 of everything before it

`load` answers None (and logs why) for a missing, truncated, corrupt or
other-version file: a replica then starts cold, it never fails to start.
"""

import array
import dataclasses
import hashlib
import logging
import os
import struct
import sys
import threading
import time

from .codec import bitmap_bytes, bitmap_from
from .revoked_set import RevokedSet

log = logging.getLogger(__name__)

MAGIC = b"RCREPLIC"
VERSION = 2
READS = (1, 2)  # version 1 has no history: a resume from it is not checked
SAVE_INTERVAL = 30.0  # seconds between saves of a replica that keeps changing

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_POSITION = struct.Struct("<QQd")
_RULE = struct.Struct("<Iq")
_CHECKSUM_SIZE = 16


class _Corrupt(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Saved:
    """What a replica file holds: the set, and when the server last vouched
    for it (Unix seconds, 0 when never)."""

    state: RevokedSet
    vouched_at: float = 0.0


def _checksum(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=_CHECKSUM_SIZE, person=b"recall.replica").digest()


def _keys(foreign: set[int]) -> bytes:
    keys = array.array("Q", sorted(foreign))
    if sys.byteorder == "big":
        keys.byteswap()
    return keys.tobytes()


def encode(state: RevokedSet, vouched_at: float = 0.0) -> bytes:
    """The bytes of a replica file holding `state`."""
    store_id = state.store_id.encode()
    revoked = bitmap_bytes(state.revoked)
    rules = sorted(getattr(state, "rules", ()))
    parts = [
        MAGIC, _U32.pack(VERSION), _U32.pack(len(store_id)), store_id,
        _POSITION.pack(state.seq, state.registered_through, vouched_at),
        _U64.pack(len(revoked)), revoked, _U64.pack(len(state.foreign)), _keys(state.foreign),
        _U32.pack(len(rules)),
    ]
    for scope, value, before in rules:
        text = value.encode()
        parts += (_RULE.pack(scope, before), _U32.pack(len(text)), text)
    parts += (_U32.pack(len(state.history)), state.history)
    body = b"".join(parts)
    return body + _checksum(body)


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> memoryview:
        if size > len(self.data) - self.at:
            raise _Corrupt("truncated")
        part = self.data[self.at : self.at + size]
        self.at += size
        return part

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))


def decode(data: bytes) -> Saved:
    """The Saved value in `data`; raises ValueError when it is not a valid file."""
    view = memoryview(data)
    if len(view) < len(MAGIC) + _U32.size + _CHECKSUM_SIZE or bytes(view[: len(MAGIC)]) != MAGIC:
        raise _Corrupt("not a replica file")
    body, checksum = view[:-_CHECKSUM_SIZE], view[-_CHECKSUM_SIZE:]
    reader = _Reader(body)
    reader.take(len(MAGIC))
    (version,) = reader.unpack(_U32)
    if version not in READS:
        raise _Corrupt(f"version {version}, this library reads versions {READS}")
    if _checksum(body) != bytes(checksum):
        raise _Corrupt("checksum mismatch")
    (size,) = reader.unpack(_U32)
    store_id = bytes(reader.take(size)).decode()
    seq, through, vouched_at = reader.unpack(_POSITION)
    (size,) = reader.unpack(_U64)
    revoked = bitmap_from(bytes(reader.take(size)))
    (count,) = reader.unpack(_U64)
    keys = array.array("Q")
    keys.frombytes(reader.take(count * 8))
    if sys.byteorder == "big":
        keys.byteswap()
    rules = []
    for _ in range(reader.unpack(_U32)[0]):
        scope, before = reader.unpack(_RULE)
        (size,) = reader.unpack(_U32)
        rules.append((scope, bytes(reader.take(size)).decode(), before))
    history = bytes(reader.take(reader.unpack(_U32)[0])) if version >= 2 else b""
    if reader.at != len(body):
        raise _Corrupt("trailing bytes")
    state = RevokedSet(store_id)
    extra = {"rules": rules} if rules else {}  # sets without cut-off rules take no rules=
    state.load(seq=seq, revoked=revoked, foreign=keys, registered_through=through, history=history, **extra)
    return Saved(state, vouched_at)


def save(path: str | os.PathLike, state: RevokedSet, vouched_at: float = 0.0) -> None:
    """Write `state` to `path` atomically (temporary file, fsync, rename).

    `vouched_at` is when the server last vouched for the state (Unix
    seconds). Raises OSError when the file cannot be written.
    """
    path = os.fspath(path)
    data = encode(state, vouched_at)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read(path: str | os.PathLike) -> Saved | None:
    """The Saved value at `path`, or None (logged) when missing or unusable."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        log.info("no replica file at %s: starting cold", os.fspath(path))
        return None
    except OSError as exc:
        log.warning("cannot read replica file %s: %s; starting cold", os.fspath(path), exc)
        return None
    try:
        return decode(data)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("ignoring replica file %s: %s; starting cold", os.fspath(path), exc)
        return None


def load(path: str | os.PathLike) -> RevokedSet | None:
    """The RevokedSet saved at `path`, or None (logged) when missing or unusable."""
    saved = read(path)
    return None if saved is None else saved.state


class ReplicaFile:
    """One replica's file: what was last written, when a save is due, and
    saving that logs failures instead of raising. Thread-safe."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._written = (-1, 0.0)  # (seq, vouched_at) last read or written
        self._written_at = time.monotonic()

    def read(self) -> Saved | None:
        """The Saved value in the file, or None (logged) when unusable."""
        saved = read(self.path)
        if saved is not None:
            self._written = (saved.state.seq, saved.vouched_at)
        return saved

    def due(self, state: RevokedSet, vouched_at: float, installed: bool) -> bool:
        """True when the file should be rewritten: something changed, and
        either a snapshot was just installed or SAVE_INTERVAL has passed."""
        if self._written == (state.seq, vouched_at):
            return False
        return installed or time.monotonic() - self._written_at >= SAVE_INTERVAL

    def write(self, state: RevokedSet, vouched_at: float) -> None:
        """Save `state` now; an OSError is logged, not raised."""
        with self._lock:
            try:
                save(self.path, state, vouched_at)
            except OSError as exc:
                log.warning("cannot save replica file %s: %s", os.fspath(self.path), exc)
            self._written, self._written_at = (state.seq, vouched_at), time.monotonic()
