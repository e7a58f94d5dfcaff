"""Test support: a real server in a thread or in a subprocess, on 127.0.0.1:0."""

import asyncio
import http.server
import os
import pathlib
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recallcore.server import SERVICE_NAME, Server
from recallcore.settings import Settings

STARTUP_TIMEOUT = 30.0
RECALLCTL = pathlib.Path(sys.executable).parent / "recallctl"  # the installed command


def require_binary(name: str) -> str:
    """The path of program `name`; skips the test when it is missing, or fails it where
    RECALL_REQUIRE_EXTERNAL=1 (CI), so that a missing binary never passes silently."""
    import pytest

    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        if os.environ.get("RECALL_REQUIRE_EXTERNAL") == "1":
            pytest.fail(f"{name} is not installed (RECALL_REQUIRE_EXTERNAL=1)")
        pytest.skip(f"{name} is not installed")
    return path


class FakeClock:
    """An engine clock: whole seconds of real time at start, then moved only by `advance`."""

    def __init__(self) -> None:
        self.now = int(time.time())

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds


class ServerThread:
    """A Server on its own event loop in a background thread."""

    def __init__(self, settings: Settings, **engine_args) -> None:
        self.settings = settings
        self.server = Server(settings, **engine_args)  # first: a start that fails leaves no loop behind
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self._thread.start()
        self.address = self.call(self.server.start())

    @property
    def engine(self):
        return self.server.engine

    def call(self, coro, timeout: float = STARTUP_TIMEOUT):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable):
        """Run a plain function on the server's loop and return its result."""

        async def wrapper():
            return fn()

        return self.call(wrapper())

    def stop(self) -> None:
        try:
            self.call(self.server.stop(grace=1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(STARTUP_TIMEOUT)
            self.loop.close()


class ServerProcess:
    """`python -m recallcore serve` as a real child process."""

    def __init__(self, data_dir: pathlib.Path, *extra: str, listen: str = "127.0.0.1:0",
                 env: dict[str, str] | None = None) -> None:
        self.data_dir, self.extra, self.listen, self.env = data_dir, extra, listen, env
        self.args = [sys.executable, "-m", "recallcore", "serve", "--data-dir", str(data_dir),
                     "--listen", listen, "--log-level", "WARNING", *extra]
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        self.address = self._await_listening()

    def _await_listening(self) -> str:
        timer = threading.Timer(STARTUP_TIMEOUT, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        prefix = "recallcore listening on "
        if not line.startswith(prefix):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=STARTUP_TIMEOUT)
            raise RuntimeError(f"server did not start: {line!r} {err}")
        return line[len(prefix):].strip()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STARTUP_TIMEOUT)

    def terminate(self) -> int:
        """SIGTERM and wait; return the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(STARTUP_TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def interrupt_when(args: list[str], done: Callable[[list[str]], bool]) -> tuple[int, str, list[str]]:
    """Run a command that streams lines until interrupted; after each stdout
    line call done(lines so far), and SIGINT the command once it says True.

    Returns (exit code, stderr, lines). The command is killed if it runs
    past STARTUP_TIMEOUT.
    """
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(STARTUP_TIMEOUT, proc.kill)
    timer.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if done(lines):
                proc.send_signal(signal.SIGINT)
                break
        code = proc.wait(STARTUP_TIMEOUT)
        proc.stdout.read()
        err = proc.stderr.read()
    finally:
        timer.cancel()
        proc.stdout.close()
        proc.stderr.close()
    return code, err, lines


class StreamingCommand:
    """A command that streams lines until stopped (recallctl watch, audit --follow), read
    while it runs: `stdout` and `stderr` fill with its lines, `wait_for` waits for one."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, stdin=None) -> None:
        self.proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=pair, daemon=True)
                         for pair in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait_for(self, lines: list[str], matches: Callable[[str], bool], what: str) -> str:
        """Wait until one of `lines` (self.stdout or self.stderr) matches; return it."""
        until(lambda: any(map(matches, lines)) or self.proc.poll() is not None, what)
        found = [line for line in lines if matches(line)]
        assert found, f"the command exited ({self.proc.returncode}) before {what}: {self.stderr}"
        return found[0]

    def wait(self) -> int:
        """Wait for the command to end by itself; return its exit code, all its output read."""
        code = self.proc.wait(STARTUP_TIMEOUT)
        for reader in self._readers:
            reader.join(STARTUP_TIMEOUT)
        return code

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT, then `wait`."""
        self.proc.send_signal(signal.SIGINT)
        return self.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def restart_under(stream: StreamingCommand, server: ServerProcess) -> ServerProcess:
    """SIGTERM `server`, wait until `stream` (a recallctl watch or audit --follow) says on
    stderr that it is reconnecting, and start the server again as it was (same address and
    data directory); return the new one."""
    assert server.terminate() == 0
    stream.wait_for(stream.stderr, lambda line: "reconnecting" in line, "word of the lost stream")
    return ServerProcess(server.data_dir, *server.extra, listen=server.listen, env=server.env)


def run_command(*args: str, timeout: float = STARTUP_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to completion, capturing text output."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


def recallctl(target: str, *args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed `recallctl --target TARGET ARGS` to completion (no RECALL_TARGET)."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "RECALL_TARGET"}
    return run_command(str(RECALLCTL), "--target", target, *args, env=env, **kwargs)


def until(condition: Callable[[], object], what: str = "the condition", timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll what a caller would see (where there is no event to wait on) until it holds; fail
    naming `what` after `timeout` seconds, a bound never reached when things work."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(0.02)


def free_address() -> str:
    """A 127.0.0.1:PORT nothing listens on (for a server that must come back on the same address)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


class FreezableProxy:
    """A TCP proxy on 127.0.0.1:0 to `target` whose links can be frozen.

    Frozen, it keeps every connection open and accepts new ones but moves no
    byte either way: to both ends the link looks alive and silent, as a
    partitioned network does before any timeout. `thaw` moves the bytes
    again. One thread, bounded: it stops at `close`.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.frozen = threading.Event()
        self._closed = threading.Event()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(STARTUP_TIMEOUT)

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            try:
                while not self._closed.is_set():
                    if self.frozen.is_set():
                        time.sleep(0.01)
                        continue
                    for key, _ in sel.select(0.05):
                        if key.fileobj is self._listener:
                            self._accept(sel)
                        else:
                            self._pump(sel, key.fileobj)
            finally:
                for sock in [self._listener, *self._pairs]:
                    sock.close()

    def _accept(self, sel) -> None:
        client, _ = self._listener.accept()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for a, b in ((client, upstream), (upstream, client)):
            a.setblocking(False)
            self._pairs[a] = b
            sel.register(a, selectors.EVENT_READ)

    def _pump(self, sel, sock: socket.socket) -> None:
        other = self._pairs.get(sock)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and other is not None:
            try:
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
                return
            except OSError:
                pass
        for end in (sock, other):
            if end is not None and end in self._pairs:
                sel.unregister(end)
                del self._pairs[end]
                end.close()


def readme_blocks(section: str, kind: str) -> list[str]:
    """The ```kind blocks of README.md's `section` (a "## " heading), in order."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = text.split(section + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{kind}\n(.*?)```", body, flags=re.S)


class LocalHttp:
    """A small HTTP(S) server on 127.0.0.1:0 in a thread: `respond(handler)` gives (status, body).

    For a POST, the handler's `body` attribute holds the request body."""

    def __init__(self, respond: Callable[[http.server.BaseHTTPRequestHandler], tuple[int, bytes]],
                 context: ssl.SSLContext | None = None) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = respond(self)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, name="test-http", daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def health(address: str, service: str = SERVICE_NAME) -> str:
    """What the gRPC health service of the server at `address` says of `service` (or the call's error)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
