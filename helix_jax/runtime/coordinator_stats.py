"""The coordinator's counters and readiness, as operators and benchmarks read them.

Sits at the runtime's edge: coordinator state -> **stats** -> the `stats` reply
(coordinator_requests.py), the HTTP front end's `/ready` and `helix_` metrics, and the
benchmarks. `stats` gives the counters (completed, rejected, resumed, peak queue and KV, nodes
out of service, the flow of the nodes in service); `serving_stats` adds what an operator watches
per node and whether the deployment is ready. Reads the Coordinator's state and its scheduler;
changes nothing. `Coordinator.stats()` and `Coordinator.serving_stats()` call these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helix_jax.runtime.coordinator import Coordinator


def stats(coord: Coordinator) -> dict[str, Any]:
    """Counters and load: KV budgets and peaks, completed / rejected / resumed requests, the
    peak queue, nodes out of service and rejoined, the max-flow in service, queued and in flight."""
    sched = coord.scheduler
    return {
        "budgets": dict(coord._budgets),
        "peak_kv_used": dict(coord.peak_kv_used),
        "completed": coord.completed,
        "rejected": coord.rejected,
        "peak_queued": coord.peak_queued,
        "resumed": coord.resumed,
        "down_nodes": dict(coord.down_nodes),
        "rejoined": coord.rejoined,
        "flow_tokens_per_s": coord.flow_tokens_per_s,
        "queued": sched.queue_length if sched else len(coord._early),
        "in_flight": sched.in_flight if sched else 0,
    }


def serving_stats(coord: Coordinator) -> dict[str, Any]:
    """`stats()` plus what an operator watches (the `stats` request's reply): requests
    running / waiting, per node KV token-layers used and budget, planned flow, in service
    (0/1) and mean step time (seconds on the deployment's clock, None before any step),
    the max-flow of the nodes in service, and readiness (every layer covered by a node in
    service) with the reason when not ready."""
    sched, cfg = coord.scheduler, coord.config
    flows = sched.placement if sched else cfg.placement
    nodes = {}
    for node in coord.nodes:
        step = coord.step_s.get(node)
        nodes[node] = {
            "kv_used_token_layers": sched.ledger.used(node) if sched else 0,
            "kv_budget_token_layers": coord._budgets.get(node, 0),
            "flow_tokens_per_s": 0.0 if node in coord.down_nodes else flows.node_flow(node),
            "in_service": int(sched is not None and node not in coord.down_nodes),
            "step_s": None if step is None else step / cfg.time_scale,
        }
    ready, reason = readiness(coord)
    return {
        **stats(coord),
        "running": sched.in_flight if sched else 0,
        "waiting": sched.queue_length if sched else len(coord._early),
        "nodes": nodes,
        "max_flow_tokens_per_s": coord.flow_tokens_per_s,
        "ready": ready,
        "reason": reason,
        "health": coord.health.snapshot(coord.nodes, coord.down_nodes),
        "queue_limit": cfg.queue_limit,
        "model": cfg.model.name,
        "max_seq_len": cfg.max_seq_len,
        "time_scale": cfg.time_scale,
    }


def readiness(coord: Coordinator) -> tuple[bool, str | None]:
    """(ready, why not): ready once warm and while every layer has a node in service."""
    if coord.failure:
        return False, coord.failure
    if coord.scheduler is None:
        return False, f"warming up: {len(coord._budgets)} of {len(coord.nodes)} workers ready"
    placement = coord.config.placement
    uncovered = [
        layer
        for layer in range(placement.num_layers)
        if not any(s <= layer < e for n, (s, e) in placement.ranges.items() if n not in coord.down_nodes)
    ]
    if uncovered:
        down = "; ".join(f"{n}: {why}" for n, why in sorted(coord.down_nodes.items()))
        return False, (f"layers {uncovered[0]}-{uncovered[-1]} have no node in service (out of service: {down})")
    return True, None
