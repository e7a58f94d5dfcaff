"""SET poll delivery (RFC 8936): a real https transmitter that is down, comes back, and loses acks."""

import http.server
import json
import threading
import time

import pytest
from recallclient import RecallClient

from recallcore.core.audit import AuditQuery
from recallcore.settings import Settings

from ..security.certs import CA
from ..support import ServerThread, free_address, until
from .transmitter import AUDIENCE, TRANSMITTER, HttpsPeer, Transmitter, serve_https

POLL_SECRET = "secret-of-the-poll-endpoint"


class PollEndpoint(HttpsPeer):
    """An RFC 8936 poll endpoint over https on `address`: it serves its queue of SETs until
    they are acknowledged, and records every poll. Not listening until `start`."""

    def __init__(self, address: str, ca: CA) -> None:
        super().__init__(address, ca)
        self.queue: dict[str, str] = {}  # jti -> SET, in the order added
        self.acked: list[str] = []
        self.errors: dict[str, dict] = {}
        self.polls: list[dict] = []
        self.unauthorized = 0
        self.lose_acks = 0  # the acks of this many polls that carry some are lost on the way
        self.on_ack = lambda jtis: None
        self.lock = threading.Lock()

    def start(self) -> None:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {POLL_SECRET}":
                    endpoint.unauthorized += 1
                    self._send(401, {"err": "authentication_failed"})
                    return
                self._send(200, endpoint.answer(body))

            def _send(self, status, doc):
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.httpd = serve_https(self.address, self.ca, "poll", Handler)

    def answer(self, body: dict) -> dict:
        with self.lock:
            self.polls.append(body)
            if self.lose_acks and body["ack"]:
                self.lose_acks -= 1
            else:
                if body["ack"]:
                    self.on_ack(body["ack"])
                for jti in body["ack"]:
                    self.queue.pop(jti, None)
                    self.acked.append(jti)
                for jti, error in body.get("setErrs", {}).items():
                    self.queue.pop(jti, None)
                    self.errors[jti] = error
            chosen = dict(list(self.queue.items())[:body.get("maxEvents", 100)])
            return {"sets": chosen, "moreAvailable": len(self.queue) > len(chosen)}



@pytest.fixture
def setup(tmp_path, data_dir):
    ca = CA(tmp_path / "ca")
    endpoint = PollEndpoint(free_address(), ca)
    sender = Transmitter(tmp_path / "idp")
    secret = tmp_path / "poll.token"
    secret.write_text(POLL_SECRET + "\n")
    config = Settings(
        data_dir=data_dir, listen="127.0.0.1:0", sweep_interval=3600, ssf_poll_interval=0.05, ssf_poll_backoff=0.2,
        ssf_transmitters=({"stream": "google", "issuer": TRANSMITTER, "jwks": str(sender.jwks),
                           "audience": AUDIENCE, "poll": f"https://{endpoint.address}/poll",
                           "poll_token_file": str(secret), "cacert": str(ca.path)},),
    )
    yield config, endpoint, sender
    endpoint.close()


def test_a_transmitter_that_was_down_is_polled_until_it_returns_and_only_applied_sets_are_acknowledged(setup):
    config, endpoint, sender = setup
    srv = ServerThread(config)
    try:
        with RecallClient(srv.address) as client:
            issued = int(time.time()) - 60
            tokens = {name: client.register_one(name, "web", issued_at=issued, ttl=3600) for name in ("ann", "ben")}
            status = srv.server.receiver.streams["google"].poll_state
            until(lambda: status["failures"] >= 2, "polls failing while the transmitter is down")
            assert "poll https://" in status["last_error"]

            states_at_ack = []
            endpoint.on_ack = lambda jtis: states_at_ack.append(
                [client.check(tokens[n].serial).state.name for n in ("ann", "ben")])
            good = {name: sender.claims(subject=name) for name in ("ann", "ben")}
            for claims in good.values():
                endpoint.queue[claims["jti"]] = sender.sign(claims)
            forged = sender.claims(subject="ben", aud="https://elsewhere.example")
            endpoint.queue[forged["jti"]] = sender.sign(forged)
            endpoint.start()  # back

            until(lambda: not endpoint.queue, "every SET acknowledged or refused")
            assert endpoint.acked == [good["ann"]["jti"], good["ben"]["jti"]]
            assert states_at_ack == [["REVOKED", "REVOKED"]]  # acknowledged once applied, not before
            assert endpoint.errors == {forged["jti"]: {
                "err": "invalid_audience", "description": f"the SET is not meant for audience {AUDIENCE!r}"}}
            assert endpoint.unauthorized == 0 and status["failures"] == 0
            record = [r for r in client.audit(subject="ann") if r["type"] == "cutoff"][-1]
            assert record["actor"] == "ssf:google" and record["signal"]["jti"] == good["ann"]["jti"]
    finally:
        srv.stop()


def test_a_lost_acknowledgement_brings_the_sets_again_and_they_change_nothing(setup):
    config, endpoint, sender = setup
    endpoint.lose_acks = 1
    claims = [sender.claims(subject=f"user-{i}") for i in range(3)]
    for c in claims:
        endpoint.queue[c["jti"]] = sender.sign(c)
    endpoint.start()
    srv = ServerThread(config)
    try:
        until(lambda: not endpoint.queue, "every SET acknowledged")
        stream = srv.server.receiver.streams["google"]
        assert (stream.counts["applied"], stream.counts["duplicate"]) == (3, 3)
        assert endpoint.acked == [c["jti"] for c in claims]
        cutoffs = [r for r in srv.call(srv.engine.audit(AuditQuery())) if r["kind"] == "cutoff"]
        assert [r["signal"]["jti"] for r in cutoffs] == [c["jti"] for c in claims]  # each applied once, in order
    finally:
        srv.stop()


def test_a_poll_refused_for_its_credential_backs_off_and_recovers_when_the_secret_is_fixed(setup, tmp_path):
    config, endpoint, sender = setup
    secret = tmp_path / "poll.token"
    secret.write_text("a-stale-secret\n")
    claims = sender.claims(subject="zed")
    endpoint.queue[claims["jti"]] = sender.sign(claims)
    endpoint.start()
    srv = ServerThread(config)
    try:
        status = srv.server.receiver.streams["google"].poll_state
        until(lambda: endpoint.unauthorized >= 2, "polls refused for their credential")
        assert status["last_error"].endswith("HTTP 401") and endpoint.queue
        secret.write_text(POLL_SECRET + "\n")  # read at each poll
        until(lambda: not endpoint.queue, "the SET acknowledged once the secret is right")
        assert endpoint.acked == [claims["jti"]]
    finally:
        srv.stop()
