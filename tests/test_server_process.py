"""The `recallcore serve` command as a real process: start, refuse, stop, health.

Every server here is a child process on 127.0.0.1:0; refusals are checked by
exit status and by the one line the command prints on stderr.
"""

import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import lmdb
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from recallclient import RecallClient, RecallError, TokenSpec, TokenState

from recallcore import __version__

from .support import STARTUP_TIMEOUT, ServerProcess, run_command

SERVICE = "recall.v1.Recall"
LISTENING = re.compile(r"recallcore listening on 127\.0\.0\.1:([1-9][0-9]*)")
CALL_TIMEOUT = 10.0
SCRIPT = pathlib.Path(sys.executable).parent / "recallcore"


class ScriptServer(ServerProcess):
    """A ServerProcess started through the `recallcore` console script,
    configured only through RECALL_* environment variables."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        self.data_dir = data_dir
        self.args = [str(SCRIPT), "serve"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RECALL_DATA_DIR": str(data_dir),
               "RECALL_LISTEN": "127.0.0.1:0", "RECALL_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.address = self._await_listening()


@pytest.fixture
def spawn() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers (ServerProcess or a subclass); all are closed at teardown."""
    started: list[ServerProcess] = []

    def start(data_dir: pathlib.Path, kind: type[ServerProcess] = ServerProcess) -> ServerProcess:
        started.append(kind(data_dir))
        return started[-1]

    yield start
    for proc in started:
        proc.close()


def refusal(data_dir: pathlib.Path, listen: str = "127.0.0.1:0") -> str:
    """Run `serve` on `data_dir`, expect it to refuse; return its stderr."""
    done = run_command(sys.executable, "-m", "recallcore", "serve", "--data-dir", str(data_dir),
                       "--listen", listen, "--log-level", "WARNING")
    assert done.returncode == 1, done.stderr
    assert "listening" not in done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def answers(address: str) -> None:
    """A register, a check and a stats call all succeed at `address`."""
    with RecallClient(address, timeout=CALL_TIMEOUT) as client:
        serial = client.register_one("alice", "app").serial
        assert client.check(serial).state == TokenState.ACTIVE
        assert client.stats().registered >= serial


# ------------------------------------------------------------- starting


def test_module_serve_prints_the_listening_line_and_answers(spawn, data_dir):
    server = spawn(data_dir)
    assert LISTENING.fullmatch(f"recallcore listening on {server.address}")
    answers(server.address)


def test_console_script_serves_from_the_environment(spawn, data_dir):
    assert SCRIPT.is_file(), "the recallcore console script is not installed next to python"
    assert run_command(str(SCRIPT), "--version").stdout.strip() == f"recallcore {__version__}"
    server = spawn(data_dir, ScriptServer)
    assert LISTENING.fullmatch(f"recallcore listening on {server.address}")
    answers(server.address)
    assert (data_dir / "data.mdb").is_file()


# ------------------------------------------------------------- refusing


def test_second_server_on_the_same_directory_refuses(spawn, data_dir):
    first = spawn(data_dir)
    err = refusal(data_dir)
    assert "in use" in err and str(data_dir) in err and f"pid {first.proc.pid}" in err
    answers(first.address)


def garbage_store(data_dir: pathlib.Path, spawn) -> None:
    """A real store whose data.mdb was then overwritten with random bytes."""
    spawn(data_dir).terminate()
    size = (data_dir / "data.mdb").stat().st_size
    (data_dir / "data.mdb").write_bytes(os.urandom(size))


def short_garbage(data_dir: pathlib.Path, spawn) -> None:
    data_dir.mkdir()
    (data_dir / "data.mdb").write_bytes(b"this is not an LMDB file\n" * 10)


def unrelated_files(data_dir: pathlib.Path, spawn) -> None:
    (data_dir / "photos").mkdir(parents=True)
    (data_dir / "notes.txt").write_text("keep me\n")


def a_regular_file(data_dir: pathlib.Path, spawn) -> None:
    data_dir.write_text("not a directory\n")


def foreign_lmdb(data_dir: pathlib.Path, spawn) -> None:
    with lmdb.open(str(data_dir), map_size=1 << 20) as env, env.begin(write=True) as txn:
        txn.put(b"alpha", b"1")
        txn.put(b"beta", b"2")


def newer_format(data_dir: pathlib.Path, spawn) -> None:
    with lmdb.open(str(data_dir), map_size=1 << 20, max_dbs=4) as env:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"format", b"recallcore/99", db=meta)


@pytest.mark.parametrize(("make", "phrase"), [
    (garbage_store, "does not hold a readable recallcore store"),
    (short_garbage, "does not hold a readable recallcore store"),
    (unrelated_files, "is not a recallcore data directory"),
    (a_regular_file, "cannot create data directory"),
    (foreign_lmdb, "holds an LMDB environment that is not a recallcore store"),
    (newer_format, "holds store format b'recallcore/99'"),
])
def test_unusable_directory_is_refused_with_a_clear_message(spawn, data_dir, make, phrase):
    make(data_dir, spawn)
    err = refusal(data_dir)
    assert phrase in err and str(data_dir) in err
    assert err.count("\n") == 1, "expected one line on stderr"


def test_refusing_unrelated_files_leaves_them_alone(data_dir):
    unrelated_files(data_dir, None)
    refusal(data_dir)
    assert (data_dir / "notes.txt").read_text() == "keep me\n"
    assert {p.name for p in data_dir.iterdir()} <= {"photos", "notes.txt", "LOCK"}


def main_db_keys(data_dir: pathlib.Path) -> list[bytes]:
    with lmdb.open(str(data_dir), map_size=1 << 20, readonly=True) as env, env.begin() as txn:
        return list(txn.cursor().iternext(values=False))


def test_refusing_a_foreign_lmdb_environment_leaves_it_unchanged(spawn, data_dir):
    foreign_lmdb(data_dir, spawn)
    refusal(data_dir)
    assert main_db_keys(data_dir) == [b"alpha", b"beta"]


def test_listen_address_in_use_is_refused_with_a_clear_message(data_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = refusal(data_dir, listen=f"127.0.0.1:{port}")
    assert f"cannot listen on 127.0.0.1:{port}" in err


# ------------------------------------------------------------- stopping


def test_sigterm_finishes_in_flight_revocations_and_exits_zero(spawn, data_dir):
    server = spawn(data_dir)
    with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
        serials = [t.serial for t in client.register([TokenSpec("u", "app")] * 900).tokens]
    acked: list[int] = []
    failures: list[RecallError] = []
    lock = threading.Lock()
    enough = threading.Event()

    def work(mine: list[int]) -> None:
        with RecallClient(server.address, timeout=CALL_TIMEOUT) as client:
            for serial in mine:
                try:
                    client.revoke(serials=[serial])
                except RecallError as err:
                    with lock:
                        failures.append(err)
                    return
                with lock:
                    acked.append(serial)
                    if len(acked) == 60:
                        enough.set()

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(work, serials[i::6]) for i in range(6)]
        assert enough.wait(STARTUP_TIMEOUT), "no revocations acknowledged"
        code = server.terminate()
        for future in futures:
            future.result(STARTUP_TIMEOUT)

    assert code == 0
    assert "recallcore stopped" in server.proc.stderr.read()
    assert len(acked) < len(serials), "SIGTERM came after every call; nothing was in flight"
    # Calls that reach a stopping server are refused by grpc (CANCELLED) or
    # find the port closed (UNAVAILABLE); neither is an acknowledgement.
    assert {err.code_name for err in failures} <= {"CANCELLED", "UNAVAILABLE"}, failures
    with RecallClient(spawn(data_dir).address, timeout=CALL_TIMEOUT) as client:
        states = client.check_batch(serials).states
        revoked = {s for s, state in zip(serials, states) if state == TokenState.REVOKED}
        assert set(acked) <= revoked
        assert client.stats().revoked == len(revoked)


# ------------------------------------------------------------- health and reflection


def test_health_service_reports_serving(spawn, data_dir):
    server = spawn(data_dir)
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=CALL_TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as failed:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=CALL_TIMEOUT)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_recall_service(spawn, data_dir):
    server = spawn(data_dir)
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        listed, described = stub.ServerReflectionInfo(iter(requests), timeout=CALL_TIMEOUT)
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in described.file_descriptor_response.file_descriptor_proto]
    recall = next(f for f in files if f.package == "recall.v1")
    methods = {m.name for s in recall.service if s.name == "Recall" for m in s.method}
    assert {"Register", "Revoke", "Check", "CheckBatch", "Introspect", "Stats", "Watch"} <= methods
