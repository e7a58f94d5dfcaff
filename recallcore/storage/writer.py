"""The writer thread: every write transaction of a store, group-committed.

Theory of operation. Operations arrive on a bounded queue from any thread.
The writer takes the first waiting operation and every other one already
queued (up to `group_commit`), runs them one after another in a single write
transaction against its own mirror of the revocation state, and commits once:
one fsync for the whole group. Only after the commit returns does it report
the group's deltas and results through `on_commit`, so nothing reaches a
reader or a subscriber before it is durable.

When the store is full (StoreFull) the transaction is rolled back, the store
grows and the group is retried; when it cannot grow (LMDB: past
`max_map_size`; a full disk, on either engine) every operation in the group
fails with RESOURCE_EXHAUSTED saying what is full, and nothing changes.
Before that, the store keeps a reserve: once what
is left is only enough to revoke every unrevoked token (and record it), a
registration (or a rotation that would register a successor) fails with
RESOURCE_EXHAUSTED saying so, while revocations and cut-offs go on: a store
filled with registrations never blocks the kill switch. An unexpected error aborts the group
and the operations are retried one by one, so only the culprit fails; a
store that cannot be reached (Unavailable) fails the whole group at once,
and the writer goes on with the next. After any abort the writer's mirror
(which the aborted operations changed) is reloaded from the store inside
the next write transaction.

A store several nodes write (PostgreSQL) may have moved on between two
groups: each group first brings the writer's mirror to the store's head,
from the log, inside its transaction (which holds the head, so nobody moves
it further until the commit).
"""

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from recallclient.revoked_set import Delta

from ..core import lifecycle, operations, signals
from ..core.errors import RecallError, ResourceExhausted, Unavailable
from ..core.mirror import Mirror
from ..core.model import Advance, Cutoff, Operation, Presented, Register, Revoke, Rotate, Signal, Sweep
from ..settings import Settings
from .base import Store, StoreFull, WriteTxn, mirror_of

log = logging.getLogger(__name__)

# (operation, caller's token) in; (token, result or exception) out.
Outcome = tuple[Any, Any]
OnCommit = Callable[[list[Delta], list[Outcome]], None]

_STOP = object()


class Writer:
    """Owns the write side of a store; `submit` from any thread."""

    def __init__(self, store: Store, state: Mirror, settings: Settings, clock: Callable[[], float],
                 on_commit: OnCommit) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.on_commit = on_commit
        self.observe: Callable[[float, int], None] | None = None  # (seconds, group size) of each commit
        self.state = state  # the writer's own mirror: a copy of the loop's, never shared
        self._queue: queue.Queue = queue.Queue(maxsize=65536)
        self._registering = 0  # tokens the running group registered so far
        self._reload = False  # a group was aborted: the mirror is reloaded inside the next transaction
        self._thread = threading.Thread(target=self._run, name="recallcore-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Operation, token: Any) -> None:
        """Queue `op`; its outcome is reported with `token` after commit.

        Raises Unavailable when the queue is full (the caller may retry).
        """
        try:
            self._queue.put_nowait((op, token))
        except queue.Full:
            raise Unavailable("too many writes waiting; retry later") from None

    def stop(self) -> None:
        """Finish every queued operation, then end the thread (blocks)."""
        if self._thread.ident is None:  # never started
            return
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            group = [self._queue.get()]
            while len(group) < self.settings.group_commit:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in group:
                stopping = True
                group = [item for item in group if item is not _STOP]
            if group:
                self._commit(group)

    def _commit(self, group: list[tuple[Operation, Any]]) -> None:
        while True:
            now = int(self.clock())
            started = time.perf_counter()
            try:
                deltas, outcomes = self._run_group(group, now)
            except StoreFull as exc:
                self._reload = True
                if exc.grows and self.store.grow():
                    log.info("store grown to %d bytes", self.store.sizes()[1])
                    continue
                full = ResourceExhausted(str(exc))
                self.on_commit([], [(token, full) for _, token in group])
                return
            except Unavailable as exc:  # the store cannot be reached: nothing of the group was kept
                self._reload = True
                log.warning("write failed: %s", exc)
                self.on_commit([], [(token, exc) for _, token in group])
                return
            except Exception as exc:
                self._reload = True
                if len(group) > 1:
                    for item in group:
                        self._commit([item])
                    return
                log.exception("write failed")
                self.on_commit([], [(group[0][1], exc)])
                return
            if self.observe is not None:
                self.observe(time.perf_counter() - started, len(group))
            self.on_commit(deltas, outcomes)
            return

    def _run_group(self, group: list[tuple[Operation, Any]], now: int) -> tuple[list[Delta], list[Outcome]]:
        deltas: list[Delta] = []
        outcomes: list[Outcome] = []
        self._registering = 0  # tokens this group registered so far (not in the store's size yet)
        with self.store.write() as txn:
            txn.expect_lookups([(ref.issuer, ref.jti) for op, _ in group for ref in _jti_refs(op)])
            self._catch_up(txn)
            for op, token in group:
                try:
                    result, delta = self._apply(txn, op, now)
                except RecallError as exc:
                    outcomes.append((token, exc))
                    continue
                outcomes.append((token, result))
                if delta is not None:
                    deltas.append(delta)
        return deltas, outcomes

    def _catch_up(self, txn: WriteTxn) -> None:
        """Bring the writer's mirror to the store's head: other nodes sharing the store may
        have committed since this writer's last group (the transaction holds the head)."""
        head = txn.head_seq()
        if self._reload:
            self.state = mirror_of(txn, self.store.store_id)
            self._reload = False
            return
        if head == self.state.seq:
            return
        if head > self.state.seq:
            for delta in txn.deltas_after(self.state.seq, head - self.state.seq):
                if delta.prev_seq != self.state.seq:  # the log skips what was compacted: reload below
                    break
                self.state.apply(delta)
            if self.state.seq == head:
                return
        self.state = mirror_of(txn, self.store.store_id)  # behind the log's retention, or a store that went back

    def _refused(self, new: int, now: int) -> str:
        """Why `new` registrations must wait for room (the store keeps room to revoke everything);
        the unexpired tokens are counted only when the quick bound says there is none."""
        wanted = self._registering + new
        return self.store.registrations_refused(self.state.unrevoked_at_most, wanted) and \
            self.store.registrations_refused(self.state.unrevoked(now), wanted)

    def _apply(self, txn: WriteTxn, op: Operation, now: int) -> tuple[Any, Delta | None]:
        if isinstance(op, Register):
            refused = self._refused(len(op.tokens), now)
            if refused:
                raise ResourceExhausted(refused)
            self._registering += len(op.tokens)
            return operations.register(txn, self.state, op, now)
        if isinstance(op, Revoke):
            return operations.revoke(txn, self.state, op, now, self.settings)
        if isinstance(op, Sweep):
            return operations.sweep(txn, self.state, op, now, self.settings)
        if isinstance(op, Rotate):
            return lifecycle.rotate(txn, self.state, op, now, self.settings, self._refused(1, now))
        if isinstance(op, Cutoff):
            return lifecycle.cutoff(txn, self.state, op, now, self.settings)
        if isinstance(op, Signal):
            return signals.apply(txn, self.state, op, now, self.settings)
        if isinstance(op, Advance):
            return signals.advance(txn, op)
        if isinstance(op, Presented):
            # A record of what was seen, never at the cost of the room kept to revoke.
            if self._refused(1, now):
                raise ResourceExhausted("the store is nearly full: presented_after_recall is not recorded")
            return operations.presented(txn, self.state, op, now)
        raise TypeError(f"unknown operation {op!r}")


def _jti_refs(op: Operation) -> tuple:
    """The (issuer, jti) references whose serials applying `op` looks up first."""
    if isinstance(op, Signal):
        op = op.action
    if isinstance(op, Revoke):
        return op.selector.tokens
    if isinstance(op, Register):
        return tuple(spec for spec in op.tokens if spec.jti)  # caller-chosen jtis: known already?
    if isinstance(op, Rotate) and not isinstance(op.ref, int):
        return (op.ref,)
    return ()
