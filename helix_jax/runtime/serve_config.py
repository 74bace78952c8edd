"""ServeConfig: everything a deployment is made of (topology, placement, model, ports, limits, keys).

Built by the deploy command (cli/serve_cmds.py), the benchmarks and the tests; read by the
coordinator (runtime/coordinator.py) and LocalDeployment. Data only: no sockets, no jax.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from helix_jax.errors import ConfigError, PlacementError
from helix_jax.modelconfig import ModelConfig
from helix_jax.placement import Placement
from helix_jax.runtime import security
from helix_jax.runtime.emulation import EmulationSpec
from helix_jax.runtime.worker_process import LOCAL_HOSTS
from helix_jax.topology import Topology

LAYER_LOOP_CHOICES = ("auto", "scan", "unroll")  # helix_jax/model/stage.py: "auto" picks by layer width
DEFAULT_GATHER_MS = 250.0  # about two decode round trips of SmolLM2 on the shipped 3 workers
MAX_GATHER_MS = 60_000.0


def check_layer_loop(layer_loop: str) -> None:
    """ConfigError naming --layer-loop unless it is one of LAYER_LOOP_CHOICES (ServeConfig, and
    the CLI commands before they plan)."""
    if layer_loop not in LAYER_LOOP_CHOICES:
        raise ConfigError(f"--layer-loop must be auto, scan or unroll, got {layer_loop!r}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Everything a deployment is made of; the deploy command builds one."""

    topology: Topology
    placement: Placement
    model: ModelConfig  # the model the workers compute (topology.model or a --model stand-in)
    weights: str | None = None  # checkpoint directory; None: seeded random weights (tiny models)
    host: str = "127.0.0.1"  # address the coordinator binds and advertises
    client_port: int = 0  # 0: a free port
    control_port: int = 0
    emulation: EmulationSpec | None = None
    kv_tokens: int | None = None  # per-worker KV cache size in tokens (None: worker default)
    kv_layout: str | None = None  # "paged" | "contiguous" (None: the engine's default)
    # how a stage runs its layers (helix_jax/model/stage.py): "auto" (unroll wide layers), "scan"
    # (compiles in a fraction of the time, steps somewhat slower) or "unroll"
    layer_loop: str = "auto"
    max_batch: int | None = None  # decode rows one worker step takes at most (None: as many as its KV holds)
    # how long an entry stage waits for its requests still downstream before it steps (`--gather-ms`;
    # None: DEFAULT_GATHER_MS when every node runs on one host and nothing is emulated, else 0: off)
    gather_ms: float | None = None
    max_seq_len: int = 512
    queue_limit: int = 1000
    # requests one client connection may have waiting at once (None: 3/4 of queue_limit), so one
    # client's flood gets OverloadedError while the others still get in
    client_queue_limit: int | None = None
    policy: str = "iwrr"
    seed: int = 0
    heartbeat_timeout_s: float = 10.0  # silence after which a serving worker is taken out of service
    # a request moved off a lost route that no surviving route admits within this many seconds
    # fails with an error naming the lost node(s) (it never waits for a restart)
    resume_grace_s: float = 3.0
    # nodes out of service -> the placement with flows that avoid them (same ranges); deploy passes
    # helix_jax.solver.maxflow.survivor_flows (the survivors' max-flow). None: `pruned_flows`.
    flow_planner: Callable[[frozenset[str]], Placement] | None = None
    # CURVE keys of the deployment (deploy generates them); None: plain TCP, which is allowed
    # only when `host` is loopback (tests and local experiments)
    keys: security.DeploymentKeys | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.resume_grace_s < float("inf"):
            raise ConfigError(f"--resume-grace-s must be >= 0 and finite, got {self.resume_grace_s}")
        check_layer_loop(self.layer_loop)
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.gather_ms is not None and not 0 <= self.gather_ms <= MAX_GATHER_MS:
            raise ConfigError(f"--gather-ms must be in [0, {MAX_GATHER_MS:g}], got {self.gather_ms}")
        for edge in self.placement.flows:  # else the coordinator would refuse every worker's `ready`, and wait
            if edge.tokens_per_s > 0 and not self.placement.can_hand_off(edge.src, edge.dst):
                raise PlacementError(
                    f"placement of {self.placement.topology_name!r}: flow edge {edge.src} -> {edge.dst} is not a "
                    "valid hand-off under its layer ranges"
                )

    @property
    def entry_gather_s(self) -> float:
        """Seconds an entry stage waits for its requests still downstream (0: it never waits).

        Workers that share one host's cores gain nothing from running several micro-batches at
        once (the stages take turns on the same cores), and each step re-reads the stage's
        weights: gathered, every request's next token enters as one batch, and each stage runs
        one step per token instead of one per group of requests that happened to arrive
        together (SmolLM2 on the shipped 3 workers, 16 streams: BENCHMARKS.md). Workers on
        separate machines want the opposite, several micro-batches in flight, so there it is off."""
        if self.gather_ms is not None:
            return self.gather_ms / 1000
        hosts = {"localhost" if node.host in LOCAL_HOSTS else node.host for node in self.topology.nodes}
        return DEFAULT_GATHER_MS / 1000 if len(hosts) == 1 and self.emulation is None else 0.0

    @property
    def time_scale(self) -> float:
        return self.emulation.time_scale if self.emulation else 1.0
