"""Prometheus metrics of the front end and its deployment (`GET /metrics`).

Owns: one `CollectorRegistry` per app (never prometheus_client's global one, so several
front ends and tests live in one process) and every `helix_` metric. Sits at the side of the
front end's data flow: each sequence that ends records its counters and latency histograms
here (`observe_sequence`), and each scrape copies the coordinator's `stats` reply into the
gauges (`update_from_stats`) before rendering the text format. The deployment's health
(messages dropped by reason, requests failed by containment, restarts and rejoins per node,
nodes out of service) are the coordinator's own counts, exported as they are by
`HealthCollector` from the last reply.

Counts are per generated sequence (a request with n=2 counts twice); times are seconds on
the deployment's clock (wall seconds / the `--emulate` time scale).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class HealthCollector(Collector):
    """The `health` part of the coordinator's last stats reply, as Prometheus families."""

    def __init__(self) -> None:
        self.health: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        h = self.health
        dropped = CounterMetricFamily(
            "helix_messages_dropped",
            "Messages dropped by the coordinator or a "
            "worker, by reason (malformed, forged, out_of_range_token, "
            "bad_hidden_state, handler_error, rejected)",
            labels=["node", "reason"],
        )
        for node, reasons in sorted(h.get("dropped", {}).items()):
            for reason, n in sorted(reasons.items()):
                dropped.add_metric([node, reason], n)
        failed = CounterMetricFamily(
            "helix_requests_failed",
            "Requests failed by containment, by cause (abort: a worker could not run it; repeated_failure; no_route; resume_timeout)",
            labels=["cause"],
        )
        for cause, n in sorted(h.get("failed", {}).items()):
            failed.add_metric([cause], n)
        rejoins = CounterMetricFamily("helix_node_rejoins", "Fresh workers that brought a node back into service", labels=["node"])
        for node, n in sorted(h.get("rejoins", {}).items()):
            rejoins.add_metric([node], n)
        restarts = CounterMetricFamily("helix_node_restarts", "Crashed workers the deployment restarted", labels=["node"])
        left = GaugeMetricFamily(
            "helix_node_restart_budget_left",
            "Restarts the node may still take now (the budget refills over --restart-window)",
            labels=["node"],
        )
        for node, r in sorted(h.get("restarts", {}).items()):
            restarts.add_metric([node], r["taken"])
            left.add_metric([node], r["left"])
        down = GaugeMetricFamily("helix_nodes_out_of_service", "Nodes out of service")
        down.add_metric([], len(h.get("out_of_service", {})))
        resuming = GaugeMetricFamily(
            "helix_requests_resuming", "Requests moved off a lost route, waiting for a surviving one (at most --resume-grace-s)"
        )
        resuming.add_metric([], h.get("resuming", 0))
        yield from (dropped, failed, rejoins, restarts, left, down, resuming)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.running = Gauge("helix_requests_running", "Requests admitted at the coordinator", registry=r)
        self.waiting = Gauge("helix_requests_waiting", "Requests in the coordinator's queue", registry=r)
        self.ready = Gauge("helix_ready", "1 while every layer is covered by nodes in service", registry=r)
        self.max_flow = Gauge(
            "helix_max_flow_tokens_per_s", "Max-flow of the placement over the nodes in service (decode tokens/s)", registry=r
        )
        self.finished = Counter("helix_requests_finished", "Sequences finished, by finish reason", ["finish_reason"], registry=r)
        self.errors = Counter(
            "helix_request_errors", "HTTP requests answered with an error, by status and code", ["status", "code"], registry=r
        )
        self.prompt_tokens = Counter("helix_prompt_tokens", "Prompt tokens of finished sequences", registry=r)
        self.generation_tokens = Counter("helix_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("helix_time_to_first_token_seconds", "Request received -> first token", buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(
            "helix_time_per_output_token_seconds",
            "(last token - first token) / (tokens - 1), sequences of 2+ tokens",
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram("helix_e2e_request_latency_seconds", "Request received -> last token", buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram(
            "helix_request_queue_time_seconds", "Waiting in the coordinator's queue", buckets=LATENCY_BUCKETS, registry=r
        )
        node = ["node"]
        self.kv_used = Gauge("helix_node_kv_used_token_layers", "KV reserved on the node", node, registry=r)
        self.kv_budget = Gauge("helix_node_kv_budget_token_layers", "KV capacity of the node", node, registry=r)
        self.node_flow = Gauge("helix_node_planned_flow_tokens_per_s", "Planned flow through the node", node, registry=r)
        self.in_service = Gauge("helix_node_in_service", "1 while the node is in service", node, registry=r)
        self.step = Gauge("helix_node_step_seconds", "Mean batch step time of the node's last heartbeat period", node, registry=r)
        self.key_waiting = Gauge(
            "helix_api_key_waiting_sequences",
            "Sequences of an API key sent to the coordinator without a first token yet",
            ["key"],
            registry=r,
        )
        self.key_refused = Counter(
            "helix_api_key_refused", "Requests refused (429) because the key was at its share of the queue", ["key"], registry=r
        )
        self.health = HealthCollector()
        r.register(self.health)
        for reason in ("stop", "length", "cancelled", "error"):  # present from the first scrape
            self.finished.labels(reason)

    def observe_sequence(
        self,
        finish_reason: str,
        prompt_tokens: int,
        tokens: int,
        ttft_s: float | None,
        e2e_s: float,
        tpot_s: float | None,
        queue_s: float | None,
    ) -> None:
        self.finished.labels(finish_reason).inc()
        self.generation_tokens.inc(tokens)
        if finish_reason in ("stop", "length"):
            self.prompt_tokens.inc(prompt_tokens)
            self.e2e.observe(e2e_s)
            if ttft_s is not None:
                self.ttft.observe(ttft_s)
            if tpot_s is not None:
                self.tpot.observe(tpot_s)
            if queue_s is not None:
                self.queue.observe(queue_s)

    def observe_error(self, status: int, code: str | None) -> None:
        self.errors.labels(str(status), code or "").inc()

    def update_tenants(self, waiting: Mapping[str, int], names: list[str]) -> None:
        for name in names:
            self.key_waiting.labels(name).set(waiting.get(name, 0))
            self.key_refused.labels(name)  # present from the first scrape

    def update_from_stats(self, stats: dict[str, Any]) -> None:
        self.health.health = stats.get("health") or {}
        self.running.set(stats["running"])
        self.waiting.set(stats["waiting"])
        self.ready.set(1 if stats["ready"] else 0)
        self.max_flow.set(stats["max_flow_tokens_per_s"])
        for node, n in stats["nodes"].items():
            self.kv_used.labels(node).set(n["kv_used_token_layers"])
            self.kv_budget.labels(node).set(n["kv_budget_token_layers"])
            self.node_flow.labels(node).set(n["flow_tokens_per_s"])
            self.in_service.labels(node).set(n["in_service"])
            if n["step_s"] is not None:
                self.step.labels(node).set(n["step_s"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
