"""README's "Running a cluster" runs as written: migrate-schema, two nodes on one database, recallctl.

The commands run in a temporary directory against a fresh database of the
tests' PostgreSQL server (its conninfo put where the README's is), with the
venv's path for `.venv/bin/` and free ports for 50071 and 50072. Each output
line the README shows (`# ...` under a command) must be in what the command
printed; `# exits N` is the exit code the command must have.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

from .support import STARTUP_TIMEOUT, free_address, readme_blocks

SECTION = "## Running a cluster"
README_CONNINFO = "host=127.0.0.1 port=5432 dbname=recall user=recall"


def test_two_nodes_on_one_database_run_as_written(postgres, tmp_path):
    conninfo = postgres.create_database()
    dbname = conninfo.rpartition("dbname=")[2]
    (script,) = readme_blocks(SECTION, "sh")
    venv_bin = str(pathlib.Path(sys.executable).parent) + "/"
    script = script.replace(README_CONNINFO, conninfo).replace(".venv/bin/", venv_bin)
    for port in ("50071", "50072"):
        script = script.replace(port, free_address().rpartition(":")[2])
    env = dict(os.environ)
    servers: list[subprocess.Popen] = []
    last: subprocess.CompletedProcess | None = None
    ran = 0
    try:
        for line in filter(None, (x.strip() for x in script.splitlines())):
            if line.startswith("# "):  # what the command before printed
                expected = line[2:].replace("'recall'", f"'{dbname}'").replace(
                    "port 5432", f"port {postgres.port}")
                assert last is not None and expected in last.stdout, (expected, last.stdout)
                continue
            if line.startswith("export "):
                name, value = line[len("export "):].split("=", 1)
                env[name] = shlex.split(value)[0]
                continue
            command, _, comment = line.partition("#")
            if command.rstrip().endswith("&"):
                server = subprocess.Popen(shlex.split(command.rstrip(" &")), cwd=tmp_path, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                servers.append(server)
                assert server.stdout.readline().startswith("recallcore listening on 127.0.0.1:"), \
                    server.stderr.read()
                continue
            last = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=STARTUP_TIMEOUT)
            code = re.search(r"exits (\d+)", comment)
            assert last.returncode == (int(code.group(1)) if code else 0), (line, last.stdout, last.stderr)
            ran += 1
        assert len(servers) == 2 and ran == 4
        assert "REVOKED" in last.stdout and "leaked" in last.stdout
    finally:
        for server in servers:
            server.terminate()
            server.communicate(timeout=STARTUP_TIMEOUT)
