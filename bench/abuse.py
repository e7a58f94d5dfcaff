"""`python -m bench.abuse`: what oversized and hostile requests cost a server.

Each probe starts a fresh `recallcore serve` (so memory high-water marks are
its own), sends one request as raw bytes, and reports: the status it got,
seconds to the answer, the server's peak RSS growth (VmHWM minus the RSS
before), its CPU seconds, and the loop stall: the longest a concurrent
`Check` loop (another thread, one call at a time) waited for an answer
while the probe ran, beside that loop's median as its floor. Loopback only,
one request per probe, bounded by timeouts.
"""

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from recallclient._proto.recall.v1 import recall_pb2 as pb

CLK_TCK = 100


def _probes() -> dict[str, tuple[str, bytes]]:
    spec = pb.TokenSpec(subject="alice", client_id="web")
    return {
        "revoke 4M empty JtiRefs": ("Revoke", pb.RevokeRequest(
            selector=pb.Selector(tokens=[pb.JtiRef()] * 4_000_000)).SerializeToString()),
        "register 1M empty specs": ("Register", pb.RegisterRequest(
            tokens=[pb.TokenSpec()] * 1_000_000).SerializeToString()),
        "register 1 token with 3M scopes": ("Register", pb.RegisterRequest(tokens=[pb.TokenSpec(
            subject="alice", client_id="web", scopes=["s"] * 3_000_000)]).SerializeToString()),
        "register 100k valid tokens": ("Register", pb.RegisterRequest(tokens=[spec] * 100_000).SerializeToString()),
        "revoke 100k valid JtiRefs": ("Revoke", pb.RevokeRequest(selector=pb.Selector(tokens=[
            pb.JtiRef(issuer="https://idp.example", jti=f"j-{i}") for i in range(100_000)]))
            .SerializeToString()),
    }


def _proc_stats(pid: int) -> tuple[int, int, float]:
    """(VmRSS kB, VmHWM kB, CPU seconds) of a process."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split()[1] for line in status if line.startswith(("VmRSS", "VmHWM"))}
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
    return int(fields["VmRSS"]), int(fields["VmHWM"]), cpu


def _checker(address: str, stop: threading.Event, latencies: list[float]) -> None:
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary("/recall.v1.Recall/Check", request_serializer=None, response_deserializer=None)
        request = pb.CheckRequest(serial=1).SerializeToString()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                check(request, timeout=60)
            except grpc.RpcError:
                pass
            latencies.append(time.perf_counter() - started)


def run_probe(name: str, method: str, payload: bytes, workdir: pathlib.Path) -> dict:
    server = subprocess.Popen(
        [sys.executable, "-m", "recallcore", "serve", "--data-dir", str(workdir / name.replace(" ", "-")),
         "--listen", "127.0.0.1:0", "--log-level", "ERROR"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = server.stdout.readline().split()[-1]
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20)]) as channel:
            call = channel.unary_unary(f"/recall.v1.Recall/{method}", request_serializer=None,
                                       response_deserializer=None)
            warm: list[float] = []
            stop = threading.Event()
            checker = threading.Thread(target=_checker, args=(address, stop, warm))
            checker.start()
            time.sleep(1.0)  # the checker's floor, before the probe
            floor = statistics.median(warm)
            during: list[float] = []
            checker_during = threading.Thread(target=_checker, args=(address, stop, during))
            rss_before, _, cpu_before = _proc_stats(server.pid)
            started = time.perf_counter()
            checker_during.start()
            try:
                call(payload, timeout=120)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            answered = time.perf_counter() - started
            time.sleep(0.2)
            stop.set()
            checker.join()
            checker_during.join()
            _, hwm, cpu_after = _proc_stats(server.pid)
        return {
            "probe": name, "bytes": len(payload), "status": code, "answer_s": answered,
            "rss_growth_mb": (hwm - rss_before) / 1024, "cpu_s": cpu_after - cpu_before,
            "stall_s": max(during + warm[-1:]), "check_floor_ms": floor * 1000,
        }
    finally:
        server.terminate()
        server.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated substrings of probe names")
    args = parser.parse_args(argv)
    wanted = [w for w in args.only.split(",") if w]
    print(f"{'probe':34} {'bytes':>10} {'status':>20} {'answer s':>9} {'RSS +MB':>8} {'CPU s':>6} "
          f"{'stall s':>8} {'Check p50 ms':>12}")
    with tempfile.TemporaryDirectory(prefix="recall-abuse-") as tmp:
        for name, (method, payload) in _probes().items():
            if wanted and not any(w in name for w in wanted):
                continue
            r = run_probe(name, method, payload, pathlib.Path(tmp))
            print(f"{r['probe']:34} {r['bytes']:>10,} {r['status']:>20} {r['answer_s']:>9.2f} "
                  f"{r['rss_growth_mb']:>8.0f} {r['cpu_s']:>6.2f} {r['stall_s']:>8.2f} {r['check_floor_ms']:>12.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
