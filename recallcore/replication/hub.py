"""Fan-out of committed deltas to Watch streams: encode once, never block.

Theory of operation. The hub keeps the most recent deltas in a ring and a
set of waiting streams. `publish` (on the event loop, right after a delta is
applied to the node's mirror) appends to the ring and wakes every waiting
stream; it never waits on any of them. Each stream owns only a cursor (the
last sequence it sent). When it wakes it asks for everything from its
cursor to the head as one event: streams at the same cursor, which is nearly
all of them, share one merged and encoded payload from a small cache. A
stream that falls behind the ring catches up from the node's stored history,
and one that falls behind the history gets a reset and a snapshot. So the
writer never waits, a slow stream costs nothing but its cursor, and under a
storm of changes each stream receives merged deltas at the rate it can take.
"""

import asyncio
import collections
import functools

from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient.codec import delta_to_proto
from recallclient.revoked_set import Delta

_CACHE = 64


def merge_all(deltas: list[Delta]) -> Delta:
    """One delta equivalent to `deltas` applied in order."""
    return functools.reduce(Delta.merge, deltas)


def delta_event(store_id: str, delta: Delta, head_seq: int) -> bytes:
    """The encoded WatchEvent carrying `delta`."""
    return pb.WatchEvent(store_id=store_id, delta=delta_to_proto(delta), head_seq=head_seq).SerializeToString()


class Hub:
    """Recent deltas and the streams waiting for the next one."""

    def __init__(self, ring_size: int) -> None:
        self._ring: collections.deque[Delta] = collections.deque(maxlen=ring_size)
        self._cache: collections.OrderedDict[tuple[int, int], bytes] = collections.OrderedDict()
        self._waiters: list[asyncio.Future] = []
        self.epoch = 0  # bumped when the node's history is replaced (follower snapshot)
        self.streams = 0
        self.cursors: dict[object, int] = {}  # open stream -> the last seq it was sent (for metrics)
        self.closed = False  # set at shutdown: streams end so the server can stop
        # The last snapshot built, per with_expiries: (seq, encoded chunks).
        # Streams starting at the same seq share it; any change outdates it.
        self.snapshots: dict[bool, tuple[int, list[bytes]]] = {}

    def publish(self, delta: Delta) -> None:
        """Remember `delta` and wake every waiting stream."""
        if self._ring and self._ring[-1].seq != delta.prev_seq:
            self._ring.clear()
        self._ring.append(delta)
        self.snapshots.clear()
        self._wake()

    def replace_history(self) -> None:
        """Forget every delta: streams must reset (the node installed a snapshot)."""
        self._ring.clear()
        self._cache.clear()
        self.snapshots.clear()
        self.epoch += 1
        self._wake()

    def close(self) -> None:
        """End every stream (they check `closed` when woken)."""
        self.closed = True
        self._wake()

    def oldest(self) -> int:
        """The oldest sequence a stream can resume after from the ring (0 when empty)."""
        return self._ring[0].prev_seq if self._ring else 0

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Return after the next publish, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiters.append(future)
        timer = loop.call_later(timeout, _resolve, future)
        try:
            await future
        finally:
            timer.cancel()
            if future in self._waiters:  # woken by the timer: not by a publish
                self._waiters.remove(future)

    def _start(self, after: int) -> int | None:
        """Index of the ring's delta that follows `after`, or None."""
        ring = self._ring
        if not ring or not ring[0].prev_seq <= after < ring[-1].seq:
            return None
        for i in range(len(ring) - 1, -1, -1):  # cursors are usually near the head
            if ring[i].prev_seq == after:
                return i
        return None  # `after` falls inside a merged delta

    def covers(self, after: int) -> bool:
        """True when the ring holds every delta after `after`."""
        return self._start(after) is not None

    def since(self, after: int, limit: int) -> list[Delta] | None:
        """Up to `limit` deltas after `after` from the ring; None when not held."""
        start = self._start(after)
        if start is None:
            return None
        return [self._ring[i] for i in range(start, min(start + limit, len(self._ring)))]

    def event_since(self, store_id: str, after: int) -> tuple[bytes, int] | None:
        """(encoded event of every delta after `after` up to the head, head seq).

        None when the ring does not hold them. Streams at the same cursor
        share the same bytes.
        """
        head = self._ring[-1].seq if self._ring else 0
        key = (after, head)
        payload = self._cache.get(key)
        if payload is None:
            start = self._start(after)
            if start is None:
                return None
            deltas = [self._ring[i] for i in range(start, len(self._ring))]
            payload = delta_event(store_id, merge_all(deltas), head)
            self._cache[key] = payload
            if len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return payload, head


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
