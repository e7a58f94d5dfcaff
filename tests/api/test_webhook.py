"""The presented_after_recall webhook: JSON events POSTed in order, retried, bounded."""

import dataclasses
import json
import threading

from recallclient import RecallClient, TokenSpec

from recallcore.api import webhook as webhook_module

from ..support import LocalHttp, ServerThread, free_address, until


class Receiver:
    """Answers 500 to the first `failures` posts, then 200; keeps what it accepted."""

    def __init__(self, failures: int) -> None:
        self.failures, self.seen, self.auth = failures, [], []
        self.lock = threading.Lock()
        self.http = LocalHttp(self._respond)

    def _respond(self, request) -> tuple[int, bytes]:
        with self.lock:
            if self.failures:
                self.failures -= 1
                return 500, b"not now"
            self.seen.append(json.loads(request.body))
            self.auth.append(request.headers.get("Authorization"))
            return 200, b""


def test_events_arrive_in_order_after_failures_with_the_bearer_secret(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(webhook_module, "BACKOFF", (0.01, 0.05))
    receiver = Receiver(failures=2)
    (tmp_path / "hook.token").write_text("secret-of-the-webhook-receiver\n")
    srv = ServerThread(dataclasses.replace(
        settings, presented_interval=3600, presented_webhook=f"http://{receiver.http.address}/events",
        presented_webhook_token_file=str(tmp_path / "hook.token")))
    try:
        with RecallClient(srv.address) as recall:
            tokens = recall.register([TokenSpec(f"u{i}", f"client-{i}") for i in range(3)]).tokens
            recall.revoke(serials=[t.serial for t in tokens], reason="phished")
            for token in tokens:
                recall.check(token.serial)
        srv.call(srv.server.presented.flush())
        until(lambda: len(receiver.seen) == 3, "the three events delivered")
        assert [e["serial"] for e in receiver.seen] == [t.serial for t in tokens]
        assert {e["type"] for e in receiver.seen} == {"presented_after_recall"}
        assert [e["client"] for e in receiver.seen] == ["client-0", "client-1", "client-2"]
        assert receiver.seen[0]["reason"] == "phished" and receiver.seen[0]["count"] == 1
        assert receiver.auth == ["Bearer secret-of-the-webhook-receiver"] * 3
        assert receiver.failures == 0  # the two refusals were retried
    finally:
        srv.stop()
        receiver.http.close()


def test_a_receiver_that_is_down_cannot_grow_the_queue(settings, monkeypatch):
    monkeypatch.setattr(webhook_module, "MAX_QUEUE", 2)
    monkeypatch.setattr(webhook_module, "BACKOFF", (0.01, 0.05))
    srv = ServerThread(dataclasses.replace(settings, presented_interval=3600,
                                           presented_webhook=f"http://{free_address()}/events"))
    try:
        hook = srv.server.presented.webhook
        for i in range(6):
            srv.run(lambda i=i: hook.send({"n": i}))
        until(lambda: hook.dropped >= 3, "events past the queue dropped")
        assert hook.sent == 0 and hook.dropped <= 4  # one may be out of the queue, being retried
    finally:
        srv.stop()
