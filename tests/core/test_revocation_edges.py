"""Edge cases where a revoked token must not come back: keys before registration,
later expiries, other issuer spellings, clock skew; and waiters that must not pile up."""

import asyncio

import pytest
from recallclient import JtiRef, RecallClient, TokenState

from recallcore.settings import Settings

from ..support import FakeClock, ServerThread

IDP = "https://idp.example"
REVOKED, ACTIVE, EXPIRED, UNKNOWN = TokenState.REVOKED, TokenState.ACTIVE, TokenState.EXPIRED, TokenState.UNKNOWN
SKEW = 60


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(data_dir, clock):
    srv = ServerThread(Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600, clock_skew=SKEW),
                       clock=clock)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with RecallClient(server.address) as c:
        yield c


def sweep(server: ServerThread) -> int:
    return server.call(server.engine.sweep())


def test_a_pair_revoked_before_registration_is_registered_revoked(client):
    client.revoke(tokens=[JtiRef(IDP, "abc123")], reason="leaked early")
    token = client.register_one("alice", "web", issuer=IDP, jti="abc123", ttl=600)
    assert client.check(token.serial).state == REVOKED
    assert client.check(issuer=IDP, jti="abc123").state == REVOKED
    assert client.check_batch([token.serial]).states == (REVOKED,)
    assert client.introspect(token.serial)["active"] is False


def test_revoking_a_foreign_token_again_with_a_later_expiry_keeps_it_revoked_longer(server, client, clock):
    client.revoke(tokens=[JtiRef(IDP, "ext", clock.now + 10)])
    again = client.revoke(tokens=[JtiRef(IDP, "ext", clock.now + 3600)])
    assert again.count == 0  # nothing newly revoked, but the change is recorded
    clock.advance(10 + SKEW + 1)
    sweep(server)
    assert client.check(issuer=IDP, jti="ext").state == REVOKED
    clock.advance(3600)
    sweep(server)
    assert client.check(issuer=IDP, jti="ext").state == UNKNOWN


def test_a_canonical_jti_checked_under_another_issuer_spelling_is_still_revoked(client):
    token = client.register_one("alice", "web", ttl=600)  # registered under the default issuer
    client.revoke(serials=[token.serial])
    result = client.check(issuer="https://idp.example/", jti=token.jti)
    assert (result.state, result.serial) == (REVOKED, token.serial)
    assert client.check_batch(tokens=[("https://idp.example/", token.jti)]).token_states == (REVOKED,)


def test_revocations_outlive_expiry_by_the_clock_skew(server, client, clock):
    token = client.register_one("alice", "web", expires_at=clock.now + 100)
    client.revoke(tokens=[JtiRef(IDP, "ext", clock.now + 100)])
    client.revoke(serials=[token.serial])
    clock.advance(100)
    sweep(server)
    revoked = server.engine.state.revocations
    assert token.serial in revoked.revoked and len(revoked.foreign) == 1  # a lagging clock still sees them
    assert client.check(token.serial).state == EXPIRED
    clock.advance(SKEW)
    sweep(server)
    assert token.serial not in revoked.revoked and not revoked.foreign


def test_idle_streams_and_abandoned_waits_leave_nothing_behind(server, client):
    engine = server.engine

    async def scenario():
        for _ in range(3):
            await asyncio.wait_for(engine.hub.wait(0.01), 1)  # timed out waits
        waits = [asyncio.create_task(engine.wait_for_seq(10**9 + i, None)) for i in range(20)]
        await asyncio.sleep(0)
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        return len(engine.hub._waiters), len(engine._seq_waiters)

    assert server.call(scenario()) == (0, 0)


def test_introspect_resolves_a_token_as_check_does(client):
    token = client.register_one("alice", "web", ttl=600)
    client.revoke(serials=[token.serial], reason="leaked")
    info = client.introspect(issuer="https://idp.example/", jti=token.jti)
    assert (info["active"], info["state"], info["serial"], info["reason"]) == (False, "REVOKED", token.serial, "leaked")
