"""Fixtures of the edge tests: an issuer of JWTs, OAuth clients, and a server with the HTTP edge."""

import base64

import httpx
import pytest
from recallclient import RecallClient

from recallcore.security.credentials import hash_secret
from recallcore.settings import Settings

from ..support import ServerThread
from .issuer import ISSUER, Issuer

CLIENT_SECRETS = {"app": "secret-of-the-app-client", "other": "secret-of-the-other-client"}


def basic(client_id: str) -> dict:
    value = base64.b64encode(f"{client_id}:{CLIENT_SECRETS[client_id]}".encode()).decode()
    return {"Authorization": f"Basic {value}"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def idp(tmp_path):
    return Issuer(tmp_path / "idp")


@pytest.fixture
def clients_file(tmp_path):
    path = tmp_path / "clients.toml"
    path.write_text("[clients]\n" + "".join(f'{c} = "{hash_secret(s)}"\n' for c, s in CLIENT_SECRETS.items()))
    return path


@pytest.fixture
def edge(data_dir, idp, clients_file):
    srv = ServerThread(Settings(
        data_dir=data_dir, listen="127.0.0.1:0", http_listen="127.0.0.1:0", sweep_interval=3600,
        jwt_issuers=(f"{ISSUER}={idp.jwks}",), oauth_clients=str(clients_file),
        check_headers=("sub=X-Recall-Subject", "client_id=X-Recall-Client", "scope=X-Recall-Scope"),
    ))
    with RecallClient(srv.address) as grpc_client, \
            httpx.Client(base_url=f"http://{srv.server.http.address}", timeout=10) as http:
        yield srv, grpc_client, http
    srv.stop()
