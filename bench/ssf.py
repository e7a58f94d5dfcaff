"""`python -m bench.ssf`: from a pushed Security Event Token to "revoked in a replica", beside Revoke.

One server process (its config file names one push transmitter; LMDB,
synced commits), one AsyncReplica in this process following it. For each
of --events rounds, alternating: a CAEP session-revoked SET for a fresh
subject (one registered token, issued a minute ago) POSTed to
/ssf/push/{stream}, and a plain gRPC Revoke of another registered token —
the floor, measured in the same run. Each is timed from just before the
request is sent until the replica's listener sees the token revoked;
the HTTP 202 (or the Revoke's answer) comes back meanwhile and is timed
too. SETs are signed before the timed region; the verification (signature,
claims) is inside it, as it is for a real transmitter's push.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .procs import REPO, Server, free_port, run_async, stop_all

sys.path.insert(0, str(REPO))

from tests.api.transmitter import AUDIENCE, TRANSMITTER, Transmitter  # noqa: E402  (the tests' transmitter)


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = sorted(t * 1000 for t in seconds)
    return statistics.median(ms), statistics.quantiles(ms, n=100)[98]


async def _measure(address: str, http: str, sender: Transmitter, events: int) -> dict[str, list[float]]:
    from recallclient import AsyncRecallClient, AsyncReplica, TokenSpec

    issued = int(time.time()) - 60
    async with AsyncRecallClient(address) as client, AsyncReplica(address) as replica, \
            httpx.AsyncClient(base_url=f"http://{http}", timeout=10) as web:
        specs = [TokenSpec(f"user-{i}", "web", issued_at=issued, expires_at=issued + 3600) for i in range(events)]
        specs += [TokenSpec("plain", "web", issued_at=issued, expires_at=issued + 3600) for _ in range(events)]
        registered = (await client.register(specs)).tokens
        await replica.wait_for((await client.stats()).seq, timeout=10)
        sets = [sender.set(subject=f"user-{i}") for i in range(events)]  # signed outside the timed region
        watched: dict = {}

        def seen(outcome) -> None:
            serial = watched.get("serial")
            if serial and replica.is_revoked(serial):
                watched["at"] = time.perf_counter()
                watched.pop("serial")
                watched["done"].set()

        replica.add_listener(seen)

        async def timed(serial: int, send) -> tuple[float, float]:
            watched.update(serial=serial, done=asyncio.Event())
            started = time.perf_counter()
            await send()
            answered = time.perf_counter()
            await asyncio.wait_for(watched["done"].wait(), 10)
            return watched["at"] - started, answered - started

        async def push(token: str) -> None:
            answer = await web.post("/ssf/push/bench", content=token,
                                    headers={"Content-Type": "application/secevent+jwt"})
            if answer.status_code != 202:
                raise RuntimeError(f"push answered {answer.status_code}: {answer.text}")

        # One untimed round first: connections opened, code paths warm.
        await push(sender.set(subject="warm-up"))
        await client.revoke(subject="warm-up", reason="bench")
        out: dict[str, list[float]] = {"set_replica": [], "set_ack": [], "revoke_replica": [], "revoke_ack": []}
        for i in range(events):
            replica_s, ack_s = await timed(registered[i].serial, lambda: push(sets[i]))
            out["set_replica"].append(replica_s)
            out["set_ack"].append(ack_s)
            plain = registered[events + i].serial
            replica_s, ack_s = await timed(plain, lambda: client.revoke(serials=[plain], reason="bench"))
            out["revoke_replica"].append(replica_s)
            out["revoke_ack"].append(ack_s)
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100, help="SETs pushed (and plain Revokes beside them)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recall-ssf-") as tmp:
        root = Path(tmp)
        sender = Transmitter(root / "idp")
        http = f"127.0.0.1:{free_port()}"
        config = root / "recallcore.toml"
        config.write_text(f'http_listen = "{http}"\n\n[[ssf.transmitters]]\nstream = "bench"\n'
                          f'issuer = "{TRANSMITTER}"\njwks = "{sender.jwks}"\naudience = "{AUDIENCE}"\n')
        try:
            server = Server(root / "data", "--config", str(config), name="ssf")
            times = run_async(_measure(server.address, http, sender, args.events))
        finally:
            stop_all()
    results: dict[str, float] = {"ssf_events": args.events}
    for name, seconds in times.items():
        results[f"{name}_p50_ms"], results[f"{name}_p99_ms"] = _percentiles(seconds)
    results["set_replica_p50_vs_revoke"] = results["set_replica_p50_ms"] / results["revoke_replica_p50_ms"]
    results["set_replica_p99_vs_revoke"] = results["set_replica_p99_ms"] / results["revoke_replica_p99_ms"]
    for name, value in results.items():
        print(f"{name:30} {value:10.3f}")
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
