"""Prometheus metrics end to end: a real server's /metrics scraped and parsed with prometheus-client's parser."""

import dataclasses
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from recallclient import RecallClient, RecallError

from recallcore.api import metrics as metrics_module
from recallcore.security.credentials import hash_secret
from recallcore.settings import Settings

from ..support import RECALLCTL, FreezableProxy, ServerThread, run_command, until
from .conftest import bearer
from .issuer import ISSUER


def scrape(address: str, **kwargs) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    response = httpx.get(f"http://{address}/metrics", timeout=10, **kwargs)
    assert response.status_code == 200, response.text
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def observed(settings, idp):
    srv = ServerThread(dataclasses.replace(
        settings, http_listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", presented_interval=3600,
        jwt_issuers=(f"{ISSUER}={idp.jwks}",)))
    with RecallClient(srv.address) as recall, httpx.Client(base_url=f"http://{srv.server.http.address}") as http:
        yield srv, recall, http
    srv.stop()


def test_calls_checks_commits_and_state_are_exposed(observed, idp):
    srv, recall, http = observed
    tokens = [recall.register_one(f"u{i}", "app", issuer=ISSUER) for i in range(3)]
    recall.revoke(serials=[tokens[0].serial], reason="laptop stolen")
    for token in tokens:
        recall.check(token.serial)
    recall.check_batch([t.serial for t in tokens])
    with pytest.raises(RecallError):
        recall.check(0)
    assert http.get("/v1/check", headers=bearer(idp.token(tokens[1].canonical_jti))).status_code == 200
    assert http.get("/v1/check", headers=bearer(idp.token(tokens[0].canonical_jti))).status_code == 401
    assert http.get("/v1/check", headers=bearer(idp.tampered())).status_code == 401
    assert http.head("/healthz").status_code == 200  # GET routes answer HEAD, counted under the same path
    samples = scrape(srv.server.metrics_http.address)
    assert value(samples, "recall_rpc_requests_total", method="Check", code="OK") == 3
    assert value(samples, "recall_rpc_requests_total", method="Check", code="INVALID_ARGUMENT") == 1
    assert value(samples, "recall_rpc_duration_seconds_count", method="Register") == 3
    assert value(samples, "recall_check_outcomes_total", state="REVOKED") == 2  # once by Check, once in the batch
    assert value(samples, "recall_check_outcomes_total", state="ACTIVE") == 4
    assert value(samples, "recall_edge_decisions_total", outcome="allowed", cause="ok") == 1
    assert value(samples, "recall_edge_decisions_total", outcome="denied", cause="revoked") == 1
    assert value(samples, "recall_edge_decisions_total", outcome="denied", cause="bad_signature") == 1
    assert value(samples, "recall_http_requests_total", path="/v1/check", code="401") == 2
    assert value(samples, "recall_http_requests_total", path="/v1/check", code="200") == 1
    assert value(samples, "recall_http_duration_seconds_count", path="/v1/check") == 3
    assert value(samples, "recall_http_requests_total", path="/healthz", code="200") == 1
    assert value(samples, "recall_commit_group_size_count") >= 4
    assert value(samples, "recall_applied_seq") == srv.engine.state.seq
    assert value(samples, "recall_answering") == 1
    assert value(samples, "recall_map_max_bytes") == srv.settings.max_map_size


def test_recalled_tokens_presented_again_are_counted_and_recorded_in_the_trail(observed, idp):
    srv, recall, http = observed
    token = recall.register_one("alice", "web", issuer=ISSUER)
    recall.revoke(serials=[token.serial], reason="laptop stolen")
    for _ in range(3):
        assert http.get("/v1/check", headers=bearer(idp.token(token.canonical_jti, client_id="web"))).status_code \
            == 401
    recall.check(token.serial)
    srv.call(srv.server.presented.flush())
    samples = scrape(srv.server.metrics_http.address)
    assert value(samples, "recall_recalled_token_presented_total", client="web", reason="laptop stolen") == 4
    done = run_command(str(RECALLCTL), "--target", srv.address, "--json", "audit", "--client", "web")
    records = [json.loads(line) for line in done.stdout.splitlines()]
    (record,) = [r for r in records if r["type"] == "presented_after_recall"]
    (entry,) = record["tokens"]
    assert (entry["serial"], entry["client"], entry["reason"], entry["count"]) == \
        (token.serial, "web", "laptop stolen", 4)
    assert entry["first"] <= entry["last"] and entry["presented_by"]


def test_made_up_label_values_are_capped(observed, monkeypatch):
    srv, _, _ = observed
    monkeypatch.setattr(metrics_module, "MAX_LABEL_VALUES", 3)
    srv.server.metrics._clients = metrics_module._Capped()
    for i in range(10):
        srv.server.metrics.recalled(f"client-{i}", "r")
    samples = scrape(srv.server.metrics_http.address)
    clients = {dict(labels).get("client") for (name, labels) in samples if name == "recall_recalled_token_presented_total"}
    assert clients == {"client-0", "client-1", "client-2", "other"}


def test_a_followers_link_and_staleness_are_exposed(servers, settings, tmp_path):
    primary = servers.start(dataclasses.replace(settings, heartbeat_interval=0.05))
    proxy = FreezableProxy(primary.address)
    try:
        follower = servers.start(Settings(
            data_dir=tmp_path / "f", listen="127.0.0.1:0", follow=proxy.address, heartbeat_interval=0.05,
            max_staleness=1.0, metrics_listen="127.0.0.1:0"))
        until(follower.engine.answering, "the follower in sync")
        address = follower.server.metrics_http.address
        samples = scrape(address)
        assert value(samples, "recall_follower_connected") == 1 and value(samples, "recall_answering") == 1
        proxy.freeze()
        until(lambda: value(scrape(address), "recall_answering") == 0, "the stale follower reported")
        assert value(scrape(address), "recall_staleness_seconds") > 1.0
    finally:
        proxy.close()


def test_under_a_policy_a_scrape_needs_a_credential_with_the_check_role(settings, tmp_path):
    (tmp_path / "policy.toml").write_text('[[grant]]\nidentities = ["token:prometheus"]\nroles = ["check"]\n')
    (tmp_path / "creds.toml").write_text(
        f'[tokens]\nprometheus = "{hash_secret("secret-of-the-prometheus-scraper")}"\n'
        f'other = "{hash_secret("secret-of-someone-else-entirely")}"\n')
    srv = ServerThread(dataclasses.replace(settings, metrics_listen="127.0.0.1:0",
                                           policy=str(tmp_path / "policy.toml"),
                                           credentials=str(tmp_path / "creds.toml")))
    try:
        url = f"http://{srv.server.metrics_http.address}/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers=bearer("secret-of-someone-else-entirely")).status_code == 401
        scrape(srv.server.metrics_http.address, headers=bearer("secret-of-the-prometheus-scraper"))
    finally:
        srv.stop()
