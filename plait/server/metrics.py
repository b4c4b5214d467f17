"""Prometheus metrics under the names a vLLM user already graphs, with `plait:` for `vllm:`.

Engine-side numbers (running / waiting requests, KV usage, prefix-cache and token counters) are read from
`engine.stats()` at scrape time, so they cannot drift from the engine's own bookkeeping. Latency histograms
are observed by the server, per request, from the outputs it streams. Each app gets its own registry, so
several servers (tests) can live in one process.
"""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)


class _EngineCollector(Collector):
    """Gauges and counters straight from EngineStats, read when Prometheus scrapes."""

    def __init__(self, engine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        s = self.engine.stats()
        labels = ["model_name"]
        value = [self.model_name]
        gauges = [
            ("plait:num_requests_running", "Sequences in the running batch.", s.running),
            ("plait:num_requests_waiting", "Sequences waiting to be scheduled.", s.waiting),
            ("plait:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", s.kv_usage),
            ("plait:kv_cache_blocks_total", "KV-cache blocks in the pool.", s.kv_blocks_total),
            ("plait:num_requests_pending", "HTTP-level requests submitted and not yet finished.",
             getattr(self.engine, "num_pending", 0)),
            ("plait:engine_healthy", "1 while the engine loop is alive, 0 once it died.",
             1 if self.engine.is_running else 0),
        ]
        for name, doc, v in gauges:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(value, v)
            yield g
        counters = [
            ("plait:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries),
            ("plait:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits),
            ("plait:num_preemptions", "Sequences preempted (KV freed, recomputed later).", s.preemptions),
            ("plait:prompt_tokens", "Prompt tokens computed (prefill).", s.prompt_tokens),
            ("plait:generation_tokens", "Tokens generated.", s.generated_tokens),
            ("plait:engine_steps", "Engine steps (forward passes).", s.steps),
            ("plait:num_forks", "n > 1 samples forked from a sibling's prompt KV.", s.forks),
        ]
        if s.spec is not None:  # vLLM's spec_decode names
            counters += [
                ("plait:spec_decode_num_drafts", "Verifications of at least one draft token.", s.spec.num_drafts),
                ("plait:spec_decode_num_draft_tokens", "Draft tokens proposed.", s.spec.num_draft_tokens),
                ("plait:spec_decode_num_accepted_tokens", "Draft tokens accepted.", s.spec.num_accepted_tokens),
            ]
        for name, doc, v in counters:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(value, v)
            yield c
        if s.spec is not None:
            c = CounterMetricFamily("plait:spec_decode_num_accepted_tokens_per_pos",
                                    "Draft tokens accepted, by position in the draft.",
                                    labels=labels + ["position"])
            for position, count in enumerate(s.spec.accepted_per_position):
                c.add_metric(value + [str(position)], count)
            yield c


class ServerMetrics:
    def __init__(self, engine, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.ttft = Histogram("plait:time_to_first_token_seconds", "Time from request arrival to first token.",
                              labels, buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.itl = Histogram("plait:inter_token_latency_seconds", "Time between successive outputs of a request.",
                             labels, buckets=_ITL_BUCKETS, registry=self.registry).labels(model_name)
        self.e2e = Histogram("plait:e2e_request_latency_seconds", "Time from request arrival to its end.",
                             labels, buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self._success = Counter("plait:request_success", "Requests ended, by finish reason (abort included).",
                                labels + ["finished_reason"], registry=self.registry)
        self._rejected = Counter("plait:request_rejected", "Requests refused before running, by reason.",
                                 labels + ["reason"], registry=self.registry)
        self.registry.register(_EngineCollector(engine, model_name))

    def finished(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self.model_name, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Observes one request's TTFT, inter-token gaps and end-to-end latency from its stream of outputs."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.start = time.perf_counter()
        self.last: float | None = None
        self.done = False

    def tokens(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.observe(now - self.start)
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now

    def finish(self, reason: str) -> None:
        if not self.done:
            self.done = True
            self.metrics.e2e.observe(time.perf_counter() - self.start)
            self.metrics.finished(reason)
