"""The coordinator's failure handling (its loop's step 6; runtime/coordinator.py has the rest).

A serving worker sends `heartbeat` every `wire.HEARTBEAT_INTERVAL_S`. A node is taken out of
service when it reports `failed`, when nothing is heard from it for `heartbeat_timeout_s`, or
when the deployment sees its process exit (`Coordinator.report_node_down`). The flows are
recomputed over the nodes still in service (`flow_planner`: same layer ranges, their max-flow,
so new requests spread by what the survivors can carry), and every request routed through it
is resumed on a surviving route, first in the queue: its KV on the surviving hops is freed,
and under a fresh internal id its prompt plus the tokens already streamed are prefilled
again, so the client's stream continues where it stopped (sampling depends only on seed and
position). A request that no surviving route can hold, queued or in flight, gets one `error`
naming the nodes out of service, and so does every later request; one that a route could hold
but none admits within `resume_grace_s` gets one naming the lost node (health.check_resumes,
run with the heartbeat check), so no request waits for a restart. A fresh worker that
registers for a node out of service rejoins (coordinator_control.py), and once it is `ready`
the node is back in service and the flows are recomputed with it (`_rejoin`).

Functions of the Coordinator: they read and change its request table, scheduler and sockets,
and nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import TYPE_CHECKING

from helix_jax.errors import HelixError, RequestError
from helix_jax.placement import Placement
from helix_jax.runtime import coordinator_requests as requests
from helix_jax.runtime import health, wire
from helix_jax.scheduler import RequestSpec
from helix_jax.topology import COORDINATOR

if TYPE_CHECKING:
    from helix_jax.runtime.coordinator import Coordinator

logger = logging.getLogger("helix_jax.runtime.coordinator")

MAX_FAILURES_PER_REQUEST = 2  # a request that two failing nodes carried is failed, not resumed a third time


def pruned_flows(placement: Placement, down: frozenset[str]) -> Placement:
    """The fallback re-plan without a solver: `placement` minus every flow edge that touches a
    node in `down` (objective: what still leaves the coordinator)."""
    flows = tuple(f for f in placement.flows if f.src not in down and f.dst not in down)
    value = sum(f.tokens_per_s for f in flows if f.src == COORDINATOR)
    return dataclasses.replace(placement, flows=flows, objective_tokens_per_s=value)


def check_heartbeats(coord: Coordinator, polled_at: float) -> None:
    """Take out of service every node silent for more than the heartbeat timeout, judged at
    `polled_at`: the loop's last look at its sockets, whose messages have all been handled, so
    time the loop itself spent busy (a re-plan) is never mistaken for a worker's silence."""
    now = polled_at
    if coord.scheduler is None or time.perf_counter() < coord._next_heartbeat_check:
        return  # the loop wakes per message batch; twice per heartbeat period is enough
    coord._next_heartbeat_check = time.perf_counter() + wire.HEARTBEAT_INTERVAL_S / 2
    health.check_resumes(coord)
    limit = coord.config.heartbeat_timeout_s
    for node, heard in list(coord._last_heard.items()):
        if node not in coord.down_nodes and now - heard > limit:
            node_down(coord, node, f"no heartbeat for {now - heard:.1f} s (limit {limit:g} s)")


def node_down(coord: Coordinator, node: str, reason: str) -> None:
    """Step 6: take `node` out of service and resume (or fail) the requests it carried."""
    if coord.scheduler is None or node in coord.down_nodes or node not in coord.config.placement.ranges:
        return
    coord.down_nodes[node] = reason
    logger.error("node %s is out of service: %s", node, reason)
    push = coord._push.pop(node, None)
    if push is not None:
        push.close(linger=0)
    released = coord.scheduler.fail_node(node)
    reflow(coord, set(coord.down_nodes))

    def unroutable(why: object) -> RequestError:
        return RequestError(f"node {node} went out of service ({reason}) and no surviving route can hold this request: {why}")

    for spec in reversed(released):  # resumed at the head of the queue, in admission order
        req = coord._live.pop(spec.request_id)
        requests.free_hops(coord, req)
        req.failures.append(f"{node} ({reason})")
        if len(req.failures) >= MAX_FAILURES_PER_REQUEST:  # it may be what kills them: no blind replay
            coord.health.failed["repeated_failure"] += 1
            coord._by_client.pop((req.identity, req.client_request_id), None)
            coord._reply_error(
                req.identity,
                req.client_request_id,
                RequestError(
                    f"this request was in flight on {len(req.failures)} nodes that went out of service "
                    f"({'; '.join(req.failures)}); it is not retried again"
                ),
            )
            continue
        req.route, req.route_wire = None, []
        req.request_id = coord._new_request_id()
        coord._live[req.request_id] = req
        coord._by_client[(req.identity, req.client_request_id)] = req.request_id
        resume = RequestSpec(req.request_id, len(req.prompt_ids) + len(req.output_ids), req.max_tokens - len(req.output_ids))
        try:
            coord.scheduler.submit(resume, front=True)
            coord.resumed += 1
            health.start_resume_clock(coord, req)
        except HelixError as exc:
            coord.health.failed["no_route"] += 1
            requests.fail(coord, req, unroutable(exc))
    for spec, why in coord.scheduler.drop_unroutable():
        coord.health.failed["no_route"] += 1
        requests.fail(coord, coord._live[spec.request_id], unroutable(why))
    requests.admit(coord)


def rejoin(coord: Coordinator, node: str) -> None:
    """A fresh worker of a node out of service is warm: back in service, flows recomputed."""
    assert coord.scheduler is not None
    coord._rejoining.discard(node)
    coord.scheduler.restore_node(node, coord._budgets[node])
    reflow(coord, set(coord.down_nodes) - {node})
    coord._last_heard[node] = time.perf_counter()
    coord.rejoined += 1
    coord.health.rejoins[node] += 1
    del coord.down_nodes[node]  # last: stats() readers see the node back with its flows
    logger.warning("node %s is back in service", node)
    requests.admit(coord)


def reflow(coord: Coordinator, down: set[str]) -> None:
    """Point the scheduler at flows that avoid the nodes in `down` (same ranges): the
    config's `flow_planner` (the survivors' max-flow), or else the old flows minus every
    edge that touches a node in `down`."""
    old = coord.config.placement
    try:
        planner = coord.config.flow_planner or functools.partial(pruned_flows, old)
        new = planner(frozenset(down))
        value = new.objective_tokens_per_s
        coord.flow_tokens_per_s = value
        if value <= 0:
            return  # no route is left; the scheduler already refuses everything
        assert coord.scheduler is not None
        coord.scheduler.reflow(new)
    except HelixError as exc:
        logger.error("could not recompute flows without %s: %s", ", ".join(sorted(down)), exc)
        return
    logger.warning(
        "flows recomputed without %s: %.1f tokens/s (placement: %.1f)",
        ", ".join(sorted(down)) or "no node",
        value,
        old.objective_tokens_per_s,
    )
