"""Prometheus metrics of one server (a registry of its own, so several apps can live in a process).

Per endpoint: requests by status, latency, documents per request, 429s. Per API key (its name):
requests by status, tokens, refusals by quota. Connections closed by a limit, by reason. Per model
(the served name, a cascade's included): tokens submitted, documents truncated and their tokens no
window read; per loaded model: resident memory its loading added, and from its totals
(``Model.stats()``) batches, rows, real and computed tokens (padding = 1 - real / computed); with
sharing on, from its shared queue: rows and requests per batch, padding per batch, queue depth in
tokens and requests.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
FRACTION_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


class _ModelTotals:
    """Collector of each model's totals (``Model.stats()``: sharing on and off alike)."""

    def __init__(self):
        self.models: dict[str, object] = {}

    def collect(self):
        families = {
            "batches": CounterMetricFamily("crossrank_model_batches", "Model calls", labels=["model"]),
            "rows": CounterMetricFamily("crossrank_model_rows", "Rows (pairs or texts) run", labels=["model"]),
            "real_tokens": CounterMetricFamily("crossrank_model_real_tokens", "Real tokens run", labels=["model"]),
            "computed_tokens": CounterMetricFamily("crossrank_model_computed_tokens",
                                                   "Tokens computed (rows x padded length)", labels=["model"]),
        }
        for name, model in self.models.items():
            stats = model.stats()
            for key, family in families.items():
                family.add_metric([name], getattr(stats, key))
        yield from families.values()


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("crossrank_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("crossrank_request_seconds", "Request latency (s), body read to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.documents = Histogram("crossrank_request_documents", "Documents or texts per request",
                                   ["endpoint"], buckets=COUNT_BUCKETS, registry=r)
        self.overloaded = Counter("crossrank_overloaded", "Requests refused with 429 (queue full)",
                                  ["endpoint"], registry=r)
        self.tokens = Counter("crossrank_tokens", "Real tokens submitted by requests", ["model"], registry=r)
        self.truncated = Counter("crossrank_truncated_documents", "Documents with tokens no window read",
                                 ["model"], registry=r)
        self.dropped_tokens = Counter("crossrank_dropped_tokens", "Document tokens no window read (truncated)",
                                      ["model"], registry=r)
        self.memory = Gauge("crossrank_model_memory_bytes", "Resident memory a model's loading added",
                            ["model"], registry=r)
        self.batch_rows = Histogram("crossrank_batch_rows", "Rows per shared batch", ["model"],
                                    buckets=COUNT_BUCKETS, registry=r)
        self.batch_requests = Histogram("crossrank_batch_requests", "Requests with rows in a shared batch",
                                        ["model"], buckets=COUNT_BUCKETS, registry=r)
        self.batch_padding = Histogram("crossrank_batch_padding", "Padding fraction of a shared batch",
                                       ["model"], buckets=FRACTION_BUCKETS, registry=r)
        self.batch_seconds = Histogram("crossrank_batch_seconds", "Model call time of a shared batch (s)",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_tokens = Gauge("crossrank_queue_tokens", "Real tokens waiting in a model's shared queue",
                                  ["model"], registry=r)
        self.queue_requests = Gauge("crossrank_queue_requests", "Requests waiting in a model's shared queue",
                                    ["model"], registry=r)
        # per API key, by its name (crossrank.front.serve.security): requests by status, tokens run,
        # refusals by quota; and connections the HTTP layer closed or refused (crossrank.front.serve.http)
        self.key_requests = Counter("crossrank_key_requests", "Requests per API key (by its name) and status",
                                    ["key", "status"], registry=r)
        self.key_tokens = Counter("crossrank_key_tokens", "Real tokens run per API key", ["key"], registry=r)
        self.key_refused = Counter("crossrank_key_refused", "Requests refused with 429 per API key and quota",
                                   ["key", "quota"], registry=r)
        self.in_flight = Gauge("crossrank_requests_in_flight", "HTTP requests past the gate and not yet answered",
                               registry=r)
        self.connections_closed = Counter("crossrank_connections_closed",
                                          "Connections closed or refused by the server's limits, by reason",
                                          ["reason"], registry=r)
        self._totals = _ModelTotals()
        r.register(self._totals)

    def watch_model(self, served) -> None:
        """Export a served Reranker's or Embedder's memory, totals and, when shared, its queue and
        batches (``registry.ServedModel``; a cascade's figures are its rerankers')."""
        if served.kind == "cascade":
            return
        name, model = served.name, served.model
        if served.memory_bytes is not None:
            self.memory.labels(name).set(served.memory_bytes)
        self._totals.models[name] = model
        if not model.shared:
            return
        self.queue_tokens.labels(name).set_function(lambda: model.queued_tokens)
        self.queue_requests.labels(name).set_function(lambda: model.queued_requests)

        def on_batch(report) -> None:
            self.batch_rows.labels(name).observe(report.rows)
            self.batch_requests.labels(name).observe(report.requests)
            padding = 1.0 - report.real_tokens / report.computed_tokens if report.computed_tokens else 0.0
            self.batch_padding.labels(name).observe(padding)
            self.batch_seconds.labels(name).observe(report.seconds)

        model.add_batch_listener(on_batch)

    def render(self) -> bytes:
        return generate_latest(self.registry)
