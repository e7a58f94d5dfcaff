"""Child processes of the bench: servers, followers, subscribers and redis.

Theory of operation. Every process the bench starts goes through `spawn`,
which records it; `stop_all` (run at exit, and by run.py on Ctrl-C or an
error) stops them newest first: SIGTERM, a grace period, then SIGKILL. On
Linux each child also has the kernel send it SIGTERM when the bench dies
(PR_SET_PDEATHSIG, via setpriv), so even a SIGKILLed bench leaves nothing. A
child's stderr goes to a log file in the run's work directory, whose tail is
quoted when the child fails. Everything listens on 127.0.0.1 only.

No `preexec_fn`: it makes Python run its at-fork hooks, and grpc's (active
in this process once it has made a call) can abort the forked child before
it execs (grpc/grpc#43055). The death signal is set by `setpriv` instead.
"""

import asyncio
import json
import os
import pathlib
import select
import shutil
import socket
import subprocess
import sys
import time
from typing import Self

REPO = pathlib.Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 60.0
_LIVE: list[subprocess.Popen] = []
_LOG_DIR: list[pathlib.Path] = []


def set_log_dir(path: pathlib.Path) -> None:
    """Send the stderr of children started from now on to files in `path`."""
    path.mkdir(parents=True, exist_ok=True)
    _LOG_DIR[:] = [path]


_SETPRIV = shutil.which("setpriv")


def spawn(args: list[str], name: str, *, stdin: bool = False) -> subprocess.Popen:
    """Start `args` (text pipes on stdout, and stdin if asked); recorded for stop_all."""
    log_dir = _LOG_DIR[0] if _LOG_DIR else pathlib.Path("/tmp")
    log_path = log_dir / f"{name}-{len(_LIVE)}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if _SETPRIV and sys.platform == "linux":
        args = [_SETPRIV, "--pdeathsig", "TERM", "--", *args]
    with open(log_path, "w") as err:
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=err,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    _LIVE.append(proc)
    return proc


def log_tail(proc: subprocess.Popen, lines: int = 20) -> str:
    try:
        return "\n".join(pathlib.Path(proc.log_path).read_text().splitlines()[-lines:])
    except (OSError, AttributeError):
        return ""


def _name(proc: subprocess.Popen) -> str:
    return " ".join(a for a in proc.args if not a.startswith("/"))[:80]


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The next stdout line of `proc`; RuntimeError on timeout or exit."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{_name(proc)}: no answer in {timeout:.0f} s\n{log_tail(proc)}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if ready:
            line = proc.stdout.readline()
            if not line:
                proc.wait(5)
                raise RuntimeError(f"{_name(proc)} exited with {proc.returncode}\n{log_tail(proc)}")
            return line


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    if proc in _LIVE:
        _LIVE.remove(proc)


def stop_all() -> None:
    """Stop every process started by `spawn` and still running, newest first."""
    for proc in reversed(list(_LIVE)):
        stop(proc, grace=5.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (all its threads)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_async(coro):
    """Run a coroutine on uvloop when it is installed (as the server does)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class Server:
    """`recallcore serve` in a child process on 127.0.0.1:0 (a follower with `follow`)."""

    def __init__(self, data_dir: pathlib.Path, *extra: str, follow: str = "", name: str = "server") -> None:
        args = [sys.executable, "-m", "recallcore", "serve", "--data-dir", str(data_dir),
                "--listen", "127.0.0.1:0", "--log-level", "WARNING", *extra]
        if follow:
            args += ["--follow", follow]
        self.started = time.perf_counter()
        self.proc = spawn(args, name)
        line = read_line(self.proc, STARTUP_TIMEOUT)
        self.ready_s = time.perf_counter() - self.started
        prefix = "recallcore listening on "
        if not line.startswith(prefix):
            stop(self.proc)
            raise RuntimeError(f"server did not start: {line!r}\n{log_tail(self.proc)}")
        self.address = line[len(prefix):].strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        stop(self.proc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Worker:
    """A bench worker module in a child process, spoken to in JSON lines."""

    def __init__(self, module: str, *args: str, name: str = "") -> None:
        self.proc = spawn([sys.executable, "-m", module, *args], name or module.rsplit(".", 1)[-1], stdin=True)

    def ask(self, message: dict, timeout: float = STARTUP_TIMEOUT) -> dict:
        """Send one command; return the worker's JSON answer (RuntimeError on failure)."""
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return self.answer(timeout)

    def answer(self, timeout: float = STARTUP_TIMEOUT) -> dict:
        reply = json.loads(read_line(self.proc, timeout))
        if "error" in reply:
            raise RuntimeError(f"{_name(self.proc)}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        stop(self.proc)
