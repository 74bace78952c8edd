"""What an operator watches besides load: messages dropped, requests failed by containment,
nodes out of service, worker restarts, and the resume grace after a fault.

Owns: `ServingHealth`, one per Coordinator (`coord.health`), filled by the coordinator's loop
(its own drops, `abort`s, failover), by workers' heartbeats (their drops since the last one)
and read by `Coordinator.serving_stats()` (the `stats` reply), which the HTTP front end turns
into `/ready`'s JSON and `helix_` metrics. Also `check_resumes`: a request moved off a lost
route that no surviving route admits within `ServeConfig.resume_grace_s` is failed with one
error naming the lost node(s), rather than waiting for a restart.

Drop reasons are `ProtocolError.reason`: "malformed" (undecodable, missing fields, unknown
kind), "forged" (a sender that may not send it), "out_of_range_token", "bad_hidden_state",
"handler_error" (a value no check foresaw), "rejected" (any other refusal).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from helix_jax.errors import HelixError, ProtocolError, RequestError
from helix_jax.runtime import coordinator_requests as requests

if TYPE_CHECKING:
    from helix_jax.runtime.coordinator import Coordinator
    from helix_jax.runtime.requests import LiveRequest
    from helix_jax.runtime.restarts import RestartBudget

logger = logging.getLogger("helix_jax.runtime.coordinator")

COORDINATOR_NODE = "coordinator"  # the `node` of the coordinator's own drops
MAX_REASONS = 16  # distinct drop reasons a heartbeat may report
FAILURE_CAUSES = ("abort", "repeated_failure", "no_route", "resume_timeout")


def drop_reason(exc: HelixError) -> str:
    return exc.reason if isinstance(exc, ProtocolError) else "rejected"


class DropCounter:
    """Messages a loop dropped, by reason; `wire.drain`'s `on_reject`. `take()` returns and
    clears the counts since the last call (a worker's heartbeat carries them)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._since: collections.Counter[str] = collections.Counter()

    def __call__(self, _identity: bytes | None, _msg: Any, exc: HelixError) -> None:
        reason = drop_reason(exc)
        self.counts[reason] += 1
        self._since[reason] += 1

    def take(self) -> dict[str, int]:
        since, self._since = dict(self._since), collections.Counter()
        return since


class ServingHealth:
    """The coordinator's operator counters (its loop's thread writes them)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock  # resume deadlines only; tests inject their own
        self.dropped: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.failed: collections.Counter[str] = collections.Counter({cause: 0 for cause in FAILURE_CAUSES})
        self.rejoins: collections.Counter[str] = collections.Counter()
        self.restart_budget: RestartBudget | None = None  # LocalDeployment's, when it restarts workers
        self.resuming: dict[str, tuple[float, LiveRequest]] = {}  # new request id -> (deadline, request)

    def count_drop(self, node: str, reason: str, n: int = 1) -> None:
        self.dropped[node][reason] += n

    def add_worker_drops(self, node: str, dropped: Any) -> None:
        """A heartbeat's `dropped` (reason -> count since the last one), checked: a bad one is
        refused whole."""
        if dropped is None:
            return
        if (
            not isinstance(dropped, dict)
            or len(dropped) > MAX_REASONS
            or not all(isinstance(k, str) and len(k) <= 32 and isinstance(v, int) and 0 <= v < 1 << 31 for k, v in dropped.items())
        ):
            raise ProtocolError(f"heartbeat of {node}: malformed dropped counts")
        for reason, n in dropped.items():
            self.count_drop(node, reason, n)

    def snapshot(self, nodes: tuple[str, ...], down: dict[str, str]) -> dict[str, Any]:
        """The `health` part of the stats reply (plain JSON types)."""
        budget = self.restart_budget
        restarts = {n: {"taken": int(budget.total.get(n, 0)), "left": budget.left(n)} for n in nodes} if budget is not None else {}
        return {
            "dropped": {node: dict(c) for node, c in sorted(self.dropped.items())},
            "failed": dict(self.failed),
            "rejoins": {n: self.rejoins.get(n, 0) for n in nodes},
            "restarts": restarts,
            "out_of_service": dict(down),
            "resuming": len(self.resuming),
        }


def start_resume_clock(coord: Coordinator, req: LiveRequest) -> None:
    """`req` (under its new id) waits for a surviving route from now on."""
    health = coord.health
    health.resuming[req.request_id] = (health.clock() + coord.config.resume_grace_s, req)


def check_resumes(coord: Coordinator) -> None:
    """Fail each moved request that no surviving route took within the resume grace."""
    health = coord.health
    if not health.resuming:
        return
    now, expired = health.clock(), False
    for rid, (deadline, req) in list(health.resuming.items()):
        if coord._live.get(rid) is not req or req.route is not None:
            del health.resuming[rid]  # resumed, finished, cancelled or failed meanwhile
        elif now >= deadline:
            del health.resuming[rid]
            expired = True
            assert coord.scheduler is not None
            coord.scheduler.finish(rid)
            health.failed["resume_timeout"] += 1
            requests.fail(
                coord,
                req,
                RequestError(
                    f"this request lost its route when {'; '.join(req.failures)} went out of service, and no "
                    f"surviving route took it within the {coord.config.resume_grace_s:g} s resume grace "
                    f"(--resume-grace-s); it was not finished"
                ),
            )
    if expired:
        requests.admit(coord)
