"""Scenario 1: one check in process, in the server's core and in a Replica.

Every figure is the median time per iteration of the same `for` loop over the
same ids, so the loop's own cost (reported as loop_ns) is in all of them and
the ratios compare like with like. The floor is the bare `x in BitMap64` on
the very bitmap the server holds. Serials are drawn uniformly from the
registered range (so about revoked/registered of them hit); jti tokens are
half revoked foreign tokens and half never seen, and their floor is the
unavoidable part: hashing (issuer, jti) to the 64-bit key plus `key in set`.
"""

import random
import time

from recallclient import Replica
from recallclient.jti import canonical_jti, foreign_key

from recallcore.core.mirror import Mirror

from .measure import interleaved, progress


def _timed(body):
    def run():
        t0 = time.perf_counter_ns()
        body()
        return time.perf_counter_ns() - t0
    return run


def _loops(ids: list[int], refs: list[tuple[str, str]]):
    """The timed loops, each a closure over what it checks."""

    def empty():
        for x in ids:
            pass

    def contains(bitmap):
        def body():
            for x in ids:
                x in bitmap  # noqa: B015 - the floor
        return body

    def call(fn, *extra):
        # Spelled out per arity: a star-args call would add its own cost
        # (a tuple per call) that the floor does not pay.
        if not extra:
            def body():
                for x in ids:
                    fn(x)
        else:
            (arg,) = extra

            def body():
                for x in ids:
                    fn(x, arg)
        return body

    def foreign_floor(keys):
        def body():
            for iss, jti in refs:
                foreign_key(iss, jti) in keys  # noqa: B015
        return body

    def foreign_core(is_foreign_revoked):
        def body():
            for iss, jti in refs:
                is_foreign_revoked(foreign_key(iss, jti))
        return body

    def replica_jti(is_revoked):
        def body():
            for iss, jti in refs:
                is_revoked(jti, iss)
        return body

    return empty, contains, call, foreign_floor, foreign_core, replica_jti


def samples(registered: int, foreign: list, n: int, seed: int = 1) -> tuple[list[int], list[tuple[str, str]]]:
    """n serials uniform in 1..registered, and n (issuer, jti): half revoked foreign, half unknown."""
    rng = random.Random(seed)
    ids = [rng.randint(1, registered) for _ in range(n)]
    refs = []
    for i in range(n):
        if foreign and i % 2 == 0:
            iss, jti = foreign[rng.randrange(len(foreign))]
        else:
            iss, jti = "https://unknown-idp.example", f"never-seen-{i}"
        refs.append((iss, jti))
    return ids, refs


def run_core(mirror: Mirror, ids: list[int], refs: list, repeats: int) -> dict:
    """Floors and the server core's per-check cost (the mirror as Store.load() returned it)."""
    progress(f"lookup: core and floor over {len(ids):,} serials and {len(refs):,} jti tokens")
    empty, contains, call, foreign_floor, foreign_core, _ = _loops(ids, refs)
    revocations = mirror.revocations
    now = int(time.time())
    n = len(ids)
    return interleaved({
        "loop_ns": (_timed(empty), n),
        "floor_bitmap_ns": (_timed(contains(revocations.revoked)), n),
        "core_check_ns": (_timed(call(mirror.state, now)), n),
        "floor_jti_ns": (_timed(foreign_floor(revocations.foreign)), len(refs)),
        "core_jti_check_ns": (_timed(foreign_core(revocations.is_foreign_revoked)), len(refs)),
    }, repeats)


STR_SET_CAP = 10_000_000  # the string floor's set: the registered range, up to this many


def run_replica(address: str, seq: int, ids: list[int], refs: list, repeats: int, registered: int) -> dict:
    """Per-check cost of a Replica that followed the server at `address` up to `seq`.

    The floors are timed again here (replica_floor_*), interleaved with the
    replica's loops and on the replica's own bitmap and set; the replica's
    ratios use these. One more floor, `floor_str_set_ns`, is what any lookup
    of a token by its jti string costs at best: `jti in set` over a set of
    Python strings as large as the registered range (the canonical jtis of
    serials 1..registered), probed with the same fresh string objects, drawn
    uniformly, that the canonical-jti loop looks up.
    """
    progress("lookup: Replica.is_revoked (replica synced from the server), with the floor again")
    _, contains, call, foreign_floor, _, replica_jti = _loops(ids, refs)
    with Replica(address, max_staleness=60.0) as replica:
        if not replica.wait_for(seq, timeout=60):
            raise RuntimeError(f"replica did not reach seq {seq}")
        canonical = [canonical_jti(x, replica.store_id) for x in ids]  # the bound form stores issue
        size = min(registered, STR_SET_CAP)
        progress(f"lookup: the string floor's set of {size:,} jtis")
        strings = {canonical_jti(x, replica.store_id) for x in range(1, size + 1)}
        probes = canonical if size == registered else [j for j, x in zip(canonical, ids) if x <= size]
        deadline = time.monotonic() + 10
        while replica.staleness > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        is_revoked = replica.is_revoked

        def canonical_loop():
            for jti in canonical:
                is_revoked(jti)

        def str_set_floor():
            for jti in probes:
                jti in strings  # noqa: B015 - the floor

        class _Bare:
            """The least any Python method API costs: a call that does the bare lookup."""

            def __init__(self, bitmap):
                self.bitmap = bitmap

            def contains(self, x):
                return x in self.bitmap

        bare = _Bare(replica._revoked).contains
        out = interleaved({
            "replica_floor_bitmap_ns": (_timed(contains(replica._revoked)), len(ids)),
            "replica_floor_method_ns": (_timed(call(bare)), len(ids)),
            "replica_check_ns": (_timed(call(is_revoked)), len(ids)),
            "replica_floor_jti_ns": (_timed(foreign_floor(replica._foreign)), len(refs)),
            "replica_jti_check_ns": (_timed(replica_jti(is_revoked)), len(refs)),
            "replica_canonical_jti_ns": (_timed(canonical_loop), len(canonical)),
            "floor_str_set_ns": (_timed(str_set_floor), len(probes)),
        }, repeats)
        out["floor_str_set_size"] = size
        if replica.cardinality == 0 and seq > 1:
            raise RuntimeError("replica holds an empty set")
    return out
