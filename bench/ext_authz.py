"""`python -m bench.ext_authz`: Envoy's ext_authz and the Token Status Lists beside floors of the same run.

1. ext_authz Check calls/s over gRPC (32 concurrent calls from one
   process) beside the gRPC health check on the same server (the floor).
2. Through a real Envoy (deploy/envoy/envoy.yaml, in the clear to
   recallcore): requests/s under wrk with the ext_authz filter beside the
   same Envoy config without it (the floor); the upstream is a
   direct_response listener of the same Envoy, so neither is bound by it.
3. Building one Token Status List of 1M serials with 10% revoked (bits,
   zlib, base64url: what a rebuild costs) and its compressed size.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pyroaring import BitMap64

from .edge import wrk
from .procs import REPO, Server, free_port, run_async, spawn, stop_all
from .tls import _rate

sys.path.insert(0, str(REPO))

from tests.api.issuer import ISSUER, Issuer  # noqa: E402  (the tests' token issuer)

ENVOY_CONFIG = REPO / "deploy" / "envoy" / "envoy.yaml"


def _request(token: str) -> external_auth_pb2.CheckRequest:
    http = attribute_context_pb2.AttributeContext.HttpRequest(method="GET", path="/", headers={
        "authorization": f"Bearer {token}"})
    return external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
        request=attribute_context_pb2.AttributeContext.Request(http=http)))


async def grpc_rates(address: str, token: str, seconds: float, rounds: int) -> dict:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check
        check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
        reply = await check(_request(token))
        assert reply.status.code == 0, reply
        await _rate(health, health_pb2.HealthCheckRequest(), 32, 0.5)  # warm
        floors, rates = [], []
        for _ in range(rounds):
            floors.append(await _rate(health, health_pb2.HealthCheckRequest(), 32, seconds))
            rates.append(await _rate(check, _request(token), 32, seconds))
    floor, rate = statistics.median(floors), statistics.median(rates)
    return {"ext_authz_check_rps": rate, "ext_authz_floor_health_rps": floor, "ext_authz_vs_floor": rate / floor}


def _envoy_config(root: Path, recall: str, with_authz: bool) -> tuple[Path, str]:
    """deploy/envoy/envoy.yaml in the clear, its api cluster sent to a direct_response listener."""
    text = ENVOY_CONFIG.read_text()
    text = text[:text.index("    transport_socket:")] + text[text.index("  - name: api\n    type: STATIC"):]
    if not with_authz:
        text = text[:text.index("          - name: envoy.filters.http.ext_authz")] + \
            text[text.index("          - name: envoy.filters.http.router"):]
    listen, upstream, admin = free_port(), free_port(), free_port()
    text = (text.replace("port_value: 10000", f"port_value: {listen}")
            .replace("port_value: 50051", f"port_value: {recall.rpartition(':')[2]}")
            .replace("port_value: 8081", f"port_value: {upstream}").replace("port_value: 9901", f"port_value: {admin}"))
    text = text.replace("static_resources:\n  listeners:\n", f"""static_resources:
  listeners:
  - name: upstream
    address:
      socket_address: {{address: 127.0.0.1, port_value: {upstream}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: upstream
          route_config:
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "hello"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
""", 1)
    path = root / f"envoy-{'authz' if with_authz else 'plain'}.yaml"
    path.write_text(text)
    return path, f"127.0.0.1:{listen}"


def envoy_rates(root: Path, recall: str, token: str, seconds: int, rounds: int) -> dict:
    envoy = shutil.which("envoy")
    addresses = {}
    for with_authz in (False, True):
        config, address = _envoy_config(root, recall, with_authz)
        spawn([envoy, "-c", str(config), "--base-id", address.rpartition(":")[2], "--log-level", "error"],
              "envoy")
        addresses[with_authz] = address
    deadline = time.monotonic() + 120
    for address in addresses.values():
        while subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://{address}/"]).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"envoy on {address} did not start")
            time.sleep(0.2)
    plain, authz = [], []
    for _ in range(rounds):
        plain.append(wrk(f"http://{addresses[False]}/", token, seconds))
        authz.append(wrk(f"http://{addresses[True]}/", token, seconds))
    p, a = statistics.median(plain), statistics.median(authz)
    return {"envoy_with_ext_authz_rps": a, "envoy_floor_without_rps": p, "envoy_ext_authz_vs_without": a / p}


def status_list_build(rounds: int) -> dict:
    from recallclient.revoked_set import RevokedSet

    from recallcore.core import status_list
    from recallcore.core.mirror import ExpiryIndex, Mirror

    size = 1 << 20
    revocations = RevokedSet()
    chosen = np.random.default_rng(7).choice(size, size // 10, replace=False) + 1
    revocations.revoked = BitMap64(chosen.astype(np.uint64))
    expiry = np.full(size + 1, 4_000_000_000, dtype=np.uint32)
    expiry[0] = 0
    state = Mirror(revocations, ExpiryIndex(expiry))
    times, lst = [], ""
    for _ in range(rounds):
        started = time.perf_counter()
        lst = status_list.encode(status_list.bits(state, 0, size, int(time.time())))
        times.append(time.perf_counter() - started)
    return {"status_list_build_1m_ms": statistics.median(times) * 1000, "status_list_1m_10pct_lst_bytes": len(lst),
            "status_list_1m_raw_bytes": size // 8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, float] = status_list_build(7)
    with tempfile.TemporaryDirectory(prefix="recall-authz-") as tmp:
        root = Path(tmp)
        idp = Issuer(root / "idp")
        token = idp.token("bench-token")
        try:
            server = Server(root / "data", "--jwt-issuer", f"{ISSUER}={idp.jwks}", name="authz")
            results.update(run_async(grpc_rates(server.address, token, args.seconds, args.rounds)))
            if shutil.which("envoy") and shutil.which("wrk"):
                results.update(envoy_rates(root, server.address, token, args.seconds, args.rounds))
            else:
                print("envoy or wrk not on PATH: the Envoy figures are skipped", file=sys.stderr)
        finally:
            stop_all()
    for name, value in results.items():
        print(f"{name:34} {value:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
