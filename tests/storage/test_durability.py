"""Acknowledged writes survive SIGKILL of a real `python -m recallcore serve`.

Client threads write concurrently; the thread that receives the chosen
acknowledgement SIGKILLs the server on the spot (no shutdown code runs), and
a new server on the same data directory must show every acknowledged change.
"""

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from recallclient import (
    JtiRef,
    RecallClient,
    RecallError,
    RegisterResult,
    TokenSpec,
    TokenState,
    serial_from_jti,
)

from ..support import ServerProcess

SERVE_ARGS = ("--sweep-interval", "3600")
DEFAULT_ISSUER = "recallcore"  # Settings.issuer: where tokens registered without one live
FOREIGN_ISSUER = "https://other-idp.example"
THREADS = 6
TOKENS = 1200
CALL_TIMEOUT = 10.0
JOIN_TIMEOUT = 60.0


@pytest.fixture
def spawn(data_dir) -> Iterator[Callable[[], ServerProcess]]:
    """Start servers on `data_dir`; every one is killed and closed at teardown."""
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        started.append(ServerProcess(data_dir, *SERVE_ARGS))
        return started[-1]

    yield start
    for proc in started:
        proc.close()


@dataclasses.dataclass(frozen=True)
class Revocation:
    """One Revoke call: the client keyword arguments and what it selects."""

    kwargs: dict = dataclasses.field(hash=False)
    serials: frozenset[int] = frozenset()
    foreign: frozenset[tuple[str, str]] = frozenset()


class KillSwitch:
    """Counts acknowledgements; SIGKILLs `server` from the thread that gets the `at`-th."""

    def __init__(self, server: ServerProcess, at: int) -> None:
        self.server = server
        self.at = at
        self.acks = 0
        self.killed = False
        self._lock = threading.Lock()

    def ack(self) -> None:
        with self._lock:
            self.acks += 1
            if self.acks == self.at:
                self.killed = True
                self.server.kill()


def run_threads(address: str, jobs: Sequence[Sequence], call: Callable, switch: KillSwitch) -> list[tuple]:
    """Run `call(client, job)` for each job, jobs[i] on thread i; return (job, result) acknowledged.

    A thread stops at its first failed call, which must come after the kill.
    """
    acked: list[tuple] = []
    lock = threading.Lock()

    def work(mine: Sequence) -> None:
        with RecallClient(address, timeout=CALL_TIMEOUT) as client:
            for job in mine:
                try:
                    result = call(client, job)
                except RecallError as err:
                    assert switch.killed, f"a call failed before the kill: {err}"
                    return
                with lock:
                    acked.append((job, result))
                switch.ack()

    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(work, mine) for mine in jobs]:
            future.result(JOIN_TIMEOUT)
    return acked


def deal(items: Sequence, hands: int) -> list[list]:
    return [list(items[i::hands]) for i in range(hands)]


def token(i: int) -> TokenSpec:
    return TokenSpec(subject=f"user-{i % 40}", client_id=f"app-{i % 15}", family=f"fam-{i % 100}")


def register_tokens(address: str) -> tuple[list[int], list[str], int]:
    """Register TOKENS tokens; return their serials, canonical jtis and the last seq."""
    serials, jtis, seq = [], [], 0
    with RecallClient(address, timeout=CALL_TIMEOUT) as client:
        for start in range(0, TOKENS, 200):
            result = client.register([token(i) for i in range(start, start + 200)])
            serials += [t.serial for t in result.tokens]
            jtis += [t.jti for t in result.tokens]
            seq = result.seq
    return serials, jtis, seq


def revocations(serials: list[int], jtis: list[str], rng: random.Random) -> list[Revocation]:
    """Every kind of selector, overlapping, shuffled; each call has its own reason."""
    expires_at = int(time.time()) + 86400  # half the foreign ones carry an expiry

    def where(pred) -> frozenset[int]:
        return frozenset(s for i, s in enumerate(serials) if pred(i))

    ops = [Revocation({"serials": [s]}, frozenset([s])) for s in rng.sample(serials, 300)]
    ops += [Revocation({"serials": [s]}, frozenset([s])) for s in rng.sample(serials, 30)]  # repeats or not
    ops += [Revocation({"subject": f"user-{n}"}, where(lambda i, n=n: i % 40 == n)) for n in range(4)]
    ops += [Revocation({"client_id": f"app-{n}"}, where(lambda i, n=n: i % 15 == n)) for n in range(2)]
    ops += [Revocation({"family": f"fam-{n}"}, where(lambda i, n=n: i % 100 == n)) for n in range(10)]
    ops += [
        Revocation({"tokens": [(DEFAULT_ISSUER, jtis[i])]}, frozenset([serials[i]]))
        for i in rng.sample(range(TOKENS), 30)
    ]
    ops += [
        Revocation({"tokens": [JtiRef(FOREIGN_ISSUER, f"ext-{k}", 0 if k % 2 else expires_at)]},
                   foreign=frozenset([(FOREIGN_ISSUER, f"ext-{k}")]))
        for k in range(150)
    ]
    rng.shuffle(ops)
    return [dataclasses.replace(op, kwargs={**op.kwargs, "reason": f"op-{n}"}) for n, op in enumerate(ops)]


def revoke(client: RecallClient, op: Revocation):
    return client.revoke(**op.kwargs)


def union(ops, field: str) -> set:
    return set().union(*(getattr(op, field) for op in ops))


def revoked_serials(client: RecallClient, serials: list[int]) -> set[int]:
    states = client.check_batch(serials).states
    assert set(states) <= {TokenState.ACTIVE, TokenState.REVOKED}
    return {s for s, state in zip(serials, states) if state == TokenState.REVOKED}


def test_every_acknowledged_revocation_survives_sigkill(spawn):
    server = spawn()
    serials, jtis, registered_seq = register_tokens(server.address)
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        store_id = client.stats().store_id
    ops = revocations(serials, jtis, random.Random(7))
    switch = KillSwitch(server, at=len(ops))

    acked = run_threads(server.address, deal(ops, THREADS), revoke, switch)

    assert switch.killed and len(acked) == len(ops)
    changes = [result.seq for _, result in acked if result.count]
    assert len(set(changes)) == len(changes), "two state-changing revocations share a seq"
    assert min(changes) > registered_seq
    expected_serials, expected_foreign = union(ops, "serials"), union(ops, "foreign")
    restarted = spawn()
    with RecallClient(restarted.address, timeout=CALL_TIMEOUT) as client:
        stats = client.stats()
        assert stats.store_id == store_id
        assert stats.seq >= max(result.seq for _, result in acked)
        assert stats.seq == registered_seq + len(changes)
        assert revoked_serials(client, serials) == expected_serials
        for op, _ in acked:
            for issuer, jti in op.foreign:
                found = client.check(issuer=issuer, jti=jti)
                assert (found.state, found.reason) == (TokenState.REVOKED, op.kwargs["reason"])
        assert stats.revoked == len(expected_serials)
        assert stats.foreign_revoked == len(expected_foreign)
        assert sum(result.count for _, result in acked) == stats.revoked + stats.foreign_revoked


def test_sigkill_with_revocations_in_flight_keeps_the_acknowledged_ones(spawn):
    server = spawn()
    serials, jtis, _ = register_tokens(server.address)
    ops = revocations(serials, jtis, random.Random(11))
    switch = KillSwitch(server, at=len(ops) // 2)

    acked = run_threads(server.address, deal(ops, THREADS), revoke, switch)

    assert switch.killed and len(ops) // 2 <= len(acked) < len(ops)
    restarted = spawn()
    with RecallClient(restarted.address, timeout=CALL_TIMEOUT) as client:
        stats = client.stats()
        revoked = revoked_serials(client, serials)
        acked_ops = [op for op, _ in acked]
        assert union(acked_ops, "serials") <= revoked <= union(ops, "serials")
        states = client.check_batch(tokens=sorted(union(acked_ops, "foreign"))).token_states
        assert set(states) == {TokenState.REVOKED}
        assert stats.seq >= max(result.seq for _, result in acked)
        assert stats.revoked + stats.foreign_revoked >= sum(result.count for _, result in acked)
        # Unacknowledged calls either committed whole or not at all: issuing
        # every call again revokes exactly what is still missing.
        before = stats.revoked + stats.foreign_revoked
        again = sum(client.revoke(**op.kwargs).count for op in ops)
        stats = client.stats()
        assert revoked_serials(client, serials) == union(ops, "serials")
        assert stats.foreign_revoked == len(union(ops, "foreign"))
        assert before + again == stats.revoked + stats.foreign_revoked


def register_again(client: RecallClient, job) -> RegisterResult:
    """Register fresh specs followed by ((issuer, jti), serial) pairs registered before."""
    fresh, again = job
    return client.register(fresh + [TokenSpec("u", "app", issuer=i, jti=j) for (i, j), _ in again])


def test_serials_stay_dense_and_unique_across_sigkill_restarts(spawn):
    cycles, threads, batches, batch, repeats = 3, 3, 4, 50, 5
    known: dict[tuple[str, str], int] = {}  # (issuer, jti) -> serial, of every token so far
    issued: list[int] = []  # serial of every fresh token
    for cycle in range(cycles):
        server = spawn()
        earlier = sorted(known.items())
        rng = random.Random(cycle)
        jobs = [
            [
                (
                    [TokenSpec("u", "app", issuer="https://idp.example", jti=f"c{cycle}-t{t}-b{b}-{k}")
                     if k % 2 else TokenSpec("u", "app") for k in range(batch)],
                    rng.sample(earlier, repeats) if earlier else [],
                )
                for b in range(batches)
            ]
            for t in range(threads)
        ]
        switch = KillSwitch(server, at=threads * batches)

        with RecallClient(server.address) as probe:
            store_id = probe.stats().store_id
        acked = run_threads(server.address, jobs, register_again, switch)

        assert switch.killed and len(acked) == threads * batches
        for (fresh, again), result in acked:
            assert len(result.tokens) == len(fresh) + len(again)
            for spec, got in zip(fresh, result.tokens):
                assert not got.existing
                assert serial_from_jti(got.canonical_jti, store_id) == got.serial
                assert got.jti == (spec.jti or got.canonical_jti)
                issued.append(got.serial)
                known[spec.issuer or DEFAULT_ISSUER, got.jti] = got.serial
            again_got = [(t.serial, t.existing) for t in result.tokens[len(fresh):]]
            assert again_got == [(serial, True) for _, serial in again]

    final = spawn()
    total = cycles * threads * batches * batch
    assert sorted(issued) == list(range(1, total + 1)), "serials have gaps or repeats"
    with RecallClient(final.address, timeout=CALL_TIMEOUT) as client:
        stats = client.stats()
        assert (stats.registered, stats.active) == (total, total)
        pairs = sorted(known.items())
        for start in range(0, len(pairs), 300):
            chunk = pairs[start:start + 300]
            result = client.register([TokenSpec("u", "app", issuer=i, jti=j) for (i, j), _ in chunk])
            assert [(t.serial, t.existing) for t in result.tokens] == [(s, True) for _, s in chunk]
        assert client.stats().seq == stats.seq
        assert client.check_batch([total, total + 1]).states == (TokenState.ACTIVE, TokenState.UNKNOWN)
        assert client.register_one("u", "app").serial == total + 1


def test_re_registration_after_restart_reports_no_change(spawn):
    # RegisterResponse.seq: the change holding the tokens; the current seq when all existed.
    server = spawn()
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        first = client.register_one("u", "app", issuer="https://idp.example", jti="j-1")
        seq = client.stats().seq
    server.kill()
    with RecallClient(spawn().address, timeout=CALL_TIMEOUT) as client:
        again = client.register([TokenSpec("u", "app", issuer="https://idp.example", jti="j-1")])
        assert client.stats().seq == seq
    assert again.tokens[0].serial == first.serial and again.tokens[0].existing
    assert again.seq == seq


def test_revoke_counts_add_up_for_custom_jti_tokens_after_restart(spawn):
    server = spawn()
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        tokens = client.register([TokenSpec("u", "app", issuer="https://idp.example", jti=f"j-{k}")
                                  for k in range(4)]).tokens
        counts = [client.revoke(serials=[tokens[0].serial]).count,
                  client.revoke(tokens=[("https://idp.example", "j-1")]).count,
                  client.revoke(subject="u").count]
    server.kill()
    with RecallClient(spawn().address, timeout=CALL_TIMEOUT) as client:
        stats = client.stats()
    assert (stats.revoked, sum(counts)) == (4, 4)
    # Each revoked caller-chosen jti is also held by key, so replicas see it by
    # issuer + jti (recall.proto StatsResponse.foreign_revoked).
    assert stats.foreign_revoked == 4
