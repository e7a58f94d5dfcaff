"""The HTTP edge end to end: a real server on 127.0.0.1:0, real HTTP, JWTs signed here."""

import base64
import json
import time

import httpx
import pytest
from recallclient import TokenType
from recallclient.jti import opaque_jti

from recallcore.api.http import app
from recallcore.security.credentials import hash_secret
from recallcore.settings import Settings

from ..support import ServerThread
from .conftest import basic, bearer
from .issuer import ISSUER, Issuer


def challenge(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    return response.headers["WWW-Authenticate"]


def test_a_good_jwt_passes_with_identity_headers(edge, idp):
    _, _, http = edge
    response = http.get("/v1/check", headers=bearer(idp.token("j-1")))
    assert response.status_code == 200
    assert (response.headers["X-Recall-Subject"], response.headers["X-Recall-Client"],
            response.headers["X-Recall-Scope"]) == ("alice", "app", "read")
    assert response.headers["Cache-Control"] == "no-store"


def test_any_method_of_the_original_request_is_checked(edge, idp):
    _, _, http = edge  # nginx's auth_request keeps the original method
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        assert http.request(method, "/v1/check", headers=bearer(idp.token("j"))).status_code == 200


def test_a_registered_jwt_with_a_canonical_jti_is_refused_once_revoked(edge, idp):
    _, recall, http = edge
    registered = recall.register_one("alice", "app", issuer=ISSUER)
    token = idp.token(registered.canonical_jti)
    assert http.get("/v1/check", headers=bearer(token)).status_code == 200
    recall.revoke(serials=[registered.serial], reason="laptop stolen")
    header = challenge(http.get("/v1/check", headers=bearer(token)))
    assert header == ('Bearer realm="recallcore", error="invalid_token", '
                      'error_description="the token has been revoked"')  # the reason stays inside


def test_a_foreign_jwt_is_refused_once_its_issuer_and_jti_are_revoked(edge, idp):
    _, recall, http = edge
    token = idp.token("never-registered")
    assert http.get("/v1/check", headers=bearer(token)).status_code == 200
    recall.revoke(tokens=[(ISSUER, "never-registered")])
    assert "revoked" in challenge(http.get("/v1/check", headers=bearer(token)))
    assert http.get("/v1/check", headers=bearer(idp.token("another"))).status_code == 200


def test_a_registered_jwt_under_its_own_jti_is_refused_once_revoked_by_subject(edge, idp):
    _, recall, http = edge
    recall.register_one("bob", "app", issuer=ISSUER, jti="custom-9")
    token = idp.token("custom-9", sub="bob")
    assert http.get("/v1/check", headers=bearer(token)).status_code == 200
    recall.revoke(subject="bob")
    assert "revoked" in challenge(http.get("/v1/check", headers=bearer(token)))


def test_a_cutoff_applies_to_jwts_never_registered(edge, idp):
    _, recall, http = edge
    before = idp.token("old", sub="carol", iat=int(time.time()) - 10)
    recall.cutoff("subject", "carol", reason="password changed")
    assert "revoked" in challenge(http.get("/v1/check", headers=bearer(before)))
    later = idp.token("new", sub="carol", iat=int(time.time()) + 1)
    assert http.get("/v1/check", headers=bearer(later)).status_code == 200
    assert http.get("/v1/check", headers=bearer(idp.token("d", sub="dave"))).status_code == 200


@pytest.mark.parametrize("make,says", [
    (lambda i: i.tampered(), "signature does not verify"),
    (lambda i: i.unsigned(), "algorithm 'none' is not accepted"),
    (lambda i: i.hmac_with_public_key(), "algorithm 'HS256' is not accepted"),
    (lambda i: i.token(exp=int(time.time()) - 3600), "expired"),
    (lambda i: "an-opaque-token-nobody-registered", "not one this server knows"),
])
def test_bad_tokens_get_an_rfc6750_challenge(edge, idp, make, says):
    _, _, http = edge
    header = challenge(http.get("/v1/check", headers=bearer(make(idp))))
    assert header.startswith('Bearer realm="recallcore", error="invalid_token", error_description="')
    assert says in header


def test_tokens_and_credentials_no_client_should_send_get_their_4xx_not_a_500(edge, idp):
    srv, _, http = edge
    seq = srv.engine.state.seq
    _, body, sig = idp.token().split(".")
    listed_alg = base64.urlsafe_b64encode(json.dumps({"alg": ["ES256"], "kid": idp.kid}).encode()).rstrip(b"=")
    odd = f"{listed_alg.decode()}.{body}.{sig}"
    assert "algorithm ['ES256'] is not accepted" in challenge(http.get("/v1/check", headers=bearer(odd)))
    assert http.post("/oauth2/introspect", data={"token": odd}).json() == {"active": False}
    raw = http.get("/v1/check", headers={"Authorization": b"Bearer eyJ\xff\xfe.x.y"})  # not UTF-8
    assert "characters no bearer token has" in challenge(raw)
    basic_past_ascii = http.post("/oauth2/introspect", data={"token": "x"},
                                 headers={"Authorization": "Basic \u00e9\u00e9".encode()})
    assert basic_past_ascii.status_code == 401 and "base64" in basic_past_ascii.json()["error_description"]
    assert srv.engine.state.seq == seq


def test_a_token_of_an_unknown_issuer_is_refused(edge, tmp_path):
    _, _, http = edge
    other = Issuer(tmp_path / "other", name="https://other.example")
    assert "not accepted here" in challenge(http.get("/v1/check", headers=bearer(other.token())))


def test_no_token_gets_a_bare_challenge(edge):
    _, _, http = edge
    assert challenge(http.get("/v1/check")) == 'Bearer realm="recallcore"'
    assert challenge(http.get("/v1/check", headers={"Authorization": "Basic eDp5"})) == 'Bearer realm="recallcore"'


def test_an_oversized_token_or_header_is_refused_and_changes_nothing(edge):
    srv, _, http = edge
    seq = srv.engine.state.seq
    assert "longer than" in challenge(http.get("/v1/check", headers=bearer("x" * 17000)))
    assert http.get("/v1/check", headers=bearer("x" * 40000)).status_code == 400  # past the header limit
    assert srv.engine.state.seq == seq


def test_an_opaque_token_passes_only_while_registered_and_unrevoked(edge):
    _, recall, http = edge
    token = "opaque-access-token-0123456789"
    registered = recall.register_one("erin", "app", jti=opaque_jti(token), scopes=["write"])
    response = http.get("/v1/check", headers=bearer(token))
    assert response.status_code == 200 and response.headers["X-Recall-Subject"] == "erin"
    recall.revoke(serials=[registered.serial])
    assert "revoked" in challenge(http.get("/v1/check", headers=bearer(token)))


# ------------------------------------------------------------ introspection


def test_introspection_of_a_registered_opaque_token_gives_the_registry(edge):
    _, recall, http = edge
    token = "opaque-0001"
    recall.register_one("erin", "app", jti=opaque_jti(token), scopes=["read", "write"], ttl=600)
    body = http.post("/oauth2/introspect", data={"token": token}, headers=basic("app")).json()
    assert body["active"] is True
    assert (body["sub"], body["username"], body["client_id"], body["scope"], body["token_type"]) == \
        ("erin", "erin", "app", "read write", "access_token")
    assert body["exp"] > time.time() and body["iss"] == "recallcore"


def test_introspection_of_a_jwt_gives_its_claims(edge, idp):
    _, _, http = edge
    body = http.post("/oauth2/introspect", data={"token": idp.token("j-5", aud="api")}, headers=basic("app")).json()
    assert body["active"] is True and (body["jti"], body["iss"], body["sub"], body["aud"]) == \
        ("j-5", ISSUER, "alice", "api")


@pytest.mark.parametrize("token", ["unknown-opaque", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
def test_introspection_of_anything_not_good_is_active_false_and_nothing_else(edge, idp, token):
    _, _, http = edge
    response = http.post("/oauth2/introspect", data={"token": token}, headers=basic("app"))
    assert response.status_code == 200 and response.json() == {"active": False}


def test_introspection_of_a_revoked_jwt_is_active_false(edge, idp):
    _, recall, http = edge
    recall.revoke(tokens=[(ISSUER, "gone")])
    response = http.post("/oauth2/introspect", data={"token": idp.token("gone")}, headers=basic("app"))
    assert response.json() == {"active": False}


def test_an_oauth_client_sees_only_its_own_tokens(edge, idp):
    _, _, http = edge
    token = idp.token("j-6")  # issued to "app"
    assert http.post("/oauth2/introspect", data={"token": token}, headers=basic("app")).json()["active"]
    assert http.post("/oauth2/introspect", data={"token": token}, headers=basic("other")).json() == \
        {"active": False}


def test_a_wrong_client_secret_is_refused(edge, idp):
    _, _, http = edge
    forged = {"Authorization": "Basic " + base64.b64encode(b"app:guess").decode()}
    response = http.post("/oauth2/introspect", data={"token": idp.token()}, headers=forged)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize("path", ["/oauth2/introspect", "/oauth2/revoke"])
@pytest.mark.parametrize("send,status,error,names", [
    (dict(json={"token": "x"}), 400, "invalid_request", "content type"),
    (dict(data={"token_type_hint": "access_token"}), 400, "invalid_request", "token: missing"),
    (dict(content=b"token=a&token=b", headers={"Content-Type": "application/x-www-form-urlencoded"}), 400,
     "invalid_request", "token: given more than once"),
    (dict(data={"token": "x", "token_type_hint": "id_token"}), 400, "unsupported_token_type", "token_type_hint"),
    (dict(data={"token": "x" * 70000}), 413, "invalid_request", "larger than"),
])
def test_bad_oauth_requests_get_the_rfc_error_and_change_nothing(edge, path, send, status, error, names):
    srv, _, http = edge
    seq = srv.engine.state.seq
    send = dict(send)
    headers = {**basic("app"), **send.pop("headers", {})}
    response = http.post(path, headers=headers, **send)
    assert response.status_code == status
    assert response.json()["error"] == error and names in response.json()["error_description"]
    assert srv.engine.state.seq == seq


# --------------------------------------------------------------- revocation


def test_a_client_revokes_its_own_opaque_token_and_the_trail_names_it(edge):
    _, recall, http = edge
    token = "opaque-to-revoke"
    registered = recall.register_one("erin", "app", jti=opaque_jti(token))
    response = http.post("/oauth2/revoke", data={"token": token, "token_type_hint": "access_token"},
                         headers=basic("app"))
    assert response.status_code == 200
    assert recall.check(registered.serial).state.name == "REVOKED"
    record = [r for r in recall.audit(serial=registered.serial) if r["type"] == "revoke"][0]
    assert record["actor"] == "client:app" and record["origin"] == "oauth2/revoke"
    assert record["peer"].startswith("ipv4:127.0.0.1:")


def test_a_client_may_not_revoke_another_clients_token(edge):
    srv, recall, http = edge
    token = "opaque-of-app"
    registered = recall.register_one("erin", "app", jti=opaque_jti(token))
    response = http.post("/oauth2/revoke", data={"token": token}, headers=basic("other"))
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"
    assert recall.check(registered.serial).state.name == "ACTIVE"


def test_revoking_an_unknown_token_is_200_and_changes_nothing(edge, idp, tmp_path):
    srv, _, http = edge
    seq = srv.engine.state.seq
    other = Issuer(tmp_path / "other", name="https://other.example")
    for token in ("nobody-knows-this", other.token(), idp.tampered()):
        assert http.post("/oauth2/revoke", data={"token": token}, headers=basic("app")).status_code == 200
    assert srv.engine.state.seq == seq


def test_revoking_a_jwt_refuses_it_at_the_gateway(edge, idp):
    _, _, http = edge
    token = idp.token("to-revoke")
    assert http.post("/oauth2/revoke", data={"token": token}, headers=basic("app")).status_code == 200
    assert "revoked" in challenge(http.get("/v1/check", headers=bearer(token)))


def test_a_jwt_not_valid_yet_is_revoked_all_the_same(edge, idp):
    """An issuer whose clock runs ahead mints tokens valid a little later: revoked now, refused then."""
    srv, recall, http = edge
    token = idp.token("early", nbf=int(time.time()) + 90)  # past the 60 s skew
    assert "not valid yet" in challenge(http.get("/v1/check", headers=bearer(token)))
    seq = srv.engine.state.seq
    assert http.post("/oauth2/revoke", data={"token": token}, headers=basic("app")).status_code == 200
    assert srv.engine.state.seq == seq + 1
    assert recall.check(issuer=ISSUER, jti="early").state.name == "REVOKED"


@pytest.mark.parametrize("claims,says", [
    ({"exp": int(time.time()) + 60 * 86400}, "longest lifetime this server can recall"),
    ({"jti": "j" * 1100}, "jti is longer than 1024 bytes"),
    ({"iss": ISSUER, "jti": "a\x00b"}, "holds a NUL"),
])
def test_a_jwt_this_server_could_not_recall_is_refused(edge, idp, claims, says):
    """A token that passed but could not be revoked would be a token nobody can stop."""
    _, _, http = edge
    token = idp.token(**claims)
    assert says in challenge(http.get("/v1/check", headers=bearer(token)))
    assert http.post("/oauth2/introspect", data={"token": token}).json() == {"active": False}


def test_revoking_a_refresh_token_revokes_its_family(edge):
    _, recall, http = edge
    refresh = "opaque-refresh-token"
    first = recall.register_one("erin", "app", jti=opaque_jti(refresh), type=TokenType.REFRESH, family="grant-1")
    sibling = recall.register_one("erin", "app", type=TokenType.REFRESH, family="grant-1")
    outsider = recall.register_one("erin", "app", type=TokenType.REFRESH, family="grant-2")
    assert http.post("/oauth2/revoke", data={"token": refresh, "token_type_hint": "refresh_token"},
                     headers=basic("app")).status_code == 200
    assert [recall.check(r.serial).state.name for r in (first, sibling, outsider)] == \
        ["REVOKED", "REVOKED", "ACTIVE"]


# ------------------------------------------------------------ health, metadata


def test_health_readiness_and_metadata(edge):
    srv, _, http = edge
    assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
    meta = http.get("/.well-known/oauth-authorization-server").json()
    base = f"http://{srv.server.http.address}"
    assert meta["introspection_endpoint"] == f"{base}/oauth2/introspect"
    assert meta["revocation_endpoint"] == f"{base}/oauth2/revoke"


def test_a_jwt_edge_without_issuers_refuses_jwts(data_dir, idp):
    srv = ServerThread(Settings(data_dir=data_dir, listen="127.0.0.1:0", http_listen="127.0.0.1:0"))
    try:
        response = httpx.get(f"http://{srv.server.http.address}/v1/check", headers=bearer(idp.token()))
        assert "no JWT issuer is configured" in challenge(response)
    finally:
        srv.stop()


def test_an_unreadable_jwks_file_stops_the_start_naming_it(data_dir, tmp_path):
    bad = tmp_path / "jwks.json"
    bad.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    with pytest.raises(Exception, match="jwks.json: keys\\[0\\].kty"):
        ServerThread(Settings(data_dir=data_dir, listen="127.0.0.1:0", http_listen="127.0.0.1:0",
                              jwt_issuers=(f"{ISSUER}={bad}",)))


def test_a_flood_of_malformed_requests_leaves_one_log_line_without_a_traceback(edge, caplog, monkeypatch):
    _, _, http = edge
    monkeypatch.setattr(app._protocol_throttle, "_last", -float("inf"))  # earlier tests' reports forgotten
    for _ in range(20):
        assert http.get("/v1/check", headers=bearer("x" * 40000)).status_code == 400
    records = [r for r in caplog.records if r.name == "recallcore.api.http.app.protocol"]
    assert len(records) == 1 and records[0].exc_info is None


def test_a_client_added_to_the_clients_file_is_known_after_a_reload(edge, clients_file, idp):
    srv, _, http = edge
    secret = "secret-of-a-client-added-later"
    clients_file.write_text(clients_file.read_text() + f'late = "{hash_secret(secret)}"\n')
    srv.run(srv.server.reload)  # what SIGHUP does
    late = {"Authorization": "Basic " + base64.b64encode(f"late:{secret}".encode()).decode()}
    assert http.post("/oauth2/introspect", data={"token": idp.token()}, headers=late).status_code == 200
