"""Token lifecycle end to end: rotation with reuse detection, and cut-off rules.

A real server (ServerThread on 127.0.0.1:0; its store each storage engine
in turn) whose engine runs on a fake clock, called through RecallClient. The clock moves only when a test moves
it, so the rotation grace window and rule retirement are exact. The
contracts are those of recallcore/core/lifecycle.py and recall.v1 (Rotate,
Cutoff, Rule: "tokens issued strictly before this time are revoked").
"""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from recallclient import JtiRef, RecallClient, RecallError, TokenSpec, TokenState, TokenType
from recallclient.revoked_set import SUBJECT

from recallcore.engine import Engine
from recallcore.settings import Settings

from ..support import FakeClock, ServerThread

GRACE = 10
LIFETIME = 3600  # max_token_lifetime: when a rule retires
TTL = 600
IDP = "https://idp.example"
RACERS = 8
WAIT = 30.0  # deadline of every wait; never reached when things work

ACTIVE, REVOKED, ROTATED = TokenState.ACTIVE, TokenState.REVOKED, TokenState.ROTATED
EXPIRED, UNKNOWN = TokenState.EXPIRED, TokenState.UNKNOWN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(data_dir) -> Settings:
    return Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600, token_ttl=TTL,
                    max_token_lifetime=LIFETIME, rotation_grace=GRACE)


@pytest.fixture
def server(settings, clock, stores):
    srv = ServerThread(settings, clock=clock, store=stores())
    yield srv
    srv.stop()


def refresh(client: RecallClient, subject: str = "alice", client_id: str = "web", **fields):
    """Register one refresh token (issued at the server's now unless given)."""
    return client.register_one(subject, client_id, type=TokenType.REFRESH, **fields)


def states(client: RecallClient, serials) -> list[TokenState]:
    return list(client.check_batch(list(serials)).states)


def sweep(server: ServerThread) -> int:
    return server.call(server.engine.sweep())


# ----------------------------------------------------------------- rotation


def test_rotation_chain_stays_one_family_and_inherits_the_claims(client, clock):
    root = refresh(client, scopes=("read", "offline"), expires_at=clock.now + 1200, origin="login")
    chain = [root.serial]
    family = root.jti  # a token with no family founds one named after its jti
    seq = client.stats().seq
    for step in range(20):
        clock.advance(7)
        result = client.rotate(chain[-1], request_id=f"refresh-{step}")
        assert (result.outcome, result.state, result.count) == ("ROTATED", ACTIVE, 0)
        assert result.family == family and result.seq == seq + 1
        assert not result.successor.existing and result.successor.serial not in chain
        seq = result.seq
        assert client.check(chain[-1]).state == ROTATED
        chain.append(result.successor.serial)
        assert client.check(chain[-1]).state == ACTIVE
        info = client.introspect(chain[-1])
        assert (info["sub"], info["client_id"], info["scope"]) == ("alice", "web", "read offline")
        assert (info["token_type"], info["family"], info["origin"]) == ("refresh_token", family, "login")
        assert (info["iat"], info["exp"]) == (clock.now, clock.now + 1200)  # the presented lifetime
    assert states(client, chain) == [ROTATED] * 20 + [ACTIVE]
    assert client.introspect(root.serial) == {"active": False, "state": "ROTATED", "serial": root.serial}


def test_successor_fields_given_override_the_inherited_ones(client, clock):
    root = refresh(client, scopes=("read", "write"), family="sess-1")
    result = client.rotate(root.serial, successor=TokenSpec(
        "", "", scopes=("read",), expires_at=clock.now + 100, jti="next-1", origin="refresh"))
    assert result.outcome == "ROTATED" and result.successor.jti == "next-1"
    info = client.introspect(issuer="recallcore", jti="next-1")
    assert (info["scope"], info["exp"], info["origin"]) == ("read", clock.now + 100, "refresh")
    assert info["family"] == "sess-1"
    with pytest.raises(RecallError) as err:  # a successor jti already registered
        client.rotate(result.successor.serial, successor=TokenSpec("", "", jti="next-1"))
    assert err.value.code_name == "INVALID_ARGUMENT"
    assert client.check(result.successor.serial).state == ACTIVE


def test_retry_within_grace_gets_the_same_successor_and_after_grace_is_reuse(client, clock):
    root = refresh(client)
    first = client.rotate(root.serial, request_id="req-1")
    assert first.outcome == "ROTATED"
    before = client.stats()
    clock.advance(GRACE - 1)
    again = client.rotate(root.serial, request_id="req-1")
    assert (again.outcome, again.state, again.count) == ("RETRIED", ROTATED, 0)
    assert again.successor.serial == first.successor.serial and again.successor.existing
    assert again.seq == first.seq and again.family == first.family
    after = client.stats()
    assert (after.seq, after.registered) == (before.seq, before.registered)

    clock.advance(2)  # now past the grace window
    late = client.rotate(root.serial, request_id="req-1")
    assert (late.outcome, late.count, late.seq) == ("REUSE_DETECTED", 2, first.seq + 1)
    assert states(client, [root.serial, first.successor.serial]) == [REVOKED, REVOKED]


def test_a_bare_replay_within_grace_is_reuse_not_a_retry(client, clock):
    # Without a request_id or successor jti nothing tells a retry from a stolen token's replay.
    token = refresh(client).serial
    first = client.rotate(token, actor="as")
    assert first.outcome == "ROTATED"
    replay = client.rotate(token, actor="attacker")
    assert (replay.outcome, replay.successor) == ("REUSE_DETECTED", None)
    assert states(client, [token, first.successor.serial]) == [REVOKED, REVOKED]


def test_a_token_revoked_at_registration_by_a_rule_in_force_says_why(client, clock):
    client.cutoff("subject", "alice", reason="takeover")
    late = client.register_one("alice", "web", issued_at=clock.now - 10, expires_at=clock.now + 300)
    checked = client.check(late.serial)
    assert (checked.state, checked.reason) == (REVOKED, "revoked before registration or by a cut-off rule")


def test_reuse_revokes_exactly_the_family(client, clock):
    now = clock.now
    victim = refresh(client, family="fam-a")
    access = client.register([TokenSpec("alice", "web", family="fam-a") for _ in range(2)]).tokens
    stale = client.register_one("alice", "web", family="fam-a", issued_at=now - 100, expires_at=now + 5)
    gone = client.register_one("alice", "web", family="fam-a")
    client.revoke(serials=[gone.serial], reason="logout")
    other_session = [refresh(client, family="fam-b"), client.register_one("alice", "web", family="fam-b")]
    other_user = [refresh(client, "bob", family="fam-c"), client.register_one("bob", "web", family="fam-c")]

    second = client.rotate(victim.serial, request_id="r1").successor
    third = client.rotate(second.serial, request_id="r2").successor
    clock.advance(GRACE + 1)  # `stale` expires meanwhile
    reuse = client.rotate(victim.serial, request_id="stolen", actor="as-frontend", origin="203.0.113.9")

    family = [victim.serial, second.serial, third.serial] + [t.serial for t in access]
    assert (reuse.outcome, reuse.state, reuse.family) == ("REUSE_DETECTED", ROTATED, "fam-a")
    assert reuse.count == len(family) and reuse.successor is None
    assert states(client, family) == [REVOKED] * len(family)
    assert states(client, [stale.serial, gone.serial]) == [EXPIRED, REVOKED]
    assert states(client, [t.serial for t in other_session + other_user]) == [ACTIVE] * 4
    assert client.check(third.serial).reason == "refresh token reuse detected"

    records = [r for r in client.audit() if r["type"] == "reuse_detected"]
    assert len(records) == 1
    record = records[0]
    # The actor is who the server authenticated (nobody, on this open loopback server); the
    # actor the request named is recorded as on_behalf_of, never as the actor.
    assert (record["seq"], record["actor"], record["origin"]) == (reuse.seq, "anonymous", "203.0.113.9")
    assert record["on_behalf_of"] == "as-frontend" and record["peer"].startswith("ipv4:127.0.0.1:")
    assert (record["count"], record["serial"], record["family"]) == (len(family), victim.serial, "fam-a")
    assert record["subjects"] == ["alice"] and record["clients"] == ["web"]


def _race(address: str, serial: int, round_: int) -> list:
    """RACERS clients present `serial` at once, each with its own request_id."""
    clients = [RecallClient(address, timeout=WAIT) for _ in range(RACERS)]
    try:
        for c in clients:
            c.stats()  # connect before the start line
        barrier = threading.Barrier(RACERS, timeout=WAIT)

        def present(n: int):
            barrier.wait()
            return clients[n].rotate(serial, request_id=f"round-{round_}-racer-{n}")

        with ThreadPoolExecutor(RACERS) as pool:
            return [f.result(WAIT) for f in [pool.submit(present, n) for n in range(RACERS)]]
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_presentations_rotate_once_and_revoke_the_family(server, client, round_):
    root = refresh(client, family=f"race-{round_}")
    access = [client.register_one("alice", "web", family=f"race-{round_}") for _ in range(2)]
    bystander = refresh(client, family="elsewhere")

    results = _race(server.address, root.serial, round_)

    outcomes = [r.outcome for r in results]
    winners = [r for r in results if r.outcome == "ROTATED"]
    assert len(winners) == 1, outcomes
    assert outcomes.count("REUSE_DETECTED") >= 1, outcomes
    for r in results:
        assert r.outcome in ("ROTATED", "REUSE_DETECTED", "REFUSED"), outcomes
        if r.outcome == "REFUSED":  # landed after the family was revoked
            assert r.state == REVOKED and r.successor is None
    family = [root.serial, winners[0].successor.serial] + [t.serial for t in access]
    assert sum(r.count for r in results if r.outcome == "REUSE_DETECTED") == len(family)
    assert states(client, family) == [REVOKED] * len(family)
    assert client.check(bystander.serial).state == ACTIVE


def test_rotate_refuses_what_is_not_an_active_refresh_token(client, clock):
    now = clock.now
    access = client.register_one("alice", "web")
    revoked = refresh(client)
    client.revoke(serials=[revoked.serial], reason="logout")
    expired = refresh(client, issued_at=now - 100, expires_at=now - 1)
    seq = client.stats().seq

    with pytest.raises(RecallError) as err:
        client.rotate(access.serial)
    assert err.value.code_name == "INVALID_ARGUMENT"
    for serial, state in ((revoked.serial, REVOKED), (expired.serial, EXPIRED), (999, UNKNOWN)):
        result = client.rotate(serial, request_id="x")
        assert (result.outcome, result.state, result.successor, result.count) == ("REFUSED", state, None, 0)
    result = client.rotate(issuer=IDP, jti="never-registered")
    assert (result.outcome, result.state) == ("REFUSED", UNKNOWN)
    assert client.stats().seq == seq


# ------------------------------------------------------------ cut-off rules


def test_subject_cutoff_revokes_every_token_of_the_subject(client, clock):
    alice = [client.register_one("alice", "web"), refresh(client, "alice", "cli"),
             client.register_one("alice", "web", issuer=IDP, jti="alice-at-idp")]
    bob = [client.register_one("bob", "web"), refresh(client, "bob", "cli")]

    rule = client.cutoff("subject", "alice", reason="account compromised", actor="secops")

    assert (rule.count, rule.before, rule.retires_at) == (3, clock.now, clock.now + LIFETIME)
    for token in alice:
        checked = client.check(token.serial)
        assert (checked.state, checked.reason, checked.revoked_at) == (REVOKED, "account compromised", clock.now)
        info = client.introspect(token.serial)
        assert (info["active"], info["state"]) == (False, "REVOKED")
        assert (info["reason"], info["actor"]) == ("account compromised", "anonymous")
    assert client.check(issuer=IDP, jti="alice-at-idp").state == REVOKED
    assert states(client, [t.serial for t in bob]) == [ACTIVE, ACTIVE]


@pytest.mark.parametrize(("scope", "value", "hit"), [
    ("client", "web", {"t1"}),
    ("issuer", IDP, {"t3"}),
    ("issuer", "recallcore", {"t1", "t2"}),  # the server's default issuer
    ("all", "", {"t1", "t2", "t3"}),
])
def test_client_issuer_and_all_cutoffs(client, scope, value, hit):
    tokens = {
        "t1": client.register_one("alice", "web"),
        "t2": refresh(client, "bob", "cli"),
        "t3": client.register_one("carol", "cli", issuer=IDP, jti="carol-1"),
    }
    assert client.cutoff(scope, value, reason="kill switch").count == len(hit)
    for name, token in tokens.items():
        assert client.check(token.serial).state == (REVOKED if name in hit else ACTIVE), name


def test_cutoff_in_the_past_only_covers_tokens_issued_before_it(client, clock):
    now = clock.now
    old = client.register_one("alice", "web", issued_at=now - 300, expires_at=now + 300)
    new = client.register_one("alice", "web", issued_at=now - 100, expires_at=now + 300)

    rule = client.cutoff("subject", "alice", before=now - 200, reason="leak window")
    assert (rule.count, rule.before) == (1, now - 200)
    assert states(client, [old.serial, new.serial]) == [REVOKED, ACTIVE]

    late_old = client.register_one("alice", "web", issued_at=now - 250, expires_at=now + 300)
    late_new = client.register_one("alice", "web", issued_at=now - 150, expires_at=now + 300)
    assert states(client, [late_old.serial, late_new.serial]) == [REVOKED, ACTIVE]
    cut = [r["cut_off"] for r in client.audit() if r["type"] == "register"]
    assert cut[-2:] == [1, 0]
    # A rule for the same subject with an earlier time changes nothing.
    assert client.cutoff("subject", "alice", before=now - 400).count == 0
    assert client.stats().seq == rule.seq + 2


def test_cutoff_in_the_past_spares_a_token_issued_at_its_exact_time(client, clock):
    before = clock.now - 200
    early = client.register_one("alice", "web", issued_at=before, expires_at=clock.now + 300)
    client.cutoff("subject", "alice", before=before)
    late = client.register_one("alice", "web", issued_at=before, expires_at=clock.now + 300)
    by_claims = client.check(issuer=IDP, jti="never", sub="alice", issued_at=before)
    assert (client.check(late.serial).state, by_claims.state) == (ACTIVE, UNKNOWN)
    # One rule, one answer: "issued strictly before `before`" does not cover `before` itself.
    assert client.check(early.serial).state == ACTIVE


def test_claims_of_never_registered_tokens_meet_the_rules(client, clock):
    now = clock.now
    client.cutoff("subject", "alice", reason="compromised")
    client.cutoff("client", "cli", before=now - 500)
    cases = [
        (JtiRef(IDP, "a1", sub="alice", client_id="web", issued_at=now - 10), REVOKED),
        (JtiRef(IDP, "a2", sub="alice", client_id="web", issued_at=now), UNKNOWN),  # not before it
        (JtiRef(IDP, "a3", sub="alice", client_id="web"), REVOKED),  # issued_at unknown: fail closed
        (JtiRef(IDP, "b1", sub="bob", client_id="web", issued_at=now - 10), UNKNOWN),
        (JtiRef(IDP, "b2", sub="bob", client_id="web"), UNKNOWN),  # no rule of these scopes
        (JtiRef(IDP, "b3", sub="bob", client_id="cli", issued_at=now - 600), REVOKED),
        (JtiRef(IDP, "b4", sub="bob", client_id="cli", issued_at=now - 400), UNKNOWN),
        (JtiRef(IDP, "b5", sub="bob", client_id="cli"), REVOKED),
        (JtiRef(IDP, "n1"), UNKNOWN),  # no claims: no rule applies
    ]
    for ref, expected in cases:
        checked = client.check(issuer=ref.issuer, jti=ref.jti, sub=ref.sub, client_id=ref.client_id,
                               issued_at=ref.issued_at)
        assert (checked.state, checked.serial) == (expected, 0), ref
        if expected == REVOKED:
            assert checked.reason == "cut-off rule"
    batch = client.check_batch(tokens=[ref for ref, _ in cases])
    assert list(batch.token_states) == [expected for _, expected in cases]


def test_all_cutoff_fails_closed_for_tokens_known_by_nothing_but_their_jti(client, clock):
    client.cutoff("all", before=clock.now - 50)
    assert client.check(issuer=IDP, jti="x").state == REVOKED
    assert client.check(issuer=IDP, jti="x", sub="anyone", issued_at=clock.now - 10).state == UNKNOWN
    assert client.check(issuer=IDP, jti="x", sub="anyone", issued_at=clock.now - 60).state == REVOKED


def test_rule_retires_after_the_longest_token_lifetime(server, client, clock):
    before = clock.now
    token = client.register_one("alice", "web")
    client.cutoff("subject", "alice", reason="compromised")
    probe = {"issuer": IDP, "jti": "probe", "sub": "alice", "issued_at": before - 1}
    assert client.check(**probe).state == REVOKED

    clock.advance(LIFETIME - 1)
    sweep(server)
    assert client.check(**probe).state == REVOKED
    assert server.run(lambda: set(server.engine.state.revocations.rules)) == {(SUBJECT, "alice", before)}

    clock.advance(1)
    seq = sweep(server)
    assert seq and client.check(**probe).state == UNKNOWN
    assert client.check(token.serial).state == EXPIRED
    assert server.run(lambda: set(server.engine.state.revocations.rules)) == set()
    record = next(iter(client.audit(after_seq=seq - 1)))
    assert (record["seq"], record["type"], record["rules_retired"]) == (seq, "sweep", [[SUBJECT, "alice", before]])
    with server.engine.store.read() as txn:
        delta = txn.delta(seq)
    assert delta.rules_removed == {(SUBJECT, "alice", before)} and not delta.rules_added
    # A new rule for the same subject works as the first one did.
    assert client.cutoff("subject", "alice").before == clock.now
    assert client.check(**probe).state == REVOKED


# ------------------------------------------------------------------ restart


def test_restart_keeps_rules_rotations_and_audit(settings, clock, stores):
    srv = ServerThread(settings, clock=clock, store=stores())
    try:
        with RecallClient(srv.address) as c:
            root = refresh(c, family="sess")
            rotated = c.rotate(root.serial, request_id="req-1")
            bob = c.register_one("bob", "web")
            rule = c.cutoff("subject", "bob", before=clock.now - 5, reason="compromised")
            trail = list(c.audit())
            head = c.stats().seq
    finally:
        srv.stop()
    assert [r["type"] for r in trail] == ["register", "rotate", "register", "cutoff"]

    clock.advance(GRACE - 2)
    srv = ServerThread(settings, clock=clock, store=stores())
    try:
        with RecallClient(srv.address) as c:
            assert c.stats().seq == head
            assert list(c.audit()) == trail
            assert states(c, [root.serial, rotated.successor.serial, bob.serial]) == [ROTATED, ACTIVE, ACTIVE]
            assert c.check(issuer=IDP, jti="p", sub="bob", issued_at=rule.before - 1).state == REVOKED
            retry = c.rotate(root.serial, request_id="req-1")
            assert (retry.outcome, retry.successor.serial, retry.seq) == ("RETRIED", rotated.successor.serial, head)
            clock.advance(3)
            reuse = c.rotate(root.serial, request_id="req-1")
            assert (reuse.outcome, reuse.count) == ("REUSE_DETECTED", 2)
    finally:
        srv.stop()


def test_the_sweeper_goes_on_after_an_error_it_did_not_expect(data_dir, caplog):
    """A full disk or a database error in one sweep must not end expiry for the node's life."""
    async def main() -> int:
        engine = Engine(Settings(data_dir=data_dir, sweep_interval=0.01))
        real, calls = engine.sweep, []

        async def sweep():
            calls.append(1)
            if len(calls) == 1:
                raise OSError(28, "No space left on device")
            return await real()

        engine.sweep = sweep
        await engine.start()
        try:
            for _ in range(500):
                if len(calls) >= 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            await engine.close()
        return len(calls)

    assert asyncio.run(main()) >= 3
    assert "sweep failed" in caplog.text and "No space left on device" in caplog.text
