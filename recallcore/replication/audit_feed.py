"""Fan-out of committed audit records to AuditLog follow streams: read once, share, never block.

Theory of operation. As Watch streams share the hub's deltas, follow streams
share this feed. After each commit the engine tells the feed its new head
(`committed`); while any stream follows, one pump task reads the records
between what it has read and that head (one read per commit, or fewer under
a burst, on the audit reader thread) into a bounded ring and wakes the
streams. Each stream owns only its cursor: it takes the ring's records
after it (`since`), and a stream that fell behind the ring reads a page
from the store itself. Ring entries carry a slot for their encoded form, so
a record is encoded once for every stream that sends it.
"""

import asyncio
from collections.abc import Awaitable, Callable

RING = 4096  # records kept for follow streams


class Entry:
    """One committed audit record, and its encoded form once an adapter made it."""

    __slots__ = ("record", "payload")

    def __init__(self, record: dict) -> None:
        self.record = record
        self.payload: bytes | None = None

    @property
    def seq(self) -> int:
        return self.record["seq"]


class AuditFeed:
    """Recent audit records and the follow streams waiting for more."""

    def __init__(self, read: Callable[[int, int], Awaitable[list[dict]]], size: int = RING) -> None:
        self._read = read  # (after, upto) -> the records after `after` up to `upto`, oldest first
        self._size = size
        self._ring: list[Entry] = []  # one record per seq, contiguous: seqs _ring_from+1 .. _read_to
        self._ring_from = 0
        self._read_to = 0
        self._head = 0
        self._waiters: list[asyncio.Future] = []
        self._pump: asyncio.Task | None = None
        self.followers = 0
        self.closed = False

    def start_at(self, head: int) -> None:
        """Begin at the store's head (nothing before it will be asked of the ring)."""
        self._head = self._read_to = self._ring_from = head

    def committed(self, head: int) -> None:
        """The store's head moved to `head` (on the loop, after the commit)."""
        self._head = head
        if not self.followers:  # nobody listens: read nothing, keep nothing
            self._ring.clear()
            self._read_to = self._ring_from = head
            return
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run(), name="recallcore-audit-feed")

    def since(self, cursor: int) -> list[Entry] | None:
        """The ring's entries after `cursor`; None when the ring no longer reaches back to it."""
        if cursor < self._ring_from:
            return None
        return self._ring[cursor - self._ring_from:]

    @property
    def read_to(self) -> int:
        """Every record up to this seq is in the ring, or was skipped while nobody followed."""
        return self._read_to

    async def wait(self, timeout: float) -> None:
        """Return once new records are in the ring, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiters.append(future)
        timer = loop.call_later(timeout, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            timer.cancel()
            if future in self._waiters:
                self._waiters.remove(future)

    def close(self) -> None:
        """Wake every stream so that it ends."""
        self.closed = True
        self._wake()

    async def _run(self) -> None:
        while self._read_to < self._head and not self.closed:
            upto = min(self._head, self._read_to + self._size)
            records = await self._read(self._read_to, upto)
            if not records or records[0]["seq"] != self._read_to + 1 or records[-1]["seq"] != upto:
                # Records missing from a range (never so for committed ones): start the ring afresh.
                self._ring.clear()
                self._ring_from = upto
            else:
                self._ring.extend(Entry(r) for r in records)
            self._read_to = upto
            if len(self._ring) > 2 * self._size:  # trim the oldest half: slices stay cheap
                drop = len(self._ring) - self._size
                del self._ring[:drop]
                self._ring_from += drop
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)
