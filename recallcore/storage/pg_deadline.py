"""Deadlines on PostgreSQL connections: a link gone silent is cut, not waited on.

Theory of operation. libpq waits for an answer for as long as its socket
stays open. A partitioned network, a stalled proxy or a frozen server keeps
the socket open and silent, and a writer waiting on it would hold every
write queued behind it until TCP gives up, which takes many minutes. So
each lend of a connection is registered, and one thread per store looks at
the registrations every TICK seconds. A lend has a deadline only while it
waits on the database (`Lend.trip`, renewed before each round trip): what
is bounded is the wait for one answer, not the length of a transaction nor
the work done between its statements. A lend past its deadline whose
database sent something within the timeout (a long pipeline's results
arrive as the server works through it; TCP_INFO says when the last byte
came) gets more time. Otherwise the thread shuts down the lend's socket:
the blocked call returns at once with an OperationalError, and the
connection is closed as broken. Registering a lend costs a dict entry under
a lock and wakes no thread. Keepalives and tcp_user_timeout are added to
the conninfo (unless it sets them), so the kernel also gives up on a peer
that stopped acknowledging.
"""

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import psycopg
import psycopg.conninfo

TICK = 0.1  # seconds between looks at the registered lends


def connect_options(conninfo: str, timeout: float) -> dict:
    """libpq options that bound how long a dead peer goes unnoticed, for those `conninfo` leaves unset."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return {}  # connecting says what is wrong with it
    wanted = {"keepalives": 1, "keepalives_idle": max(1, round(timeout)), "keepalives_interval": 1,
              "keepalives_count": 3, "tcp_user_timeout": max(1000, round(timeout * 1000))}
    return {k: v for k, v in wanted.items() if k not in given}


class Lend:
    """One connection lent, cut past `deadline` (time.monotonic(); None: not waiting on the
    database now); `cut` once its socket was shut down."""

    __slots__ = ("conn", "seconds", "deadline", "cut")

    def __init__(self, conn: psycopg.Connection, seconds: float) -> None:
        self.conn, self.seconds, self.cut = conn, seconds, False
        self.deadline: float | None = time.monotonic() + seconds

    def renew(self) -> None:
        """The next round trip has the whole timeout (a long transaction of quick answers is fine)."""
        self.deadline = time.monotonic() + self.seconds

    def rest(self) -> None:
        """Not waiting on the database (this process works on what it got): no deadline."""
        self.deadline = None

    @contextlib.contextmanager
    def trip(self) -> Iterator[None]:
        """Round trips in the block, under the deadline; at rest after it."""
        self.renew()
        try:
            yield
        finally:
            self.rest()


class Deadlines:
    """Cuts the connection of a lend that outlives `seconds`."""

    def __init__(self, seconds: float, name: str) -> None:
        self.seconds = seconds
        self._name = name
        self._lends: dict[int, Lend] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, conn: psycopg.Connection) -> Iterator[Lend]:
        """Run the block with `conn` cut past the deadline. An OperationalError out of a block
        whose connection was cut is raised again as one saying so."""
        lend = Lend(conn, self.seconds)
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=f"{self._name}-deadlines", daemon=True)
                self._thread.start()
            self._lends[id(lend)] = lend
        try:
            yield lend
        except psycopg.OperationalError as exc:
            if lend.cut:
                raise psycopg.OperationalError(
                    f"no answer within {self.seconds:g} s (store_timeout); the connection was cut") from exc
            raise
        finally:
            with self._lock:
                del self._lends[id(lend)]

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            now = time.monotonic()
            with self._lock:  # a lend is cut only while it is registered: never a connection given back
                for lend in self._lends.values():
                    if lend.cut or lend.deadline is None or now < lend.deadline:
                        continue
                    heard = _heard_ms_ago(lend.conn)
                    if heard is not None and heard < self.seconds * 1000:
                        lend.deadline = now + self.seconds - heard / 1000  # still answering (a long pipeline)
                        continue
                    lend.cut = True
                    _shut_down(lend.conn)


_TCP_INFO = struct.Struct("8x44xI")  # struct tcp_info (linux/tcp.h) up to tcpi_last_data_recv, in ms


def _heard_ms_ago(conn: psycopg.Connection) -> int | None:
    """Milliseconds since the database last sent anything on `conn` (TCP on Linux), else None."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except (psycopg.Error, OSError):
        return None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return _TCP_INFO.unpack_from(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size))[0]
    except (OSError, struct.error):
        return None
    finally:
        sock.close()


def _shut_down(conn: psycopg.Connection) -> None:
    """Shut down the socket under `conn` (whoever waits on it wakes up to an error)."""
    try:
        fd = conn.fileno()
    except psycopg.Error:  # closed already
        return
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
