"""`python -m bench.edge`: the HTTP edge beside floors of the same run.

1. /v1/check requests/s, loaded by wrk from its own process (1 thread, 32
   connections), with a registered JWT under a canonical jti and with a
   foreign JWT (never registered, its own jti), beside an empty aiohttp
   handler on uvloop in another process (the floor: the same HTTP stack
   doing nothing). Rounds alternate, every other one in reverse order; a
   ratio is the median over rounds of each round's rate over that round's
   floor (other load on the machine moves both alike). Server CPU per
   request (user + system, from /proc) is reported beside, and its ratio
   (the floor's over the edge's: the rate ratio were each server given a
   core of its own).
2. Signature verification: the edge's verification of a token it has not
   seen (issuer and key lookup, signature, claims) beside the bare library
   with the key in hand -- joserfc's jwt.decode (signature and claims
   parsed: the floor), and its JWS-only deserialize_compact (signature,
   payload left as bytes) -- and the edge's cost for a token it has verified
   before (the cache), in this process.
3. From a Revoke's acknowledgement to nginx refusing the token (the
   deploy/nginx config, TLS and a client certificate to recallcore): p50 and
   p99 over --revocations tokens, each polled through nginx until it is 401.
"""

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .procs import REPO, STARTUP_TIMEOUT, Server, cpu_seconds, free_port, read_line, run_async, spawn, stop_all

sys.path.insert(0, str(REPO))

from tests.api.issuer import ISSUER, Issuer  # noqa: E402  (the tests' token issuer and certificates)


def _floor_server() -> None:
    """Serve an empty handler on 127.0.0.1:0 with aiohttp on uvloop; print the address."""
    import uvloop
    from aiohttp import web

    async def empty(request):
        return web.Response()

    async def main():
        app = web.Application()
        app.router.add_route("*", "/v1/check", empty)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"floor listening on 127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def wrk(url: str, token: str, seconds: float, pid: int = 0) -> tuple[float, float]:
    """(requests/s, CPU seconds of process `pid` per request, or 0 without a pid)."""
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{max(1, round(seconds))}s", "-H", f"Authorization: Bearer {token}", url],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    used = cpu_seconds(pid) - before if pid else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} answers were not 200:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), used / max(requests, 1)


def throughput(root: Path, idp: Issuer, seconds: float, rounds: int) -> dict:
    http = f"127.0.0.1:{free_port()}"
    server = Server(root / "plain", "--http-listen", http, "--jwt-issuer", f"{ISSUER}={idp.jwks}", name="edge")
    floor = spawn([sys.executable, "-m", "bench.edge", "--floor-server"], "floor")
    floor_address = read_line(floor, STARTUP_TIMEOUT).rsplit(" ", 1)[1].strip()

    from recallclient import RecallClient

    with RecallClient(server.address) as client:
        canonical = idp.token(client.register_one("alice", "app", issuer=ISSUER).canonical_jti)
    foreign = idp.token("foreign-jti-1")
    for token in (canonical, foreign):
        assert httpx.get(f"http://{http}/v1/check", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    loads = {"floor": (f"http://{floor_address}/v1/check", canonical, floor.pid),
             "canonical": (f"http://{http}/v1/check", canonical, server.pid),
             "foreign": (f"http://{http}/v1/check", foreign, server.pid)}
    for url, token, _ in loads.values():
        wrk(url, token, 1)  # warm
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in loads}
    for i in range(rounds):
        for name in list(loads)[::-1 if i % 2 else 1]:
            figures[name].append(wrk(*loads[name][:2], seconds, loads[name][2]))
    out = {"edge_floor_empty_handler_rps": statistics.median(rps for rps, _ in figures["floor"]),
           "edge_floor_cpu_us": statistics.median(cpu for _, cpu in figures["floor"]) * 1e6}
    for name in ("canonical", "foreign"):
        pairs = list(zip(figures[name], figures["floor"]))
        out[f"edge_check_{name}_rps"] = statistics.median(rps for rps, _ in figures[name])
        out[f"edge_check_{name}_vs_floor"] = statistics.median(rps / floor_rps for (rps, _), (floor_rps, _) in pairs)
        out[f"edge_check_{name}_cpu_us"] = statistics.median(cpu for _, cpu in figures[name]) * 1e6
        out[f"edge_check_{name}_cpu_vs_floor"] = statistics.median(f / c for (_, c), (_, f) in pairs if c)
    return out


def verification(idp: Issuer, count: int) -> dict:
    from joserfc import jws, jwt

    from recallcore.security.jwks import KeySource
    from recallcore.security.jwt_verifier import JwtVerifier

    tokens = [idp.token(f"v-{i}") for i in range(count)]
    key = idp.keys[idp.kid]

    def timed(verify) -> float:
        started = time.perf_counter()
        for token in tokens:
            verify(token)
        return (time.perf_counter() - started) / count

    async def edge() -> tuple[float, float]:
        verifier = JwtVerifier({ISSUER: KeySource(str(idp.jwks))}, clock=time.time)
        started = time.perf_counter()
        for token in tokens:
            await verifier.verify(token)
        fresh = (time.perf_counter() - started) / count
        started = time.perf_counter()
        for token in tokens:
            await verifier.verify(token)
        return fresh, (time.perf_counter() - started) / count

    runs = []
    for _ in range(5):  # interleaved, medians
        bare_jwt = timed(lambda t: jwt.decode(t, key, algorithms=["ES256"]))
        bare_jws = timed(lambda t: jws.deserialize_compact(t, key, algorithms=["ES256"]))
        runs.append((bare_jwt, bare_jws, *asyncio.run(edge())))
    bare_jwt, bare_jws, fresh, cached = (statistics.median(r[i] for r in runs) * 1e6 for i in range(4))
    return {"jwt_floor_library_decode_us": bare_jwt, "jwt_floor_jws_signature_us": bare_jws,
            "jwt_edge_verify_us": fresh, "jwt_edge_verify_vs_library": fresh / bare_jwt,
            "jwt_edge_verify_vs_jws": fresh / bare_jws, "jwt_edge_cached_us": cached}


async def _revoke_to_denial(recall: str, nginx: str, pki: Path, ca: Path, idp: Issuer, count: int) -> list[float]:
    from recallclient import AsyncRecallClient, TokenSpec

    async with AsyncRecallClient(recall, cacert=str(ca), cert=str(pki / "operator.crt"),
                                 key=str(pki / "operator.key")) as client, \
            httpx.AsyncClient(base_url=f"http://{nginx}", timeout=10) as http:
        registered = (await client.register([TokenSpec("u", "app", issuer=ISSUER) for _ in range(count)])).tokens
        out = []
        for token in registered:
            headers = {"Authorization": f"Bearer {idp.token(token.canonical_jti)}"}
            assert (await http.get("/orders", headers=headers)).status_code == 200
            await client.revoke(serials=[token.serial])
            acked = time.perf_counter()
            while (await http.get("/orders", headers=headers)).status_code != 401:
                if time.perf_counter() - acked > 10:
                    raise RuntimeError("nginx still passes a revoked token after 10 s")
            out.append(time.perf_counter() - acked)
        return out


def nginx_denial(root: Path, idp: Issuer, count: int) -> dict:
    from tests.api.gateways import Upstream, write_trust
    from tests.api.test_nginx import Nginx

    ca, policy, pki = write_trust(root / "pki")
    leaf = ca.server()
    http = f"127.0.0.1:{free_port()}"
    server = Server(root / "tls", "--http-listen", http, "--jwt-issuer", f"{ISSUER}={idp.jwks}",
                    "--tls-cert", str(leaf.cert), "--tls-key", str(leaf.key), "--client-ca", str(ca.path),
                    "--policy", str(policy), name="edge-tls")
    upstream = Upstream()
    nginx = Nginx(root / "nginx", http, upstream.address, pki)
    try:
        times = run_async(_revoke_to_denial(server.address, nginx.address, pki, ca.path, idp, count))
    finally:
        nginx.close()
        upstream.close()
    ms = sorted(t * 1000 for t in times)
    return {"nginx_denial_p50_ms": statistics.median(ms), "nginx_denial_p99_ms": statistics.quantiles(ms, n=100)[98],
            "nginx_denial_count": len(ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="seconds of each wrk round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--verifications", type=int, default=2000)
    parser.add_argument("--revocations", type=int, default=100)
    parser.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_server:
        _floor_server()
        return 0
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="recall-edge-") as tmp:
        root = Path(tmp)
        idp = Issuer(root / "idp")
        try:
            results.update(verification(idp, args.verifications))
            if shutil.which("wrk"):
                results.update(throughput(root, idp, args.seconds, args.rounds))
            else:
                print("wrk is not installed (Debian: wrk): /v1/check throughput skipped", file=sys.stderr)
            if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
                results.update(nginx_denial(root, idp, args.revocations))
            else:
                print("nginx is not installed: Revoke-to-nginx-denial skipped", file=sys.stderr)
        finally:
            stop_all()
    for name, value in results.items():
        print(f"{name:36} {value:12.3f}")
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
