"""README's "Running it for real" runs as written: openssl, the policy, hash-token, serve, recallctl.

The commands run in a temporary directory, with the venv's path for
`.venv/bin/` and a free port for 50051; the policy file is the section's
TOML block. openssl comes with the machine (a missing one skips locally,
and fails where RECALL_REQUIRE_EXTERNAL=1).
"""

import pathlib
import shlex
import subprocess
import sys

from ..support import STARTUP_TIMEOUT, free_address, readme_blocks, require_binary

SECTION = "## Running it for real"


def blocks(kind: str) -> list[str]:
    return readme_blocks(SECTION, kind)


def test_the_tls_walkthrough_runs_as_written(tmp_path):
    require_binary("openssl")
    (policy,) = blocks("toml")
    (tmp_path / "policy.toml").write_text(policy)
    port = free_address().rpartition(":")[2]
    venv_bin = str(pathlib.Path(sys.executable).parent) + "/"
    lines = "\n".join(blocks("sh")).replace("\\\n", " ").replace(".venv/bin/", venv_bin).replace("50051", port)
    server = None
    try:
        for line in filter(None, (x.strip() for x in lines.splitlines())):
            if " serve " in line:
                command = line.split(" &", 1)[0]
                server = subprocess.Popen(shlex.split(command), cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
                assert server.stdout.readline().startswith("recallcore listening on 0.0.0.0:"), server.stderr.read()
                continue
            done = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=STARTUP_TIMEOUT, executable="/bin/bash")
            assert done.returncode == 0, (line, done.stderr)
            if "recallctl" in line:
                assert "store_id:" in done.stdout, done.stdout
        assert server is not None
        assert "hash-token" in lines and "sha256:" in (tmp_path / "credentials.toml").read_text()
    finally:
        if server is not None:
            server.terminate()
            server.communicate(timeout=STARTUP_TIMEOUT)
