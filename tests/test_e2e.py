"""End to end: a real server on 127.0.0.1:0, through RecallClient, AsyncRecallClient and recallctl."""

import asyncio
import dataclasses
import json
import os
import pathlib
import re
import shlex
import time

import pytest
from recallclient import AsyncRecallClient, JtiRef, RecallError, TokenSpec, TokenState, serial_from_jti

from recallcore.security.credentials import hash_secret
from recallcore.security.policy import ROLES

from .security.certs import CA
from .support import RECALLCTL, ServerThread, run_command

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_register_revoke_check_introspect_stats(client):
    first = client.register_one("alice", "web", scopes=("read", "write"), ttl=600, origin="login", family="fam")
    assert first.serial == 1 and serial_from_jti(first.jti, client.stats().store_id) == 1 and not first.existing
    assert serial_from_jti(first.jti, "another-store") is None  # bound to this store
    batch = client.register([TokenSpec("bob", "web"), TokenSpec("bob", "cli", jti="custom-1", issuer="idp")])
    assert [t.serial for t in batch.tokens] == [2, 3]
    assert client.check(1).state == TokenState.ACTIVE

    receipt = client.revoke(subject="alice", reason="password reset", actor="ops")
    assert receipt.count == 1
    checked = client.check(1, min_seq=receipt.seq)
    assert (checked.state, checked.reason) == (TokenState.REVOKED, "password reset")
    assert checked.revoked_at >= int(time.time()) - 60
    assert client.revoke(serials=[1], reason="again").count == 0  # idempotent

    assert client.revoke(tokens=[("idp", "custom-1")], reason="leak").count == 1
    assert client.check(issuer="idp", jti="custom-1").state == TokenState.REVOKED
    assert client.revoke(tokens=[JtiRef("other-idp", "x1", int(time.time()) + 60)]).count == 1
    assert client.check(issuer="other-idp", jti="x1").state == TokenState.REVOKED
    assert client.check(issuer="other-idp", jti="never").state == TokenState.UNKNOWN

    batch_states = client.check_batch([1, 2, 3, 4])
    assert batch_states.states == (TokenState.REVOKED, TokenState.ACTIVE, TokenState.REVOKED, TokenState.UNKNOWN)

    info = client.introspect(1)
    assert info["active"] is False and info["state"] == "REVOKED" and info["reason"] == "password reset"
    info = client.introspect(2)
    assert info["active"] is True and info["sub"] == info["username"] == "bob"
    assert info["token_type"] == "access_token" and info["client_id"] == "web"

    stats = client.stats()
    assert (stats.registered, stats.revoked, stats.active, stats.foreign_revoked) == (3, 2, 1, 2)
    assert stats.seq == receipt.seq + 2 and stats.store_id


def test_expired_tokens_are_expired_not_revoked(client):
    now = int(time.time())
    token = client.register_one("carol", "web", issued_at=now - 100, expires_at=now - 10)
    assert client.check(token.serial).state == TokenState.EXPIRED
    assert client.revoke(serials=[token.serial]).count == 0
    assert client.stats().expired == 1


def test_async_client(server):
    async def scenario():
        async with AsyncRecallClient(server.address) as client:
            token = await client.register_one("dave", "web")
            receipt = await client.revoke(serials=[token.serial], reason="r")
            result = await client.check(token.serial, min_seq=receipt.seq)
            with pytest.raises(RecallError) as err:
                await client.revoke()
            return result.state, err.value.code_name

    assert asyncio.run(scenario()) == (TokenState.REVOKED, "INVALID_ARGUMENT")


def _ctl(server, *args: str, code: int = 0) -> str:
    result = run_command(str(RECALLCTL), "--target", server.address, *args)
    assert result.returncode == code, result.stderr
    return result.stdout


def test_recallctl_against_a_real_server(server):
    reg = json.loads(_ctl(server, "register", "--subject", "erin", "--client", "web", "--json",
                          "--scope", "read write", "--type", "refresh", "--ttl", "600", "--family", "f1",
                          "--origin", "test"))
    assert reg["serial"] == 1 and serial_from_jti(reg["jti"], server.engine.store_id) == 1
    assert json.loads(_ctl(server, "check", "1", "--json"))["state"] == "ACTIVE"
    revoked = json.loads(_ctl(server, "--json", "revoke", "--family", "f1", "--reason", "reuse"))
    assert revoked["count"] == 1 and revoked["seq"] >= 2
    checked = json.loads(_ctl(server, "check", "--json", "1", code=4))
    assert checked["state"] == "REVOKED" and checked["reason"] == "reuse"
    info = json.loads(_ctl(server, "introspect", "1", "--json", code=4))
    assert info["active"] is False and info["state"] == "REVOKED"
    assert "REVOKED" in _ctl(server, "check", "1", code=4)
    stats = json.loads(_ctl(server, "stats", "--json"))
    assert stats["revoked"] == 1

    bad = run_command(str(RECALLCTL), "--target", server.address, "revoke", "--serial", "9", "--reason", "x" * 2000)
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "reason" in bad.stderr


WALKTHROUGH = "## A two-minute walkthrough"
LIFECYCLE = "## Rotation, reuse detection and the kill switch"


def _readme_commands(section: str = WALKTHROUGH) -> list[tuple[str, int]]:
    """(command, expected exit code) of each recallctl line of the section's sh
    block; a trailing comment "# exits N: ..." expects exit code N, else 0."""
    text = (ROOT / "README.md").read_text()
    body = text.split(section + "\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", body, re.DOTALL).group(1)
    commands = []
    for line in block.splitlines():
        if line.startswith(".venv/bin/recallctl"):
            command, _, comment = line.partition("   #")
            exits = re.match(r"\s*exits (\d+):", comment)
            commands.append((command.strip(), int(exits.group(1)) if exits else 0))
    return commands


def _run_readme_block(section: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """Run the section's recallctl lines in order; return (command, stdout) of each."""
    outputs = []
    for line, expected in _readme_commands(section):
        args = shlex.split(line)
        args[0] = str(RECALLCTL)
        result = run_command(*args, env=env)
        assert result.returncode == expected, (line, result.returncode, result.stderr)
        outputs.append((line, result.stdout))
    return outputs


@pytest.fixture(params=["plain", "tls"])
def walk(request, settings, tmp_path):
    """(server, environment for recallctl): in the clear on loopback, or over TLS with a
    policy, the caller holding every role by a bearer credential from RECALL_TOKEN."""
    env = {**os.environ}
    if request.param == "tls":
        ca = CA(tmp_path / "pki")
        leaf = ca.server()
        (tmp_path / "policy.toml").write_text(f'[[grant]]\nidentities = ["token:ops"]\nroles = {json.dumps(list(ROLES))}\n')
        (tmp_path / "creds.toml").write_text(f'[tokens]\nops = "{hash_secret("the-ops-bearer-secret")}"\n')
        settings = dataclasses.replace(settings, tls_cert=str(leaf.cert), tls_key=str(leaf.key),
                                       policy=str(tmp_path / "policy.toml"), credentials=str(tmp_path / "creds.toml"))
        env.update(RECALL_CACERT=str(ca.path), RECALL_TOKEN="the-ops-bearer-secret")
    srv = ServerThread(settings)
    env["RECALL_TARGET"] = srv.address
    yield srv, env
    srv.stop()


def test_readme_walkthrough_runs_as_written(walk):
    """The walkthrough, then the lifecycle section, in order on one server (plain and over TLS)."""
    server, env = walk
    walkthrough = _run_readme_block(WALKTHROUGH, env)
    assert len(walkthrough) >= 8
    outputs = [out for _, out in walkthrough]
    revoke = json.loads(outputs[3])
    assert revoke["count"] == 2
    assert json.loads(outputs[4])["state"] == "REVOKED"

    lifecycle = _run_readme_block(LIFECYCLE, env)
    assert [code for _, code in _readme_commands(LIFECYCLE)].count(3) == 1

    def outputs_of(pattern: str) -> list[str]:
        return [out for line, out in lifecycle if re.search(pattern, line)]

    rotated, retried = map(json.loads, outputs_of(r" rotate 3 --request-id "))
    assert (rotated["outcome"], retried["outcome"], retried["retried"]) == ("ROTATED", "RETRIED", True)
    assert (retried["serial"], retried["jti"]) == (rotated["serial"], rotated["jti"])
    assert rotated["serial"] == 4 and serial_from_jti(rotated["jti"], server.engine.store_id) == 4
    [reuse] = map(json.loads, outputs_of(r" rotate 3 --json$"))
    assert (reuse["outcome"], reuse["reuse_detected"], reuse["count"]) == ("REUSE_DETECTED", True, 2)
    [cutoff] = map(json.loads, outputs_of(r" cutoff --subject "))
    assert cutoff["count"] == 1 and cutoff["retires_at"] > cutoff["before"]
    [everyone] = outputs_of(r" cutoff --all ")
    assert re.match(r"cut off everyone before \S+: 0 tokens revoked \(seq \d+\)", everyone)  # all were already
    assert outputs_of(r" --iat ") == ["bob-42 REVOKED (reason: cut-off rule)\n"]
    types = [[row.split("  ")[2] for row in out.splitlines()[1:]] for out in outputs_of(r" trace ")]  # no header
    assert types == [["rotate", "reuse_detected"], ["register", "cutoff"]]


def test_readme_library_example_runs_as_written(server, tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using the client library", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "127.0.0.1:50051" in code and "var/replica.bin" in code
    code = code.replace("127.0.0.1:50051", server.address).replace("var/replica.bin", str(tmp_path / "r.bin"))
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "r.bin").exists()
