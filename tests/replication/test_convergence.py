"""Convergence: after a random run, every Replica - direct, through a follower,
async, and one that was disconnected and resumed - holds exactly the primary's set."""

import asyncio
import os
import random
import threading

from recallclient import AsyncReplica, RecallClient, Replica, TokenSpec

from recallcore.settings import Settings

from ..support import ServerThread

WAIT = 20.0


def _random_run(client: RecallClient, rng: random.Random, steps: int) -> int:
    subjects = [f"user-{i}" for i in range(6)]
    clients = ["web", "cli", "mobile"]
    seq = 0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.35:
            specs = [TokenSpec(rng.choice(subjects), rng.choice(clients), family=rng.choice(["", "f1", "f2"]))
                     for _ in range(rng.randint(1, 20))]
            seq = client.register(specs).seq
            continue
        registered = client.stats().registered
        if roll < 0.6 and registered:
            seq = client.revoke(serials=rng.sample(range(1, registered + 1), min(5, registered))).seq
        elif roll < 0.75:
            seq = client.revoke(subject=rng.choice(subjects), reason="r").seq
        elif roll < 0.85:
            seq = client.revoke(family=rng.choice(["f1", "f2"])).seq
        elif roll < 0.95:
            seq = client.revoke(tokens=[("https://other.example", f"ext-{rng.randint(0, 50)}")]).seq
        else:
            seq = client.cutoff("client", rng.choice(clients)).seq
    return max(seq, client.stats().seq)


def _primary_set(server: ServerThread):
    revocations = server.engine.state.revocations
    return set(revocations.revoked), set(revocations.foreign), revocations.digest()


def test_every_replica_converges_to_the_primary(tmp_path):
    seed = int(os.environ.get("RECALL_SEED", random.randrange(2**32)))
    print(f"RECALL_SEED={seed}")
    rng = random.Random(seed)
    settings = Settings(data_dir=tmp_path / "p", listen="127.0.0.1:0", heartbeat_interval=0.05, sweep_interval=3600)
    primary = ServerThread(settings)
    follower = ServerThread(Settings(data_dir=tmp_path / "f", listen="127.0.0.1:0", heartbeat_interval=0.05,
                                     follow=primary.address))
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    replicas = [Replica(primary.address), Replica(follower.address), Replica(primary.address)]
    try:
        for replica in replicas:
            replica.start()
        async_replica = asyncio.run_coroutine_threadsafe(AsyncReplica(follower.address).start(), loop).result(WAIT)
        with RecallClient(primary.address) as client:
            head = _random_run(client, rng, 40)
            replicas[2].close()  # one goes away mid-run and comes back with a new instance
            head = _random_run(client, rng, 40)
        late = Replica(primary.address).start()
        replicas.append(late)
        want = _primary_set(primary)
        for replica in replicas[:2] + [late]:
            assert replica.wait_for(head, WAIT), (replica.seq, head)
            assert (set(replica._revoked), set(replica._foreign), replica.digest()) == want
        waited = asyncio.run_coroutine_threadsafe(async_replica.wait_for(head, WAIT), loop).result(WAIT + 5)
        assert waited and async_replica.digest() == want[2]
        assert follower.engine.state.revocations.digest() == want[2]
    finally:
        for replica in replicas:
            replica.close()
        if "async_replica" in locals():
            asyncio.run_coroutine_threadsafe(async_replica.close(), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(WAIT)
        loop.close()
        follower.stop()
        primary.stop()
