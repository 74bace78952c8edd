"""Simulated benchmark: every (placement method x scheduling policy x offered rate) case of one
cluster, simulated with the same workload, plus throughput ratios of Helix to each baseline.

Sits at the end of the data flow: placements (planned by the caller; this module never imports
the solver) -> scheduler -> simulator -> **bench report**. The CLI (`helix-jax bench
--simulate`) and the `make bench-sim` script plan the placements and call `run_simulated_bench`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Mapping, Sequence

from helix_jax.costmodel import CostModel
from helix_jax.errors import ConfigError
from helix_jax.placement import Placement
from helix_jax.scheduler import POLICIES
from helix_jax.sim import SimConfig, SimResult, simulate
from helix_jax.sim.result import config_dict
from helix_jax.workload import LengthSampler, sampled_resident_kv_tokens

log = logging.getLogger(__name__)

HELIX = "helix"
REFERENCE_POLICY = "iwrr"


@dataclasses.dataclass(frozen=True)
class BenchCase:
    method: str
    policy: str
    rate_per_s: float | None  # None: offline

    @property
    def label(self) -> str:
        rate = "" if self.rate_per_s is None else f" @{self.rate_per_s:g}/s"
        return f"{self.method}/{self.policy}{rate}"


@dataclasses.dataclass(frozen=True)
class Ratio:
    """Helix (IWRR) decode throughput over a baseline case's, at the same offered rate."""

    baseline: str
    policy: str
    rate_per_s: float | None
    ratio: float


@dataclasses.dataclass(frozen=True)
class BenchReport:
    topology: str
    mode: str
    workload: str
    settings: dict[str, Any]
    placements: dict[str, dict[str, Any]]  # method -> summary (objective, status, solve time, ...)
    results: tuple[tuple[BenchCase, SimResult], ...]

    def result(self, method: str, policy: str, rate_per_s: float | None = None) -> SimResult | None:
        for case, res in self.results:
            if (case.method, case.policy, case.rate_per_s) == (method, policy, rate_per_s):
                return res
        return None

    def helix_ratio(self, case: BenchCase, res: SimResult) -> float | None:
        """Helix (IWRR) decode tok/s over `res`'s at the same rate: None for Helix's own cases or
        without a Helix reference case; inf when `res` decoded nothing."""
        if case.method == HELIX:
            return None
        ref = self.result(HELIX, REFERENCE_POLICY, case.rate_per_s)
        if ref is None:
            return None
        base = res.metrics.decode_tokens_per_s
        return ref.metrics.decode_tokens_per_s / base if base > 0 else math.inf

    def ratios(self) -> list[Ratio]:
        """Helix with IWRR against every other method's cases (same rate)."""
        out = []
        for case, res in self.results:
            ratio = self.helix_ratio(case, res)
            if ratio is not None:
                out.append(Ratio(case.method, case.policy, case.rate_per_s, ratio))
        return out

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "mode": self.mode,
            "workload": self.workload,
            "settings": self.settings,
            "placements": self.placements,
            "results": [
                {"method": c.method, "policy": c.policy, "rate_per_s": c.rate_per_s, **r.to_dict(with_samples)} for c, r in self.results
            ],
            "ratios": [dataclasses.asdict(r) for r in self.ratios()],
        }


def kv_concurrency_bound(placement: Placement, cost_model: CostModel, resident_tokens: float) -> float:
    """Requests the placement's KV can hold at once (a diagnostic, not a promise): at every layer,
    the nodes holding it (and carrying flow) can hold budget / (layers held x resident tokens)
    requests; the scarcest layer caps the cluster. By Little's law decode tokens/s is then at
    most this / time per output token."""
    carrying = {n for e in placement.flows if e.tokens_per_s > 0 for n in (e.src, e.dst)}
    per_layer = [0.0] * placement.num_layers
    for node, (start, end) in placement.ranges.items():
        if node not in carrying:
            continue
        gpu = cost_model.topology.node(node).gpu
        room = cost_model.kv_budget_token_layers(gpu, end - start) / ((end - start) * resident_tokens)
        for layer in range(start, end):
            per_layer[layer] += room
    return min(per_layer)


def placement_summary(placement: Placement, kv_bound_requests: float | None = None) -> dict[str, Any]:
    return {
        "method": placement.method,
        "status": placement.status,
        "objective_tokens_per_s": placement.objective_tokens_per_s,
        "upper_bound_tokens_per_s": placement.upper_bound_tokens_per_s,
        "solve_seconds": placement.solve_seconds,
        "partial_inference": placement.partial_inference,
        "nodes_used": len(placement.ranges),
        "kv_concurrency_bound_requests": kv_bound_requests,
        "ranges": {n: list(r) for n, r in sorted(placement.ranges.items())},
    }


def bench_cases(methods: Sequence[str], policies: Sequence[str], rates: Sequence[float] | None) -> list[BenchCase]:
    for p in policies:
        if p not in POLICIES:
            raise ConfigError(f"unknown scheduler {p!r}; choose from {', '.join(POLICIES)}")
    if not methods or not policies:
        raise ConfigError("a bench needs at least one method and one scheduler")
    rate_list: list[float | None] = list(rates) if rates else [None]
    return [BenchCase(m, p, r) for r in rate_list for m in methods for p in policies]


def run_simulated_bench(
    cost_model: CostModel,
    placements: Mapping[str, Placement],
    cases: Sequence[BenchCase],
    lengths: LengthSampler,
    base: SimConfig,
    on_case: Callable[[BenchCase, int], None] | None = None,
    progress: Callable[[float], None] | None = None,
) -> BenchReport:
    """Simulate every case; `base` gives mode, duration, warm-up, seed, SLOs and trace shaping.
    `on_case(case, index)` is called before each case, `progress(sim_time_s)` during it."""
    results = []
    for i, case in enumerate(cases):
        if case.method not in placements:
            raise ConfigError(f"no placement for method {case.method!r}")
        if on_case is not None:
            on_case(case, i)
        config = dataclasses.replace(
            base, policy=case.policy, rate_per_s=case.rate_per_s if case.rate_per_s is not None else base.rate_per_s
        )
        res = simulate(placements[case.method], cost_model, lengths, config, progress)
        log.info("%s: %.1f decode tok/s (%.0f%% of max-flow)", case.label, res.metrics.decode_tokens_per_s, 100 * res.flow_fraction)
        results.append((case, res))
    settings = config_dict(base)
    settings.pop("policy")
    resident = sampled_resident_kv_tokens(lengths)
    settings["resident_kv_tokens"] = resident
    settings["workload_shape"] = cost_model.workload.to_dict()  # what the max-flow figures assume
    summaries = {m: placement_summary(p, kv_concurrency_bound(p, cost_model, resident)) for m, p in placements.items()}
    return BenchReport(
        topology=cost_model.topology.name,
        mode=base.mode,
        workload=lengths.name,
        settings=settings,
        placements=summaries,
        results=tuple(results),
    )
