"""A small set of connections to one PostgreSQL database, made on demand.

Theory of operation. Up to `size` connections; one is taken for a
transaction and given back after it. A connection that broke, or that
comes back inside a transaction, is closed; one that sat idle longer than
PROBE_AFTER seconds is probed (an empty query) before it is handed out.
When none is idle and fewer than `size` exist, a new one is made then and
there: there is no background reconnection, so after the database comes
back (or a standby is promoted: libpq's multi-host conninfo with
target_session_attrs=read-write picks it) the very next transaction
connects. psycopg-pool's ConnectionPool reconnects in the background with a
delay that doubles after each failed attempt (1, 2, 4, ... s, with jitter).
Measured with psycopg-pool 3.3.3 (one connection, a caller retrying all
along): after outages of 5, 20 and 60 s it served again 1.4, 9.6 and 5.5 s
after the database was back; this set, 0.01 s after, every time.
Each lend, and the probe before it, runs under the deadlines of
pg_deadline.py: a database that stops answering fails the transaction
within their timeout instead of holding it.
"""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import psycopg

from .pg_deadline import Deadlines, Lend, connect_options

PROBE_AFTER = 1.0  # seconds idle after which a connection is checked before use


class Connections:
    """At most `size` connections to `conninfo`; `lend()` lends one for a block."""

    def __init__(self, conninfo: str, size: int, timeout: float, deadlines: Deadlines,
                 configure: Callable[[psycopg.Connection], None] | None = None) -> None:
        self.conninfo = conninfo
        self.size = size
        self.timeout = timeout
        self.deadlines = deadlines
        self.configure = configure
        self._options = connect_options(conninfo, deadlines.seconds)
        self._idle: list[tuple[psycopg.Connection, float]] = []  # (connection, when it was given back)
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False

    def connect(self) -> psycopg.Connection:
        """A new connection (not counted), configured; raises psycopg.OperationalError."""
        conn = psycopg.connect(self.conninfo, connect_timeout=max(1, round(self.timeout)), **self._options)
        if self.configure is not None:
            self.configure(conn)
        return conn

    @contextlib.contextmanager
    def lend(self) -> Iterator[Lend]:
        """Lend a connection (`.conn`) for the block, under a deadline (`.renew()` it before each
        round trip). Raises psycopg.OperationalError when none can be had within `timeout` (all
        busy, or the database unreachable), or when the database did not answer in time."""
        conn = self._take()
        try:
            with self.deadlines.guard(conn) as lend:
                yield lend
        finally:
            self._give_back(conn)

    def _take(self) -> psycopg.Connection:
        deadline = time.monotonic() + self.timeout
        while True:
            with self._cond:
                while not self._idle and self._count >= self.size:
                    left = deadline - time.monotonic()
                    if self._closed or left <= 0:
                        raise psycopg.OperationalError(f"no connection free within {self.timeout:g} s")
                    self._cond.wait(left)
                if self._idle:
                    conn, since = self._idle.pop()
                else:
                    self._count += 1
                    conn = None
            if conn is None:
                try:
                    return self.connect()
                except BaseException:
                    self._forget()
                    raise
            if time.monotonic() - since < PROBE_AFTER:
                return conn
            with self.deadlines.guard(conn):
                alive = _alive(conn)
            if alive:
                return conn
            conn.close()
            self._forget()

    def _give_back(self, conn: psycopg.Connection) -> None:
        if conn.broken or conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            self._forget()
            return
        with self._cond:
            if self._closed:
                conn.close()
                self._count -= 1
            else:
                self._idle.append((conn, time.monotonic()))
            self._cond.notify()

    def _forget(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify()

    def close(self) -> None:
        """Close the idle connections; those lent out are closed when given back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for conn, _ in idle:
            conn.close()


def _alive(conn: psycopg.Connection) -> bool:
    try:
        autocommit, conn.autocommit = conn.autocommit, True
        conn.execute("")
        conn.autocommit = autocommit
        return True
    except psycopg.Error:
        conn.close()
        return False
