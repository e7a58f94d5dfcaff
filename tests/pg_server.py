"""A real PostgreSQL server for the tests: initdb in a temporary directory, on a free loopback port.

The server binaries refuse to run as root, so as root they run as the
`postgres` user (runuser); as anyone else, as that user. Missing binaries
skip the test, or fail it under RECALL_REQUIRE_EXTERNAL=1 (CI), through
support.require_binary. `PostgresServer.standby()` starts a streaming
standby of a running server (synchronous commit) for failover tests.
"""

import itertools
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile

import psycopg

from .support import free_address, require_binary, until

PG_BIN_DIRS = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
_names = itertools.count(1)


def pg_binary(name: str) -> str:
    """The path of PostgreSQL server program `name` (Debian keeps them off PATH)."""
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    return require_binary(name)


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PostgresServer:
    """One PostgreSQL instance in a directory of its own; `stop` removes it."""

    def __init__(self, base: pathlib.Path | None = None, *, name: str = "primary") -> None:
        self.root = pathlib.Path(base or tempfile.mkdtemp(prefix="recallcore-pg-"))
        self.data = self.root / name
        self.sockets = self.root / f"{name}-sock"
        self.port = int(free_address().rpartition(":")[2])
        self.proc: subprocess.Popen | None = None
        self.log = self.root / f"{name}.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        os.chmod(self.root, 0o755)

    def _run(self, *args: str) -> None:
        subprocess.run([*_as_postgres(), *args], check=True, capture_output=True, timeout=120)

    def init(self) -> "PostgresServer":
        """initdb (trust authentication on loopback), then start."""
        self._run(pg_binary("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\nwal_level = replica\nmax_wal_senders = 4\nfsync = on\nsynchronous_commit = on\n"
                       "shared_buffers = 32MB\nmax_connections = 100\n")
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        return self.start()

    def start(self) -> "PostgresServer":
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.sockets, "postgres")
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [*_as_postgres(), pg_binary("postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1"],
            stdout=out, stderr=subprocess.STDOUT)
        out.close()
        until(self.accepting, f"PostgreSQL on port {self.port} accepting (log {self.log})", timeout=60)
        return self

    def accepting(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited: {self.log.read_text()[-2000:]}")
        try:
            with psycopg.connect(self.conninfo("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def conninfo(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its conninfo."""
        name = f"recall_{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.conninfo(name)

    def standby(self) -> "PostgresServer":
        """A streaming standby of this server, started, and made its synchronous standby:
        from now on a commit here returns only once the standby has it."""
        other = PostgresServer(self.root, name="standby")
        self._run(pg_binary("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-D", str(other.data), "-R", "-X", "stream", "-c", "fast")  # fast: no wait for a spread checkpoint
        with open(other.data / "postgresql.auto.conf", "a") as conf:
            conf.write(f"primary_conninfo = 'host=127.0.0.1 port={self.port} user=postgres "
                       "application_name=standby'\n")
        other.start()
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
            conn.execute("SELECT pg_reload_conf()")

            def synchronous() -> bool:
                row = conn.execute("SELECT sync_state FROM pg_stat_replication "
                                   "WHERE application_name = 'standby'").fetchone()
                return row is not None and row[0] == "sync"

            until(synchronous, "the standby streaming synchronously", timeout=60)
        return other

    def promote(self) -> None:
        """Make this standby a primary (returns once it accepts writes)."""
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            assert conn.execute("SELECT pg_promote(true, 60)").fetchone()[0]

    def stop(self, *, how: signal.Signals = signal.SIGINT) -> None:
        """Stop the server and wait for it: SIGINT a fast shutdown, SIGQUIT an immediate one
        (no checkpoint: as after a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            # The postmaster runs under runuser: signal it by its pid file.
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, how)
            self.proc.wait(timeout=60)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
