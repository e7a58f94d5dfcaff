"""A real nginx in front of an API, checking every request with recallcore's /v1/check.

nginx runs deploy/nginx/nginx.conf as written, with its addresses and the
/etc/recall paths replaced by this module's. It reaches recallcore over TLS
with a client certificate that the policy grants the check role; tokens are
revoked with the real `recallctl` (by an operator's certificate).
"""

import pathlib
import subprocess
import sys
import time

import httpx
import pytest
from recallclient import RecallClient

from recallcore.settings import Settings

from ..support import ServerProcess, ServerThread, free_address, require_binary, run_command, until
from .gateways import Gateway, Upstream, write_trust
from .issuer import ISSUER, Issuer

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECALLCTL = pathlib.Path(sys.executable).parent / "recallctl"
CONFIG = ROOT / "deploy" / "nginx" / "nginx.conf"
WAIT = 10.0  # seconds a revocation may take to reach nginx at most (it takes milliseconds)


class Nginx(Gateway):
    """nginx with deploy/nginx/nginx.conf, in the foreground."""

    name = "nginx"

    def __init__(self, root: pathlib.Path, recall: str, upstream: str, pki: pathlib.Path) -> None:
        binary = require_binary("nginx")
        address = free_address()
        super().__init__(root, CONFIG, address, [("127.0.0.1:8443", recall), ("127.0.0.1:8081", upstream),
                                        ("127.0.0.1:8080", address), ("/etc/recall/", f"{pki}/")])
        check = run_command(binary, "-t", "-p", str(root), "-c", str(self.config))
        assert check.returncode == 0, check.stderr
        self.start([binary, "-p", str(root), "-c", str(self.config), "-g", "daemon off; master_process off;"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("nginx-stack")
    require_binary("nginx")
    ca, policy, pki = write_trust(root / "pki")
    server_cert = ca.server()
    idp = Issuer(root / "idp")
    recall = ServerThread(Settings(
        data_dir=root / "data", listen="127.0.0.1:0", http_listen="127.0.0.1:0", sweep_interval=3600,
        tls_cert=str(server_cert.cert), tls_key=str(server_cert.key), client_ca=str(ca.path),
        policy=str(policy), jwt_issuers=(f"{ISSUER}={idp.jwks}",),
    ))
    upstream = Upstream()
    nginx = Nginx(root / "nginx", recall.server.http.address, upstream.address, pki)
    client = RecallClient(recall.address, cacert=str(ca.path), cert=str(pki / "operator.crt"),
                          key=str(pki / "operator.key"))
    yield dict(recall=recall, nginx=nginx, idp=idp, ca=ca, pki=pki, client=client)
    client.close()
    nginx.close()
    upstream.close()
    recall.stop()


def recallctl(stack, *args: str) -> subprocess.CompletedProcess:
    done = run_command(str(RECALLCTL), "--target", stack["recall"].address,
                       "--cacert", str(stack["ca"].path), "--cert", str(stack["pki"] / "operator.crt"),
                       "--key", str(stack["pki"] / "operator.key"), *args)
    assert done.returncode == 0, done.stderr
    return done


def denied(response: httpx.Response) -> bool:
    return response.status_code == 401


def test_a_good_jwt_passes_and_the_upstream_learns_the_subject(stack):
    response = stack["nginx"].get(stack["idp"].token("good-1"))
    assert response.status_code == 200 and response.text == "hello alice"


def test_after_recallctl_revoke_the_same_request_is_refused_with_the_rfc6750_header(stack):
    nginx, idp = stack["nginx"], stack["idp"]
    registered = stack["client"].register_one("alice", "app", issuer=ISSUER)
    token = idp.token(registered.canonical_jti)
    assert nginx.get(token).status_code == 200
    recallctl(stack, "revoke", "--issuer", ISSUER, "--jti", registered.canonical_jti, "--reason", "leaked")
    until(lambda: denied(nginx.get(token)), "nginx refusing the revoked token", WAIT)
    response = nginx.get(token)
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="recallcore", error="invalid_token", error_description="the token has been revoked"')


def test_a_foreign_jwt_revoked_by_issuer_and_jti_is_refused(stack):
    nginx, idp = stack["nginx"], stack["idp"]
    token = idp.token("foreign-7")
    assert nginx.get(token).status_code == 200
    recallctl(stack, "revoke", "--issuer", ISSUER, "--jti", "foreign-7", "--exp", str(int(time.time()) + 600))
    until(lambda: denied(nginx.get(token)), "nginx refusing the revoked token", WAIT)


def test_a_cutoff_on_the_subject_refuses_a_token_never_registered(stack):
    nginx, idp = stack["nginx"], stack["idp"]
    token = idp.token("never-registered", sub="mallory", iat=int(time.time()) - 5)
    assert nginx.get(token).status_code == 200
    recallctl(stack, "cutoff", "--subject", "mallory", "--reason", "account compromised")
    until(lambda: denied(nginx.get(token)), "nginx refusing the cut-off token", WAIT)
    assert "revoked" in nginx.get(token).headers["WWW-Authenticate"]


@pytest.mark.parametrize("make", [
    lambda idp, tmp: idp.tampered(),
    lambda idp, tmp: Issuer(tmp, name="https://unknown.example").token(),
    lambda idp, tmp: None,
])
def test_bad_unknown_and_missing_tokens_get_401(stack, tmp_path, make):
    response = stack["nginx"].get(make(stack["idp"], tmp_path))
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")


def test_recallcore_down_means_nginx_refuses(tmp_path):
    """A real recallcore process, killed: nginx answers 500, never the upstream's 200."""
    require_binary("nginx")  # before anything is started
    ca, policy, pki = write_trust(tmp_path / "pki")
    server_cert = ca.server()
    idp = Issuer(tmp_path / "idp")
    http_address = free_address()
    recall = ServerProcess(
        tmp_path / "data", "--http-listen", http_address, "--tls-cert", str(server_cert.cert),
        "--tls-key", str(server_cert.key), "--client-ca", str(ca.path), "--policy", str(policy),
        "--jwt-issuer", f"{ISSUER}={idp.jwks}",
    )
    upstream = Upstream()
    nginx = Nginx(tmp_path / "nginx", http_address, upstream.address, pki)
    try:
        token = idp.token("while-up")
        assert nginx.get(token).status_code == 200
        recall.kill()
        response = nginx.get(token)
        assert response.status_code == 500 and "hello" not in response.text
    finally:
        nginx.close()
        upstream.close()
        recall.close()
