"""SET push delivery (RFC 8935) to a real server: what reaches Check and a replica, and every refusal."""

import base64
import json
import ssl
import subprocess
import sys
import time

import httpx
import pytest
from joserfc.jwk import ECKey
from recallclient import RecallClient, Replica

from recallcore.config import Layers, check_files
from recallcore.core.signals import CAEP, RISC
from recallcore.security import jwks
from recallcore.security.credentials import hash_secret
from recallcore.settings import Settings

from ..memory_store import MemoryStore
from ..security.certs import CA
from ..support import LocalHttp, ServerThread, readme_blocks, until
from .transmitter import AUDIENCE, SESSION_REVOKED, TRANSMITTER, Transmitter

SET_TYPE = {"Content-Type": "application/secevent+jwt"}
PUSH_SECRET = "secret-of-the-guarded-transmitter"


def settings(data_dir, tmp_path, sender: Transmitter) -> Settings:
    creds = tmp_path / "credentials.toml"
    creds.write_text(f'[tokens]\nguarded-idp = "{hash_secret(PUSH_SECRET)}"\n')
    return Settings(
        data_dir=data_dir, listen="127.0.0.1:0", http_listen="127.0.0.1:0", sweep_interval=3600,
        credentials=str(creds),
        ssf_transmitters=(
            {"stream": "okta-main", "issuer": TRANSMITTER, "jwks": str(sender.jwks), "audience": AUDIENCE},
            {"stream": "guarded", "issuer": TRANSMITTER, "jwks": str(sender.jwks), "audience": AUDIENCE,
             "identity": "token:guarded-idp"},
        ),
    )


@pytest.fixture
def sender(tmp_path):
    return Transmitter(tmp_path / "idp")


@pytest.fixture
def receiver(data_dir, tmp_path, sender):
    srv = ServerThread(settings(data_dir, tmp_path, sender))
    with RecallClient(srv.address) as grpc_client, \
            httpx.Client(base_url=f"http://{srv.server.http.address}", timeout=10) as http:
        yield srv, grpc_client, http
    srv.stop()


def push(http: httpx.Client, token: str, stream: str = "okta-main", headers: dict | None = None) -> httpx.Response:
    return http.post(f"/ssf/push/{stream}", content=token, headers={**SET_TYPE, **(headers or {})})


def refused(response: httpx.Response, err: str, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["err"] == err, body
    return body["description"]


def state(client: RecallClient, serial: int) -> str:
    return client.check(serial).state.name


def test_session_revoked_refuses_the_subjects_earlier_tokens_at_check_and_in_a_replica(receiver, sender):
    srv, client, http = receiver
    now = int(time.time())
    before = client.register_one("alice", "web", issued_at=now - 60, ttl=3600)
    others = client.register_one("bob", "web", issued_at=now - 60, ttl=3600)
    with Replica(srv.address) as replica:
        replica.wait_for(client.stats().seq, timeout=10)
        assert not replica.is_revoked(before.serial)
        answer = push(http, sender.set(SESSION_REVOKED, "alice", payload={"event_timestamp": now - 5}))
        assert answer.status_code == 202 and answer.content == b""
        # 202 means applied: the primary answers from the change at once.
        assert state(client, before.serial) == "REVOKED" and state(client, others.serial) == "ACTIVE"
        until(lambda: replica.is_revoked(before.serial), "the replica refusing alice's token")
        assert not replica.is_revoked(others.serial)
        # A token of alice issued after the event is hers to use; one issued before, registered late, is not.
        after = client.register_one("alice", "web", issued_at=now, ttl=3600)
        late = client.register_one("alice", "mobile", issued_at=now - 30, ttl=3600)
        assert state(client, after.serial) == "ACTIVE" and state(client, late.serial) == "REVOKED"
    record = [r for r in client.audit(subject="alice") if r["type"] == "cutoff"][-1]
    assert record["actor"] == "ssf:okta-main" and record["peer"].startswith("ipv4:127.0.0.1:")
    assert record["signal"] == {"transmitter": "okta-main", "issuer": TRANSMITTER, "jti": "set-1",
                                "event": SESSION_REVOKED}


def test_a_replayed_set_changes_nothing_also_after_a_restart(data_dir, tmp_path, sender):
    config = settings(data_dir, tmp_path, sender)
    token = sender.set(RISC + "account-disabled", "carol")
    srv = ServerThread(config)
    try:
        with httpx.Client(base_url=f"http://{srv.server.http.address}", timeout=10) as http:
            assert push(http, token).status_code == 202
            seq = srv.engine.state.seq
            assert push(http, token).status_code == 202
            assert srv.engine.state.seq == seq
    finally:
        srv.stop()
    srv = ServerThread(config)  # the SET's jti was kept with the change
    try:
        with RecallClient(srv.address) as client, \
                httpx.Client(base_url=f"http://{srv.server.http.address}", timeout=10) as http:
            carol = client.register_one("carol", "web", issued_at=int(time.time()) - 60, ttl=3600)
            seq = client.stats().seq
            assert push(http, token).status_code == 202
            assert client.stats().seq == seq
            assert state(client, carol.serial) == "REVOKED"  # the rule of the first delivery holds
            counts = http.get("/ssf/status").json()["streams"]["okta-main"]
            assert (counts["applied"], counts["duplicate"]) == (0, 1)
    finally:
        srv.stop()


def test_a_forged_signature_a_foreign_audience_or_issuer_are_refused_and_change_nothing(receiver, sender):
    srv, client, http = receiver
    alice = client.register_one("alice", "web", issued_at=int(time.time()) - 60, ttl=3600)
    seq = client.stats().seq
    impostor = ECKey.generate_key("P-256", parameters={"kid": sender.kid})  # same kid, not the key
    assert "signature" in refused(push(http, sender.sign(sender.claims(), key=impostor)), "authentication_failed")
    assert refused(push(http, sender.sign(sender.claims(aud="https://someone-else.example"))), "invalid_audience")
    other = sender.claims()
    other["iss"] = "https://other-idp.example"
    assert "other-idp" in refused(push(http, sender.sign(other)), "invalid_issuer")
    assert push(http, sender.set(), stream="nobody").status_code == 404
    assert client.stats().seq == seq and state(client, alice.serial) == "ACTIVE"
    assert http.get("/ssf/status").json()["streams"]["okta-main"]["rejected"] == 3


@pytest.mark.parametrize("change, err, says", [
    (lambda s: s.sign(s.claims(sub="alice")), "invalid_request", "sub claim"),
    (lambda s: s.sign(s.claims(exp=int(time.time()) + 60)), "invalid_request", "exp claim"),
    (lambda s: s.sign(s.claims(), header={"typ": "JWT"}), "invalid_request", "secevent+jwt"),
    (lambda s: s.sign(s.claims(iat=int(time.time()) - 2 * 86400)), "invalid_request", "issued more than"),
    (lambda s: s.sign(s.claims(iat=int(time.time()) + 3600)), "invalid_request", "future"),
    (lambda s: s.sign({k: v for k, v in s.claims().items() if k != "jti"}), "invalid_request", "no jti"),
    (lambda s: s.sign({**s.claims(), "events": {}}), "invalid_request", "exactly one event"),
    (lambda s: s.sign(s.claims(), header={"kid": "unknown"}), "invalid_key", "no signing key"),
    (lambda s: "not.a.jws", "invalid_request", "compact JWS"),
])
def test_a_set_that_breaks_the_profile_is_refused_naming_why(receiver, sender, change, err, says):
    _, _, http = receiver
    assert says in refused(push(http, change(sender)), err)


def test_the_wrong_content_type_is_an_invalid_request(receiver, sender):
    _, _, http = receiver
    answer = http.post("/ssf/push/okta-main", content=sender.set(), headers={"Content-Type": "application/jwt"})
    assert "application/secevent+jwt" in refused(answer, "invalid_request")


def test_a_transmitter_that_rotates_its_key_is_followed_and_an_unpublished_key_is_not(receiver, sender):
    _, client, http = receiver
    sender.rotate("t2")
    assert refused(push(http, sender.set(subject="dave")), "invalid_key")  # not published yet
    sender.publish()  # the file changes: read again
    until(lambda: push(http, sender.set(subject="dave")).status_code == 202, "the rotated key being accepted")
    dave = [r for r in client.audit() if r["type"] == "cutoff"]
    assert dave and dave[-1]["rule"]["value"] == "dave"
    sender.publish("t2")  # the old key withdrawn
    sender.kid = "t1"
    until(lambda: push(http, sender.set()).status_code == 400, "the withdrawn key being refused")


def test_an_unknown_event_is_acknowledged_ignored_and_counted(receiver, sender):
    _, client, http = receiver
    alice = client.register_one("alice", "web", issued_at=int(time.time()) - 60, ttl=3600)
    seq = client.stats().seq
    other = CAEP + "assurance-level-change"
    assert push(http, sender.set(other)).status_code == 202
    assert push(http, sender.set("https://schemas.openid.net/secevent/ssf/event-type/verification")).status_code == 202
    assert client.stats().seq == seq and state(client, alice.serial) == "ACTIVE"
    stream = http.get("/ssf/status").json()["streams"]["okta-main"]
    assert stream["ignored"] == 2 and stream["ignored_events"][other] == 1


def test_a_jwt_id_subject_revokes_that_one_token(receiver, sender):
    _, client, http = receiver
    token = client.register_one("erin", "web", issuer="https://as.example", jti="tok-77", ttl=3600)
    sibling = client.register_one("erin", "web", issuer="https://as.example", jti="tok-78", ttl=3600)
    claims = sender.claims()
    claims["sub_id"] = {"format": "jwt_id", "iss": "https://as.example", "jti": "tok-77"}
    assert push(http, sender.sign(claims)).status_code == 202
    assert state(client, token.serial) == "REVOKED" and state(client, sibling.serial) == "ACTIVE"


def test_a_guarded_stream_needs_its_transmitters_credential_too(receiver, sender):
    _, _, http = receiver
    assert refused(push(http, sender.set(), "guarded"), "authentication_failed", 401)
    wrong = {"Authorization": "Bearer not-the-secret"}
    assert refused(push(http, sender.set(), "guarded", wrong), "authentication_failed", 401)
    right = {"Authorization": f"Bearer {PUSH_SECRET}"}
    assert push(http, sender.set(), "guarded", right).status_code == 202


def test_transmitters_are_read_from_the_config_file_tables(tmp_path, sender):
    path = tmp_path / "recallcore.toml"
    path.write_text(f'http_listen = "127.0.0.1:0"\n[ssf]\nmax_age = 600\n\n[[ssf.transmitters]]\nstream = "okta-main"\n'
                    f'issuer = "{TRANSMITTER}"\njwks = "{sender.jwks}"\naudience = "{AUDIENCE}"\n')
    layers = Layers()
    layers.read_file(path)
    read = layers.settings()
    assert read.ssf_max_age == 600 and read.transmitters[0].stream == "okta-main"
    path.write_text(path.read_text() + 'jwk = "typo.json"\n')
    layers = Layers()
    layers.read_file(path)
    with pytest.raises(ValueError, match="unknown key 'jwk' \\(did you mean 'jwks'\\?\\)"):
        layers.settings()


def test_keys_named_by_the_transmitters_ssf_metadata_are_fetched_from_its_jwks_uri(data_dir, tmp_path, sender,
                                                                                      monkeypatch):
    ca = CA(tmp_path / "ca")
    leaf = ca.server("idp-web")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf.cert, leaf.key)
    fetched = []
    down = [True]

    def respond(request):
        fetched.append(request.path)
        if down[0]:
            return 500, b""
        if request.path == "/.well-known/ssf-configuration":
            return 200, json.dumps({"issuer": TRANSMITTER, "jwks_uri": f"https://{web.address}/jwks.json",
                                    "delivery_methods_supported": ["urn:ietf:rfc:8935"]}).encode()
        return 200, sender.jwks.read_bytes()

    web = LocalHttp(respond, context)
    srv = ServerThread(Settings(
        data_dir=data_dir, listen="127.0.0.1:0", http_listen="127.0.0.1:0", sweep_interval=3600,
        ssf_transmitters=({"stream": "okta-main", "issuer": TRANSMITTER, "audience": AUDIENCE, "cacert": str(ca.path),
                           "metadata": f"https://{web.address}/.well-known/ssf-configuration"},)))
    try:
        with httpx.Client(base_url=f"http://{srv.server.http.address}", timeout=10) as http:
            # The transmitter's site is down: 503, and the next push does not fetch again at once.
            assert push(http, sender.set(subject="fay")).status_code == 503
            assert push(http, sender.set(subject="fay")).status_code == 503
            assert fetched == ["/.well-known/ssf-configuration"]
            down[0] = False
            fetched.clear()
            monkeypatch.setattr(jwks, "REFETCH_EVERY", 0.0)
            assert push(http, sender.set(subject="fay")).status_code == 202
            assert fetched == ["/.well-known/ssf-configuration", "/jwks.json"]
            assert push(http, sender.set(subject="gus")).status_code == 202
            assert len(fetched) == 2  # kept
    finally:
        srv.stop()
        web.close()


def test_check_config_names_a_transmitters_missing_key_file(tmp_path):
    path = tmp_path / "recallcore.toml"
    path.write_text(f'http_listen = "127.0.0.1:0"\n[[ssf.transmitters]]\nstream = "okta-main"\nissuer = "{TRANSMITTER}"\n'
                    f'jwks = "{tmp_path}/absent.json"\naudience = "{AUDIENCE}"\n')
    done = subprocess.run([sys.executable, "-m", "recallcore", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert f"ssf_transmitters[0] (okta-main).jwks: cannot read {tmp_path}/absent.json" in done.stderr


def test_the_readme_config_for_transmitters_is_read_as_it_says(tmp_path):
    receiving, transmitting = readme_blocks("## Signals from identity providers (Shared Signals, CAEP, RISC)", "toml")
    key = tmp_path / "ssf-key.json"
    key.write_text(json.dumps(ECKey.generate_key("P-256").as_dict(private=True)))
    block = receiving + transmitting.replace("/etc/recall/ssf-key.json", str(key))
    path = tmp_path / "recallcore.toml"
    creds = tmp_path / "credentials.toml"
    creds.write_text(f'[tokens]\nokta = "{hash_secret(PUSH_SECRET)}"\n')
    path.write_text(f'credentials = "{creds}"\n' + block.replace("0.0.0.0", "127.0.0.1"))
    layers = Layers()
    layers.read_file(path)
    read = layers.settings()
    okta, google = read.transmitters
    billing, crm = read.downstreams
    assert (billing.push, crm.push, crm.identity) == ("https://billing.example/ssf/events", "", "token:crm")
    assert read.ssf_key == str(key)
    # The key loads; what is missing is only the example's /etc files, each named.
    assert [line.split(": cannot read ")[0] for line in check_files(read)] == [
        "ssf_transmitters[0] (okta-main).jwks", "ssf_transmitters[1] (google).poll_token_file"]
    assert (okta.stream, okta.jwks, okta.identity) == ("okta-main", "/etc/recall/idp-jwks.json", "token:okta")
    assert google.metadata.endswith("/.well-known/ssf-configuration") and google.poll.startswith("https://")


def _unsigned(claims: dict, alg: str) -> str:
    def b64(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': alg, 'typ': 'secevent+jwt'})}.{b64(claims)}."


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_a_set_of_an_algorithm_off_the_allow_list_is_refused(receiver, sender, alg):
    _, client, http = receiver
    seq = client.stats().seq
    assert f"{alg!r} is not accepted" in refused(push(http, _unsigned(sender.claims(), alg)), "invalid_key")
    assert client.stats().seq == seq


def test_a_change_that_cannot_be_committed_is_answered_503_and_the_set_is_not_taken(data_dir, tmp_path, sender):
    store = MemoryStore(capacity=1, max_capacity=1).open()  # every write finds it full
    srv = ServerThread(settings(data_dir, tmp_path, sender), store=store)
    try:
        with httpx.Client(base_url=f"http://{srv.server.http.address}", timeout=10) as http:
            answer = push(http, sender.set(subject="hal"))
            assert answer.status_code == 503 and answer.headers["Retry-After"]
            assert srv.engine.state.seq == 0
            counts = http.get("/ssf/status").json()["streams"]["okta-main"]
            assert counts["applied"] == counts["duplicate"] == 0
    finally:
        srv.stop()


def test_a_credential_change_cuts_off_and_its_types_are_kept_in_the_audit_trail(receiver, sender):
    _, client, http = receiver
    ivy = client.register_one("ivy", "web", issued_at=int(time.time()) - 60, ttl=3600)
    payload = {"credential_type": "password", "change_type": "update"}
    assert push(http, sender.set(CAEP + "credential-change", "ivy", payload=payload)).status_code == 202
    assert state(client, ivy.serial) == "REVOKED"
    record = [r for r in client.audit(subject="ivy") if r["type"] == "cutoff"][-1]
    assert record["signal"]["event"] == CAEP + "credential-change"
    assert (record["signal"]["credential_type"], record["signal"]["change_type"]) == ("password", "update")
