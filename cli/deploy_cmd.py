"""`helix-jax deploy` as a visible workflow: validate -> plan -> launch -> load -> compile -> ready -> serving.

Owns: the deploy command's options, the rendering of its steps (one line per finished step, a
live status with per-node progress while the workers load and compile, the slowest node
named), `--dry-run` (validate and plan, then print what would be launched where), the state
directory (deployment.json and connection.json, both printed), and the teardown of whatever
was started when a step fails, on Ctrl-C and on SIGTERM.

Sits at the top of the data flow: it builds the ServeConfig (cli/serve_cmds.py), opens a
LocalDeployment (helix_jax/runtime/deploy.py) or, with `--ray`, a RayDeployment
(helix_jax/runtime/ray_launch.py), and starts the HTTP front end as a client of the coordinator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.table import Table

from helix_jax.cli.http_cmds import API_KEY_HELP, KEY_QUEUE_SHARE_HELP
from helix_jax.errors import ConfigError, HelixError
from helix_jax.runtime.workflow import STEP_TITLES, StepFailed, StepProgress


class Flow:
    """Prints each step as it finishes on `console`; turns an error inside a step into StepFailed."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self._done: set[str] = set()

    @contextlib.contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        except StepFailed:
            raise
        except HelixError as exc:
            raise StepFailed(name, str(exc)) from None
        self.finished(name, detail, time.monotonic() - began)

    def finished(self, name: str, detail: str, seconds: float) -> None:
        self._done.add(name)
        self.console.print(f"[green]✓[/] {STEP_TITLES[name]:<16} {detail}  ({seconds:.1f} s)", soft_wrap=True)

    def on_progress(self, status: Any, began: float) -> Any:
        """The callback of `wait_ready`: a line per step once all nodes passed it, a live status."""

        def update(progress: list[StepProgress]) -> None:
            for p in progress:
                if p.done == p.total and p.step not in self._done:
                    self.finished(p.step, f"{p.done}/{p.total} nodes", time.monotonic() - began)
            status.update(" · ".join(p.line() for p in progress if p.step not in self._done) or "ready")

        return update


def deployments_root() -> Path:
    """Where deployments keep their state by name: $HELIX_DEPLOYMENTS, else
    ~/.cache/helix-jax/deployments (beside the model cache)."""
    env = os.environ.get("HELIX_DEPLOYMENTS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "helix-jax" / "deployments"


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def print_launch_plan(console: Console, cfg: Any, ray_address: str | None) -> None:
    """--dry-run: what would be launched where."""
    from helix_jax.runtime.worker_process import is_local_host

    table = Table(title=f"would launch {len(cfg.placement.ranges)} workers of {cfg.model.name}")
    for col in ("node", "host", "layers", "launched as"):
        table.add_column(col)
    for node, (start, end) in sorted(cfg.placement.ranges.items()):
        host = cfg.topology.node(node).host
        gpu = cfg.topology.node(node).gpu
        if ray_address:
            how = f"Ray actor on the Ray node labelled helix-jax/host={host or '127.0.0.1'}"
            how += f" (GPU {gpu})" if not gpu.lower().startswith("cpu") else ""
        elif is_local_host(host):
            how = "local process (helix-jax worker)"
        else:
            how = "manual: helix-jax worker --keys FILE on that host"
        table.add_row(node, host or "127.0.0.1", f"[{start}, {end})", how)
    console.print(table)
    transport = "CURVE (keys generated at deploy)" if cfg.keys is not None else "plain TCP (--insecure)"
    console.print(f"coordinator on {cfg.host} (client port {cfg.client_port or 'free'}); transport {transport}")
    console.print("dry run: nothing was started")


def deploy(
    topology: Path = typer.Argument(None, help="Topology JSON (default: the shipped small CPU cluster)."),
    placement: Path = typer.Option(None, help="Placement JSON to serve (default: plan now)."),
    model: str = typer.Option(None, help="Model the workers compute: preset or checkpoint dir (default: the topology's model)."),
    emulate: bool = typer.Option(False, help="Pace steps and links to the topology's GPUs and model."),
    time_scale: float = typer.Option(1.0, help="With --emulate: run everything N times slower."),
    port: int = typer.Option(0, help="Client port (0: a free port)."),
    host: str = typer.Option("127.0.0.1", help="Address the coordinator binds and advertises."),
    kv_tokens: int = typer.Option(
        None, help="KV cache tokens per worker (default: 32 sequences); paged, they hold as many requests as their lengths allow."
    ),
    kv_layout: str = typer.Option(None, help="KV cache layout: paged (default) or contiguous slots."),
    layer_loop: str = typer.Option(
        "auto",
        help="How workers run their layers: auto (unroll wide layers), scan (compiles several times faster, steps slower) or unroll.",
    ),
    max_seq_len: int = typer.Option(512, help="Longest prompt + output, in tokens."),
    max_batch: int = typer.Option(
        None,
        help="Decode rows one worker step takes at most (default: as many as its KV holds). Below the number of "
        "concurrent streams, a pipeline's stages work on several micro-batches at once.",
    ),
    gather_ms: float = typer.Option(
        None,
        help="Milliseconds a route's first stage waits for its requests still downstream, so that their next tokens "
        "move as one batch (0: never; default: 250 when every node runs on one host and nothing is emulated, else 0).",
    ),
    plan_time: float = typer.Option(10.0, help="Planner time limit in seconds."),
    heartbeat_timeout: float = typer.Option(
        10.0, help="Seconds of silence after which a worker is taken out of service and its requests move on."
    ),
    resume_grace_s: float = typer.Option(
        3.0,
        "--resume-grace-s",
        help="Seconds a request moved off a "
        "lost node may wait for a surviving route; then it fails with an "
        "error naming the node (it never waits for a restart).",
    ),
    restart_workers: int = typer.Option(
        3, help="Restarts of a crashed worker per node within --restart-window (0: none); the replacement rejoins once warm."
    ),
    restart_window: float = typer.Option(
        600.0, help="Seconds after which a restart no longer counts against --restart-workers (the budget refills)."
    ),
    log_dir: Path = typer.Option(None, help="Where worker logs go (default: STATE_DIR/logs)."),
    state_dir: Path = typer.Option(
        None,
        help="Holds deployment.json, connection.json and the workers' "
        "keys (default: ~/.cache/helix-jax/deployments/NAME; "
        "HELIX_DEPLOYMENTS=DIR moves the root).",
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Turn CURVE off (plain TCP): allowed only when every endpoint is on loopback."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and plan, print what would be launched where, start nothing."),
    ray: str = typer.Option(
        None,
        "--ray",
        envvar="HELIX_RAY_ADDRESS",
        help="Launch the workers as Ray actors on this cluster: auto, host:port or ray://... (env HELIX_RAY_ADDRESS).",
    ),
    ready_timeout: float = typer.Option(900.0, help="Seconds the workers may take to load and compile."),
    http_port: int = typer.Option(8000, help="Port of the OpenAI-compatible HTTP API (0: a free port)."),
    http_host: str = typer.Option("127.0.0.1", help="Address the HTTP API listens on."),
    no_http: bool = typer.Option(False, "--no-http", help="Serve the ZeroMQ client socket only."),
    api_key: str = typer.Option(None, envvar="HELIX_API_KEY", help=API_KEY_HELP),
    key_queue_share: int = typer.Option(None, help=KEY_QUEUE_SHARE_HELP),
    shutdown_timeout: float = typer.Option(
        30.0, help="On SIGTERM/Ctrl-C: seconds HTTP requests in flight may finish before they are cancelled."
    ),
) -> None:
    """Plan, start the coordinator, the workers and the HTTP API, and serve until Ctrl-C / SIGTERM."""
    from helix_jax.cli.http_cmds import check_http_options, drain_http, start_http
    from helix_jax.cli.serve_cmds import planned_config, print_placement, validate_deploy
    from helix_jax.cli.signals import StopSignal
    from helix_jax.runtime.serve_config import MAX_GATHER_MS, check_layer_loop

    console = Console()  # this invocation's terminal: its width, colour and COLUMNS as they are now
    flow = Flow(console)
    sock = None
    with flow.step("validate"):
        if restart_workers < 0:
            raise ConfigError(f"--restart-workers must be >= 0, got {restart_workers}")
        check_layer_loop(layer_loop)  # before planning; ServeConfig checks it again
        if max_batch is not None and max_batch < 1:  # ServeConfig checks it again
            raise ConfigError(f"--max-batch must be at least 1, got {max_batch}")
        if gather_ms is not None and not 0 <= gather_ms <= MAX_GATHER_MS:  # ServeConfig checks it again
            raise ConfigError(f"--gather-ms must be in [0, {MAX_GATHER_MS:g}], got {gather_ms}")
        if not (resume_grace_s >= 0 and math.isfinite(resume_grace_s)):
            raise ConfigError(f"--resume-grace-s must be >= 0 and finite, got {resume_grace_s}")
        checked = validate_deploy(topology, model, time_scale, host, heartbeat_timeout, not insecure, kv_layout)
        if not no_http and not dry_run:  # bound first: a busy port fails before anything starts
            from helix_jax.http.server import bind_socket

            check_http_options(http_port, shutdown_timeout, api_key, key_queue_share)
            sock = bind_socket(http_host, http_port)
    name = checked[0].name
    console.print(f"  topology {name}: {len(checked[0].nodes)} nodes, model {checked[1].name}")
    with flow.step("plan"):
        cfg, codec = planned_config(
            checked,
            placement,
            emulate,
            time_scale,
            host,
            port,
            kv_tokens,
            max_seq_len,
            plan_time,
            heartbeat_timeout,
            not insecure,
            kv_layout,
        )
        cfg = dataclasses.replace(cfg, resume_grace_s=resume_grace_s, layer_loop=layer_loop, max_batch=max_batch, gather_ms=gather_ms)
    print_placement(console, cfg.placement, cfg.topology, f"placement of {cfg.topology.name}")
    if dry_run:
        print_launch_plan(console, cfg, ray)
        return
    signal.signal(signal.SIGTERM, _interrupt)  # until serving: SIGTERM tears down like Ctrl-C
    state = Path(state_dir or deployments_root() / name).expanduser()
    kwargs: dict[str, Any] = dict(
        log_dir=log_dir or state / "logs", restart_workers=restart_workers > 0, max_restarts=restart_workers, state_dir=state
    )
    if not ray:
        kwargs["restart_window_s"] = restart_window
    if ray:
        from helix_jax.runtime.ray_launch import RayDeployment

        dep: Any = RayDeployment(cfg, codec, ray_address=ray, **kwargs)
    else:
        from helix_jax.runtime.deploy import LocalDeployment

        dep = LocalDeployment(cfg, codec, **kwargs)
    front = None
    try:
        with flow.step("launch"):
            dep.start()
        console.print(f"  deployment file: {dep.deployment_file}", soft_wrap=True)
        for line in dep.remote_commands():
            console.print(f"run on its host: [bold]{line}[/]", soft_wrap=True)
        began = time.monotonic()
        with console.status("launching workers") as status:
            dep.wait_ready(ready_timeout, flow.on_progress(status, began))
        flow.finished("ready", f"max-flow {cfg.placement.objective_tokens_per_s:.1f} tokens/s", time.monotonic() - began)
        stop = StopSignal()  # before "serving" is printed: a Ctrl-C after it always shuts down cleanly
        with flow.step("serving"):
            client_keys = cfg.keys.client() if cfg.keys is not None else None
            if sock is not None:
                front = start_http(console, dep.client_endpoint, codec, sock, api_key, keys=client_keys, key_queue_share=key_queue_share)
        console.print(f"serving {cfg.model.name}: client endpoint [bold]{dep.client_endpoint}[/]  (Ctrl-C stops)")
        console.print(f"connection file: {dep.connection_file}", soft_wrap=True)
        console.print(f"try: helix-jax generate --connection {dep.connection_file} --prompt 'Hello' --stream", soft_wrap=True)
        stop.wait()
        if front is not None:
            drain_http(console, front, shutdown_timeout)
            front = None
        console.print("shutting down")
    finally:
        if front is not None:
            front.stop()
        dep.close()
        if sock is not None:
            sock.close()
    console.print("stopped")
