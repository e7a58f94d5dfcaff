"""Tailing the log table: how every node of a cluster, the writer included, learns of changes.

Theory of operation. One thread per node holds a connection that LISTENs on
pg_schema.CHANNEL and, in a loop, reads every logged change after the last
one it delivered (through the store's read pool: one snapshot, oldest
first, up to BATCH at a time) and hands them to `deliver`. It reads when a
NOTIFY arrives, when this node's own writer committed (`wake`), and every
`poll_interval` seconds in any case: NOTIFY is only a hint, lost while the
connection is down, so after every (re)connect it reads from the last
applied seq before waiting again, once it checked that the database still
holds that change as this node applied it (after a failover it may not). Commit order is sequence order (the head
row lock), so a snapshot that holds seq N holds every seq before it: the
changes delivered are dense.

A commit of this node's own writer is `adopt`ed (by the writer, as soon as
the commit returns): the node applies it itself, and the tail moves past
it without reading it back once it stands where that commit began; a
NOTIFY from the writer's own connection does not wake a read. (Should the
writer lose its connection as the server commits, it never adopts what it
wrote: the next poll reads it.)

Each successful read stamps `confirmed` (wall-clock Unix microseconds):
at that time this node knew the newest committed change. A node whose
database is unreachable stops stamping; its staleness grows and its Watch
heartbeats stop vouching (replicas and followers then apply their
fail-closed rules). A change older than the log keeps (the node was away
longer than retention) comes as `reset`: the caller reloads its state.
"""

import logging
import os
import select
import threading
import time
from collections.abc import Callable

import psycopg
from recallclient.revoked_set import Delta

from ..core.errors import Unavailable
from . import pg_schema
from .pg_deadline import connect_options

log = logging.getLogger(__name__)

BATCH = 1000  # changes read per round trip
POLL_INTERVAL = 0.5  # seconds between reads without any NOTIFY
RETRY_INTERVAL = 0.5  # seconds between reconnection attempts


class LogTail:
    """Delivers every committed change after `after`, in order, to `deliver(deltas)` (on its thread)."""

    def __init__(self, store, after: int, history: bytes, deliver: Callable[[list[Delta]], None],
                 reset: Callable[[], tuple[int, bytes]], *, poll_interval: float = POLL_INTERVAL) -> None:
        self.store = store
        self.after = after
        self.history = history  # the store's history after `after`, as this node applied it
        self.deliver = deliver
        self.reset = reset  # reload the state from the store; returns (seq, history) it reloaded at
        self.poll_interval = poll_interval
        self.confirmed = time.time_ns() // 1000
        self.connected = False
        self._adopted: list[tuple[int, int, bytes]] = []  # (prev_seq, seq, history) applied without the tail
        self._adopted_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="recallcore-log-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Read the log now (this node committed)."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # a wake-up is pending already
            pass

    def adopt(self, prev_seq: int, seq: int, history: bytes) -> None:
        """This node applied the changes prev_seq+1..seq (its own commit, ending with `history`)
        without the tail: once the tail stands at prev_seq it moves past them without reading
        them back (from any thread)."""
        with self._adopted_lock:
            self._adopted.append((prev_seq, seq, history))

    def _take_adopted(self) -> None:
        with self._adopted_lock:
            adopted, self._adopted = self._adopted, []
            for prev_seq, seq, history in adopted:
                if seq <= self.after:  # read from the log already
                    continue
                if prev_seq != self.after:  # changes of other nodes come first: read them, keep this
                    self._adopted.append((prev_seq, seq, history))
                    continue
                self.after, self.history = seq, history

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread.ident is not None:
            self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def staleness(self) -> float:
        """Seconds since this node last knew the newest committed change."""
        return max(0.0, time.time() - self.confirmed / 1e6)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.store.conninfo, autocommit=True,
                                     connect_timeout=max(1, int(self.store.connect_timeout)),
                                     **connect_options(self.store.conninfo, self.store.deadlines.seconds)) as conn:
                    with self.store.deadlines.guard(conn):
                        conn.execute(f"LISTEN {pg_schema.CHANNEL}")
                    if not self.connected:
                        log.info("following the change log of %s from seq %d", self.store.where, self.after)
                    self.connected = True
                    self._follow(conn)
            except (psycopg.Error, Unavailable, OSError) as exc:
                if self.connected:
                    log.warning("lost %s: %s; reads go on from memory", self.store.where, exc)
                self.connected = False
                self._wait(RETRY_INTERVAL, None)

    def _follow(self, conn: psycopg.Connection) -> None:
        self._verify()
        due = True
        while not self._stop.is_set():
            if due:
                self._read()
                last = time.monotonic()
            due = self._wait(self.poll_interval, conn) or time.monotonic() - last >= self.poll_interval

    def _wait(self, timeout: float, conn: psycopg.Connection | None) -> bool:
        """Wait up to `timeout`; True when the log should be read now: this node committed, a
        NOTIFY names a change not read yet, or the time ran out (polling)."""
        fds = [self._wake_r] + ([conn.fileno()] if conn is not None else [])
        ready, _, _ = select.select(fds, [], [], timeout)
        due = not ready
        if self._wake_r in ready:
            due = True
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        if conn is not None and conn.fileno() in ready:
            self._take_adopted()
            pgconn = conn.pgconn
            pgconn.consume_input()  # raises when the connection broke
            while (note := pgconn.notifies()) is not None:
                if note.be_pid == self.store.writer_pid:
                    continue  # this node's own commit: its writer adopts it (polling reads it otherwise)
                try:
                    due = due or int(note.extra) > self.after  # a change this node read already: no need
                except ValueError:
                    due = True
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection to the database was closed")
        return due

    def _verify(self) -> None:
        """After a (re)connect: reload unless the database still holds the change this node applied
        last, as it applied it. (A failover to a standby never loses an acknowledged change, but a
        change committed on the old primary and read here before its standby had it may be gone.)"""
        if not self.after:
            return
        with self.store.read() as txn:
            head = txn.head_seq()
            kept = txn.delta(self.after) if head >= self.after else None
        if head < self.after or (kept is not None and self.history and kept.history
                                 and kept.history != self.history):
            log.warning("%s does not hold change %d as this node applied it (its head is %d): reloading",
                        self.store.where, self.after, head)
            self.after, self.history = self.reset()

    def _read(self) -> None:
        while True:
            self._take_adopted()
            started = time.time_ns() // 1000
            with self.store.read() as txn:
                deltas = txn.deltas_after(self.after, BATCH)
                first = txn.log_first() if deltas and deltas[0].prev_seq != self.after else 0
            if deltas and deltas[0].prev_seq != self.after:
                log.warning("changes %d..%d were compacted away before this node read them (oldest kept %d): "
                            "reloading", self.after + 1, deltas[0].seq - 1, first)
                self.after, self.history = self.reset()
                continue
            if deltas:
                self.deliver(deltas)
                self.after, self.history = deltas[-1].seq, deltas[-1].history
            if len(deltas) < BATCH:
                self.confirmed = started
                return
