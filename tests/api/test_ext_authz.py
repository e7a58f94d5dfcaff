"""ext_authz v3 Check over real gRPC, with Envoy's own generated stubs."""

import dataclasses

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from recallclient import RecallClient

from recallcore.security.credentials import hash_secret
from recallcore.settings import Settings

from ..support import FreezableProxy, ServerThread, until
from .issuer import ISSUER


def request(token: str | None = None, raw: bool = False) -> external_auth_pb2.CheckRequest:
    http = attribute_context_pb2.AttributeContext.HttpRequest(method="GET", path="/orders")
    if token is not None:
        if raw:  # encode_raw_headers: the header_map form
            http.header_map.headers.add(key="authorization", raw_value=f"Bearer {token}".encode())
        else:
            http.headers["authorization"] = f"Bearer {token}"
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(request=attribute_context_pb2.AttributeContext.Request(
            http=http)))


@pytest.fixture
def authz(settings, idp):
    srv = ServerThread(dataclasses.replace(settings, jwt_issuers=(f"{ISSUER}={idp.jwks}",)))
    with grpc.insecure_channel(srv.address) as channel, RecallClient(srv.address) as recall:
        yield srv, external_auth_pb2_grpc.AuthorizationStub(channel).Check, recall
    srv.stop()


def headers(response) -> dict[str, str]:
    options = response.ok_response.headers if response.HasField("ok_response") else response.denied_response.headers
    return {h.header.key: h.header.value for h in options}


@pytest.mark.parametrize("raw", [False, True])
def test_a_good_token_is_ok_with_the_identity_headers(authz, idp, raw):
    _, check, _ = authz
    response = check(request(idp.token("j-1"), raw=raw), timeout=5)
    assert response.status.code == code_pb2.OK
    assert headers(response) == {"X-Recall-Subject": "alice", "X-Recall-Client": "app"}


def test_a_revoked_token_is_denied_with_401_and_the_rfc6750_header(authz, idp):
    _, check, recall = authz
    registered = recall.register_one("alice", "app", issuer=ISSUER)
    token = idp.token(registered.canonical_jti)
    assert check(request(token), timeout=5).status.code == code_pb2.OK
    recall.revoke(serials=[registered.serial])
    response = check(request(token), timeout=5)
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert response.denied_response.status.code == 401
    assert headers(response)["WWW-Authenticate"] == (
        'Bearer realm="recallcore", error="invalid_token", error_description="the token has been revoked"')


def test_no_token_and_a_forged_token_are_denied(authz, idp):
    _, check, _ = authz
    assert headers(check(request(), timeout=5))["WWW-Authenticate"] == 'Bearer realm="recallcore"'
    assert check(request(idp.tampered()), timeout=5).denied_response.status.code == 401


def test_a_stale_follower_fails_the_call_so_envoy_fails_closed(servers, settings, tmp_path, idp):
    primary = servers.start(dataclasses.replace(settings, heartbeat_interval=0.05))
    proxy = FreezableProxy(primary.address)
    try:
        follower = servers.start(Settings(
            data_dir=tmp_path / "f", listen="127.0.0.1:0", follow=proxy.address, heartbeat_interval=0.05,
            max_staleness=1.0, jwt_issuers=(f"{ISSUER}={idp.jwks}",)))
        until(follower.engine.answering, "the follower in sync")
        with grpc.insecure_channel(follower.address) as channel:
            check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
            assert check(request(idp.token()), timeout=5).status.code == code_pb2.OK
            proxy.freeze()

            def failing() -> bool:
                try:
                    check(request(idp.token()), timeout=5)
                except grpc.RpcError as exc:
                    return exc.code() == grpc.StatusCode.UNAVAILABLE and "cannot vouch" in exc.details()
                return False

            until(failing, "ext_authz failing on the stale follower")
    finally:
        proxy.close()


def test_under_a_policy_a_caller_without_the_check_role_is_refused(settings, idp, tmp_path):
    (tmp_path / "policy.toml").write_text('[[grant]]\nidentities = ["token:envoy"]\nroles = ["check"]\n\n'
                                          '[[grant]]\nidentities = ["token:auditor"]\nroles = ["audit"]\n')
    (tmp_path / "creds.toml").write_text(f'[tokens]\nenvoy = "{hash_secret("secret-of-the-envoy-proxy")}"\n'
                                         f'auditor = "{hash_secret("secret-of-the-auditor-user")}"\n')
    srv = ServerThread(dataclasses.replace(settings, jwt_issuers=(f"{ISSUER}={idp.jwks}",),
                                           policy=str(tmp_path / "policy.toml"),
                                           credentials=str(tmp_path / "creds.toml")))
    try:
        with grpc.insecure_channel(srv.address) as channel:
            check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
            for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED),
                                   ((("authorization", "Bearer secret-of-the-auditor-user"),),
                                    grpc.StatusCode.PERMISSION_DENIED)):
                with pytest.raises(grpc.RpcError) as refused:
                    check(request(idp.token()), metadata=metadata, timeout=5)
                assert refused.value.code() == code
            answer = check(request(idp.token()), metadata=(("authorization", "Bearer secret-of-the-envoy-proxy"),),
                           timeout=5)
            assert answer.status.code == code_pb2.OK
    finally:
        srv.stop()
