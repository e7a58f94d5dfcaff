"""The HTTP edge behind TLS and the caller policy: certificates, credentials and OAuth clients made here."""

import base64
import shutil
import socket
import ssl

import httpx
import pytest
from recallclient import RecallClient
from recallclient.jti import opaque_jti

from recallcore.security.credentials import hash_secret
from recallcore.settings import Settings

from ..security.certs import CA
from ..support import ServerThread
from .conftest import CLIENT_SECRETS, basic, bearer
from .issuer import ISSUER, Issuer

SECRETS = {"gateway": "secret-of-the-gateway-credential", "auditor": "secret-of-the-auditor-credential",
           "introspector": "secret-of-the-introspector-cred", "revoker": "secret-of-the-revoker-credential"}
POLICY = """
[[grant]]
identities = ["dns:gw.example", "token:gateway"]
roles = ["check"]

[[grant]]
identities = ["token:auditor"]
roles = ["audit"]

[[grant]]
identities = ["token:introspector"]
roles = ["introspect"]

[[grant]]
identities = ["token:revoker"]
roles = ["revoke"]

[[grant]]
identities = ["dns:operator.example"]
roles = ["issue", "check", "audit"]
"""


def credential(name: str) -> dict:
    return {"X-Recall-Authorization": f"Bearer {SECRETS[name]}"}


@pytest.fixture
def secured(tmp_path, clients_file):
    ca = CA(tmp_path / "pki")
    server = ca.server()
    gateway = ca.issue("gateway", dns=("gw.example",))
    operator = ca.issue("operator", dns=("operator.example",))
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "credentials.toml").write_text(
        "[tokens]\n" + "".join(f'{n} = "{hash_secret(s)}"\n' for n, s in SECRETS.items()))
    idp = Issuer(tmp_path / "idp")
    srv = ServerThread(Settings(
        data_dir=tmp_path / "data", listen="127.0.0.1:0", http_listen="127.0.0.1:0", sweep_interval=3600,
        tls_cert=str(server.cert), tls_key=str(server.key), client_ca=str(ca.path),
        policy=str(tmp_path / "policy.toml"), credentials=str(tmp_path / "credentials.toml"),
        oauth_clients=str(clients_file), jwt_issuers=(f"{ISSUER}={idp.jwks}",),
    ))

    def http(cert=None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(ca.path))
        if cert is not None:
            context.load_cert_chain(cert.cert, cert.key)
        return httpx.Client(base_url=f"https://{srv.server.http.address}", verify=context, timeout=10)

    grpc_client = RecallClient(srv.address, cacert=str(ca.path), cert=str(operator.cert), key=str(operator.key))
    yield dict(srv=srv, http=http, gateway=gateway, ca=ca, idp=idp, recall=grpc_client, server_cert=server,
               root=tmp_path)
    grpc_client.close()
    srv.stop()


def test_a_gateway_is_known_by_its_certificate_or_its_credential(secured):
    token = bearer(secured["idp"].token("j-1"))
    with secured["http"](secured["gateway"]) as by_cert, secured["http"]() as anonymous:
        assert by_cert.get("/v1/check", headers=token).status_code == 200
        assert anonymous.get("/v1/check", headers={**token, **credential("gateway")}).status_code == 200


@pytest.mark.parametrize("extra,says", [
    ({}, "no client certificate or bearer credential"),
    ({"X-Recall-Authorization": "Bearer a-made-up-secret-of-some-length"}, "not one this server knows"),
    (credential("auditor"), "lacks the role 'check'"),
])
def test_an_unknown_or_unentitled_gateway_is_refused_with_403(secured, extra, says):
    with secured["http"]() as client:
        response = client.get("/v1/check", headers={**bearer(secured["idp"].token()), **extra})
    assert response.status_code == 403 and says in response.json()["error_description"]


def test_health_needs_the_check_role_too(secured):
    with secured["http"]() as client:
        assert client.get("/readyz").status_code == 401
        assert client.get("/readyz", headers=credential("auditor")).status_code == 403
        assert client.get("/readyz", headers=credential("gateway")).status_code == 200


def test_plain_http_and_a_foreign_ca_certificate_get_no_answer(secured, tmp_path):
    host, _, port = secured["srv"].server.http.address.rpartition(":")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{host}:{port}/healthz", timeout=5)
    stranger = CA(tmp_path / "stranger").issue("gw", dns=("gw.example",))
    with pytest.raises(httpx.TransportError), secured["http"](stranger) as client:
        client.get("/v1/check")


def test_introspection_needs_the_role_or_is_limited_to_the_clients_own_tokens(secured):
    recall, idp = secured["recall"], secured["idp"]
    token = "opaque-of-other"
    recall.register_one("grace", "other", jti=opaque_jti(token))
    with secured["http"]() as client:
        def ask(headers):
            return client.post("/oauth2/introspect", data={"token": token}, headers=headers)

        assert ask({"Authorization": f"Bearer {SECRETS['introspector']}"}).json()["active"] is True
        assert ask(basic("other")).json()["active"] is True
        assert ask(basic("app")).json() == {"active": False}
        denied = ask({"Authorization": f"Bearer {SECRETS['gateway']}"})
        assert denied.status_code == 403 and "introspect" in denied.json()["error_description"]
        assert ask({}).status_code == 401
        assert client.post("/oauth2/introspect", data={"token": idp.token()}).status_code == 401


def test_a_revoker_may_revoke_any_token_and_the_trail_names_it(secured):
    recall = secured["recall"]
    token = "opaque-of-app"
    registered = recall.register_one("heidi", "app", jti=opaque_jti(token))
    with secured["http"]() as client:
        refused = client.post("/oauth2/revoke", data={"token": token},
                              headers={"Authorization": f"Bearer {SECRETS['introspector']}"})
        assert refused.status_code == 403
        assert recall.check(registered.serial).state.name == "ACTIVE"
        done = client.post("/oauth2/revoke", data={"token": token},
                           headers={"Authorization": f"Bearer {SECRETS['revoker']}"})
        assert done.status_code == 200
    assert recall.check(registered.serial).state.name == "REVOKED"
    record = [r for r in recall.audit(serial=registered.serial) if r["type"] == "revoke"][0]
    assert record["actor"] == "token:revoker"


def test_the_http_certificate_is_reloaded_for_new_connections(secured):
    server_cert, ca = secured["server_cert"], secured["ca"]
    host, _, port = secured["srv"].server.http.address.rpartition(":")

    def served_serial(sni: bool = True) -> int:
        context = ssl.create_default_context(cafile=str(ca.path))
        context.check_hostname = sni  # without SNI, as nginx connects by default
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost" if sni else None) as tls:
            return int(tls.getpeercert()["serialNumber"], 16)

    assert served_serial() == server_cert.serial
    fresh = ca.server("renewed")
    shutil.copy(fresh.key, server_cert.key)
    shutil.copy(fresh.cert, server_cert.cert)
    assert served_serial(sni=False) == fresh.serial
    assert served_serial() == fresh.serial


def test_oauth_clients_secrets_are_never_taken_from_a_wrong_base64(secured):
    with secured["http"]() as client:
        response = client.post("/oauth2/introspect", data={"token": "x"},
                               headers={"Authorization": "Basic !!notbase64!!"})
        assert response.status_code == 401 and "base64" in response.json()["error_description"]
        wrong = base64.b64encode(f"app:{CLIENT_SECRETS['other']}".encode()).decode()
        response = client.post("/oauth2/introspect", data={"token": "x"}, headers={"Authorization": f"Basic {wrong}"})
        assert response.status_code == 401


def test_a_grant_to_every_caller_does_not_hand_oauth_clients_each_others_tokens(secured):
    recall, root = secured["recall"], secured["root"]
    (root / "policy.toml").write_text(POLICY + '\n[[grant]]\nidentities = ["*"]\nroles = ["introspect", "revoke"]\n')
    secured["srv"].server.reload()
    token = "opaque-of-app-under-a-wildcard"
    registered = recall.register_one("ivan", "app", jti=opaque_jti(token))
    with secured["http"]() as client:
        assert client.post("/oauth2/introspect", data={"token": token}, headers=basic("other")).json() == \
            {"active": False}
        refused = client.post("/oauth2/revoke", data={"token": token}, headers=basic("other"))
        assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"
        assert recall.check(registered.serial).state.name == "ACTIVE"
        # ... while the services the grant is meant for have the roles, and the owner its own token.
        assert client.post("/oauth2/introspect", data={"token": token},
                           headers={"Authorization": f"Bearer {SECRETS['gateway']}"}).json()["active"] is True
        assert client.post("/oauth2/revoke", data={"token": token}, headers=basic("app")).status_code == 200
    assert recall.check(registered.serial).state.name == "REVOKED"


def test_a_credential_of_bytes_past_utf8_is_refused_not_a_500(secured):
    with secured["http"]() as client:
        response = client.get("/v1/check", headers={"X-Recall-Authorization": b"Bearer \xff\xfe"})
        assert response.status_code == 403 and "not one this server knows" in response.json()["error_description"]


def test_the_metadata_is_for_any_caller_known_here_whatever_its_roles(secured):
    path = "/.well-known/oauth-authorization-server"
    with secured["http"]() as client:
        for headers in ({"Authorization": f"Bearer {SECRETS['introspector']}"},
                        {"Authorization": f"Bearer {SECRETS['revoker']}"}, basic("app")):
            answer = client.get(path, headers=headers)
            assert answer.status_code == 200 and answer.json()["introspection_endpoint"].endswith("/oauth2/introspect")
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer not-a-credential"}).status_code == 401
