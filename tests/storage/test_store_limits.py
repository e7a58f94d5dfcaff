"""The store at its limits, through a real in-process server: a full LMDB map,
a map that grows, and many writers at once."""

import pathlib
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import lmdb
import pytest
from recallclient import RecallClient, RecallError, TokenSpec, TokenState, TokenType, canonical_jti

from recallcore.core.mirror import COUNT_EVERY
from recallcore.settings import Settings
from recallcore.storage.lmdb import LmdbTxn

from ..support import FakeClock, ServerThread

MIB = 1 << 20
DEFAULT_ISSUER = "recallcore"
CALL_TIMEOUT = 10.0
JOIN_TIMEOUT = 60.0


@pytest.fixture
def start(data_dir: pathlib.Path) -> Iterator[Callable[..., ServerThread]]:
    """Start a ServerThread on `data_dir` with the given map sizes; stopped at teardown."""
    running: list[ServerThread] = []

    def start(map_size: int, max_map_size: int, **engine_args) -> ServerThread:
        settings = Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600,
                            map_size=map_size, max_map_size=max_map_size)
        running.append(ServerThread(settings, **engine_args))
        return running[-1]

    yield start
    for server in running:
        if not server.loop.is_closed():
            server.stop()


def specs(n: int, start: int = 0, custom_jti: bool = False) -> list[TokenSpec]:
    return [TokenSpec(f"user-{i % 50}", f"app-{i % 7}", jti=f"custom-{i}" if custom_jti else "")
            for i in range(start, start + n)]


def assert_full(client: RecallClient, call: Callable, says: str = "max_map_size") -> None:
    """`call` fails as the store being full (`says` in its message), and leaves no trace."""
    before = client.stats()
    with pytest.raises(RecallError) as failed:
        call()
    assert failed.value.code_name == "RESOURCE_EXHAUSTED"
    assert says in failed.value.details, failed.value.details
    assert client.stats() == before
    assert client.check_batch([before.registered + 1]).states == (TokenState.UNKNOWN,)


REFUSED = "registrations are refused"


def fill(client: RecallClient, start: int = 0, custom_jti: bool = False) -> int:
    """Register in ever smaller batches until even one token is refused; return the count."""
    registered = start
    for size in (500, 100, 20, 5, 1):
        for _ in range(1000):
            try:
                result = client.register(specs(size, registered, custom_jti))
            except RecallError as err:
                assert err.code_name == "RESOURCE_EXHAUSTED", err
                assert REFUSED in err.details, err.details
                break
            assert [t.serial for t in result.tokens] == list(range(registered + 1, registered + size + 1))
            registered += size
        else:
            pytest.fail(f"registrations were never refused with batches of {size}")
    return registered


def concurrently(address: str, tokens: list[TokenSpec], threads: int) -> None:
    """Register `tokens` from `threads` clients at once; raise the first failure."""
    def register(_) -> None:
        with RecallClient(address, timeout=CALL_TIMEOUT) as client:
            client.register(tokens)

    with ThreadPoolExecutor(threads) as pool:
        outcomes = [pool.submit(register, t) for t in range(threads)]
        failures = [f.exception(JOIN_TIMEOUT) for f in outcomes]
    assert all(isinstance(f, RecallError) and f.code_name == "RESOURCE_EXHAUSTED" for f in failures), failures
    raise failures[0]


@pytest.mark.parametrize("custom_jti", [False, True], ids=["canonical-jtis", "caller-chosen-jtis"])
def test_a_store_filled_with_registrations_still_takes_the_kill_switch(start, custom_jti):
    """(Revoking a token with a caller-chosen jti also revokes its key: the most a revocation writes.)"""
    server = start(MIB, MIB)
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        refresh = client.register_one("rachel", "app", type=TokenType.REFRESH)
        rotated = client.rotate(refresh.serial, request_id="r1")
        registered = fill(client, 2, custom_jti)
        # Registrations are refused first, clearly, and change nothing.
        assert_full(client, lambda: client.register(specs(1, registered)), REFUSED)
        assert_full(client, lambda: concurrently(server.address, specs(50, registered), 4), REFUSED)
        assert_full(client, lambda: client.rotate(rotated.successor.serial, request_id="r2"), REFUSED)
        stats = client.stats()
        assert stats.registrations_refused and (stats.max_map_bytes, stats.map_bytes) == (MIB, MIB)
        assert set(client.check_batch(range(1, registered + 1)).states) == {TokenState.ACTIVE, TokenState.ROTATED}
        # Reuse detection registers nothing: it still revokes the family.
        assert client.rotate(refresh.serial).outcome == "REUSE_DETECTED"
        # The kill switch: every token, and a subject's, in the room that was kept.
        assert client.cutoff("subject", "user-3").count > 0
        cut = client.cutoff("all", reason="breach")
        assert cut.count > 0
        assert set(client.check_batch(range(1, registered + 1)).states) == {TokenState.REVOKED}
        assert client.introspect(5)["reason"] == "breach"
        # Foreign revocations keep working until the map itself is full; then nothing changes.
        batch = 0
        for size in (200, 20, 1):
            while True:
                before = client.stats()
                try:
                    client.revoke(tokens=[("https://other.example", f"x-{batch}-{i}") for i in range(size)])
                except RecallError as err:
                    assert err.code_name == "RESOURCE_EXHAUSTED" and "max_map_size" in err.details, err
                    assert client.stats() == before  # a write that did not fit left no trace
                    break
                batch += 1
                assert batch < 10_000, "the map never filled"
        full = client.stats()
        assert client.check(registered).state == TokenState.REVOKED
    server.stop()

    server = start(MIB, 4 * MIB)
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        assert client.stats().seq == full.seq
        assert not client.stats().registrations_refused
        assert client.register_one("late", "app").serial == registered + 1


def test_tokens_that_expired_no_longer_hold_the_room_kept_to_revoke_them(start):
    """The room kept for the kill switch is for tokens it would revoke: not the expired ones
    (a store would otherwise refuse registrations for good, however empty, once enough had
    ever been issued)."""
    clock = FakeClock()
    server = start(MIB, MIB, clock=clock)
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        registered = fill(client)
        assert_full(client, lambda: client.register(specs(1, registered)), REFUSED)
        clock.advance(Settings().token_ttl + COUNT_EVERY)  # every one of them has expired
        assert not client.stats().registrations_refused
        assert client.register(specs(20, registered)).tokens[-1].serial == registered + 20
        assert client.check(registered + 20).state == TokenState.ACTIVE


def test_a_full_disk_refuses_writes_saying_so_and_they_go_on_once_there_is_room(start, monkeypatch):
    server = start(MIB, 64 * MIB)
    flushes = []
    real_flush = LmdbTxn.flush

    def flush(txn):
        flushes.append(1)
        if disk_full:
            raise lmdb.DiskError("mdb_txn_commit: No space left on device")
        return real_flush(txn)

    monkeypatch.setattr(LmdbTxn, "flush", flush)
    disk_full = False
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        serial = client.register_one("alice", "app").serial
        disk_full = True
        flushes.clear()
        assert_full(client, lambda: client.revoke(serials=[serial]), "has no space left")
        assert len(flushes) == 1  # one attempt: no growing the map, no retry one by one
        disk_full = False
        assert client.revoke(serials=[serial]).count == 1
        assert client.check(serial).state == TokenState.REVOKED


def test_the_map_grows_under_concurrent_writers_and_readers(start):
    server = start(MIB, 32 * MIB)
    writers, batches, batch = 4, 4, 940
    total = 1 + writers * batches * batch
    done = threading.Event()

    def write(w: int) -> list[int]:
        with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
            return [t.serial for b in range(batches)
                    for t in client.register(specs(batch, (w * batches + b) * batch)).tokens]

    def read() -> None:
        with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
            for _ in range(10_000):
                if done.is_set():
                    return
                assert client.check(issuer=DEFAULT_ISSUER, jti=canonical_jti(1)).state == TokenState.ACTIVE
                assert client.introspect(1)["serial"] == 1

    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        serials = [client.register_one("user-0", "app-0").serial]
        with ThreadPoolExecutor(writers + 1) as pool:
            reader = pool.submit(read)
            try:
                for future in [pool.submit(write, w) for w in range(writers)]:
                    serials += future.result(JOIN_TIMEOUT)
            finally:
                done.set()
            reader.result(JOIN_TIMEOUT)
        stats = client.stats()
    assert sorted(serials) == list(range(1, total + 1))
    assert stats.registered == stats.active == total
    assert MIB < stats.data_bytes <= stats.map_bytes <= 32 * MIB
    assert stats.map_bytes in {MIB << k for k in range(1, 6)}, "the map grows by doubling"
    server.stop()

    server = start(MIB, 32 * MIB)
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        reopened = client.stats()
        assert (reopened.registered, reopened.seq) == (total, stats.seq)
        assert reopened.map_bytes >= reopened.data_bytes
        more = client.register(specs(batch, total))
        assert [t.serial for t in more.tokens] == list(range(total + 1, total + batch + 1))
        assert set(client.check_batch(range(1, total + batch + 1)).states) == {TokenState.ACTIVE}


# ------------------------------------------------------------- many writers


SUBJECTS = 20


def writer_ops(rng: random.Random, thread: int, initial: int) -> list[tuple[str, object]]:
    """30 random writes: (kind, argument)."""
    ops = []
    for k in range(30):
        roll = rng.random()
        if roll < 0.45:
            ops.append(("serial", rng.randint(1, initial)))
        elif roll < 0.6:
            ops.append(("subject", f"user-{rng.randrange(SUBJECTS)}"))
        elif roll < 0.8:
            ops.append(("register", [TokenSpec(f"user-{rng.randrange(SUBJECTS)}", "app") for _ in range(3)]))
        else:
            jti = f"shared-{rng.randrange(5)}" if k % 2 else f"t{thread}-{k}"
            ops.append(("foreign", ("https://other-idp.example", jti)))
    return ops


def call(client: RecallClient, kind: str, arg):
    if kind == "register":
        return client.register(arg)
    if kind == "serial":
        return client.revoke(serials=[arg])
    if kind == "subject":
        return client.revoke(subject=arg)
    return client.revoke(tokens=[arg])


class Model:
    """The revocation state as a plain set, fed the acknowledged calls in seq order."""

    def __init__(self) -> None:
        self.subject_of: dict[int, str] = {}
        self.revoked: set[int] = set()
        self.foreign: set[tuple[str, str]] = set()

    def apply(self, kind: str, arg, result) -> int:
        """Apply one call; return the count (tokens newly revoked) it should report."""
        if kind == "register":
            for spec, token in zip(arg, result.tokens):
                self.subject_of[token.serial] = spec.subject
            return 0
        if kind == "foreign":
            new = {arg} - self.foreign
            self.foreign |= new
            return len(new)
        if kind == "serial":
            chosen = {arg}
        else:
            chosen = {s for s, subject in self.subject_of.items() if subject == arg}
        new = chosen - self.revoked
        self.revoked |= new
        return len(new)


def changed(kind: str, result) -> bool:
    """Whether an acknowledged call committed a change (every registration here is fresh)."""
    return kind == "register" or result.count > 0


def test_concurrent_writers_get_unique_dense_seqs_and_match_a_model(start):
    server = start(64 * MIB, 64 * MIB)
    initial = [TokenSpec(f"user-{i % SUBJECTS}", "app") for i in range(400)]
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        acked = [("register", initial, client.register(initial))]
    lock = threading.Lock()

    def work(thread: int) -> None:
        ops = writer_ops(random.Random(thread), thread, len(initial))
        with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
            for kind, arg in ops:
                result = call(client, kind, arg)
                with lock:
                    acked.append((kind, arg, result))

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(work, t) for t in range(8)]:
            future.result(JOIN_TIMEOUT)

    changes = sorted(result.seq for kind, _, result in acked if changed(kind, result))
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        stats = client.stats()
        assert changes == list(range(1, stats.seq + 1)), "seqs of changes are not unique and dense"
        # Replay in commit order; a call that changed nothing answers the seq
        # it saw, so it goes after the change holding that seq.
        model = Model()
        for kind, arg, result in sorted(acked, key=lambda a: (a[2].seq, not changed(a[0], a[2]))):
            expected = model.apply(kind, arg, result)
            if kind != "register":
                assert result.count == expected, (kind, arg, result)
        registered = sorted(model.subject_of)
        assert registered == list(range(1, stats.registered + 1))
        states = client.check_batch(registered).states
        assert {s for s, state in zip(registered, states) if state == TokenState.REVOKED} == model.revoked
        assert (stats.revoked, stats.foreign_revoked) == (len(model.revoked), len(model.foreign))
