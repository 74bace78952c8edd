"""Scheduler: flow-weighted routing, KV admission and the request queue (pure Python).

Sits between the placement and the executors: placement -> **scheduler** -> runtime
coordinator or simulator. Both executors drive the same `Scheduler` object.

Public API::

    from helix_jax.scheduler import Scheduler, RequestSpec, Admission, KVLedger, POLICIES

    sched = Scheduler(placement,                       # helix_jax.placement.Placement with flows
                      kv_budgets_token_layers,         # {node: int} KV entries (tokens x layers);
                                                       # None = unlimited
                      policy="iwrr",                   # "iwrr" | "random" | "shortest-queue" | "swarm"
                      queue_limit=10_000, min_edge_share=0.05, seed=0)
    sched.submit(RequestSpec(request_id, prompt_tokens, max_output_tokens))
        # -> None; OverloadedError when `queue_limit` requests wait already;
        #    RequestError for a duplicate id or a request no route could ever hold
        #    (prompt + max_output > sched.max_request_tokens)
    for adm in sched.admit_ready():                    # -> list[Admission], FIFO order
        adm.request_id, adm.route, adm.spec            # route: tuple[Hop(node, start_layer, end_layer)]
    sched.on_decode_token(request_id, tokens=1)        # each decode token's load along its route
    sched.on_hop_latency(node, seconds)                # observations for policy="swarm"
    sched.on_node_queue(node, depth)                   # observations for policy="shortest-queue"
    sched.finish(request_id) -> bool                   # release KV; cancels a queued request too
    sched.submit(spec, front=True)                     # resume an accepted request first (no limit)
    sched.fail_node(node) -> tuple[RequestSpec, ...]   # node out of service: its requests released
    sched.drop_unroutable() -> [(RequestSpec, reason)] # queued requests no live route can hold
    sched.reflow(placement)                            # same ranges, new flows (survivors' max-flow)
    sched.restore_node(node, kv_budget)                # a replacement worker joined; reflow next
    sched.down_nodes -> tuple[str, ...]
    sched.queue_length, sched.in_flight, sched.max_request_tokens
    sched.ledger.used(node) / free(node) / budget(node) / reservation(request_id)
    sched.admission(request_id) -> Admission; sched.node_in_flight(node) -> int

Semantics (HELIX.md section 4): IWRR at the coordinator and at every node over the flow edges
carrying >= `min_edge_share` of that endpoint's outgoing flow; pick the smallest
`load + work / weight`, then add `work / weight` (work = prompt tokens at admission, one per
decode token). A route hop runs only the layers after the previous hop's end (partial
inference), and the ledger reserves `(prompt + max_output) x layers run` per node. A hop whose
node cannot admit is skipped, dead ends are backtracked, and a request with no route waits.
"""

from helix_jax.scheduler.kv_ledger import KVLedger
from helix_jax.scheduler.policies import POLICIES, RoutePolicy
from helix_jax.scheduler.route_graph import RouteGraph
from helix_jax.scheduler.scheduler import UNLIMITED_KV_TOKEN_LAYERS, Scheduler
from helix_jax.scheduler.types import Admission, RequestSpec

__all__ = ["Admission", "KVLedger", "POLICIES", "RequestSpec", "RouteGraph", "RoutePolicy", "Scheduler", "UNLIMITED_KV_TOKEN_LAYERS"]
