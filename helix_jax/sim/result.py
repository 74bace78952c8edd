"""Simulation results: what one run reports (frozen), and its JSON form.

Sits between the simulator engine and the bench report: engine -> **SimResult** -> report.
`build_result` reads a finished run's counters off the engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from helix_jax.bench.metrics import RunMetrics
from helix_jax.placement import Placement
from helix_jax.sim.config import SimConfig
from helix_jax.topology import COORDINATOR


@dataclasses.dataclass(frozen=True)
class NodeStats:
    name: str
    layers: tuple[int, int]
    steps: int
    busy_fraction: float
    mean_decode_batch: float
    max_decode_seqs: int
    kv_budget_token_layers: int


@dataclasses.dataclass(frozen=True)
class SimResult:
    method: str
    policy: str
    config: SimConfig
    metrics: RunMetrics
    max_flow_tokens_per_s: float
    submitted: int
    admitted: int
    completed: int  # over the whole run
    rejected_overloaded: int
    rejected_too_large: int
    queued_at_end: int
    in_flight_at_end: int
    peak_in_flight: int
    mean_in_flight: float  # time average over the window (Little's law: ~ decode tok/s x TPOT)
    events: int  # events processed: step ends, wake-ups of idle nodes, coordinator messages, arrivals
    wall_s: float
    nodes: tuple[NodeStats, ...]
    events_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)  # engine.EVENT_KINDS

    @property
    def flow_fraction(self) -> float:
        return self.metrics.decode_tokens_per_s / self.max_flow_tokens_per_s if self.max_flow_tokens_per_s else 0.0

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = self.metrics.to_dict(with_samples)
        d["config"] = config_dict(self.config)
        d["flow_fraction"] = self.flow_fraction
        return d


def config_dict(config: SimConfig) -> dict[str, Any]:
    """The settings of a run for results.json (traces summarised by their length)."""
    d = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("arrival_counts", "arrival_times_s")}
    d["arrival_trace_intervals"] = len(config.arrival_counts or ())
    d["arrival_times_given"] = len(config.arrival_times_s or ())
    return d


def placement_max_flow(placement: Placement) -> float:
    """The placement's max-flow in tokens/s (its objective, or the flow out of the coordinator)."""
    if placement.objective_tokens_per_s > 0:
        return placement.objective_tokens_per_s
    return sum(e.tokens_per_s for e in placement.out_flows(COORDINATOR))


def build_result(sim: Any, wall_s: float) -> SimResult:
    """The result of a finished `Simulator` run (`sim`) that took `wall_s` seconds."""
    config, placement = sim.config, sim.placement
    duration = config.duration_s
    nodes = tuple(
        NodeStats(
            name=n.name,
            layers=placement.ranges[n.name],
            steps=n.steps,
            busy_fraction=min(1.0, n.busy_s / duration),
            mean_decode_batch=n.decode_seqs_total / n.steps if n.steps else 0.0,
            max_decode_seqs=n.max_decode_seqs,
            kv_budget_token_layers=sim.budgets[n.name],
        )
        for n in sim.nodes.values()
    )
    return SimResult(
        method=placement.method,
        policy=config.policy,
        config=config,
        metrics=sim.metrics.summary(),
        max_flow_tokens_per_s=placement_max_flow(placement),
        submitted=sim.submitted,
        admitted=sim.admitted,
        completed=sim.completed,
        rejected_overloaded=sim.rejected_overloaded,
        rejected_too_large=sim.rejected_too_large,
        queued_at_end=sim.scheduler.queue_length,
        in_flight_at_end=sim.scheduler.in_flight,
        peak_in_flight=sim.peak_in_flight,
        mean_in_flight=sim._in_flight_area / (duration - config.warmup_s),
        events=sim.events,
        wall_s=wall_s,
        nodes=nodes,
        events_by_kind=dict(sim.events_by_kind),
    )
