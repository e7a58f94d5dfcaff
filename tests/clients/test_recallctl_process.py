"""recallctl as a process, as a new user runs it, against a real server on 127.0.0.1:0:
the server's issuer by default, exit codes, time formats, targets and argument checks."""

import datetime
import json
import os
import pty
import subprocess
import time

import pytest
from recallclient import TokenState, TokenType

from recallcore.settings import Settings

from ..support import RECALLCTL, ServerThread, StreamingCommand, recallctl, run_command

OTHER = "https://other-idp.example"


def json_of(done) -> dict:
    assert done.stdout.strip(), f"no output (exit {done.returncode}): {done.stderr}"
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


# ------------------------------------------------------------- time formats


def test_times_as_dates_and_iso_8601_mean_what_unix_seconds_mean(server, client):
    now = int(time.time())
    old = client.register_one("alice", "web", issued_at=now - 100, ttl=3600).serial
    newer = client.register_one("alice", "cli", issued_at=now - 10, ttl=3600).serial
    between = datetime.datetime.fromtimestamp(now - 50, datetime.UTC)
    cut = recallctl(server.address, "cutoff", "--subject", "alice", "--json",
                    "--before", between.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert cut.returncode == 0, cut.stderr
    assert (json_of(cut)["before"], json_of(cut)["count"]) == (now - 50, 1)
    assert [client.check(s).state for s in (old, newer)] == [TokenState.REVOKED, TokenState.ACTIVE]

    records = [json.loads(line) for line in recallctl(server.address, "audit", "--json").stdout.splitlines()]
    first = records[0]["time"]
    in_paris = datetime.datetime.fromtimestamp(first, datetime.timezone(datetime.timedelta(hours=1)))
    day = datetime.datetime.fromtimestamp(first, datetime.UTC).date()
    for since in (str(first), in_paris.isoformat(), day.isoformat()):
        done = recallctl(server.address, "audit", "--json", "--since", since)
        assert done.returncode == 0, (since, done.stderr)
        assert [json.loads(line) for line in done.stdout.splitlines()] == records
    done = recallctl(server.address, "audit", "--json", "--until", "2001-01-01")
    assert (done.returncode, done.stdout) == (5, "")  # nothing that early

    # A zone-less time is UTC: issued a second before the rule's time is cut off, at it is not.
    for issued, state in ((between - datetime.timedelta(seconds=1), "REVOKED"), (between, "UNKNOWN")):
        claims = recallctl(server.address, "check", "--issuer", OTHER, "--jti", "x", "--sub", "alice",
                           "--iat", issued.replace(tzinfo=None).isoformat(sep=" "), "--json")
        assert json_of(claims)["state"] == state


@pytest.mark.parametrize("argv", [
    ["cutoff", "--subject", "a", "--before", "tomorrow"],
    ["cutoff", "--subject", "a", "--before", "-5"],
    ["audit", "--since", "2026-13-01"],
    ["audit", "--until", "1969-12-31"],
    ["check", "--jti", "j", "--iat", "12:00"],
    ["revoke", "--jti", "j", "--exp", "next week"],
])
def test_a_time_that_is_none_is_a_usage_error_naming_the_formats(server, argv):
    done = recallctl(server.address, *argv)
    assert (done.returncode, done.stdout) == (2, "")
    assert "Unix seconds, a date (2026-12-01) or an ISO 8601 time" in done.stderr or "outside 1970" in done.stderr


# ------------------------------------------------------------- targets


def test_a_target_without_a_port_means_port_50051(data_dir):
    try:
        on_default_port = ServerThread(Settings(data_dir=data_dir, listen="127.0.0.2:50051", sweep_interval=3600))
    except OSError:
        pytest.skip("127.0.0.2:50051 is taken on this host")
    try:
        done = recallctl("127.0.0.2", "stats", "--json")
        assert done.returncode == 0, done.stderr
        done = run_command(str(RECALLCTL), "stats", "--json", env={**os.environ, "RECALL_TARGET": "127.0.0.2"})
        assert done.returncode == 0, done.stderr
    finally:
        on_default_port.stop()


def test_an_unreachable_target_is_named_with_the_port_tried():
    done = recallctl("127.0.0.3", "stats")
    assert done.returncode == 1
    assert done.stderr.startswith("recallctl: UNAVAILABLE: ") and "(target 127.0.0.3:50051)" in done.stderr


@pytest.mark.parametrize("target, complaint", [
    ("127.0.0.1:", "has no port"),
    ("127.0.0.1:http", "the port must be a number"),
    ("127.0.0.1:70000", "the port must be a number"),
    (":50051", "has no host"),
    ("[::1", "brackets"),
])
def test_a_malformed_target_is_a_usage_error_from_the_flag_or_the_environment(target, complaint):
    done = recallctl(target, "stats")
    assert (done.returncode, done.stdout) == (2, "") and complaint in done.stderr and "--target" in done.stderr
    done = run_command(str(RECALLCTL), "stats", env={**os.environ, "RECALL_TARGET": target})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("recallctl: RECALL_TARGET: ") and complaint in done.stderr


# ------------------------------------------------------------- --ttl


@pytest.mark.parametrize("argv", [
    ["register", "--subject", "a", "--client", "c", "--ttl", "0"],
    ["register", "--subject", "a", "--client", "c", "--ttl", "-60"],
    ["rotate", "1", "--ttl", "0"],
])
def test_a_ttl_of_no_time_is_a_usage_error_before_any_call(server, client, argv):
    done = recallctl(server.address, *argv)
    assert (done.returncode, done.stdout) == (2, "") and "--ttl" in done.stderr
    assert client.stats().seq == 0


# ------------------------------------------------------------- exit codes


def test_check_and_introspect_exit_0_only_when_every_token_is_active(server, client):
    now = int(time.time())
    active = [client.register_one("alice", "web").serial for _ in range(2)]
    revoked = client.register_one("bob", "web").serial
    client.revoke(serials=[revoked], reason="leaked")
    expired = client.register_one("carol", "web", issued_at=now - 100, expires_at=now - 10).serial
    rotated = client.register_one("dave", "web", type=TokenType.REFRESH).serial
    client.rotate(rotated)
    unknown = 999

    both = recallctl(server.address, "check", *map(str, active))
    assert (both.returncode, both.stderr) == (0, "") and both.stdout.count(" ACTIVE\n") == 2
    assert recallctl(server.address, "introspect", *map(str, active)).returncode == 0
    for serial, state in ((revoked, "REVOKED"), (expired, "EXPIRED"), (rotated, "ROTATED"), (unknown, "UNKNOWN")):
        done = recallctl(server.address, "check", str(active[0]), str(serial))
        assert (done.returncode, done.stderr) == (4, ""), state
        assert done.stdout.splitlines()[1].startswith(f"{serial} {state}")
        looked = recallctl(server.address, "introspect", str(serial), "--json")
        assert (looked.returncode, json_of(looked)["active"]) == (4, False)
    foreign = recallctl(server.address, "check", "--issuer", OTHER, "--jti", "never-seen")
    assert (foreign.returncode, foreign.stdout) == (4, "never-seen UNKNOWN\n")


@pytest.mark.parametrize("argv", [["trace", "999"], ["audit", "--serial", "999"]])
def test_trace_of_a_serial_never_registered_exits_5_saying_so(server, client, argv):
    client.register_one("alice", "web")
    done = recallctl(server.address, *argv)
    assert (done.returncode, done.stdout) == (5, "")
    assert done.stderr == "recallctl: no audit records: serial 999 was never registered here (the highest is 1)\n"
    done = recallctl(server.address, *argv[:-1], "1")
    assert (done.returncode, done.stderr) == (0, "") and "register" in done.stdout


def test_audit_matching_nothing_exits_5_and_a_registered_serial_is_not_called_unknown(server, client):
    client.register_one("alice", "web")
    done = recallctl(server.address, "audit", "--subject", "nobody", "--json")
    assert (done.returncode, done.stdout, done.stderr) == (5, "", "recallctl: no audit records match\n")
    done = recallctl(server.address, "audit", "--serial", "1", "--until", "2001-01-01")
    assert (done.returncode, done.stderr) == (5, "recallctl: no audit records of serial 1 match\n")


# ------------------------------------------------------------- the kill switch


@pytest.mark.parametrize("scope", [["--all"], ["--issuer", "recallcore"]])
def test_the_kill_switch_needs_a_reason_and_a_confirmation(server, client, scope):
    serial = client.register_one("alice", "web").serial
    flag = scope[0]
    done = recallctl(server.address, "cutoff", *scope, "--yes", stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (2, "") and f"cutoff {flag}: give --reason" in done.stderr
    done = recallctl(server.address, "cutoff", *scope, "--reason", "key leaked", stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (2, "") and f"cutoff {flag}: give --yes to confirm" in done.stderr
    assert client.check(serial).state is TokenState.ACTIVE and client.stats().seq == 1

    done = recallctl(server.address, "cutoff", *scope, "--reason", "key leaked", "--yes", "--json")
    assert (done.returncode, json_of(done)["count"]) == (0, 1), done.stderr
    assert client.check(serial).state is TokenState.REVOKED
    [record] = client.audit(after_seq=1)
    assert (record["type"], record["reason"]) == ("cutoff", "key leaked")


@pytest.mark.parametrize("answer, code", [("no", 2), ("yes", 0)])
def test_the_kill_switch_asks_on_a_terminal(server, client, answer, code):
    serial = client.register_one("alice", "web").serial
    terminal, line = pty.openpty()
    asking = StreamingCommand(str(RECALLCTL), "--target", server.address, "cutoff", "--all", "--reason", "r",
                              stdin=line)
    os.close(line)
    try:
        asking.wait_for(asking.stderr, lambda text: "every token of every issuer issued before now" in text,
                        "the question")
        os.write(terminal, answer.encode() + b"\n")
        assert asking.wait() == code
    finally:
        asking.close()
        os.close(terminal)
    revoked = client.check(serial).state is TokenState.REVOKED
    assert revoked == (answer == "yes")
    if answer == "no":
        assert asking.stdout == [] and asking.stderr[-1].endswith("recallctl: cutoff: not confirmed; nothing was revoked\n")
    else:
        assert asking.stdout[0].startswith("cut off everyone before ")


# ------------------------------------------------------------- what is printed


def test_introspect_prints_only_the_fields_the_token_has(server, client):
    serial = client.register_one("alice", "web", ttl=600).serial  # no family, origin or scopes
    done = recallctl(server.address, "introspect", str(serial))
    assert done.returncode == 0, done.stderr
    keys = [line.split(":", 1)[0] for line in done.stdout.splitlines()]
    assert keys == ["active", "client_id", "username", "token_type", "exp", "iat", "sub", "iss", "jti",
                    "state", "serial"]
    assert "this node keeps only" not in done.stdout
    looked = json_of(recallctl(server.address, "introspect", str(serial), "--json"))
    assert set(looked) == set(keys) and looked["sub"] == "alice"


def test_on_a_follower_introspect_and_check_say_what_the_primary_keeps(servers, server, client, tmp_path):
    active = client.register_one("alice", "web").serial
    revoked = client.register_one("bob", "web").serial
    seq = client.revoke(serials=[revoked], reason="leaked").seq
    follower = servers.start(Settings(data_dir=tmp_path / "f", listen="127.0.0.1:0", follow=server.address,
                                      heartbeat_interval=0.05))
    assert recallctl(follower.address, "check", str(revoked), "--min-seq", str(seq)).returncode == 4

    done = recallctl(follower.address, "introspect", str(active))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":", 1)[0] for line in lines[:-1]] == ["active", "exp", "state", "serial"]
    assert lines[-1] == "(this node keeps only the state, serial and expiry: ask the primary for the rest)"
    assert "iat" not in json_of(recallctl(follower.address, "introspect", str(active), "--json"))

    done = recallctl(follower.address, "check", str(revoked))
    assert (done.returncode, done.stdout) == (4, f"{revoked} REVOKED (why and when: this node does not know; "
                                                 "ask the primary)\n")
    done = recallctl(server.address, "check", str(revoked))
    assert done.stdout.startswith(f"{revoked} REVOKED (reason: leaked, at ")


def test_audit_and_trace_print_a_header_line_first(server, client):
    serial = client.register_one("alice", "web").serial
    for argv in (["audit"], ["trace", str(serial)]):
        done = recallctl(server.address, *argv)
        assert done.returncode == 0, done.stderr
        header, record = done.stdout.splitlines()
        assert header.split("  ") == ["seq", "time", "type", "actor", "reason", "count", "detail"]
        fields = record.split("  ")
        assert (fields[0], fields[2]) == ("1", "register")
    assert "seq  time" not in recallctl(server.address, "audit", "--json").stdout
