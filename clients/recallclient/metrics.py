"""A replica's state for a service's own metrics: a snapshot, and a Prometheus collector.

    from prometheus_client import REGISTRY
    from recallclient.metrics import ReplicaCollector
    REGISTRY.register(ReplicaCollector(replica))

exports recall_replica_applied_seq, recall_replica_staleness_seconds,
recall_replica_fail_closed and recall_replica_revoked, labelled with the
store the replica follows. prometheus-client is the service's dependency,
not this library's: it is imported only when a collector collects.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ReplicaState:
    """What a replica can say of itself at one moment."""

    applied_seq: int
    staleness: float  # seconds since the server last vouched (inf before the first vouch)
    fail_closed: bool  # is_revoked answers as on_stale says, never "not revoked"
    revoked: int  # serials in its revoked set
    store_id: str


def replica_state(replica) -> ReplicaState:
    """The state of a Replica or AsyncReplica now (cheap: a few attribute reads)."""
    return ReplicaState(replica.seq, replica.staleness, replica.fail_closed, replica.cardinality, replica.store_id)


class ReplicaCollector:
    """A prometheus_client collector of one replica's state, read at each scrape."""

    def __init__(self, replica, prefix: str = "recall_replica") -> None:
        self.replica = replica
        self.prefix = prefix

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        state = replica_state(self.replica)
        for name, text, value in (
            ("applied_seq", "the newest change the replica applied", state.applied_seq),
            ("staleness_seconds", "seconds since the server last vouched for the replica",
             state.staleness if math.isfinite(state.staleness) else float("inf")),
            ("fail_closed", "1 while the replica refuses to say a token is not revoked", int(state.fail_closed)),
            ("revoked", "serials in the replica's revoked set", state.revoked),
        ):
            family = GaugeMetricFamily(f"{self.prefix}_{name}", text, labels=["store_id"])
            family.add_metric([state.store_id], float(value))
            yield family
