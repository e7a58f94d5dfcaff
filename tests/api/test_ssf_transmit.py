"""recallcore as an SSF transmitter: SETs pushed to a receiver that is down for a while, and polled."""

import asyncio
import http.server
import json
import time

import httpx
import pytest
from joserfc.jwk import ECKey
from recallclient import RecallClient

from recallcore.core.signals import CAEP
from recallcore.security.jwks import KeySource
from recallcore.security.set_verifier import SetVerifier
from recallcore.settings import Settings

from ..security.certs import CA
from ..support import ServerThread, free_address, until
from .transmitter import HttpsPeer, serve_https

SESSION_REVOKED = CAEP + "session-revoked"
ISSUER = "https://recall.example"
RP = "https://rp.example"
PUSH_SECRET = "secret-of-the-relying-party"


class PushReceiver(HttpsPeer):
    """An RFC 8935 push endpoint over https on `address`, recording each SET; not listening until `start`."""

    def __init__(self, address: str, ca: CA) -> None:
        super().__init__(address, ca)
        self.received: list[str] = []
        self.authorizations: set[str] = set()

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.authorizations.add(self.headers.get("Authorization", ""))
                receiver.received.append(body)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = serve_https(self.address, self.ca, "rp", Handler)



@pytest.fixture
def setup(tmp_path, data_dir):
    ca = CA(tmp_path / "ca")
    receiver = PushReceiver(free_address(), ca)
    key = tmp_path / "ssf-key.json"
    key.write_text(json.dumps(ECKey.generate_key("P-256").as_dict(private=True)))
    secret = tmp_path / "rp.token"
    secret.write_text(PUSH_SECRET + "\n")
    config = Settings(
        data_dir=data_dir, listen="127.0.0.1:0", http_listen="127.0.0.1:0", sweep_interval=3600,
        ssf_key=str(key), ssf_issuer=ISSUER, ssf_poll_interval=0.05, ssf_poll_backoff=0.2,
        ssf_receivers=({"stream": "rp-push", "audience": RP, "push": f"https://{receiver.address}/events",
                        "push_token_file": str(secret), "cacert": str(ca.path)},
                       {"stream": "rp-poll", "audience": RP}),
    )
    yield config, receiver, tmp_path
    receiver.close()


def verified(sets: list[str], srv: ServerThread, tmp_path) -> list[dict]:
    """The claims of `sets`, verified as recallcore's own receiver would, with the published key."""
    jwks = tmp_path / "published.json"
    jwks.write_text(httpx.get(f"http://{srv.server.http.address}/ssf/jwks.json").text)
    verifier = SetVerifier(ISSUER, RP, KeySource(str(jwks)), algorithms=("ES256",), max_age=3600, skew=60,
                           clock=time.time)
    return [asyncio.run(verifier.verify(token)) for token in sets]


def test_a_receiver_down_for_a_while_gets_every_set_in_order_once_and_none_again_after_a_restart(setup):
    config, receiver, tmp_path = setup
    srv = ServerThread(config)
    try:
        with RecallClient(srv.address) as client:
            serial = client.register_one("zoe", "web", ttl=3600).serial
            for name in ("alice", "carol", "dave"):  # a revocation that revokes nothing is no change
                client.register_one(name, "mobile", ttl=3600)
            client.revoke(subject="alice", reason="password reset")
            client.cutoff("subject", "bob", reason="account takeover")
            client.revoke(serials=[serial], reason="one token: no SET")
            client.cutoff("client", "web", reason="a client: no SET")
            client.revoke(subject="carol", reason="left the company")
            pusher = srv.server.transmission.pushers["rp-push"]
            until(lambda: pusher.state["failures"] >= 2, "pushes failing while the receiver is down")
            receiver.start()
            until(lambda: len(receiver.received) == 3, "three SETs delivered")
            claims = verified(receiver.received, srv, tmp_path)
            assert [c["sub_id"] for c in claims] == [{"format": "opaque", "id": n} for n in ("alice", "bob", "carol")]
            assert [list(c["events"]) for c in claims] == [[SESSION_REVOKED]] * 3
            assert claims[1]["events"][SESSION_REVOKED]["reason_admin"] == {"en": "account takeover"}
            seqs = [int(c["jti"].rsplit("-", 1)[1]) for c in claims]
            assert seqs == sorted(seqs) and all(c["jti"].startswith(srv.engine.store_id) for c in claims)
            assert receiver.authorizations == {f"Bearer {PUSH_SECRET}"}
            until(lambda: pusher.state["cursor"] == srv.engine.state.seq, "the cursor at the last SET's change")
            status = httpx.get(f"http://{srv.server.http.address}/ssf/status").json()["receivers"]
            assert status["rp-push"]["sent"] == 3 and status["rp-poll"] == {"delivery": "poll"}
    finally:
        srv.stop()
    srv = ServerThread(config)  # the cursor is durable: nothing is sent twice
    try:
        with RecallClient(srv.address) as client:
            client.revoke(subject="dave", reason="stolen laptop")
            until(lambda: len(receiver.received) == 4, "the next SET delivered")
            assert verified(receiver.received[3:], srv, tmp_path)[0]["sub_id"]["id"] == "dave"
            seq = srv.engine.state.seq
            until(lambda: srv.server.transmission.pushers["rp-push"].state["cursor"] == seq, "the cursor moved")
            assert len(receiver.received) == 4
    finally:
        srv.stop()


def test_a_polling_receiver_gets_the_sets_after_what_it_acknowledged(setup):
    config, _, tmp_path = setup
    srv = ServerThread(config)
    try:
        with RecallClient(srv.address) as client, \
                httpx.Client(base_url=f"http://{srv.server.http.address}", timeout=10) as http:
            for name in ("ann", "ben"):
                client.register_one(name, "web", ttl=3600)
                client.revoke(subject=name, reason="test")
            first = http.post("/ssf/poll/rp-poll", json={"ack": [], "maxEvents": 10}).json()
            jtis = list(first["sets"])
            assert [c["sub_id"]["id"] for c in verified(list(first["sets"].values()), srv, tmp_path)] == ["ann", "ben"]
            assert first["moreAvailable"] is False
            again = http.post("/ssf/poll/rp-poll", json={"ack": []}).json()
            assert list(again["sets"]) == jtis  # nothing acknowledged: delivered again
            after_one = http.post("/ssf/poll/rp-poll", json={"ack": jtis[:1], "maxEvents": 10}).json()
            assert list(after_one["sets"]) == jtis[1:]
            limited = http.post("/ssf/poll/rp-poll", json={"ack": [], "maxEvents": 0}).json()
            assert limited == {"sets": {}, "moreAvailable": True}
            done = http.post("/ssf/poll/rp-poll", json={"ack": jtis[1:]}).json()
            assert done == {"sets": {}, "moreAvailable": False}
            assert http.post("/ssf/poll/rp-poll", content=b"[1]").json()["err"] == "invalid_request"
            assert http.post("/ssf/poll/nobody", json={}).status_code == 404
            metadata = http.get("/.well-known/ssf-configuration").json()
            assert metadata["issuer"] == ISSUER and metadata["jwks_uri"].endswith("/ssf/jwks.json")
            assert "urn:ietf:rfc:8936" in metadata["delivery_methods_supported"]
            assert http.get(metadata["configuration_endpoint"]).json() == [
                {"stream_id": "rp-poll", "iss": ISSUER, "aud": RP,
                 "delivery": {"method": "urn:ietf:rfc:8936",
                              "endpoint_url": f"http://{srv.server.http.address}/ssf/poll/rp-poll"},
                 "events_supported": [SESSION_REVOKED, CAEP + "credential-change"],
                 "events_requested": [SESSION_REVOKED, CAEP + "credential-change"],
                 "events_delivered": [SESSION_REVOKED, CAEP + "credential-change"]},
                {"stream_id": "rp-push", "iss": ISSUER, "aud": RP,
                 "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": config.downstreams[0].push},
                 "events_supported": [SESSION_REVOKED, CAEP + "credential-change"],
                 "events_requested": [SESSION_REVOKED, CAEP + "credential-change"],
                 "events_delivered": [SESSION_REVOKED, CAEP + "credential-change"]}]
            one = http.get(metadata["configuration_endpoint"], params={"stream_id": "rp-push"}).json()
            assert one["stream_id"] == "rp-push"
            assert http.get("/ssf/streams", params={"stream_id": "nope"}).status_code == 404
            assert http.post("/ssf/streams", json={}).status_code == 405  # configured in the file only
    finally:
        srv.stop()


def test_changes_that_call_for_no_set_move_the_cursor_only_in_bulk(setup, monkeypatch):
    from recallcore.api import ssf_transmit

    monkeypatch.setattr(ssf_transmit, "SKIP_PERSIST", 3)
    config, receiver, _ = setup
    receiver.start()
    srv = ServerThread(config)
    try:
        with RecallClient(srv.address) as client:
            pusher = srv.server.transmission.pushers["rp-push"]
            client.register_one("ann", "web", ttl=3600)
            client.revoke(subject="ann", reason="test")
            until(lambda: len(receiver.received) == 1, "the SET delivered")
            at_set = srv.engine.state.seq
            until(lambda: pusher.state["cursor"] == at_set, "the cursor at the SET's change")
            client.register_one("ben", "web", ttl=3600)
            client.register_one("cat", "web", ttl=3600)
            assert srv.call(srv.engine.cursor("rp-push")) == at_set  # two changes: not worth a commit
            client.register_one("dan", "web", ttl=3600)
            until(lambda: srv.call(srv.engine.cursor("rp-push")) == at_set + 3, "the cursor moved past three")
            assert len(receiver.received) == 1
    finally:
        srv.stop()


def test_one_recallcore_transmits_to_another_over_tls_and_its_recall_reaches_the_others_check(tmp_path):
    from recallcore.api.http.status_lists import load_signing_key
    from recallcore.api.ssf_transmit import Signer

    ca = CA(tmp_path / "ca")
    leaf = ca.server("recall-b")
    key = tmp_path / "a-key.json"
    key.write_text(json.dumps(ECKey.generate_key("P-256").as_dict(private=True)))
    a_jwks = tmp_path / "a-jwks.json"
    a_jwks.write_text(json.dumps(Signer(load_signing_key(str(key))).jwks))
    b = ServerThread(Settings(
        data_dir=tmp_path / "b", listen="127.0.0.1:0", http_listen="127.0.0.1:0", sweep_interval=3600,
        tls_cert=str(leaf.cert), tls_key=str(leaf.key),
        ssf_transmitters=({"stream": "upstream", "issuer": ISSUER, "jwks": str(a_jwks), "audience": RP},)))
    a = None
    try:
        a = ServerThread(Settings(
            data_dir=tmp_path / "a", listen="127.0.0.1:0", sweep_interval=3600, ssf_key=str(key), ssf_issuer=ISSUER,
            ssf_receivers=({"stream": "b", "audience": RP, "cacert": str(ca.path),
                            "push": f"https://{b.server.http.address}/ssf/push/upstream"},)))
        issued = int(time.time()) - 60
        with RecallClient(a.address) as at_a, RecallClient(b.address, cacert=str(ca.path)) as at_b:
            on_b = at_b.register_one("alice", "web", issued_at=issued, ttl=3600)
            other_on_b = at_b.register_one("bob", "web", issued_at=issued, ttl=3600)
            at_a.register_one("alice", "web", issued_at=issued, ttl=3600)
            at_a.revoke(subject="alice", reason="password reset at the identity provider")
            until(lambda: at_b.check(on_b.serial).state.name == "REVOKED", "alice's token refused at the other")
            assert at_b.check(other_on_b.serial).state.name == "ACTIVE"
            record = [r for r in at_b.audit(subject="alice") if r["type"] == "cutoff"][-1]
            assert record["actor"] == "ssf:upstream"
            assert record["signal"]["issuer"] == ISSUER and record["signal"]["jti"].startswith(a.engine.store_id)
    finally:
        if a is not None:
            a.stop()
        b.stop()
