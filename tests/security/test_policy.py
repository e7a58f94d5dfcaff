"""recallcore.security without sockets: identities, credentials, the policy, the gate, reloading."""

import time

import pytest

from recallcore.core.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from recallcore.security import reloading
from recallcore.security.credentials import Credentials, hash_secret
from recallcore.security.gate import Gate
from recallcore.security.identity import Caller, bearer, from_certificate
from recallcore.security.policy import ROLES, Policy, required_role
from recallcore.security.reloading import Reloading

PEM = [b"-----BEGIN CERTIFICATE-----..."]


@pytest.mark.parametrize("auth,identity", [
    ({"x509_pem_cert": PEM, "peer_spiffe_id": [b"spiffe://example.org/gw"], "peer_uri": [b"spiffe://example.org/gw"],
      "peer_dns": [b"gw1.example.org"], "x509_common_name": [b"gw"]}, "spiffe://example.org/gw"),
    ({"x509_pem_cert": PEM, "peer_uri": [b"https://id.example/x"], "x509_common_name": [b"x"]}, "uri:https://id.example/x"),
    ({"x509_pem_cert": PEM, "peer_dns": [b"gw1.example.org"], "x509_common_name": [b"gw"]}, "dns:gw1.example.org"),
    ({"x509_pem_cert": PEM, "x509_common_name": [b"ops-laptop"]}, "cn:ops-laptop"),
    ({"transport_security_type": [b"ssl"]}, ""),  # TLS, but no client certificate
    ({}, ""),
])
def test_a_certificate_names_its_spiffe_id_uri_dns_or_cn_in_that_order(auth, identity):
    assert from_certificate(auth) == identity


def test_bearer_values():
    assert bearer("Bearer s3cret") == "s3cret" and bearer("bearer  s3cret ") == "s3cret"
    assert bearer("Basic abc") is None and bearer("Bearer ") is None


POLICY = """
[[grant]]
identities = ["spiffe://example.org/gateway", "dns:gw1.example.org"]
roles = ["check", "introspect"]

[[grant]]
identities = ["token:ci-bot"]
roles = ["revoke"]

[[grant]]
identities = ["*"]
roles = ["check"]
"""


def test_the_policy_grants_what_it_names_and_denies_the_rest():
    policy = Policy.parse(POLICY)
    assert policy.allows("dns:gw1.example.org", "introspect") and not policy.allows("dns:gw1.example.org", "revoke")
    assert policy.allows("token:ci-bot", "revoke") and policy.allows("token:ci-bot", "check")  # "*"
    assert not policy.allows("token:ci-bot", "killswitch") and not policy.allows("cn:someone", "audit")


@pytest.mark.parametrize("text,field", [
    ('[[grant]]\nidentities = ["x"]\nroles = ["root"]', "unknown role"),
    ('[[grant]]\nidentities = "x"\nroles = ["check"]', "identities"),
    ('[[grant]]\nidentities = ["x"]', "roles"),
    ("[[grant]\n", "not TOML"),
    ('[grants]\nx = 1', "unknown key"),
])
def test_a_broken_policy_is_refused_naming_what_is_wrong(text, field):
    with pytest.raises(InvalidArgument, match=field):
        Policy.parse(text)


def test_every_method_needs_a_role_and_the_kill_switch_its_own():
    for method in ("Check", "CheckBatch", "Watch", "Stats", "Health", "Introspect", "Register", "Rotate",
                   "Revoke", "AuditLog"):
        assert required_role(method) in ROLES
    assert required_role("Cutoff", 1) == required_role("Cutoff", 2) == "revoke"  # subject, client
    assert required_role("Cutoff", 3) == required_role("Cutoff", 4) == "killswitch"  # issuer, everyone


def test_credentials_store_hashes_and_identify_by_the_secret(tmp_path):
    path = tmp_path / "credentials.toml"
    path.write_text(f'[tokens]\nci-bot = "{hash_secret("a-long-random-secret")}"\n')
    creds = Credentials.load(path)
    assert creds.identify("a-long-random-secret") == "token:ci-bot"
    assert creds.identify("a-long-random-secreT") is None
    assert "a-long-random-secret" not in path.read_text()
    path.write_text('[tokens]\nci-bot = "plain-secret"\n')
    with pytest.raises(InvalidArgument, match="tokens.ci-bot"):
        Credentials.load(path)


def gate(tmp_path, policy: str = POLICY, max_streams: int = 0) -> Gate:
    (tmp_path / "policy.toml").write_text(policy)
    (tmp_path / "creds.toml").write_text(f'[tokens]\nci-bot = "{hash_secret("secret-of-ci-bot")}"\n')
    return Gate(Reloading(tmp_path / "policy.toml", Policy.load), Reloading(tmp_path / "creds.toml", Credentials.load),
                max_streams)


def test_the_gate_authenticates_then_authorizes(tmp_path):
    g = gate(tmp_path)
    with pytest.raises(Unauthenticated, match="no client certificate or bearer credential"):
        g.identify("", "", "ipv4:127.0.0.1:1")
    with pytest.raises(Unauthenticated, match="not one this server knows"):
        g.identify("", "Bearer wrong-secret", "ipv4:127.0.0.1:1")
    with pytest.raises(Unauthenticated, match="Bearer"):
        g.identify("", "Basic Y2k6Ym90", "ipv4:127.0.0.1:1")
    caller = g.identify("", "Bearer secret-of-ci-bot", "ipv4:127.0.0.1:1")
    assert caller == Caller("token:ci-bot", "ipv4:127.0.0.1:1")
    g.authorize(caller, "revoke")
    with pytest.raises(PermissionDenied, match="'killswitch'"):
        g.authorize(caller, "killswitch")
    assert g.identify("dns:gw1.example.org", "", "p").identity == "dns:gw1.example.org"  # certificate wins


def test_without_a_policy_the_gate_admits_everyone_as_who_they_say(tmp_path):
    open_gate = Gate()
    caller = open_gate.identify("", "", "ipv4:127.0.0.1:1")
    assert caller.anonymous
    open_gate.authorize(caller, "killswitch")


def test_stream_slots_per_identity(tmp_path):
    g = gate(tmp_path, max_streams=2)
    caller = Caller("token:ci-bot")
    with g.stream(caller, "Watch"), g.stream(caller, "Watch"):
        with pytest.raises(ResourceExhausted, match="cap per identity"):
            with g.stream(caller, "Watch"):
                pass
        with g.stream(Caller("token:other"), "Watch"):  # another identity has its own slots
            pass
    with g.stream(caller, "Watch"):  # released
        pass


def test_a_changed_policy_takes_effect_and_a_broken_one_keeps_the_previous(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(reloading, "CHECK_EVERY", 0.0)
    g = gate(tmp_path)
    assert not g.policy.current().allows("cn:new", "audit")
    time.sleep(0.01)
    (tmp_path / "policy.toml").write_text('[[grant]]\nidentities = ["cn:new"]\nroles = ["audit"]\n')
    assert g.policy.current().allows("cn:new", "audit")
    (tmp_path / "policy.toml").write_text("[[grant]\nbroken")
    assert g.policy.current().allows("cn:new", "audit")
    assert "did not load, keeping the previous one" in caplog.text
