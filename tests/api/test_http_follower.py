"""The HTTP edge on a follower (the node gateways sit next to): answered from its copy, closed when stale."""

import dataclasses

import httpx
import pytest
from recallclient import RecallClient
from recallclient.jti import opaque_jti

from recallcore.settings import Settings

from ..support import FreezableProxy, until
from .conftest import bearer
from .issuer import ISSUER

HEARTBEAT = 0.05
WAIT = 10.0  # seconds a change may take to reach the follower at most (it takes milliseconds)


@pytest.fixture
def pair(servers, settings, tmp_path, idp):
    primary = servers.start(dataclasses.replace(settings, heartbeat_interval=HEARTBEAT))
    proxy = FreezableProxy(primary.address)
    follower = servers.start(Settings(
        data_dir=tmp_path / "follower", listen="127.0.0.1:0", follow=proxy.address, heartbeat_interval=HEARTBEAT,
        max_staleness=1.0, http_listen="127.0.0.1:0", jwt_issuers=(f"{ISSUER}={idp.jwks}",),
    ))
    until(follower.engine.answering, "the follower in sync")
    with RecallClient(primary.address) as recall, \
            httpx.Client(base_url=f"http://{follower.server.http.address}", timeout=10) as edge:
        yield recall, edge, proxy
    proxy.close()


def status(edge: httpx.Client, token: str) -> int:
    return edge.get("/v1/check", headers=bearer(token)).status_code


def test_a_revocation_on_the_primary_reaches_the_followers_gateway_check(pair, idp):
    recall, edge, _ = pair
    canonical = recall.register_one("alice", "app", issuer=ISSUER)
    custom = recall.register_one("bob", "app", issuer=ISSUER, jti="bob-session-1")
    tokens = [idp.token(canonical.canonical_jti), idp.token("bob-session-1", sub="bob"), idp.token("foreign-1")]
    assert [status(edge, t) for t in tokens] == [200, 200, 200]
    recall.revoke(serials=[canonical.serial])
    recall.revoke(subject="bob")  # a registered token under its own jti: known by (issuer, jti) at the edge
    recall.revoke(tokens=[(ISSUER, "foreign-1")])
    until(lambda: [status(edge, t) for t in tokens] == [401, 401, 401], "the follower refusing all three", WAIT)
    assert custom.serial and status(edge, idp.token("unrelated")) == 200


def test_an_opaque_token_is_resolved_by_the_primary_and_checked_by_the_follower(pair):
    recall, edge, _ = pair
    token = "opaque-token-at-the-edge"
    registered = recall.register_one("erin", "app", jti=opaque_jti(token))
    response = edge.get("/v1/check", headers=bearer(token))
    assert response.status_code == 200 and response.headers["X-Recall-Subject"] == "erin"
    recall.revoke(serials=[registered.serial])
    until(lambda: status(edge, token) == 401, "the follower refusing the opaque token", WAIT)
    assert status(edge, "opaque-nobody-registered") == 401


def test_a_stale_follower_fails_closed_and_recovers(pair, idp):
    _, edge, proxy = pair
    token = idp.token("j")
    proxy.freeze()  # the primary's vouches stop arriving: the copy may be missing revocations
    until(lambda: status(edge, token) == 503, "the stale follower answering 503", WAIT)
    ready = edge.get("/readyz")
    assert ready.status_code == 503 and "cannot vouch" in ready.json()["error_description"]
    assert edge.get("/readyz").headers["Retry-After"] == "1"
    proxy.thaw()
    until(lambda: status(edge, token) == 200, "the follower answering again", WAIT)


def test_a_follower_sends_revocations_to_its_primary(pair, idp):
    _, edge, _ = pair
    response = edge.post("/oauth2/revoke", data={"token": idp.token("x")})
    assert response.status_code == 503 and "read-only follower" in response.json()["error_description"]
    assert "revocation_endpoint" not in edge.get("/.well-known/oauth-authorization-server").json()
