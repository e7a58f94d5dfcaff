"""Cluster mode on PostgreSQL: durable revokes, throughput over 2 nodes, propagation across nodes.

    python -m bench.cluster [--store CONNINFO] [--rounds N] [--seconds S]

Without --store it starts a PostgreSQL server of its own (tests/pg_server.py:
initdb in a temporary directory, loopback port, fsync and synchronous_commit
on) and migrates a fresh database. Two `recallcore serve --store` nodes run
in child processes. `python -m bench.run` runs it too (scenario 8,
`--only cluster`; in the default set when PostgreSQL is installed).

  floor        a bare synchronous commit of one row (INSERT, autocommit) on
               the same server, interleaved call by call with...
  revoke       one durable Revoke RPC on node A, one caller (p50/p99);
               target: p99 at most 2x the floor's p99.
  throughput   16 callers, 8 on each node, revoking back to back (revocations/s).
  propagation  revoke on node A until a Replica following node B has it (p50/p99),
               timed from the call (the acknowledgement is part of it), 50 a second.
  register     Register RPCs of 1,000 tokens each on node A, each token its own subject (tokens/s).
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time

import psycopg
from recallclient import RecallClient, Replica
from recallclient.types import TokenSpec

from recallcore.storage import pg_schema

from .measure import summary_ms
from .procs import REPO, Server, stop_all

IDP = "https://idp.example"
PROPAGATION_RATE = 50.0  # revocations/s of the propagation run (bench.run's propagation_rate)


def floor_commit(conn: psycopg.Connection, n: int) -> int:
    t0 = time.perf_counter_ns()
    conn.execute("INSERT INTO bench_floor (n) VALUES (%s)", (n,))
    return time.perf_counter_ns() - t0


def single(a: str, conninfo: str, rounds: int) -> dict:
    floor, revoke = [], []
    with psycopg.connect(conninfo, autocommit=True) as conn, RecallClient(a) as client:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (n bigint)")
        for i in range(20):  # warm both up
            floor_commit(conn, -i)
            client.revoke(tokens=[(IDP, f"warm-{i}")])
        for i in range(rounds):
            floor.append(floor_commit(conn, i))
            t0 = time.perf_counter_ns()
            client.revoke(tokens=[(IDP, f"single-{i}")])
            revoke.append(time.perf_counter_ns() - t0)
    f, r = summary_ms(floor), summary_ms(revoke)
    return {"floor_ms": f, "revoke_ms": r, "p99_over_floor_p99": r["p99"] / f["p99"]}


def throughput(nodes: list[str], seconds: float, callers: int = 16) -> dict:
    counts = [0] * callers
    stop_at = time.monotonic() + seconds

    def caller(n: int) -> None:
        with RecallClient(nodes[n % len(nodes)]) as client:
            i = 0
            while time.monotonic() < stop_at:
                client.revoke(tokens=[(IDP, f"t{n}-{i}")])
                i += 1
            counts[n] = i

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    t0 = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - t0
    return {"callers": callers, "nodes": len(nodes), "revocations_per_s": sum(counts) / elapsed}


def propagation(a: str, b: str, rounds: int, rate: float = PROPAGATION_RATE) -> dict:
    """Revocations on node A at `rate` per second (each waits for the one before it to reach
    the replica), timed until a Replica following node B has it. Paced, as the propagation
    scenario is: back to back they would outrun the Watch stream's spacing (--watch-spacing,
    50 live events a second past a burst of 10) and time that instead."""
    samples = []
    with RecallClient(a) as client, Replica(b) as replica:
        assert replica.wait_for(client.stats().seq, timeout=30)
        start = time.monotonic()
        for i in range(rounds):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter_ns()
            receipt = client.revoke(tokens=[(IDP, f"prop-{i}")])
            if not replica.wait_for(receipt.seq, timeout=30):
                raise RuntimeError(f"replica of node B never saw seq {receipt.seq}")
            samples.append(time.perf_counter_ns() - t0)
    return {"propagation_ms": summary_ms(samples), "rate": rate}


def register(a: str, batches: int, size: int = 1000) -> dict:
    with RecallClient(a) as client:
        t0 = time.perf_counter()
        for b in range(batches):  # each token its own subject, as an authorization server's batch has
            expires_at = int(time.time()) + 3600
            client.register([TokenSpec(f"user-{b}-{i}", "web", expires_at=expires_at) for i in range(size)])
        elapsed = time.perf_counter() - t0
    return {"batch": size, "tokens_per_s": batches * size / elapsed}


def available() -> str:
    """"" when PostgreSQL's server binaries are installed (and, as root, the postgres user to run
    them as), else why this scenario cannot run."""
    import pwd

    sys.path.insert(0, str(REPO))
    from tests.pg_server import PG_BIN_DIRS

    found = any((d / "initdb").exists() and (d / "postgres").exists() for d in PG_BIN_DIRS) or \
        (shutil.which("initdb") and shutil.which("postgres"))
    if not found:
        return "PostgreSQL server binaries (initdb, postgres) not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run PostgreSQL as"
    return ""


def run(rounds: int, seconds: float, batches: int, store: str = "", rate: float = PROPAGATION_RATE) -> dict:
    """Every figure of this scenario, on the database `store` names, or on a PostgreSQL server
    of its own (started, then removed) when it names none."""
    pg = None
    conninfo = store
    if not conninfo:
        sys.path.insert(0, str(REPO))
        from tests.pg_server import PostgresServer

        pg = PostgresServer().init()
        conninfo = pg.create_database()
        with psycopg.connect(conninfo) as conn:
            pg_schema.migrate(conn, conninfo)
    work = pathlib.Path(tempfile.mkdtemp(prefix="recallcore-bench-cluster-"))
    nodes: list[Server] = []
    try:
        nodes.append(Server(work / "a", "--store", conninfo, name="node-a"))
        nodes.append(Server(work / "b", "--store", conninfo, name="node-b"))
        a, b = (node.address for node in nodes)
        return {"single": single(a, conninfo, rounds),
                "throughput": throughput([a, b], seconds),
                "propagation": propagation(a, b, rounds, rate),
                "register": register(a, batches)}
    finally:
        for node in nodes:
            node.close()
        if pg is not None:
            pg.remove()
        shutil.rmtree(work, ignore_errors=True)


def lines(results: dict) -> list[str]:
    """The figures as printed lines."""
    s = results["single"]
    p = results["propagation"]["propagation_ms"]
    return [
        f"durable single revoke  p50 {s['revoke_ms']['p50']:.2f} ms  p99 {s['revoke_ms']['p99']:.2f} ms",
        f"floor (1-row commit)   p50 {s['floor_ms']['p50']:.2f} ms  p99 {s['floor_ms']['p99']:.2f} ms",
        f"revoke p99 / floor p99 {s['p99_over_floor_p99']:.2f}x (target <= 2x)",
        f"16 callers over 2 nodes {results['throughput']['revocations_per_s']:.0f} revocations/s",
        f"revoke on A -> replica of B  p50 {p['p50']:.2f} ms  p99 {p['p99']:.2f} ms",
        f"register, batches of 1000  {results['register']['tokens_per_s']:.0f} tokens/s",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="conninfo of a database with the recallcore schema (default: start one)")
    parser.add_argument("--rounds", type=int, default=300, help="single revokes and propagation samples")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the throughput run")
    parser.add_argument("--batches", type=int, default=20, help="registrations of 1,000 tokens")
    parser.add_argument("--out", type=pathlib.Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    try:
        results = run(args.rounds, args.seconds, args.batches, args.store or "")
    finally:
        stop_all()
    print("\n".join(lines(results)))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
