"""Replica and AsyncReplica against a real server on 127.0.0.1:0.

Every wait is on a condition with a deadline (`wait_for`, a listener's
condition); the only polling is for staleness, which is the passing of time.
"""

import asyncio
import concurrent.futures
import logging
import pathlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from pyroaring import BitMap64
from recallclient import (
    AsyncRecallClient,
    AsyncReplica,
    RecallClient,
    Replica,
    StaleReplica,
    TokenSpec,
    replica_file,
)
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc
from recallclient.replica_core import Outcome
from recallclient.revoked_set import RevokedSet

from recallcore.settings import Settings

from ..support import ServerThread

WAIT = 15.0  # deadline of every wait; never reached when things work
FAST = (0.01, 0.1)  # reconnect backoff in tests
ISSUER = "recallcore"  # the server's default issuer
OTHER = "https://other-idp.example"


@pytest.fixture
def settings(data_dir: pathlib.Path) -> Settings:
    return Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600,
                    heartbeat_interval=0.05)


class Pointer:
    """A target the test can re-point (servers restart on new ports)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def __call__(self) -> str:
        return self.address


class Recorder:
    """A listener recording outcomes, with a condition to wait on."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self._cond = threading.Condition()

    def __call__(self, outcome: Outcome) -> None:
        with self._cond:
            self.outcomes.append(outcome)
            self._cond.notify_all()

    def kinds(self, since: int = 0) -> list[str]:
        with self._cond:
            return [o.kind for o in self.outcomes[since:]]

    def mark(self) -> int:
        with self._cond:
            return len(self.outcomes)

    def wait(self, predicate: Callable[[list[str]], bool], since: int = 0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.kinds(since)), WAIT)


def eventually(predicate: Callable[[], bool]) -> bool:
    """Poll `predicate` until true or WAIT passes (for staleness: time itself)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.02)
    return True


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def server_view(server: ServerThread) -> tuple:
    """(store_id, seq, revoked, foreign, digest) of the server's set, read on its loop."""
    def read():
        rs = server.engine.state.revocations
        return rs.store_id, rs.seq, set(rs.revoked), set(rs.foreign), rs.digest()
    return server.run(read)


def replica_view(replica) -> tuple:
    state = replica._core.state
    return replica.store_id, replica.seq, set(state.revoked), set(state.foreign), replica.digest()


@pytest.fixture
def replicas() -> Iterator[Callable[..., Replica]]:
    """Make Replicas (backoff FAST unless given); all are closed at teardown."""
    made: list[Replica] = []

    def make(target, **kwargs) -> Replica:
        kwargs.setdefault("backoff", FAST)
        made.append(Replica(target, **kwargs))
        return made[-1]

    yield make
    for replica in made:
        replica.close()


def register(client: RecallClient, n: int) -> list:
    return list(client.register([TokenSpec(f"user-{i}", "app") for i in range(n)]).tokens)


def test_snapshot_then_deltas_converge(server, client, replicas):
    tokens = register(client, 20)
    first = client.revoke(serials=[t.serial for t in tokens[:5]])
    recorder = Recorder()
    replica = replicas(server.address, on_change=recorder).start()
    assert replica.wait_for(first.seq, WAIT)
    assert recorder.kinds()[0] == "installed"
    assert replica_view(replica) == server_view(server)
    last = first
    for token in tokens[5:10]:
        last = client.revoke(serials=[token.serial])
    last = client.revoke(tokens=[(OTHER, "ext-1"), (OTHER, "ext-2")])
    assert replica.wait_for(last.seq, WAIT)
    assert "applied" in recorder.kinds(1) and "installed" not in recorder.kinds(1)
    assert replica_view(replica) == server_view(server)
    assert replica.cardinality == 10 and replica.staleness < replica.max_staleness


def test_lookups_by_serial_canonical_jti_and_foreign(server, client, replicas):
    revoked, by_jti, active = register(client, 3)
    replica = replicas(server.address).start()
    client.revoke(serials=[revoked.serial])
    client.revoke(tokens=[(ISSUER, by_jti.canonical_jti)])
    result = client.revoke(tokens=[(OTHER, "ext-1")])
    assert replica.wait_for(result.seq, WAIT)
    assert replica.is_revoked(revoked.serial) and replica.is_revoked(revoked.canonical_jti)
    assert replica.is_revoked(by_jti.serial) and replica.is_revoked(by_jti.canonical_jti)
    assert not replica.is_revoked(active.serial) and not replica.is_revoked(active.canonical_jti)
    assert replica.is_revoked("ext-1", issuer=OTHER)
    assert not replica.is_revoked("ext-1", issuer="https://third.example")
    assert not replica.is_revoked("ext-2", issuer=OTHER)
    assert not replica.is_revoked(active.canonical_jti, issuer=OTHER)
    assert not replica.is_revoked(-1) and not replica.is_revoked(2**70)
    with pytest.raises(ValueError, match="issuer"):
        replica.is_revoked("ext-1")
    for bad in (1.5, True, b"ext-1"):
        with pytest.raises(TypeError):
            replica.is_revoked(bad)


def test_wait_for_after_revoke_sees_the_revocation(server, client, replicas):
    (token,) = register(client, 1)
    replica = replicas(server.address).start()
    result = client.revoke(serials=[token.serial])
    assert replica.wait_for(result.seq, WAIT) and replica.is_revoked(token.serial)
    assert not replica.wait_for(result.seq + 1000, 0.05)


def test_server_restart_resumes_from_seq_without_snapshot(settings, replicas):
    server = ServerThread(settings)
    pointer = Pointer(server.address)
    recorder = Recorder()
    try:
        with RecallClient(server.address) as client:
            tokens = register(client, 4)
            before = client.revoke(serials=[tokens[0].serial])
        replica = replicas(pointer, on_change=recorder).start()
        assert replica.wait_for(before.seq, WAIT)
    finally:
        server.stop()
    mark = recorder.mark()
    server = ServerThread(settings)  # same data dir, new port
    try:
        pointer.address = server.address
        with RecallClient(server.address) as client:
            after = client.revoke(serials=[tokens[1].serial])
        assert replica.wait_for(after.seq, WAIT)
        assert recorder.kinds(mark) == ["applied"]
        assert replica_view(replica) == server_view(server)
    finally:
        server.stop()


def test_replaced_store_gets_reset_then_snapshot(settings, tmp_path, replicas):
    server = ServerThread(settings)
    pointer = Pointer(server.address)
    recorder = Recorder()
    try:
        with RecallClient(server.address) as client:
            old = register(client, 3)
            result = client.revoke(serials=[old[0].serial, old[1].serial])
        replica = replicas(pointer, on_change=recorder).start()
        assert replica.wait_for(result.seq, WAIT)
    finally:
        server.stop()
    mark = recorder.mark()
    server = ServerThread(Settings(data_dir=tmp_path / "other", listen="127.0.0.1:0",
                                   sweep_interval=3600, heartbeat_interval=0.05))
    try:
        with RecallClient(server.address) as client:
            new = register(client, 3)
            client.revoke(serials=[new[2].serial])
        pointer.address = server.address
        assert recorder.wait(lambda kinds: "installed" in kinds, since=mark)
        assert recorder.kinds(mark) == ["reset", "installed"]
        assert replica_view(replica) == server_view(server)
        assert replica.is_revoked(new[2].serial) and not replica.is_revoked(old[0].serial)
    finally:
        server.stop()


def test_unstarted_replica_is_stale():
    closed = Replica(closed_address())
    assert closed.staleness == float("inf") and closed.is_revoked(12345)
    with pytest.raises(StaleReplica, match="stale"):
        Replica(closed_address(), on_stale="raise").is_revoked(12345)
    with pytest.raises(ValueError):
        Replica(closed_address(), on_stale="open")


def test_stale_replica_fails_closed_or_raises(settings, replicas):
    server = ServerThread(settings)
    try:
        with RecallClient(server.address) as client:
            (active,) = register(client, 1)
            seq = client.stats().seq
        closed = replicas(server.address, max_staleness=0.3).start()
        raising = replicas(server.address, max_staleness=0.3, on_stale="raise").start()
        for replica in (closed, raising):
            assert replica.wait_for(seq, WAIT)
            assert not replica.is_revoked(active.serial)
    finally:
        server.stop()
    assert eventually(lambda: closed.is_revoked(active.serial))
    assert closed.staleness > 0.3

    def raises_stale() -> bool:
        try:
            raising.is_revoked(active.serial)
        except StaleReplica as exc:
            return "s stale" in str(exc)
        return False

    assert eventually(raises_stale) and raising.staleness > 0.3


def test_warm_restart_from_replica_file(server, client, tmp_path, replicas):
    path = tmp_path / "replica.bin"
    revoked, active = register(client, 2)
    first = client.revoke(serials=[revoked.serial], tokens=[(OTHER, "ext-1")])
    replica = replicas(server.address, path=path, max_staleness=60).start()
    assert replica.wait_for(first.seq, WAIT)
    view = replica_view(replica)
    replica.close()

    pointer = Pointer(closed_address())
    recorder = Recorder()
    warm = replicas(pointer, path=path, max_staleness=60, on_change=recorder).start()
    assert replica_view(warm) == view  # before any connection
    assert warm.is_revoked(revoked.serial) and not warm.is_revoked(active.serial)
    assert warm.is_revoked("ext-1", issuer=OTHER)
    pointer.address = server.address
    second = client.revoke(serials=[active.serial])
    assert warm.wait_for(second.seq, WAIT)
    assert "installed" not in recorder.kinds() and warm.is_revoked(active.serial)
    assert replica_view(warm) == server_view(server)


def test_corrupt_replica_file_starts_cold(server, client, tmp_path, replicas, caplog):
    caplog.set_level(logging.WARNING, logger="recallclient.replica_file")
    path = tmp_path / "replica.bin"
    path.write_bytes(b"RCREPLIC" + b"\x01\x00\x00\x00" + b"garbage" * 10)
    (token,) = register(client, 1)
    result = client.revoke(serials=[token.serial])
    recorder = Recorder()
    replica = replicas(server.address, path=path, on_change=recorder).start()
    assert "ignoring replica file" in caplog.text and "checksum" in caplog.text
    assert replica.wait_for(result.seq, WAIT)
    assert recorder.kinds()[0] == "installed" and replica.is_revoked(token.serial)


def test_replica_file_round_trip_and_rejections(tmp_path, caplog):
    state = RevokedSet("store-1")
    rules = {"rules": [(1, "alice", 1700000000)]} if hasattr(state, "rules") else {}
    state.load(seq=42, revoked=BitMap64([1, 5, 2**40]), foreign={7, 2**63 + 1},
               registered_through=99, history=b"h" * 16, **rules)
    path = tmp_path / "r.bin"
    replica_file.save(path, state, vouched_at=1234.5)
    saved = replica_file.read(path)
    assert saved.vouched_at == 1234.5
    got = saved.state
    assert (got.store_id, got.seq, got.registered_through) == ("store-1", 42, 99)
    assert set(got.revoked) == {1, 5, 2**40} and got.foreign == {7, 2**63 + 1}
    assert got.digest() == state.digest()
    assert getattr(got, "rules", None) == getattr(state, "rules", None)
    assert got.history == b"h" * 16  # a resume from the file is checked against the server's history
    data = path.read_bytes()
    caplog.set_level(logging.INFO, logger="recallclient.replica_file")
    bad = {
        "flipped": data[:20] + bytes([data[20] ^ 1]) + data[21:],
        "truncated": data[:-3],
        "version": data[:8] + b"\x03\x00\x00\x00" + data[12:],
        "empty": b"",
    }
    for name, content in bad.items():
        path.write_bytes(content)
        assert replica_file.load(path) is None, name
    assert replica_file.load(tmp_path / "missing.bin") is None
    assert "version 3" in caplog.text and "no replica file" in caplog.text


def test_listener_exception_does_not_stop_the_replica(server, client, replicas, caplog):
    tokens = register(client, 3)
    recorder = Recorder()
    replica = replicas(server.address)

    def broken(outcome: Outcome) -> None:
        raise RuntimeError("listener bug")

    replica.add_listener(broken)
    replica.add_listener(recorder)
    replica.start()
    for token in tokens:
        result = client.revoke(serials=[token.serial])
        assert replica.wait_for(result.seq, WAIT)
    assert all(replica.is_revoked(t.serial) for t in tokens)
    assert recorder.kinds().count("applied") >= 1
    assert "listener bug" in caplog.text


class SilentWatch(recall_pb2_grpc.RecallServicer):
    """A fake node that sends one snapshot, then nothing: the watchdog's case."""

    def __init__(self) -> None:
        self.requests: list[pb.WatchRequest] = []
        self.cond = threading.Condition()

    def Watch(self, request, context):
        with self.cond:
            self.requests.append(request)
            self.cond.notify_all()
        done = threading.Event()
        context.add_callback(done.set)
        state = RevokedSet("silent-store", seq=5)
        yield pb.WatchEvent(store_id=state.store_id, head_seq=5, snapshot=pb.SnapshotChunk(
            seq=5, index=0, count=1, digest=state.digest()))
        done.wait(WAIT)


@pytest.fixture
def silent() -> Iterator[tuple[SilentWatch, str]]:
    """A SilentWatch node on 127.0.0.1:0: (fake, address)."""
    fake = SilentWatch()
    grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    recall_pb2_grpc.add_RecallServicer_to_server(fake, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield fake, f"127.0.0.1:{port}"
    grpc_server.stop(0).wait(WAIT)


def assert_resumed_twice(fake: SilentWatch) -> None:
    with fake.cond:
        assert fake.cond.wait_for(lambda: len(fake.requests) >= 2, WAIT)
    assert fake.requests[0] == pb.WatchRequest()
    assert fake.requests[1] == pb.WatchRequest(store_id="silent-store", after_seq=5)


def test_watchdog_reconnects_a_silent_stream(silent, replicas):
    fake, address = silent
    replica = replicas(address, max_staleness=0.3).start()
    assert_resumed_twice(fake)
    assert replica.seq == 5
    replica.close()


def test_async_watchdog_reconnects_a_silent_stream(silent):
    fake, address = silent

    async def main() -> None:
        async with AsyncReplica(address, max_staleness=0.3, backoff=FAST) as replica:
            await asyncio.to_thread(assert_resumed_twice, fake)
            assert replica.seq == 5

    asyncio.run(main())


def test_async_replica_converges(server, tmp_path):
    async def main() -> None:
        recorder = Recorder()
        async with AsyncRecallClient(server.address) as client:
            tokens = (await client.register([TokenSpec(f"u{i}", "app") for i in range(4)])).tokens
            first = await client.revoke(serials=[tokens[0].serial])
            path = tmp_path / "async.bin"
            async with AsyncReplica(server.address, backoff=FAST, path=path,
                                    on_change=recorder) as replica:
                assert await replica.wait_for(first.seq, WAIT)
                second = await client.revoke(serials=[tokens[1].serial], tokens=[(OTHER, "x")])
                assert await replica.wait_for(second.seq, WAIT)
                assert replica.is_revoked(tokens[1].serial) and replica.is_revoked("x", issuer=OTHER)
                assert not replica.is_revoked(tokens[2].serial)
                assert not await replica.wait_for(second.seq + 1000, 0.05)
                view = replica_view(replica)
            assert replica_file.load(path).digest() == view[-1]
        assert recorder.kinds()[0] == "installed" and "applied" in recorder.kinds()
        assert view == server_view(server)

    asyncio.run(main())
