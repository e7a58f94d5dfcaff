"""A replica's state exported through prometheus-client by the service that holds it."""

import dataclasses

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from recallclient import RecallClient, Replica, TokenSpec
from recallclient.metrics import ReplicaCollector, replica_state

from ..support import ServerThread, until


def gauges(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_replica_exports_its_seq_staleness_and_fail_closed_state(settings):
    server = ServerThread(dataclasses.replace(settings, heartbeat_interval=0.05))
    replica = Replica(server.address, max_staleness=1.0, backoff=(0.02, 0.1)).start()
    try:
        registry = CollectorRegistry()
        registry.register(ReplicaCollector(replica))
        with RecallClient(server.address) as client:
            tokens = client.register([TokenSpec(f"u{i}", "app") for i in range(3)]).tokens
            seq = client.revoke(serials=[tokens[0].serial]).seq
        assert replica.wait_for(seq, 30)
        until(lambda: not replica.fail_closed, "the replica vouched for")
        shown = gauges(registry)
        assert shown["recall_replica_applied_seq"] == seq and shown["recall_replica_revoked"] == 1
        assert shown["recall_replica_fail_closed"] == 0 and shown["recall_replica_staleness_seconds"] < 1.0
        server.stop()
        server = None
        until(lambda: replica.fail_closed, "the replica failing closed without its server")
        assert gauges(registry)["recall_replica_fail_closed"] == 1
        assert replica_state(replica).staleness > 1.0
    finally:
        replica.close()
        if server is not None:
            server.stop()
