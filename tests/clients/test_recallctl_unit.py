"""recallctl against the fake servicer of test_client_unit, mostly in-process."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from recallclient import canonical_jti, cli
from recallclient._proto.recall.v1 import recall_pb2 as pb

from .test_client_unit import REVOKED_AT, FakeRecall, closed_target, running


@pytest.fixture
def fake() -> FakeRecall:
    return FakeRecall()


@pytest.fixture
def target(fake: FakeRecall, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv(cli.TARGET_ENV, raising=False)
    with running(fake) as address:
        yield address


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run recallctl in-process; return (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("where", ["after", "before"])
def test_register_json_with_options_before_or_after_command(capsys, fake, target, where):
    options = ["--target", target, "--json"]
    command = ["register", "--subject", "u1", "--client", "app", "--issuer", "https://idp",
               "--jti", "j1", "--scope", "read write", "--type", "refresh", "--family", "fam",
               "--origin", "node-1", "--actor", "ops"]
    argv = command + options if where == "after" else options + command
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert json_lines(out) == [
        {"serial": 101, "jti": "j1", "canonical_jti": canonical_jti(101), "existing": False}
    ]
    request = fake.requests[0][1]
    assert request.actor == "ops"
    assert request.tokens[0] == pb.TokenSpec(
        jti="j1", issuer="https://idp", subject="u1", client_id="app", scopes=["read", "write"],
        type=pb.REFRESH, origin="node-1", family="fam",
    )


def test_register_human_and_ttl(capsys, fake, target):
    before = int(time.time())
    code, out, _ = run(capsys, "register", "--subject", "u1", "--client", "app", "--ttl", "60",
                       "--target", target)
    after = int(time.time())
    assert code == 0
    assert out == f"registered serial 101 jti {canonical_jti(101)}\n"
    assert before + 60 <= fake.requests[0][1].tokens[0].expires_at <= after + 60


def test_later_target_wins_and_json_survives_the_command(capsys, target):
    code, out, _ = run(capsys, "--target", closed_target(), "--json", "stats", "--target", target)
    assert code == 0 and json_lines(out)[0]["store_id"] == "store-a"


def test_revoke_json_maps_every_selector(capsys, fake, target):
    code, out, _ = run(
        capsys, "revoke", "--serial", "3", "--serial", "4", "--issuer", "https://idp",
        "--jti", "ext-9", "--exp", "99", "--subject", "u1", "--client", "app",
        "--family", "fam", "--reason", "leaked", "--actor", "ops", "--json", "--target", target,
    )
    assert code == 0 and json_lines(out) == [{"seq": 17, "count": 3}]
    request = fake.requests[0][1]
    assert request.selector == pb.Selector(
        serials=[3, 4], tokens=[pb.JtiRef(issuer="https://idp", jti="ext-9", expires_at=99)],
        subject="u1", client_id="app", family="fam",
    )
    assert (request.reason, request.actor) == ("leaked", "ops")


def test_revoke_human_with_default_actor_from_user_name(capsys, fake, target, monkeypatch):
    monkeypatch.setenv("LOGNAME", "carol")
    code, out, _ = run(capsys, "--target", target, "revoke", "--serial", "1", "--serial", "2",
                       "--serial", "5")
    assert code == 0 and out == "revoked 3 tokens (seq 17)\n"
    assert fake.requests[0][1].actor == "carol"


@pytest.mark.parametrize("argv", [
    ["revoke", "--reason", "x"],
    ["revoke", "--issuer", "i"],
    ["revoke", "--serial", "0"],
    ["revoke", "--serial", str(2**63)],
    ["check", "x"],
    ["check", "1", "--min-seq", "-1"],
    ["check"],
    ["check", "1", "--jti", "j"],
    ["introspect", "--issuer", "i"],
    ["register", "--subject", "u1"],
    ["register", "--subject", "u1", "--client", "c", "--type", "id"],
])
def test_usage_errors_exit_2_before_any_call(capsys, fake, target, argv):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv + ["--target", target])
    assert exited.value.code == 2
    assert "recallctl" in capsys.readouterr().err and fake.requests == []


def test_check_json_one_object_per_serial(capsys, fake, target):
    code, out, _ = run(capsys, "check", "5", "12", "13", "--min-seq", "4", "--json",
                       "--target", target)
    assert code == 4  # not every token is active
    assert json_lines(out) == [
        {"serial": 5, "state": "ACTIVE", "seq": 17},
        {"serial": 12, "state": "REVOKED", "revoked_at": REVOKED_AT, "reason": "leaked",
         "seq": 17},
        {"serial": 13, "state": "EXPIRED", "seq": 17},
    ]
    assert [r.min_seq for _, r in fake.requests] == [4, 4, 4]


def test_check_human_lines(capsys, target):
    code, out, _ = run(capsys, "--target", target, "check", "12", "5")
    assert code == 4
    assert out == "12 REVOKED (reason: leaked, at 2026-11-27T10:00:00Z)\n5 ACTIVE\n"


def test_check_by_jti(capsys, fake, target):
    code, out, _ = run(capsys, "--json", "--target", target, "check", "--issuer", "https://idp",
                       "--jti", "ext-1")
    assert code == 4 and json_lines(out)[0]["state"] == "REVOKED"
    assert fake.requests[0][1] == pb.CheckRequest(issuer="https://idp", jti="ext-1")
    run(capsys, "--target", target, "check", "--issuer", "https://idp", "--jti", "ext-1")
    assert fake.requests[1][1] == fake.requests[0][1]


def test_introspect_json_and_human(capsys, target):
    code, out, _ = run(capsys, "introspect", "5", "12", "--json", "--target", target)
    first, second = json_lines(out)
    assert code == 4 and first["active"] is True and first["serial"] == 5
    assert second == {"active": False, "state": "REVOKED", "serial": 12,
                      "revoked_at": REVOKED_AT, "reason": "leaked", "actor": "alice"}
    code, out, _ = run(capsys, "introspect", "12", "--target", target)
    assert out.splitlines() == [
        "active:     False",
        "state:      REVOKED",
        "serial:     12",
        f"revoked_at: {REVOKED_AT} (2026-11-27T10:00:00Z)",
        "reason:     leaked",
        "actor:      alice",
    ]


def test_stats_json_and_human(capsys, target):
    code, out, _ = run(capsys, "stats", "--json", "--target", target)
    assert code == 0 and json_lines(out) == [{
        "registered": 10, "revoked": 2, "active": 7, "expired": 1, "foreign_revoked": 3,
        "seq": 17, "store_id": "store-a", "data_bytes": 4096, "map_bytes": 1 << 20,
        "staleness": 0.0, "max_map_bytes": 1 << 30, "registrations_refused": False, "insecure": False,
    }]
    code, out, _ = run(capsys, "stats", "--target", target)
    assert "store_id:              store-a" in out.splitlines()
    assert len(out.splitlines()) == 13


def test_target_from_environment(capsys, target, monkeypatch):
    monkeypatch.setenv(cli.TARGET_ENV, target)
    code, out, _ = run(capsys, "stats", "--json")
    assert code == 0 and json_lines(out)[0]["seq"] == 17


def test_server_error_exits_1_with_status_and_message(capsys, fake, target):
    fake.fail = (grpc.StatusCode.INVALID_ARGUMENT, "serial 9 is out of range")
    code, out, err = run(capsys, "revoke", "--serial", "9", "--target", target)
    assert (code, out) == (1, "")
    assert err == "recallctl: INVALID_ARGUMENT: serial 9 is out of range\n"


def test_unreachable_server_exits_1_unavailable(capsys):
    code, out, err = run(capsys, "--target", closed_target(), "stats")
    assert (code, out) == (1, "") and err.startswith("recallctl: UNAVAILABLE: ")


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["revoke", "--help"])
    assert exited.value.code == 0 and "exit codes" in capsys.readouterr().out
    assert "exit codes" in cli.__doc__.lower()


def test_installed_command_in_a_subprocess(fake, target):
    recallctl = Path(sys.executable).with_name("recallctl")
    env = dict(os.environ, **{cli.TARGET_ENV: target})
    done = subprocess.run([recallctl, "check", "12", "--json"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 4, done.stderr  # revoked: not active
    assert json.loads(done.stdout)["reason"] == "leaked"
    done = subprocess.run([recallctl, "revoke"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "revoke: give --serial" in done.stderr
    assert [name for name, _ in fake.requests] == ["Check"]
