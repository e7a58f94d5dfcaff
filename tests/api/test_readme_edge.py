"""README's "Connecting gateways" runs as written: the serve line, its curl lines, the registration example."""

import pathlib
import shlex
import subprocess
import sys

import httpx

from ..support import STARTUP_TIMEOUT, free_address, readme_blocks, require_binary, run_command
from .issuer import Issuer

SECTION = "## Connecting gateways"


def blocks(kind: str) -> list[str]:
    return readme_blocks(SECTION, kind)


def test_the_gateway_section_runs_as_written(tmp_path):
    curl = require_binary("curl")
    issuer = Issuer(tmp_path / "idp")
    (tmp_path / "idp-jwks.json").write_text(issuer.jwks.read_text())
    http, grpc = free_address(), free_address()
    serve, *curls = blocks("sh")[0].strip().splitlines()
    command = shlex.split(serve.split(" &", 1)[0].replace("127.0.0.1:8443", http))
    command[0] = str(pathlib.Path(sys.executable).parent / "recallcore")
    server = subprocess.Popen([*command, "--listen", grpc], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().startswith("recallcore listening on"), server.stderr.read()
        assert server.stdout.readline().startswith("recallcore HTTP edge on")
        for line in curls:
            command, _, expected = line.partition("#")
            args = shlex.split(command.replace("127.0.0.1:8443", http))
            done = run_command(curl, *args[1:])
            assert done.stdout.strip() == expected.split(":")[0].strip(), (line, done.stdout)
        (example,) = blocks("python")
        scope: dict = {}
        exec(compile(example.replace("127.0.0.1:50051", grpc), "README.md", "exec"), scope)
        answer = httpx.get(f"http://{http}/v1/check", headers={"Authorization": f"Bearer {scope['opaque']}"})
        assert answer.status_code == 200 and answer.headers["X-Recall-Subject"] == "alice"
        signed = issuer.token(scope["claims"]["jti"])
        assert httpx.get(f"http://{http}/v1/check", headers={"Authorization": f"Bearer {signed}"}).status_code == 200
    finally:
        server.terminate()
        server.wait(STARTUP_TIMEOUT)
        server.stdout.close()
        server.stderr.close()
