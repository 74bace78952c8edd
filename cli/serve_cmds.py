"""Serving commands: the deploy configuration (validate, plan: `serve_config`; the `deploy`
command itself is cli/deploy_cmd.py), `worker` (join from another host) and `demo` (the
README's first command). The planner is called here, in the CLI layer;
everything else is `helix_jax.runtime` (deploy.py, coordinator.py, worker.py)."""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from helix_jax.errors import CheckpointError, ConfigError
from helix_jax.topology import Topology, default_topology_path, load_topology

if TYPE_CHECKING:
    from helix_jax.costmodel import WorkloadShape

DEMO_QUESTIONS = (
    "What is the capital of France?",
    "What color is the sky on a clear day?",
    "What do bees make?",
    "How many days are in a week?",
)
PAPER_TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "single-region-24-llama2-70b.json"


def placement_for(topology: Topology, placement_path: Path | None, time_limit_s: float, workload: WorkloadShape | None = None) -> Any:
    """A Placement with flows: loaded from a file (flows recomputed; a separate-pipelines file keeps
    its pipelines apart) or planned now. Capacities are priced for `workload` (a WorkloadShape),
    by default the one the file was planned for (the default shape when planning now)."""
    from helix_jax.costmodel import CostModel, WorkloadShape
    from helix_jax.placement import Placement
    from helix_jax.solver.maxflow import kept_hand_offs, placement_with_flows
    from helix_jax.solver.plan import plan

    if placement_path is None:
        return plan(topology, time_limit_s=time_limit_s, cost_model=CostModel(topology, workload))
    loaded = Placement.load(placement_path)
    if loaded.num_layers != topology.model.num_layers:
        raise ConfigError(
            f"placement {placement_path} covers {loaded.num_layers} layers, the topology's model has {topology.model.num_layers}"
        )
    cost_model = CostModel(topology, workload or WorkloadShape.recorded_in(loaded))
    if loaded.extra.get("routes"):  # an SLO placement: its flows are its routes' (solver/slo.py)
        from helix_jax.solver.validate import validate_placement

        validate_placement(loaded, topology, CostModel(topology, WorkloadShape.recorded_in(loaded)))
        return loaded
    return placement_with_flows(
        topology, cost_model, dict(loaded.ranges), loaded.method, loaded.partial_inference, allowed_edges=kept_hand_offs(loaded)
    )


def serve_config(
    topology_path: Path | None,
    placement_path: Path | None,
    model: str | None,
    emulate: bool,
    time_scale: float,
    host: str,
    port: int,
    kv_tokens: int | None,
    max_seq_len: int,
    plan_time_s: float,
    heartbeat_timeout_s: float = 10.0,
    kv_layout: str | None = None,
    secure: bool = False,
) -> tuple[Any, Any]:
    """(ServeConfig, tokenizer) of a deployment, planning it if needed; with `secure`, fresh
    CURVE keys for it (else plain TCP, refused unless every endpoint is on loopback)."""
    checked = validate_deploy(topology_path, model, time_scale, host, heartbeat_timeout_s, secure, kv_layout)
    return planned_config(
        checked,
        placement_path,
        emulate,
        time_scale,
        host,
        port,
        kv_tokens,
        max_seq_len,
        plan_time_s,
        heartbeat_timeout_s,
        secure,
        kv_layout,
    )


def validate_deploy(
    topology_path: Path | None,
    model: str | None,
    time_scale: float,
    host: str,
    heartbeat_timeout_s: float,
    secure: bool,
    kv_layout: str | None = None,
) -> tuple[Any, Any, str]:
    """The deploy workflow's first step: (topology, model config, weights source), or ConfigError."""
    from helix_jax.modelconfig import resolve_model
    from helix_jax.models import default_weights_source
    from helix_jax.runtime.security import check_insecure
    from helix_jax.runtime.worker_process import is_local_host

    topology = load_topology(topology_path or default_topology_path())
    if not secure:  # before planning: one clear error, nothing started
        # local workers bind 127.0.0.1; a node on another host needs a non-loopback endpoint
        check_insecure({"--host": host, **{f"node {n.name}": n.host for n in topology.nodes if not is_local_host(n.host)}})
    if not time_scale > 0:
        raise ConfigError(f"--time-scale must be positive, got {time_scale}")
    if kv_layout not in (None, "paged", "contiguous"):
        raise ConfigError(f"--kv-layout must be 'paged' or 'contiguous', got {kv_layout!r}")
    if not heartbeat_timeout_s > 0:
        raise ConfigError(f"--heartbeat-timeout must be positive, got {heartbeat_timeout_s}")
    spec = model or topology.model.name
    config = resolve_model(spec) if model else topology.model
    if config.num_layers != topology.model.num_layers:
        raise ConfigError(
            f"--model {spec} has {config.num_layers} layers but the topology's model {topology.model.name} has {topology.model.num_layers}"
        )
    try:
        weights = default_weights_source(config, spec)  # a cached model's file, a .gguf, a directory
    except CheckpointError as exc:
        raise ConfigError(f"{exc}; or emulate the cluster with random weights: --emulate --model tiny-{config.num_layers}") from None
    return topology, config, weights


def planned_config(
    checked: tuple[Any, Any, str],
    placement_path: Path | None,
    emulate: bool,
    time_scale: float,
    host: str,
    port: int,
    kv_tokens: int | None,
    max_seq_len: int,
    plan_time_s: float,
    heartbeat_timeout_s: float,
    secure: bool,
    kv_layout: str | None = None,
) -> tuple[Any, Any]:
    """The plan step: the placement (planned or loaded), keys, (ServeConfig, tokenizer)."""
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.runtime.coordinator import ServeConfig
    from helix_jax.runtime.emulation import EmulationSpec
    from helix_jax.runtime.security import DeploymentKeys
    from helix_jax.solver.maxflow import survivor_flows

    topology, config, weights = checked
    placement = placement_for(topology, placement_path, plan_time_s)
    keys = DeploymentKeys.generate(placement.ranges) if secure else None
    emulation = EmulationSpec.for_topology(topology, time_scale, workload=placement.workload) if emulate else None
    cfg = ServeConfig(
        topology,
        placement,
        config,
        weights=weights,
        host=host,
        client_port=port,
        emulation=emulation,
        kv_tokens=kv_tokens,
        kv_layout=kv_layout,
        max_seq_len=min(max_seq_len, config.max_position_embeddings),
        heartbeat_timeout_s=heartbeat_timeout_s,
        flow_planner=functools.partial(survivor_flows, topology, placement),
        keys=keys,
    )
    return cfg, load_tokenizer(config, None if weights.startswith("random:") else weights)


def print_placement(console: Console, placement: Any, topology: Topology, title: str) -> None:
    table = Table(title=title)
    for col in ("node", "gpu", "layers", "tokens/s through"):
        table.add_column(col)
    for node, (start, end) in sorted(placement.ranges.items(), key=lambda kv: (kv[1], kv[0])):
        table.add_row(node, topology.node(node).gpu, f"[{start}, {end})", f"{placement.node_flow(node):.1f}")
    console.print(table)
    bound = placement.upper_bound_tokens_per_s
    console.print(
        f"max-flow {placement.objective_tokens_per_s:.1f} tokens/s ({placement.method}, "
        f"{placement.status}{f', bound {bound:.1f}' if bound else ''}, {placement.solve_seconds:.1f} s)"
    )


def worker(
    coordinator: str = typer.Option(..., help="Coordinator control endpoint, tcp://HOST:PORT."),
    node: str = typer.Option(..., help="Node name in the topology."),
    bind_host: str = typer.Option("127.0.0.1", help="Address the data socket binds (0.0.0.0 for remote peers)."),
    advertise_host: str = typer.Option(None, help="Address other nodes use to reach this one."),
    keys: Path = typer.Option(
        None, help="The node's CURVE keys file (written by deploy, mode 0600); without it the worker speaks plain TCP, on loopback only."
    ),
    parent_pid: int = typer.Option(None, hidden=True, help="Exit when this process dies."),
) -> None:
    """Join a deployment: register, load and warm up the assigned layers, then serve."""
    logging.getLogger().setLevel(os.environ.get("HELIX_LOG", "INFO").upper())
    # compiled buckets persist across runs (the engine turns on helix_jax/model/compile_cache.py,
    # HELIX_COMPILE_CACHE): a re-deploy warms up in seconds, not minutes
    from helix_jax.runtime.security import WorkerKeys
    from helix_jax.runtime.worker import WorkerOptions, run_worker

    worker_keys = WorkerKeys.read(keys) if keys is not None else None
    code = run_worker(WorkerOptions(coordinator, node, bind_host, advertise_host, parent_pid, worker_keys))
    raise typer.Exit(code)


def demo(
    requests: int = typer.Option(4, help="Questions to send through the deployment at once."),
    max_tokens: int = typer.Option(48, help="Tokens to generate per answer at most."),
    topology: Path = typer.Option(None, help="Cluster to deploy (default: the shipped CPU cluster serving SmolLM2-135M-Instruct)."),
    paper_plan_time: float = typer.Option(10.0, help="Planner time limit for the 24-node cluster."),
    sim_seconds: float = typer.Option(1200.0, help="Simulated seconds of the benchmark table, the first half warm-up (0: skip)."),
    layer_loop: str = typer.Option(
        "auto", help="How workers run layers: auto (unroll wide layers), scan (compiles several times faster, steps slower) or unroll."
    ),
) -> None:
    """Deploy the shipped CPU cluster, answer questions, then plan and simulate a 24-GPU cluster."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from helix_jax.client import Client
    from helix_jax.runtime.deploy import LocalDeployment
    from helix_jax.runtime.serve_config import check_layer_loop

    check_layer_loop(layer_loop)  # before planning, as deploy checks it
    if requests < 1:
        raise ConfigError(f"--requests must be at least 1, got {requests}")
    started = time.perf_counter()
    console = Console()
    cfg, codec = serve_config(topology, None, None, False, 1.0, "127.0.0.1", 0, None, 256, 10.0)
    # its workers compile decode steps for up to as many rows as the demo sends at once, not for
    # the hundreds of requests their KV could hold (the default 4 questions: 3 programs per
    # worker instead of 7)
    cfg = dataclasses.replace(cfg, layer_loop=layer_loop, max_batch=requests)
    print_placement(console, cfg.placement, cfg.topology, f"1. placement of {cfg.topology.name} ({cfg.model.name})")
    with LocalDeployment(cfg, codec) as dep:
        with console.status(f"2. deploying: {len(dep.workers)} worker processes load and compile"):
            dep.wait_ready()
        console.print(f"2. deployed in {time.perf_counter() - started:.1f} s; endpoint {dep.client_endpoint}")
        questions = [DEMO_QUESTIONS[i % len(DEMO_QUESTIONS)] for i in range(requests)]
        prompts = [codec.encode_chat([{"role": "user", "content": q}]) for q in questions]
        with Client(dep.client_endpoint) as client, ThreadPoolExecutor(requests) as pool:
            results = list(pool.map(lambda p: client.generate(p, max_tokens=max_tokens), prompts))
        table = Table(title=f"3. {requests} concurrent questions to {cfg.model.name} (chat template, greedy)")
        for col in ("question", "answer", "route (node[layers])", "TTFT ms", "TPOT ms"):
            table.add_column(col)
        for question, res in zip(questions, results):
            route = " > ".join(f"{n}[{s}:{e})" for n, s, e in res.route)
            table.add_row(question, " ".join(res.text.split()), route, f"{res.timings.ttft_s * 1e3:.1f}", f"{res.timings.tpot_s * 1e3:.2f}")
        console.print(table)
    console.print("   deployment shut down cleanly")
    if PAPER_TOPOLOGY.is_file():
        from helix_jax.costmodel import CostModel
        from helix_jax.solver.plan import plan
        from helix_jax.workload import length_sampler

        paper = load_topology(PAPER_TOPOLOGY)
        # planned for the workload the benchmark below simulates, which then takes this placement
        paper_placement = plan(paper, time_limit_s=paper_plan_time, cost_model=CostModel(paper, length_sampler().shape))
        print_placement(console, paper_placement, paper, f"4. planner on {paper.name} ({paper.model.name}, {len(paper.nodes)} nodes)")
        if sim_seconds > 0:
            from helix_jax.cli.bench_cmds import _simulated

            console.print(f"5. benchmark: {sim_seconds:g} simulated seconds of {paper.name}, offline, Azure-conversation-like requests")
            _simulated(
                console,
                PAPER_TOPOLOGY,
                ["helix", "swarm", "petals", "sp"],
                ["iwrr"],
                "offline",
                None,
                sim_seconds,
                sim_seconds / 2,
                length_sampler(),
                None,
                0,
                paper_plan_time,
                paper_placement,
                float("inf"),
                float("inf"),
                None,
            )
    console.print(f"demo done in {time.perf_counter() - started:.1f} s")


def register(app: typer.Typer) -> None:
    from helix_jax.cli.deploy_cmd import deploy

    app.command()(deploy)
    app.command()(worker)
    app.command()(demo)
