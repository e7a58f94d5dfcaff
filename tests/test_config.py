"""`recallcore serve --config`, `check-config` and RECALL_* values, as real processes.

Which layer won is read back from the running server: a registration that
gives no issuer or expiry gets the server's `issuer` and `token_ttl`.
"""

import configparser
import dataclasses
import json
import os
import pathlib
import shlex
import sys

import pytest
from recallclient import RecallClient

from recallcore import config
from recallcore.security.credentials import hash_secret
from recallcore.security.policy import ROLES
from recallcore.settings import Settings

from .security.certs import CA
from .support import ServerProcess, recallctl, run_command

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVE = (sys.executable, "-m", "recallcore")


def recallcore(*args: str, env: dict[str, str] | None = None):
    """Run `python -m recallcore ARGS` to completion, without any RECALL_* of this process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
    return run_command(*SERVE, *args, env={**clean, **(env or {})})


def served(server: ServerProcess) -> tuple[str, int]:
    """(issuer, token_ttl) of a running server, read from a registration that gives neither."""
    with RecallClient(server.address) as client:
        info = client.introspect(client.register_one("alice", "web").serial)
    return info["iss"], info["exp"] - info["iat"]


@pytest.fixture
def spawn():
    started: list[ServerProcess] = []

    def start(*args, **kwargs) -> ServerProcess:
        started.append(ServerProcess(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


# ------------------------------------------------------------- precedence


def test_defaults_then_file_then_environment_then_flags(spawn, tmp_path):
    path = tmp_path / "recallcore.toml"
    path.write_text('issuer = "from-the-file"\ntoken_ttl = 100\n')
    assert served(spawn(tmp_path / "a", "--config", str(path))) == ("from-the-file", 100)
    assert served(spawn(tmp_path / "b", "--config", str(path), env={"RECALL_TOKEN_TTL": "200"})) == (
        "from-the-file", 200)
    assert served(spawn(tmp_path / "c", "--config", str(path), "--token-ttl", "300",
                        env={"RECALL_TOKEN_TTL": "200", "RECALL_ISSUER": "from-the-environment"})) == (
        "from-the-environment", 300)
    assert served(spawn(tmp_path / "d", env={"RECALL_CONFIG": str(path)})) == ("from-the-file", 100)
    assert served(spawn(tmp_path / "e")) == (Settings.issuer, Settings.token_ttl)


def test_every_settings_field_is_a_key_even_one_without_a_flag(spawn, tmp_path):
    path = tmp_path / "recallcore.toml"
    path.write_text("max_string = 4096\n[max]\nscopes = 2\n")  # neither has a flag
    server = spawn(tmp_path / "data", "--config", str(path))
    with RecallClient(server.address) as client:
        assert client.register_one("a" * 3000, "web").serial == 1  # the default limit is 1024 bytes
    done = recallctl(server.address, "register", "--subject", "a", "--client", "c", "--scope", "x y z")
    assert done.returncode == 1 and "3 scopes exceed the limit of 2" in done.stderr


def test_a_file_of_every_default_is_valid(tmp_path):
    defaults = {f.name: getattr(Settings, f.name) for f in dataclasses.fields(Settings)}
    lines = [f"{key} = {json.dumps(str(value) if isinstance(value, pathlib.Path) else value)}"
             for key, value in defaults.items()]
    path = tmp_path / "all.toml"
    path.write_text("\n".join(lines + ['log_level = "debug"']) + "\n")
    assert set(defaults) | {"log_level"} == set(config.keys())
    done = recallcore("check-config", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{path}: ok\n", "")


def test_serve_help_gives_the_order(capsys):
    done = recallcore("serve", "--help")
    text = " ".join(done.stdout.split())
    assert "in increasing precedence: its default; the config file (--config FILE, or $RECALL_CONFIG)" in text
    assert "the environment variable RECALL_<NAME> (RECALL_LISTEN); and the flag" in text


# ------------------------------------------------------------- what is wrong, exactly


@pytest.mark.parametrize("text, problems", [
    ('lisen = "127.0.0.1:1"\n', ["unknown key 'lisen' (did you mean 'listen'?)"]),
    ("token_ttl = \"abc\"\nsweep_interval = true\n", [
        "token_ttl: expected an integer, got a string 'abc'",
        "sweep_interval: expected a number, got a boolean True"]),
    ('[tls]\ncer = "a.pem"\n', ["unknown key '[tls] cer' (did you mean 'cert'?)"]),
    ('tls_cert = "a"\n[tls]\ncert = "b"\n', ["tls_cert: given twice (as tls_cert and in a table)"]),
    ('listen = "nowhere"\n', ["listen: 'nowhere' is not HOST:PORT (from {path})"]),
    ('token_ttl = 10\nmax_token_lifetime = 5\n', ["token_ttl: must not exceed max_token_lifetime (from {path})"]),
    ('watch_spacing = -0.1\n', ["watch_spacing: must not be negative (from {path})"]),
    ('watch_spacing = 2.0\n', ["watch_spacing: must be shorter than heartbeat_interval (from {path})"]),
    ('store_timeout = 0\n', ["store_timeout: must be positive (from {path})"]),
    ('log_level = "loud"\n', ["log_level: 'loud' is not a log level; give one of DEBUG, INFO, WARNING, ERROR, "
                              "CRITICAL (any case)"]),
    ('listen = "127.0.0.1:1\n', ["not TOML: "]),
    ('policy = "{missing}"\n', ["policy: cannot read {missing}: No such file or directory"]),
    ('policy = "{bad_policy}"\n', ["policy: {bad_policy}: grant[0].roles: unknown role(s) ['root']"]),
])
def test_check_config_and_serve_name_each_problem(tmp_path, text, problems):
    path, bad_policy, missing = tmp_path / "recallcore.toml", tmp_path / "policy.toml", tmp_path / "nothing.toml"
    bad_policy.write_text('[[grant]]\nidentities = ["token:x"]\nroles = ["root"]\n')
    path.write_text(text.format(missing=missing, bad_policy=bad_policy))
    expected = [p.format(path=path, missing=missing, bad_policy=bad_policy) for p in problems]
    for done in (recallcore("check-config", str(path)),
                 recallcore("serve", "--config", str(path), "--data-dir", str(tmp_path / "d"))):
        assert (done.returncode, done.stdout) == (2, "")
        assert "Traceback" not in done.stderr and "listening" not in done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == len(expected), done.stderr
        for line, problem in zip(lines, expected):
            assert line.startswith("recallcore: ") and problem in line, (line, problem)
            assert str(path) in line or "(from" in line


def test_a_config_file_that_cannot_be_read_is_named(tmp_path):
    done = recallcore("check-config", str(tmp_path / "absent.toml"))
    assert (done.returncode, done.stderr) == (
        2, f"recallcore: {tmp_path / 'absent.toml'}: cannot read it: No such file or directory\n")


# ------------------------------------------------------------- the environment


@pytest.mark.parametrize("env, line", [
    ({"RECALL_TOKEN_TTL": "abc"}, "recallcore: RECALL_TOKEN_TTL: expected an integer, got 'abc'"),
    ({"RECALL_INSECURE": "maybe"}, "recallcore: RECALL_INSECURE: expected true or false, got 'maybe'"),
    ({"RECALL_LOG_LEVEL": "bogus"}, "recallcore: RECALL_LOG_LEVEL: 'bogus' is not a log level"),
    ({"RECALL_LISTEN": "nowhere"}, "recallcore: listen: 'nowhere' is not HOST:PORT (from RECALL_LISTEN)"),
])
def test_an_environment_value_is_reported_as_the_variable_not_a_flag(tmp_path, env, line):
    done = recallcore("serve", "--data-dir", str(tmp_path / "d"), env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(line) and done.stderr.count("\n") == 1
    assert "--" not in done.stderr and "Traceback" not in done.stderr


def test_a_bad_log_level_flag_is_a_usage_error_not_a_traceback(tmp_path):
    done = recallcore("serve", "--data-dir", str(tmp_path / "d"), "--log-level", "bogus")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "argument --log-level: 'bogus' is not a log level; give one of DEBUG, INFO" in done.stderr


def test_an_empty_variable_is_unset(spawn, tmp_path):
    assert served(spawn(tmp_path / "d", env={"RECALL_TOKEN_TTL": "", "RECALL_ISSUER": ""})) == (
        Settings.issuer, Settings.token_ttl)


# ------------------------------------------------------------- deploy/


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(DEPLOY / "recallcore.service")
    return parser


def test_the_systemd_unit_runs_serve_with_the_config_it_checks_first():
    service = unit()
    assert {"Unit", "Service", "Install"} <= set(service.sections())
    start = shlex.split(service["Service"]["ExecStart"])
    check = shlex.split(service["Service"]["ExecStartPre"])
    assert start[1:3] == ["serve", "--config"] and check[1] == "check-config"
    assert start[0] == check[0] and pathlib.PurePath(start[0]).name == "recallcore"
    assert start[3] == check[2] == "/etc/recallcore/recallcore.toml"
    assert service["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the server reloads on SIGHUP
    data_dir = "/var/lib/" + service["Service"]["StateDirectory"]
    assert f'data_dir = "{data_dir}"' in (DEPLOY / "recallcore.toml").read_text()
    assert data_dir in service["Service"]["ReadWritePaths"].split()


def test_the_example_config_serves_for_real_with_its_files_in_place(spawn, tmp_path):
    """deploy/recallcore.toml with /etc/recallcore/ moved under tmp_path: it checks, and a
    server started with it (flags for a loopback port and a test data directory) answers over
    TLS with its policy."""
    etc = tmp_path / "etc"
    ca = CA(etc / "tls")
    leaf = ca.server()
    leaf.cert.rename(etc / "tls" / "server.pem")
    leaf.key.rename(etc / "tls" / "server.key")
    (etc / "policy.toml").write_text(f'[[grant]]\nidentities = ["token:ops"]\nroles = {json.dumps(list(ROLES))}\n')
    (etc / "credentials.toml").write_text(f'[tokens]\nops = "{hash_secret("the-ops-bearer-secret")}"\n')
    path = etc / "recallcore.toml"
    path.write_text((DEPLOY / "recallcore.toml").read_text().replace("/etc/recallcore/", f"{etc}/"))
    done = recallcore("check-config", str(path))
    assert (done.returncode, done.stdout) == (0, f"{path}: ok\n"), done.stderr

    server = spawn(tmp_path / "data", "--config", str(path))  # flags: --data-dir and --listen 127.0.0.1:0
    secret = tmp_path / "ops.token"
    secret.write_text("the-ops-bearer-secret\n")
    env = {**os.environ, "RECALL_CACERT": str(ca.path)}
    target = server.address.replace("127.0.0.1", "localhost")
    done = recallctl(target, "--token-file", str(secret), "register", "--subject", "a", "--client", "c",
                     "--json", env=env)
    assert done.returncode == 0, done.stderr
    done = recallctl(target, "--token-file", str(secret), "introspect", str(json.loads(done.stdout)["serial"]),
                     "--json", env=env)
    info = json.loads(done.stdout)
    assert (info["iss"], info["exp"] - info["iat"]) == ("https://as.example.org", 3600)
    assert recallctl(target, "stats", env=env).returncode == 1  # no credential: the policy holds
