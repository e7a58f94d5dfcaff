"""`python -m bench.audit_load`: what audit-trail readers cost the rest of a server.

Three probes, each on a fresh `recallcore serve` (loopback only, bounded):

- follow: FOLLOWERS `AuditLog(follow)` streams stay open while REVOCATIONS
  single revocations are sent one after another; reported: the seconds they
  took beside the same revocations with no follower (the floor, same run),
  the server's CPU seconds, and the longest a concurrent Check by issuer +
  jti (which needs the store) waited.
- subject: one subject holds BIG tokens among others, and 200 changes name
  more subjects than a record lists (not it); one AuditLog query for that
  subject: its seconds and the server's CPU seconds.
- unfiltered: RECORDS audit records; QUERIES unfiltered AuditLog queries at
  once, each read slowly; the server's peak RSS growth.
"""

import argparse
import asyncio
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from recallclient import RecallClient, TokenSpec
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

from .abuse import _proc_stats

FOLLOWERS = 200
REVOCATIONS = 1000
BIG = 100_000
RECORDS = 20_000
QUERIES = 6


class Server:
    def __init__(self, workdir: pathlib.Path, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recallcore", "serve", "--data-dir", str(workdir / name), "--listen",
             "127.0.0.1:0", "--log-level", "ERROR", "--heartbeat-interval", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.address = self.proc.stdout.readline().split()[-1]

    def stats(self) -> tuple[int, int, float]:
        return _proc_stats(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _revoke_one_by_one(address: str, serials: range) -> float:
    started = time.perf_counter()
    with RecallClient(address) as client:
        for s in serials:
            client.revoke(serials=[s], reason="probe")
    return time.perf_counter() - started


def _check_by_jti(address: str, stop: threading.Event, worst: list[float]) -> None:
    with RecallClient(address) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.check(issuer="https://idp.example", jti="custom-1")
            worst.append(time.perf_counter() - started)


async def _followers(address: str, count: int, opened: threading.Event, stop: threading.Event) -> int:
    received = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recall_pb2_grpc.RecallStub(channel)
        calls = [stub.AuditLog(pb.AuditRequest(follow=True))
                 for _ in range(count)]

        async def drain(call):
            nonlocal received
            async for _ in call:
                received += 1

        tasks = [asyncio.create_task(drain(c)) for c in calls]
        await asyncio.sleep(2.0)  # every stream open and past the records already there
        opened.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for c in calls:
            c.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return received


def probe_follow(workdir: pathlib.Path) -> dict:
    server = Server(workdir, "follow")
    try:
        with RecallClient(server.address) as client:
            client.register([TokenSpec("alice", "web", issuer="https://idp.example", jti="custom-1")])
            client.register([TokenSpec(f"u{i}", "web") for i in range(2 * REVOCATIONS)])
        floor = _revoke_one_by_one(server.address, range(2, 2 + REVOCATIONS // 4))
        floor *= 4  # the same count of revocations, no follower (a quarter, scaled)
        opened, stop = threading.Event(), threading.Event()
        result: list[int] = []
        feeder = threading.Thread(target=lambda: result.append(
            asyncio.run(_followers(server.address, FOLLOWERS, opened, stop))))
        feeder.start()
        opened.wait(60)
        worst: list[float] = []
        checker = threading.Thread(target=_check_by_jti, args=(server.address, stop, worst))
        _, _, cpu_before = server.stats()
        checker.start()
        took = _revoke_one_by_one(server.address, range(2 + REVOCATIONS, 2 + 2 * REVOCATIONS))
        _, _, cpu_after = server.stats()
        stop.set()
        checker.join()
        feeder.join(120)
        return {"revocations_s": took, "floor_s": floor, "server_cpu_s": cpu_after - cpu_before,
                "check_jti_worst_s": max(worst), "check_jti_p50_ms": statistics.median(worst) * 1000,
                "records_delivered": result[0] if result else 0}
    finally:
        server.close()


def probe_subject(workdir: pathlib.Path) -> dict:
    server = Server(workdir, "subject")
    try:
        with RecallClient(server.address, timeout=600) as client:
            others = 20 * 200
            client.register([TokenSpec(f"other-{i}", "web") for i in range(others)])  # serials 1..others
            for start in range(0, BIG, 20_000):
                client.register([TokenSpec("big", "web")] * 20_000)
            for i in range(200):  # changes naming 20 other subjects: more names than a record lists
                client.revoke(serials=[1 + i * 20 + k for k in range(20)])
            client.revoke(serials=[others + BIG], reason="big's own")
            _, _, cpu_before = server.stats()
            started = time.perf_counter()
            found = sum(1 for _ in client.audit(subject="big"))
            took = time.perf_counter() - started
            _, _, cpu_after = server.stats()
        return {"query_s": took, "server_cpu_s": cpu_after - cpu_before, "records": found}
    finally:
        server.close()


def probe_unfiltered(workdir: pathlib.Path) -> dict:
    server = Server(workdir, "unfiltered")
    try:
        with RecallClient(server.address, timeout=600) as client:
            client.register([TokenSpec(f"u{i % 300}", f"c{i % 7}") for i in range(RECORDS)])
            for start in range(1, RECORDS, 1000):
                client.revoke(serials=list(range(start, start + 1000)), reason="bulk")
            client.register([TokenSpec("x", "y")])
        with RecallClient(server.address, timeout=600) as client:
            for s in range(1, RECORDS // 2):  # many small records
                client.revoke(tokens=[("https://idp.example", f"f-{s}")], reason="one")
        rss_before, _, _ = server.stats()
        counts = []

        def read_slowly():
            with grpc.insecure_channel(server.address) as channel:
                stream = recall_pb2_grpc.RecallStub(channel).AuditLog(pb.AuditRequest(), timeout=600)
                n = 0
                for _ in stream:
                    n += 1
                    if n % 1000 == 0:
                        time.sleep(0.05)
                counts.append(n)

        threads = [threading.Thread(target=read_slowly) for _ in range(QUERIES)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        _, hwm, _ = server.stats()
        return {"rss_growth_mb": (hwm - rss_before) / 1024, "records_each": counts[0] if counts else 0}
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="follow,subject,unfiltered")
    args = parser.parse_args(argv)
    probes = {"follow": probe_follow, "subject": probe_subject, "unfiltered": probe_unfiltered}
    with tempfile.TemporaryDirectory(prefix="recall-audit-") as tmp:
        for name in args.only.split(","):
            result = probes[name](pathlib.Path(tmp))
            print(name, " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
