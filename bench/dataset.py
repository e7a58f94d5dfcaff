"""Stores for the bench, built in-process without RPC (setup, never timed).

Theory of operation. Registering through `operations.register` costs ~17 µs
a token (a protobuf record, a jti index entry, index bitmaps per token), so
10M tokens would take minutes. What a cold start and every read path use of
a registration is per serial: its expiry and issue time (the `exp`/`iat`
blocks), the highest serial, and the logged change. `build` writes exactly
those for dense serials 1..registered, one logged change per batch of 4M
serials (block aligned), and leaves out the per-token records and jti index
entries, which nothing measured here reads. Revocations go through the real
`operations.revoke`, one write transaction per batch of up to 1M serials.
`check_equivalence` builds a small store both ways and compares what
`Store.load()` returns, so a change to the store format that this shortcut
misses fails the bench (and its smoke test) instead of skewing figures.

Serials are revoked with probability revoked/(registered - pool) each,
from a seeded generator (`revoked_blocks`, which the Redis baseline reuses
to load the same set). The top `pool` serials are never revoked here: the
scenarios that revoke take fresh serials from there.

Run as `python -m bench.dataset build PATH REGISTERED REVOKED POOL FOREIGN`
to build in a child process; it prints the Dataset as JSON.
"""

import dataclasses
import json
import pathlib
import sys
import time

import numpy as np
from pyroaring import BitMap64
from recallclient.revoked_set import Delta
from recallclient.types import JtiRef, TokenSpec

from recallcore.core import operations
from recallcore.core.model import Register, Revoke, Selector
from recallcore.settings import Settings
from recallcore.storage.lmdb import LmdbStore as Store

SEED = 20240601
REGISTER_BATCH = 1 << 22  # serials per logged registration (a multiple of the 4096-serial block)
TIMES_SLICE = 1 << 16  # serials per set_expiries call (its cost grows with blocks x ids)
REVOKE_BATCH = 1 << 20
MAP_SIZE = 1 << 36  # reserved address space; the file grows only as written
FOREIGN_ISSUER = "https://other-idp.example"



@dataclasses.dataclass(frozen=True)
class Dataset:
    """A built store: serials 1..registered, a random `revoked` among 1..pool_start-1."""

    path: str
    registered: int
    revoked: int
    pool_start: int  # first serial never revoked by the build
    foreign: list  # [[issuer, jti]] revoked foreign tokens (a sample)
    store_id: str
    seq: int
    build_s: float


def open_store(path: pathlib.Path) -> Store:
    return Store(path, map_size=MAP_SIZE, max_map_size=MAP_SIZE)


def revoked_blocks(registered: int, revoked: int, pool: int, block: int = REVOKE_BATCH):
    """Yield uint64 arrays of the serials the build revokes, in order (seeded)."""
    top = registered - pool  # serials 1..top may be revoked
    if top < 1 or revoked <= 0:
        return
    fraction = min(1.0, revoked / top)
    rng = np.random.default_rng(SEED)
    for start in range(1, top + 1, block):
        ids = np.arange(start, min(start + block, top + 1), dtype=np.uint64)
        yield ids[rng.random(len(ids)) < fraction]


def _register_range(store: Store, first: int, last: int, expires_at: int, issued_at: int, now: int) -> None:
    """Register serials first..last (their times, the highest serial, one logged change)."""
    mirror = _STATE[0]
    with store.write() as txn:
        for start in range(first, last + 1, TIMES_SLICE):
            ids = np.arange(start, min(start + TIMES_SLICE, last + 1), dtype=np.uint64)
            txn.set_expiries(ids, np.full(len(ids), expires_at, dtype=np.uint32))
            txn.set_issue_times(ids, np.full(len(ids), issued_at, dtype=np.uint32))
        txn.set_registered_through(last)
        seq = mirror.seq + 1
        txn.put_issuance(first, seq)
        serials = BitMap64()
        serials.add_range(first, last + 1)
        delta = Delta(prev_seq=mirror.seq, seq=seq, registered_through=last,
                      expiring=((expires_at, serials),), time=now)
        operations.commit_change(txn, mirror, delta, {"kind": "register", "actor": "bench", "count": last - first + 1,
                                             "first_serial": first, "last_serial": last})


_STATE: list = []  # the writer-side mirror while building


def _revoke(store: Store, settings: Settings, selector: Selector, now: int) -> None:
    with store.write() as txn:
        operations.revoke(txn, _STATE[0], Revoke(selector, reason="bench", actor="bench"),
                          now, settings)


def build(path: pathlib.Path, registered: int, revoked: int, pool: int, foreign: int,
          say=lambda message: None, now: int | None = None) -> Dataset:
    """Build a store at `path` (must not exist); return what it holds."""
    started = time.perf_counter()
    path = pathlib.Path(path)
    now = int(time.time()) if now is None else now
    expires_at, issued_at = now + 7 * 86400, now - 60
    settings = Settings(data_dir=path)
    store = open_store(path)
    try:
        _STATE[:] = [store.load()]
        for first in range(1, registered + 1, REGISTER_BATCH):
            last = min(first + REGISTER_BATCH - 1, registered)
            _register_range(store, first, last, expires_at, issued_at, now)
            say(f"registered {last:,} of {registered:,}")
        count, said = 0, time.monotonic()
        for ids in revoked_blocks(registered, revoked, pool):
            if len(ids):
                _revoke(store, settings, Selector(serials=tuple(ids.tolist())), now)
                count += len(ids)
                if time.monotonic() - said > 2:
                    say(f"revoked {count:,} of ~{revoked:,}")
                    said = time.monotonic()
        say(f"revoked {count:,} of ~{revoked:,}")
        refs = [(FOREIGN_ISSUER, f"foreign-{i}") for i in range(foreign)]
        for i in range(0, len(refs), 50_000):
            part = tuple(JtiRef(iss, jti, now + 86400) for iss, jti in refs[i : i + 50_000])
            _revoke(store, settings, Selector(tokens=part), now)
        mirror = _STATE[0]
        return Dataset(
            path=str(path), registered=registered, revoked=len(mirror.revocations.revoked),
            pool_start=registered - pool + 1, foreign=[list(r) for r in refs[:1000]],
            store_id=store.store_id, seq=mirror.seq, build_s=time.perf_counter() - started,
        )
    finally:
        _STATE.clear()
        store.close()


def check_equivalence(workdir: pathlib.Path, n: int = 3000) -> None:
    """Build n tokens with `build` and with operations.register; raise if they load differently."""
    now = int(time.time())
    fast = build(workdir / "fast", n, 0, 0, 0, now=now)
    real_path = workdir / "real"
    store = open_store(real_path)
    try:
        mirror = store.load()
        specs = tuple(TokenSpec(subject=f"s{i}", client_id="bench", issuer="bench",
                                issued_at=now - 60, expires_at=now + 7 * 86400) for i in range(n))
        with store.write() as txn:
            operations.register(txn, mirror, Register(specs), now)
    finally:
        store.close()
    loaded = []
    for path in (pathlib.Path(fast.path), real_path):
        store = open_store(path)
        try:
            loaded.append(store.load())
        finally:
            store.close()
    a, b = loaded
    for name, x, y in (
        ("registered_through", a.revocations.registered_through, b.revocations.registered_through),
        ("seq", a.seq, b.seq),
        ("revoked", len(a.revocations.revoked), len(b.revocations.revoked)),
        ("expiries", a.expiry.array[: n + 1].tolist(), b.expiry.array[: n + 1].tolist()),
    ):
        if x != y:
            raise AssertionError(f"bench.dataset shortcut no longer matches operations.register: {name} differs")


def main(argv: list[str]) -> int:
    if len(argv) != 6 or argv[0] != "build":
        print("usage: python -m bench.dataset build PATH REGISTERED REVOKED POOL FOREIGN", file=sys.stderr)
        return 2
    path, registered, revoked, pool, foreign = argv[1], *map(int, argv[2:])
    ds = build(pathlib.Path(path), registered, revoked, pool, foreign,
               say=lambda m: print(json.dumps({"progress": m}), flush=True))
    print(json.dumps(dataclasses.asdict(ds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


class SerialPool:
    """Fresh (registered, never revoked) serials for the scenarios that revoke."""

    def __init__(self, first: int, last: int) -> None:
        self.next = first
        self.last = last

    def take(self, n: int) -> list[int]:
        """n serials nobody revoked yet; RuntimeError when the pool runs dry."""
        if self.next + n - 1 > self.last:
            raise RuntimeError(f"serial pool exhausted: wanted {n}, {self.last - self.next + 1} left")
        out = list(range(self.next, self.next + n))
        self.next += n
        return out
