"""The trust boundary end to end: real TLS on 127.0.0.1:0, certificates and credentials made here.

Two servers: one with TLS whose callers present bearer credentials (one
identity per role, so every RPC meets every role), and one with mutual TLS
whose callers are their certificates (SPIFFE ID, DNS SAN, CN).
"""

import dataclasses
import json
import logging
import pathlib
import socket
import ssl
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recallclient import RecallClient, RecallError, Replica, TokenState, TokenType
from recallclient._proto.recall.v1 import recall_pb2 as pb
from recallclient._proto.recall.v1 import recall_pb2_grpc

from recallcore.security import reloading
from recallcore.security.credentials import hash_secret
from recallcore.security.policy import ROLES
from recallcore.settings import Settings

from ..support import ServerThread, until
from .certs import CA

WAIT = 30.0
SECRETS = {role: f"secret-of-the-{role}-role-holder" for role in ROLES}


@pytest.fixture
def ca(tmp_path) -> CA:
    return CA(tmp_path / "pki")


def write_policy(path: pathlib.Path, grants: dict[str, list[str]]) -> pathlib.Path:
    path.write_text("".join(f"[[grant]]\nidentities = {json.dumps([identity])}\nroles = {json.dumps(roles)}\n\n"
                            for identity, roles in grants.items()))
    return path


@pytest.fixture
def files(tmp_path, ca):
    server = ca.server()
    policy = write_policy(tmp_path / "policy.toml", {f"token:{role}": [role] for role in ROLES})
    creds = tmp_path / "credentials.toml"
    creds.write_text("[tokens]\n" + "".join(f'{role} = "{hash_secret(s)}"\n' for role, s in SECRETS.items())
                     + f'follower = "{hash_secret("secret-of-the-follower")}"\n')
    return dataclasses.make_dataclass("Files", ["server", "policy", "credentials"])(server, policy, creds)


@pytest.fixture
def tls_server(data_dir, files, monkeypatch):
    monkeypatch.setattr(reloading, "CHECK_EVERY", 0.0)
    srv = ServerThread(Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600,
                                tls_cert=str(files.server.cert), tls_key=str(files.server.key),
                                policy=str(files.policy), credentials=str(files.credentials),
                                heartbeat_interval=0.05))
    yield srv
    srv.stop()


def client(srv, ca, role: str | None = None, **kwargs) -> RecallClient:
    return RecallClient(srv.address, cacert=str(ca.path), token=SECRETS[role] if role else None, timeout=10, **kwargs)


def stub_and_metadata(srv, ca, role: str | None):
    channel = grpc.secure_channel(srv.address, grpc.ssl_channel_credentials(ca.path.read_bytes()))
    metadata = (("authorization", f"Bearer {SECRETS[role]}"),) if role else ()
    return channel, metadata


# Each call, and the role it needs. Arguments refer to what `setup` registered.
CALLS = {
    "Check": ("check", lambda s, m, t: s.Check(pb.CheckRequest(serial=t["access"]), metadata=m)),
    "CheckBatch": ("check", lambda s, m, t: s.CheckBatch(pb.CheckBatchRequest(serials=b"\x01" + bytes(7)),
                                                         metadata=m)),
    "Stats": ("check", lambda s, m, t: s.Stats(pb.StatsRequest(), metadata=m)),
    "Watch": ("check", lambda s, m, t: next(iter(s.Watch(pb.WatchRequest(), metadata=m, timeout=10)))),
    "Introspect": ("introspect", lambda s, m, t: s.Introspect(pb.IntrospectRequest(serial=t["access"]), metadata=m)),
    "Register": ("issue", lambda s, m, t: s.Register(pb.RegisterRequest(
        tokens=[pb.TokenSpec(subject="zed", client_id="web")]), metadata=m)),
    "Rotate": ("issue", lambda s, m, t: s.Rotate(pb.RotateRequest(serial=t["refresh"], request_id="r"), metadata=m)),
    "Revoke": ("revoke", lambda s, m, t: s.Revoke(pb.RevokeRequest(selector=pb.Selector(serials=[t["victim"]])),
                                                  metadata=m)),
    "Cutoff(subject)": ("revoke", lambda s, m, t: s.Cutoff(pb.CutoffRequest(
        rule=pb.Rule(scope=pb.Rule.SUBJECT, value="nobody")), metadata=m)),
    "Cutoff(all)": ("killswitch", lambda s, m, t: s.Cutoff(pb.CutoffRequest(
        rule=pb.Rule(scope=pb.Rule.ISSUER, value="https://gone.example")), metadata=m)),
    "AuditLog": ("audit", lambda s, m, t: next(iter(s.AuditLog(pb.AuditRequest(), metadata=m, timeout=10)))),
}


def test_every_rpc_meets_every_role(tls_server, ca):
    with client(tls_server, ca, "issue") as issuer:
        tokens = {"access": issuer.register_one("alice", "web").serial,
                  "victim": issuer.register_one("bob", "web").serial}
    channel, _ = stub_and_metadata(tls_server, ca, None)
    stub = recall_pb2_grpc.RecallStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        for role in ROLES:
            with client(tls_server, ca, "issue") as issuer:
                tokens["refresh"] = issuer.register_one("carol", "web", type=TokenType.REFRESH).serial
            metadata = (("authorization", f"Bearer {SECRETS[role]}"),)
            for name, (needs, call) in CALLS.items():
                if needs == role:
                    call(stub, metadata, tokens)  # allowed: answers
                    continue
                with pytest.raises(grpc.RpcError) as denied:
                    call(stub, metadata, tokens)
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, (role, name)
                assert f"token:{role} lacks the role '{needs}'" in denied.value.details(), (role, name)
            if role == "check":
                health.Check(health_pb2.HealthCheckRequest(), metadata=metadata)
            else:
                with pytest.raises(grpc.RpcError) as denied:
                    health.Check(health_pb2.HealthCheckRequest(), metadata=metadata)
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer not-a-known-secret"),),
                                      (("authorization", "Basic dXNlcjpwdw=="),)], ids=["none", "wrong", "basic"])
def test_no_or_a_bad_credential_is_unauthenticated_and_changes_nothing(tls_server, ca, metadata):
    channel, _ = stub_and_metadata(tls_server, ca, None)
    stub = recall_pb2_grpc.RecallStub(channel)
    try:
        for call in (lambda: stub.Register(pb.RegisterRequest(tokens=[pb.TokenSpec(subject="a", client_id="b")]),
                                           metadata=metadata),
                     lambda: stub.Cutoff(pb.CutoffRequest(rule=pb.Rule(scope=pb.Rule.ALL)), metadata=metadata),
                     lambda: stub.Check(pb.CheckRequest(serial=1), metadata=metadata)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
    with client(tls_server, ca, "check") as checker:
        assert checker.stats().seq == 0


def test_a_plaintext_client_against_the_tls_server_gets_nothing(tls_server):
    with RecallClient(tls_server.address, token=SECRETS["check"], timeout=5) as plain:
        with pytest.raises(RecallError) as err:
            plain.stats()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_the_actor_is_the_authenticated_caller_and_a_forged_one_is_only_on_behalf_of(tls_server, ca):
    with client(tls_server, ca, "issue") as issuer:
        serial = issuer.register_one("alice", "web").serial
    with client(tls_server, ca, "revoke") as revoker:
        revoker.revoke(serials=[serial], reason="leak", actor="root")
    with client(tls_server, ca, "audit") as auditor:
        register, revoke = list(auditor.audit())
    assert (revoke["actor"], revoke["on_behalf_of"]) == ("token:revoke", "root")
    assert revoke["peer"].startswith("ipv4:127.0.0.1:") and register["actor"] == "token:issue"
    with client(tls_server, ca, "introspect") as reader:
        assert reader.introspect(serial)["actor"] == "token:revoke"


def test_a_policy_change_takes_effect_without_restart_and_a_broken_one_keeps_the_last(tls_server, ca, files):
    with client(tls_server, ca, "check") as checker:
        with pytest.raises(RecallError) as denied:
            list(checker.audit())
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        time.sleep(0.01)  # a new modification time
        write_policy(files.policy, {"token:check": ["check", "audit"]})
        assert list(checker.audit()) == []  # granted now
        files.policy.write_text("[[grant]\nnot toml")
        assert list(checker.audit()) == []  # the broken file kept the last policy
        with client(tls_server, ca, "revoke") as revoker, pytest.raises(RecallError) as denied:
            revoker.revoke(serials=[1])
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED  # no longer granted


def served_certificate_serial(address: str, cafile: pathlib.Path) -> int:
    """The serial of the certificate the server presents to a new connection."""
    from cryptography import x509

    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_a_certificate_rotation_reaches_new_connections_and_keeps_an_open_watch(tls_server, ca, files):
    with client(tls_server, ca, "issue") as issuer:
        serial = issuer.register_one("alice", "web").serial
    assert served_certificate_serial(tls_server.address, ca.path) == files.server.serial
    outcomes = []
    with Replica(tls_server.address, cacert=str(ca.path), token=SECRETS["check"], on_change=outcomes.append) as r:
        assert r.wait_for(1, WAIT)
        rotated = ca.server("server-2")
        time.sleep(0.01)
        rotated.cert.replace(files.server.cert)
        rotated.key.replace(files.server.key)
        assert served_certificate_serial(tls_server.address, ca.path) == rotated.serial
        with client(tls_server, ca, "revoke") as revoker:
            seq = revoker.revoke(serials=[serial]).seq
        assert r.wait_for(seq, WAIT) and r.is_revoked(serial)
        assert [o.kind for o in outcomes].count("installed") == 1  # the stream was never reopened


def test_mutual_tls_names_callers_by_their_certificates_and_refuses_strangers(tmp_path, data_dir, ca, monkeypatch):
    server = ca.server()
    policy = write_policy(tmp_path / "mtls-policy.toml", {
        "spiffe://example.org/gateway": ["check"], "dns:as.example.org": ["issue"], "cn:ops-laptop": ["revoke"],
    })
    gateway = ca.issue("gateway", uris=("spiffe://example.org/gateway",), dns=("gw1.example.org",))
    issuer = ca.issue("issuer", dns=("as.example.org",))
    ops = ca.issue("ops", cn="ops-laptop")
    expired = ca.issue("old-gateway", uris=("spiffe://example.org/gateway",), expired=True)
    stranger = CA(tmp_path / "other-pki", "other ca").issue("stranger", uris=("spiffe://example.org/gateway",))
    srv = ServerThread(Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600,
                                tls_cert=str(server.cert), tls_key=str(server.key), client_ca=str(ca.path),
                                policy=str(policy)))
    try:
        def as_(leaf, **kw):
            return RecallClient(srv.address, cacert=str(ca.path), cert=str(leaf.cert), key=str(leaf.key), timeout=5)

        with as_(issuer) as c:
            serial = c.register_one("alice", "web").serial
        with as_(gateway) as c:
            assert c.check(serial).state == TokenState.ACTIVE
            with pytest.raises(RecallError) as denied:
                c.revoke(serials=[serial])
            assert "spiffe://example.org/gateway lacks the role 'revoke'" in denied.value.details
        with as_(ops) as c:
            assert c.revoke(serials=[serial]).count == 1
        for leaf in (expired, stranger):
            with as_(leaf) as c, pytest.raises(RecallError) as refused:
                c.stats()
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE  # the handshake refuses it
        with RecallClient(srv.address, cacert=str(ca.path), timeout=5) as nobody, \
                pytest.raises(RecallError) as refused:
            nobody.stats()
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def test_a_follower_authenticates_with_its_own_identity(tmp_path, tls_server, ca, files):
    write_policy(files.policy, {**{f"token:{role}": [role] for role in ROLES}, "token:follower": ["check"]})
    token_file = tmp_path / "follower-token"
    token_file.write_text("secret-of-the-follower\n")
    base = Settings(data_dir=tmp_path / "f", listen="127.0.0.1:0", follow=tls_server.address,
                    primary_cacert=str(ca.path), heartbeat_interval=0.05)
    with client(tls_server, ca, "issue") as issuer:
        serial = issuer.register_one("alice", "web").serial
    follower = ServerThread(dataclasses.replace(base, primary_token_file=str(token_file)))
    try:
        with RecallClient(follower.address, timeout=10) as f:
            assert f.check(serial, min_seq=1).state == TokenState.ACTIVE
    finally:
        follower.stop()
    anonymous = ServerThread(dataclasses.replace(base, data_dir=tmp_path / "g"))
    try:
        time.sleep(1.0)  # it tries, and is refused
        with RecallClient(anonymous.address, timeout=5) as f, pytest.raises(RecallError) as err:
            f.check(serial)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION  # never synced
    finally:
        anonymous.stop()


@pytest.fixture
def credential_follower(tmp_path, tls_server, ca, files):
    """(serial registered on the primary, the follower's credential file (not written), start the follower)."""
    write_policy(files.policy, {**{f"token:{role}": [role] for role in ROLES}, "token:follower": ["check"]})
    token_file = tmp_path / "follower-token"
    with client(tls_server, ca, "issue") as issuer:
        serial = issuer.register_one("alice", "web").serial
    started = []

    def start() -> ServerThread:
        started.append(ServerThread(Settings(
            data_dir=tmp_path / "f", listen="127.0.0.1:0", follow=tls_server.address, primary_cacert=str(ca.path),
            heartbeat_interval=0.05, primary_token_file=str(token_file))))
        return started[-1]

    yield serial, token_file, start
    for follower in started:
        follower.stop()


def test_a_follower_reads_its_credential_again_when_the_primary_refuses_it(credential_follower, caplog):
    caplog.set_level(logging.INFO, "recallcore.replication.follower")
    serial, token_file, start = credential_follower
    token_file.write_text("an-old-secret-since-rotated\n")
    follower = start()
    until(lambda: "UNAUTHENTICATED" in caplog.text, "the primary refusing the old credential", 10)
    with RecallClient(follower.address, timeout=10) as f:
        with pytest.raises(RecallError) as err:
            f.check(serial)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION  # never synced
        token_file.write_text("secret-of-the-follower\n")  # the rotated credential, put in place
        assert f.check(serial, min_seq=1).state == TokenState.ACTIVE


def test_a_follower_whose_credential_file_is_not_there_yet_keeps_trying(credential_follower, caplog):
    serial, token_file, start = credential_follower
    follower = start()
    until(lambda: "following" in caplog.text and "failed; trying again" in caplog.text,
          "the follower saying it cannot read the file", 10)
    token_file.write_text("secret-of-the-follower\n")  # say, a secrets volume mounted late
    with RecallClient(follower.address, timeout=10) as f:
        assert f.check(serial, min_seq=1).state == TokenState.ACTIVE


def test_a_follower_without_the_introspect_role_at_its_primary_says_so_not_unavailable(
        credential_follower, tls_server, ca):
    serial, token_file, start = credential_follower
    with client(tls_server, ca, "issue") as issuer:
        custom = issuer.register_one("bob", "web", jti="custom-of-bob").serial
    token_file.write_text("secret-of-the-follower\n")  # its identity has "check" alone
    follower = start()
    with RecallClient(follower.address, timeout=10) as f:
        assert f.check(serial, min_seq=custom).state == TokenState.ACTIVE
        with pytest.raises(RecallError) as refused:
            f.introspect(jti="custom-of-bob")  # resolved by the primary's index
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION  # a configuration error, not an outage
    assert "PERMISSION_DENIED" in refused.value.details and "introspect role" in refused.value.details


def test_streams_per_identity_are_capped(data_dir, files, ca):
    srv = ServerThread(Settings(data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600,
                                tls_cert=str(files.server.cert), tls_key=str(files.server.key),
                                policy=str(files.policy), credentials=str(files.credentials),
                                max_streams_per_identity=2))
    channel, metadata = stub_and_metadata(srv, ca, "check")
    try:
        stub = recall_pb2_grpc.RecallStub(channel)
        open_ = [stub.Watch(pb.WatchRequest(), metadata=metadata, timeout=30) for _ in range(2)]
        for call in open_:
            next(iter(call))
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stub.Watch(pb.WatchRequest(), metadata=metadata, timeout=30)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-streams-per-identity 2" in err.value.details()
        for call in open_:
            call.cancel()
    finally:
        channel.close()
        srv.stop()


@pytest.mark.parametrize("fields,says", [
    ({}, "--tls-cert"),
    ({"tls": True}, "--policy"),
])
def test_a_non_loopback_address_needs_tls_and_a_policy_or_insecure(files, fields, says):
    tls = {"tls_cert": str(files.server.cert), "tls_key": str(files.server.key)} if fields else {}
    with pytest.raises(ValueError, match=says):
        Settings(listen="0.0.0.0:0", **tls)
    assert Settings(listen="0.0.0.0:0", insecure=True, **tls).insecure
    assert Settings(listen="0.0.0.0:0", policy=str(files.policy), **{
        "tls_cert": str(files.server.cert), "tls_key": str(files.server.key)}).loopback is False


def test_the_server_refuses_to_start_exposed_in_the_clear(data_dir):
    done = subprocess.run([sys.executable, "-m", "recallcore", "serve", "--data-dir", str(data_dir),
                           "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "listening" not in done.stdout
    assert "add --tls-cert and --tls-key (and --policy), or give --insecure" in done.stderr
    assert not data_dir.exists()  # refused before anything was opened
