"""`recallctl rotate`, `cutoff`, `audit`, `trace` and `check` with claims, against a real server.

Mostly in-process (cli.main with capsys); the exit code of a reuse and a
followed audit stopped by SIGINT also as processes. A followed audit that
must see a record "committed meanwhile" commits it when the first line is
printed (in-process: the Tee stdout wrapper; subprocess: reading its lines).
"""

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest
from recallclient import RecallClient, TokenSpec, TokenType, canonical_jti, cli

from recallcore.settings import DEFAULT_MAX_TOKEN_LIFETIME, Settings

from ..support import (
    RECALLCTL,
    STARTUP_TIMEOUT,
    ServerProcess,
    StreamingCommand,
    free_address,
    interrupt_when,
    recallctl,
    restart_under,
)
from .test_client_unit import closed_target
from .test_recallctl_watch import Tee

OTHER = "https://other-idp.example"
ROTATED_KEYS = {"outcome", "serial", "jti", "family", "seq"}
AUDIT_KEYS = {"seq", "time", "type", "actor", "origin", "reason", "count"}


@pytest.fixture(autouse=True)
def no_target_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.TARGET_ENV, raising=False)


def ctl(capsys, server, *argv: str) -> tuple[int, str, str]:
    """Run recallctl in-process against `server`; return (exit code, stdout, stderr)."""
    code = cli.main([*argv, "--target", server.address])
    out, err = capsys.readouterr()
    return code, out, err


def ctl_json(capsys, server, *argv: str, code: int = 0) -> list[dict]:
    """Run `recallctl --json ARGV`, expect exit `code` and no stderr; return its JSON lines."""
    got, out, err = ctl(capsys, server, "--json", *argv)
    assert (got, err) == (code, "")
    return [json.loads(line) for line in out.splitlines()]


def refresh_token(client: RecallClient, subject: str = "alice", client_id: str = "web", **fields) -> int:
    spec = TokenSpec(subject, client_id, type=TokenType.REFRESH, scopes=("read", "write"), **fields)
    return client.register([spec]).tokens[0].serial


# ---------------------------------------------------------------- rotate


@pytest.mark.parametrize("where", ["before", "after"])
def test_rotate_json_before_or_after_the_command_inherits_from_the_presented_token(
        capsys, server, client, where):
    serial = refresh_token(client, origin="login", family="fam-7")
    argv = ["--json", "rotate", str(serial)] if where == "before" else ["rotate", str(serial), "--json"]
    code, out, err = ctl(capsys, server, *argv)
    assert (code, err) == (0, "")
    [rotated] = [json.loads(line) for line in out.splitlines()]
    assert set(rotated) == ROTATED_KEYS
    assert (rotated["outcome"], rotated["serial"], rotated["family"]) == ("ROTATED", serial + 1, "fam-7")
    assert rotated["seq"] == client.stats().seq
    assert client.check(serial).state.name == "ROTATED"
    info = client.introspect(rotated["serial"])
    assert (info["active"], info["sub"], info["client_id"], info["scope"], info["family"], info["jti"]) == (
        True, "alice", "web", "read write", "fam-7", rotated["jti"])


def test_rotate_retry_then_reuse_exits_3_then_refused_exits_4(capsys, server, client):
    serial = refresh_token(client)
    [rotated] = ctl_json(capsys, server, "rotate", str(serial), "--request-id", "r-1")
    [retried] = ctl_json(capsys, server, "rotate", str(serial), "--request-id", "r-1")
    assert retried == {**rotated, "outcome": "RETRIED", "retried": True}
    family = client.introspect(rotated["serial"])["family"]
    assert rotated["family"] == family == canonical_jti(serial, client.stats().store_id)  # founded by the first rotation

    [reuse] = ctl_json(capsys, server, "rotate", str(serial), "--request-id", "r-2", code=3)
    assert reuse == {"outcome": "REUSE_DETECTED", "reuse_detected": True, "count": 2,
                     "family": family, "seq": client.stats().seq}
    assert [client.check(s).state.name for s in (serial, rotated["serial"])] == ["REVOKED", "REVOKED"]

    [refused] = ctl_json(capsys, server, "rotate", str(rotated["serial"]), code=4)
    assert refused == {"outcome": "REFUSED", "state": "REVOKED", "family": family, "seq": reuse["seq"]}
    [unknown] = ctl_json(capsys, server, "rotate", "999", code=4)
    assert (unknown["outcome"], unknown["state"]) == ("REFUSED", "UNKNOWN")


def test_rotate_human_lines(capsys, server, client):
    serial = refresh_token(client, family="fam-h")
    successor = f"successor serial {serial + 1} jti rc2."
    code, out, _ = ctl(capsys, server, "rotate", str(serial), "--request-id", "r-1")
    assert code == 0 and out.startswith(f"rotated {serial}: {successor}")
    assert out.endswith(f" (family fam-h, seq {serial + 1})\n")
    code, out, _ = ctl(capsys, server, "rotate", str(serial), "--request-id", "r-1")
    assert code == 0 and out.startswith(f"retried the rotation of {serial}: {successor}")
    code, out, _ = ctl(capsys, server, "rotate", str(serial))
    assert code == 3
    assert out == (f"REUSE DETECTED: {serial} was already rotated; family fam-h revoked "
                   f"(2 tokens, seq {serial + 2})\n")
    code, out, _ = ctl(capsys, server, "rotate", str(serial))
    assert (code, out) == (4, f"refused: {serial} is REVOKED\n")


def test_rotate_by_issuer_and_jti_with_ttl_actor_and_origin(capsys, server, client, monkeypatch):
    serial = refresh_token(client, issuer=OTHER, jti="rt-1")
    before = int(time.time())
    [rotated] = ctl_json(capsys, server, "rotate", "--issuer", OTHER, "--jti", "rt-1", "--ttl", "120",
                         "--actor", "gateway", "--origin", "node-7")
    after = int(time.time())
    # a family founded by rotation is named after the canonical jti (an id), never the caller's jti
    assert rotated["outcome"] == "ROTATED" and rotated["family"] == canonical_jti(serial, client.stats().store_id)
    info = client.introspect(rotated["serial"])
    assert before + 120 <= info["exp"] <= after + 120 and info["iss"] == OTHER
    [record] = client.audit(serial=serial, after_seq=rotated["seq"] - 1)
    assert (record["type"], record["on_behalf_of"], record["origin"]) == ("rotate", "gateway", "node-7")
    assert record["actor"] == "anonymous"  # who the server authenticated: nobody, on loopback

    monkeypatch.setenv("LOGNAME", "carol")
    ctl_json(capsys, server, "rotate", str(rotated["serial"]))
    [again] = client.audit(after_seq=rotated["seq"])
    assert (again["type"], again["on_behalf_of"]) == ("rotate", "carol")


def test_rotate_an_access_token_is_an_error_exit_1(capsys, server, client):
    serial = client.register_one("alice", "web").serial
    code, out, err = ctl(capsys, server, "rotate", str(serial))
    assert (code, out) == (1, "")
    assert err.startswith("recallctl: INVALID_ARGUMENT: serial: ") and "access token" in err


# ---------------------------------------------------------------- cutoff


def test_cutoff_json_counts_registered_tokens_and_reports_the_rule(capsys, server, client, monkeypatch):
    monkeypatch.setenv("LOGNAME", "carol")
    alice = [client.register_one("alice", app).serial for app in ("web", "cli")]
    bob = client.register_one("bob", "web").serial
    earliest = int(time.time())
    [cut] = ctl_json(capsys, server, "cutoff", "--subject", "alice", "--reason", "account takeover")
    latest = int(time.time())
    assert set(cut) == {"seq", "count", "before", "retires_at"}
    assert cut["count"] == 2 and earliest <= cut["before"] <= latest
    assert cut["retires_at"] == cut["before"] + DEFAULT_MAX_TOKEN_LIFETIME
    assert [client.check(s).state.name for s in (*alice, bob)] == ["REVOKED", "REVOKED", "ACTIVE"]
    [record] = client.audit(after_seq=cut["seq"] - 1)
    assert (record["type"], record["on_behalf_of"], record["reason"], record["count"]) == (
        "cutoff", "carol", "account takeover", 2)
    assert record["rule"] == {"scope": "subject", "value": "alice", "before": cut["before"]}

    # an explicit --before covers tokens issued strictly before it
    [everyone] = ctl_json(capsys, server, "cutoff", "--all", "--before", str(latest + 1), "--actor", "ops",
                          "--reason", "signing key leaked", "--yes")
    assert everyone["count"] == 1 and client.check(bob).state.name == "REVOKED"
    [record] = client.audit(after_seq=everyone["seq"] - 1)
    assert record["rule"] == {"scope": "all", "value": "", "before": latest + 1}


def test_cutoff_human_line_and_scopes(capsys, server, client):
    client.register_one("alice", "web")
    before = int(time.time()) + 1  # strictly after the token's issue time
    code, out, _ = ctl(capsys, server, "cutoff", "--client", "web", "--before", str(before))
    retires = cli.iso(before + DEFAULT_MAX_TOKEN_LIFETIME)
    assert code == 0
    assert out == (f"cut off client web before {cli.iso(before)}: 1 token revoked (seq 2); "
                   f"the rule retires at {retires}\n")
    code, out, _ = ctl(capsys, server, "cutoff", "--issuer", OTHER, "--before", str(before), "--reason", "r", "--yes")
    assert code == 0 and out.startswith(f"cut off issuer {OTHER} before ") and ": 0 tokens revoked" in out


def test_cutoff_in_the_future_is_refused_exit_1(capsys, server):
    code, out, err = ctl(capsys, server, "cutoff", "--subject", "alice", "--before", str(int(time.time()) + 86400))
    assert (code, out) == (1, "") and err.startswith("recallctl: INVALID_ARGUMENT: rule.before")


# ------------------------------------------------------ check with claims


def test_check_claims_of_an_unregistered_token_against_a_cutoff_rule(capsys, server, client):
    before = int(time.time())
    client.cutoff("client", "web", before=before)
    ref = ["check", "--issuer", OTHER, "--jti", "ext-1"]
    [old] = ctl_json(capsys, server, *ref, "--client", "web", "--iat", str(before - 1), code=4)
    assert old == {"serial": 0, "state": "REVOKED", "revoked_at": 0, "reason": "cut-off rule",
                   "seq": client.stats().seq}
    [new] = ctl_json(capsys, server, *ref, "--client", "web", "--iat", str(before), code=4)
    [other_client] = ctl_json(capsys, server, *ref, "--client", "cli", "--sub", "alice", "--iat", "1", code=4)
    assert (new["state"], other_client["state"]) == ("UNKNOWN", "UNKNOWN")
    [no_iat] = ctl_json(capsys, server, *ref, "--client", "web", code=4)  # unknown issue time: fails closed
    assert no_iat["state"] == "REVOKED"
    code, out, _ = ctl(capsys, server, *ref, "--client", "web", "--iat", str(before - 1))
    assert (code, out) == (4, "ext-1 REVOKED (reason: cut-off rule)\n")


# ---------------------------------------------------------------- audit


def build_history(client: RecallClient) -> dict[str, int]:
    """Register, rotate, revoke and cut off; return the serials by name."""
    alice = refresh_token(client, "alice", "web")
    bob = client.register_one("bob", "cli").serial
    successor = client.rotate(alice, actor="gateway").successor.serial
    client.revoke(serials=[bob], reason="leaked", actor="ops")
    client.cutoff("subject", "carol", reason="account takeover", actor="ops")
    return {"alice": alice, "bob": bob, "successor": successor}


def test_audit_json_every_record_with_its_detail(capsys, server, client):
    serials = build_history(client)
    records = ctl_json(capsys, server, "audit")
    assert [(r["seq"], r["type"]) for r in records] == [
        (1, "register"), (2, "register"), (3, "rotate"), (4, "revoke"), (5, "cutoff")]
    assert all(AUDIT_KEYS <= set(r) for r in records)
    rotate, revoke = records[2], records[3]
    assert (rotate["on_behalf_of"], rotate["serial"], rotate["successor"]) == (
        "gateway", serials["alice"], serials["successor"])
    assert (revoke["on_behalf_of"], revoke["reason"], revoke["count"]) == ("ops", "leaked", 1)
    assert records[4]["rule"]["value"] == "carol"
    assert ctl_json(capsys, server, "audit", "--json") == records


@pytest.mark.parametrize("argv, seqs", [
    (["--subject", "alice"], [1, 3]),
    (["--client", "cli"], [2, 4]),  # 4 revoked bob's cli token
    (["--subject", "carol"], [5]),
    (["--serial", "2"], [2, 4]),
    (["--after-seq", "3"], [4, 5]),
    (["--limit", "2"], [1, 2]),
    (["--after-seq", "1", "--limit", "2"], [2, 3]),
    (["--subject", "nobody"], []),
])
def test_audit_filters(capsys, server, client, argv, seqs):
    build_history(client)
    code, out, err = ctl(capsys, server, "audit", "--json", *argv)
    assert [json.loads(line)["seq"] for line in out.splitlines()] == seqs
    assert (code, err) == ((0, "") if seqs else (5, "recallctl: no audit records match\n"))


def test_audit_time_filters_match_the_record_times(capsys, server, client):
    build_history(client)
    records = ctl_json(capsys, server, "audit")
    first, last = records[0]["time"], records[-1]["time"]
    for since, until in ((last, 0), (last + 1, 0), (0, first), (0, first - 1), (first, last)):
        argv = ["--since", str(since)] + (["--until", str(until)] if until else [])
        expected = [r for r in records if r["time"] >= since and (not until or r["time"] <= until)]
        code, out, _ = ctl(capsys, server, "audit", "--json", *argv)
        assert ([json.loads(line) for line in out.splitlines()], code) == (expected, 0 if expected else 5)


def test_audit_human_lines(capsys, server, client):
    build_history(client)
    records = ctl_json(capsys, server, "audit")
    code, out, _ = ctl(capsys, server, "audit")
    header, *lines = out.splitlines()
    assert code == 0 and len(lines) == 5
    assert header == "seq  time  type  actor  reason  count  detail"
    iso = [cli.iso(r["time"]) for r in records]
    peer = [r["peer"] for r in records]  # the caller's address: who acted is who authenticated
    assert lines[1] == (f"2  {iso[1]}  register  anonymous  -  1  clients=cli first_serial=2 last_serial=2 "
                        f"peer={peer[1]} subjects=bob")
    assert lines[3] == (f"4  {iso[3]}  revoke  anonymous  leaked  1  clients=cli on_behalf_of=ops "
                        f"peer={peer[3]} selector.serial_sample=2 selector.serials=1 subjects=bob")
    assert lines[4] == (f'5  {iso[4]}  cutoff  anonymous  "account takeover"  0  on_behalf_of=ops '
                        f'peer={peer[4]} rule.before={records[4]["rule"]["before"]} rule.scope=subject '
                        f'rule.value=carol subjects=carol')


def test_trace_is_audit_serial_in_order(capsys, server, client):
    serials = build_history(client)
    alice, successor = serials["alice"], serials["successor"]
    assert client.rotate(alice, request_id="replay").outcome == "REUSE_DETECTED"
    trace = ctl_json(capsys, server, "trace", str(alice))
    assert [e["type"] for e in trace] == ["register", "rotate", "reuse_detected"]
    assert all(AUDIT_KEYS <= set(e) for e in trace)
    assert [e["seq"] for e in trace] == sorted(e["seq"] for e in trace)
    assert [e["time"] for e in trace] == sorted(e["time"] for e in trace)
    assert trace[2]["reason"] == "refresh token reuse detected" and trace[2]["count"] == 2
    assert trace == ctl_json(capsys, server, "audit", "--serial", str(alice))
    assert [e["type"] for e in ctl_json(capsys, server, "trace", str(successor))] == ["rotate", "reuse_detected"]
    code, out, _ = ctl(capsys, server, "trace", str(alice))
    assert code == 0 and [line.split("  ")[2] for line in out.splitlines()] == [
        "type", "register", "rotate", "reuse_detected"]  # under the header


def test_trace_of_an_expired_token_has_its_expiry(capsys, server, client):
    now = int(time.time())
    serial = client.register_one("dave", "web", issued_at=now - 100, expires_at=now - 10).serial
    trace = ctl_json(capsys, server, "trace", str(serial))
    assert {(e["type"], e["seq"]) for e in trace} == {("register", 1), ("expired", 0)}
    assert [e["time"] for e in trace] == sorted(e["time"] for e in trace)


def test_audit_follow_prints_new_records_until_count(capsys, server, client):
    serial = client.register_one("alice", "web").serial

    def on_line(line: str) -> None:
        if json.loads(line)["seq"] == 1:
            client.revoke(serials=[serial], reason="followed", actor="ops")

    sys.stdout = Tee(sys.stdout, on_line)
    try:
        records = ctl_json(capsys, server, "audit", "--follow", "--count", "2")
    finally:
        sys.stdout = sys.stdout.inner
    assert [(r["seq"], r["type"], r["reason"]) for r in records] == [
        (1, "register", ""), (2, "revoke", "followed")]


@pytest.mark.parametrize("stop", [["--limit", "2"], []])
def test_audit_follow_stops_at_limit_or_ctrl_c(capsys, server, client, stop):
    client.register_one("alice", "web")

    def on_line(line: str) -> None:
        record = json.loads(line)
        if record["seq"] == 1:
            # Two records in one change batch would overrun a server-side limit.
            client.register([TokenSpec("alice", "cli")])
            client.revoke(subject="alice", reason="followed")
        elif not stop and record["type"] == "revoke":
            raise KeyboardInterrupt  # what Ctrl-C does

    sys.stdout = Tee(sys.stdout, on_line)
    try:
        records = ctl_json(capsys, server, "audit", "--follow", "--subject", "alice", *stop)
    finally:
        sys.stdout = sys.stdout.inner
    expected = ["register", "register"] if stop else ["register", "register", "revoke"]
    assert [r["type"] for r in records] == expected


# ------------------------------------------------------------ usage errors


@pytest.mark.parametrize("argv", [
    ["rotate"],
    ["rotate", "1", "--jti", "j"],
    ["rotate", "--issuer", "i"],
    ["rotate", "0"],
    ["rotate", "1", "--ttl", "-5"],
    ["cutoff"],
    ["cutoff", "--subject", "a", "--client", "b"],
    ["cutoff", "--all", "--issuer", "i"],
    ["cutoff", "--all", "--before", "-1"],
    ["audit", "--limit", "0"],
    ["audit", "--count", "0"],
    ["audit", "--since", "5", "--until", "4"],
    ["audit", "--serial", "x"],
    ["trace"],
    ["trace", "0"],
    ["check", "1", "--sub", "alice"],
    ["check", "--jti", "j", "--iat", "yesterday"],
])
def test_usage_errors_exit_2_before_any_call(capsys, argv):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv + ["--target", closed_target()])
    assert exited.value.code == 2 and "recallctl" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["rotate", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    for line in ("3  rotate: reuse detected", "4  not active: check or introspect", "5  audit, trace: no record"):
        assert line in out and line in cli.__doc__


# ------------------------------------------------------------ as processes


def test_reuse_exits_3_as_a_process(server, client):
    serial = refresh_token(client)
    client.rotate(serial, request_id="first")
    env = dict(os.environ, **{cli.TARGET_ENV: server.address})
    done = subprocess.run([RECALLCTL, "rotate", str(serial), "--json"], env=env, capture_output=True,
                          text=True, timeout=STARTUP_TIMEOUT, check=False)
    assert (done.returncode, done.stderr) == (3, "")
    assert json.loads(done.stdout)["reuse_detected"] is True
    done = subprocess.run([RECALLCTL, "rotate", str(serial)], env=env, capture_output=True,
                          text=True, timeout=STARTUP_TIMEOUT, check=False)
    assert (done.returncode, done.stdout) == (4, f"refused: {serial} is REVOKED\n")


def test_audit_follow_as_a_process_flushes_each_line_and_stops_on_sigint(server, client):
    serial = client.register_one("alice", "web").serial

    def done(lines: list[str]) -> bool:
        if len(lines) == 2:  # the header and the first record
            client.revoke(serials=[serial], reason="password reset", actor="ops")
        return len(lines) > 2

    code, err, lines = interrupt_when([str(RECALLCTL), "--target", server.address, "audit", "--follow"], done)
    assert (code, err) == (0, "")
    assert lines[0] == "seq  time  type  actor  reason  count  detail\n"
    assert lines[1].startswith("1  ") and "  register  anonymous  -  1  " in lines[1]
    assert lines[2].startswith("2  ") and '  revoke  anonymous  "password reset"  1  ' in lines[2]
    assert " on_behalf_of=ops " in lines[2]


def test_audit_follow_resumes_after_a_server_restart_after_the_last_record(tmp_path):
    address = free_address()
    with contextlib.ExitStack() as cleanup:
        first = cleanup.enter_context(contextlib.closing(ServerProcess(tmp_path / "data", listen=address)))
        with RecallClient(address) as client:
            serial = client.register_one("alice", "web").serial
        follow = cleanup.enter_context(contextlib.closing(
            StreamingCommand(str(RECALLCTL), "--target", address, "audit", "--follow", "--json")))
        follow.wait_for(follow.stdout, lambda line: json.loads(line)["seq"] == 1, "the first record")
        cleanup.enter_context(contextlib.closing(restart_under(follow, first)))
        with RecallClient(address) as client:
            client.revoke(serials=[serial], reason="after the restart")
        follow.wait_for(follow.stdout, lambda line: json.loads(line)["seq"] == 2, "the record after the restart")
        assert follow.interrupt() == 0
    records = [json.loads(line) for line in follow.stdout]
    assert [(r["seq"], r["type"], r["reason"]) for r in records] == [
        (1, "register", ""), (2, "revoke", "after the restart")]
    assert follow.stderr[0].endswith(f"; reconnecting to {address} to resume after seq 1\n")
    assert follow.stderr[-1] == f"recallctl: audit: reconnected to {address}; resuming after seq 1\n"


def test_audit_follow_on_a_follower_exits_1_at_once_naming_the_primary(servers, server, tmp_path):
    follower = servers.start(Settings(data_dir=tmp_path / "f", listen="127.0.0.1:0", follow=server.address))
    done = recallctl(follower.address, "audit", "--follow")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("recallctl: FAILED_PRECONDITION: ") and server.address in done.stderr
