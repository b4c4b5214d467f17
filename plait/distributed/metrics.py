"""Per-replica Prometheus gauges for a RayRouter, beside the server's summed `plait:*` metrics."""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ReplicaCollector(Collector):
    """`plait:replica_*{replica="i"}`: health, in-flight requests and engine gauges of each replica."""

    def __init__(self, router: Any) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        states = self.router.replica_states()
        rows = [
            ("plait:replica_healthy", "1 while the replica serves, 0 once it died.", lambda s: int(s.alive)),
            ("plait:replica_in_flight", "Requests the router has in flight on the replica.", lambda s: s.in_flight),
            ("plait:replica_num_requests_running", "Sequences in the replica's running batch.",
             lambda s: s.stats.running if s.stats else 0),
            ("plait:replica_num_requests_waiting", "Sequences waiting in the replica.",
             lambda s: s.stats.waiting if s.stats else 0),
            ("plait:replica_kv_cache_usage_perc", "Fraction of the replica's KV blocks in use.",
             lambda s: s.stats.kv_usage if s.stats else 0.0),
            ("plait:replica_generation_tokens", "Tokens the replica generated (a total).",
             lambda s: s.stats.generated_tokens if s.stats else 0),
        ]
        for name, doc, value in rows:
            g = GaugeMetricFamily(name, doc, labels=["replica"])
            for s in states:
                g.add_metric([str(s.index)], value(s))
            yield g
