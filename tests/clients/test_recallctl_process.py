"""recallctl as a process, as a new user runs it, against a real server on 127.0.0.1:0:
the server's issuer by default, exit codes, time formats, targets and argument checks."""

import json

from recallclient import TokenState, TokenType

from ..support import recallctl

OTHER = "https://other-idp.example"


def json_of(done) -> dict:
    return json.loads(done.stdout)


# ------------------------------------------------- --jti without --issuer


def test_jti_without_issuer_means_the_servers_issuer_for_every_command(server, client):
    access = client.register_one("alice", "web")
    refresh = client.register_one("alice", "web", type=TokenType.REFRESH)
    custom = client.register_one("bob", "web", jti="custom-7")  # under the server's issuer

    checked = recallctl(server.address, "check", "--jti", access.jti, "--json")
    assert (checked.returncode, checked.stderr) == (0, "")
    assert (json_of(checked)["serial"], json_of(checked)["state"]) == (access.serial, "ACTIVE")
    looked = recallctl(server.address, "introspect", "--jti", custom.jti, "--json")
    assert looked.returncode == 0, looked.stderr
    assert (json_of(looked)["serial"], json_of(looked)["iss"], json_of(looked)["sub"]) == (
        custom.serial, server.settings.issuer, "bob")

    rotated = recallctl(server.address, "rotate", "--jti", refresh.jti, "--json")
    assert rotated.returncode == 0, rotated.stderr
    assert json_of(rotated)["outcome"] == "ROTATED"

    revoked = recallctl(server.address, "revoke", "--jti", custom.jti, "--reason", "leaked", "--json")
    assert (revoked.returncode, json_of(revoked)["count"]) == (0, 1), revoked.stderr
    assert client.check(custom.serial).state is TokenState.REVOKED
    assert client.check(jti=custom.jti).state is TokenState.REVOKED  # the library alike
    assert client.check(jti=access.jti).serial == access.serial


def test_jti_never_registered_without_issuer_is_revoked_under_the_servers_issuer(server, client):
    revoked = recallctl(server.address, "revoke", "--jti", "ext-1", "--json")
    assert (revoked.returncode, json_of(revoked)["count"]) == (0, 1), revoked.stderr
    assert client.check(issuer=server.settings.issuer, jti="ext-1").state is TokenState.REVOKED
    assert client.check(issuer=OTHER, jti="ext-1").state is TokenState.UNKNOWN
