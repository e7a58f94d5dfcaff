"""The server pins the client package built from this repository, and nothing else."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_server_pins_the_exact_client_version_of_this_checkout():
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]
    pins = [d for d in server["dependencies"] if d.split("=")[0].split(">")[0].split("<")[0].strip() == "recallclient"]
    assert pins == [f"recallclient=={client['version']}"]


def test_the_makefile_installs_the_client_from_the_checkout_before_the_server():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e ./clients -e '.[test]'" in makefile
