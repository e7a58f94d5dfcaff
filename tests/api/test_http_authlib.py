"""An independent RFC 7662 / RFC 7009 client, Authlib's, against the edge."""

import pytest
from authlib.integrations.requests_client import OAuth2Session
from recallclient.jti import opaque_jti

from .conftest import CLIENT_SECRETS


@pytest.fixture
def oauth(edge):
    srv, _, _ = edge
    base = f"http://{srv.server.http.address}"
    with OAuth2Session("app", CLIENT_SECRETS["app"], token_endpoint_auth_method="client_secret_basic") as client:
        yield client, base


def test_authlib_introspects_and_revokes_an_opaque_token(edge, oauth):
    _, recall, _ = edge
    client, base = oauth
    token = "opaque-token-for-authlib"
    registered = recall.register_one("frank", "app", jti=opaque_jti(token), scopes=["read"])
    info = client.introspect_token(f"{base}/oauth2/introspect", token=token, token_type_hint="access_token")
    assert info.status_code == 200
    assert info.json()["active"] is True and info.json()["sub"] == "frank"
    done = client.revoke_token(f"{base}/oauth2/revoke", token=token, token_type_hint="access_token")
    assert done.status_code == 200
    assert recall.check(registered.serial).state.name == "REVOKED"
    again = client.introspect_token(f"{base}/oauth2/introspect", token=token)
    assert again.json() == {"active": False}


def test_authlib_revokes_a_jwt_and_the_gateway_check_refuses_it(edge, oauth, idp):
    _, _, http = edge
    client, base = oauth
    token = idp.token("jwt-for-authlib")
    assert client.revoke_token(f"{base}/oauth2/revoke", token=token).status_code == 200
    assert http.get("/v1/check", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.introspect_token(f"{base}/oauth2/introspect", token=token).json() == {"active": False}


def test_authlib_with_a_wrong_secret_is_refused(edge):
    srv, _, _ = edge
    with OAuth2Session("app", "not-the-secret", token_endpoint_auth_method="client_secret_basic") as client:
        answer = client.introspect_token(f"http://{srv.server.http.address}/oauth2/introspect", token="x")
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
