"""Deploy-to-ready benchmark (part of `make bench-serve`): how long the default deployment takes
to serve, as local worker processes and as Ray actors.

The default deployment as `helix-jax deploy` builds it (SmolLM2-135M-Instruct on the shipped
cpu-small cluster, the planner's placement, CURVE on, 512-token sequences), timed from
`start()` (coordinator bound, workers launched) until every worker has loaded its layers and
compiled its buckets. On Ray the same topology's nodes are moved to hosts h0/h1/h2, the labels
of a local 3-node Ray cluster (`ray.cluster_utils.Cluster` on 127.0.0.1, one CPU per node,
workers at niceness 0), started once beforehand; its start-up is reported, not counted. Local
and Ray alternate for `--rounds` rounds; each records the 1-minute load average. Compiled
programs come from the XLA cache as on any redeploy (`--cold`: HELIX_COMPILE_CACHE=off, a first
deploy).

  python -m helix_jax.cli.ready_bench [--rounds 3] [--cold] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HOSTS = ("h0", "h1", "h2")


def ray_cluster() -> tuple[Any, float]:
    """A local 3-node Ray cluster labelled helix-jax/host=h0/h1/h2, and its start-up seconds."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # node IPs stay 127.0.0.1
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 loses to any other job here
    import ray
    from ray.cluster_utils import Cluster

    from helix_jax.runtime.ray_launch import LABEL

    began = time.perf_counter()
    args: dict[str, Any] = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 100 << 20}
    with socket.socket() as sock:  # a dashboard port of its own: another Ray cluster may hold 8265
        sock.bind(("127.0.0.1", 0))
        dashboard_port = sock.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={**args, "labels": {LABEL: HOSTS[0]}, "dashboard_port": dashboard_port})
    for host in HOSTS[1:]:
        cluster.add_node(**args, labels={LABEL: host})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, time.perf_counter() - began


def ray_topology(directory: Path) -> Path:
    """The shipped default topology with its nodes on the Ray cluster's hosts."""
    from helix_jax.topology import default_topology_path

    raw = json.loads(Path(default_topology_path()).read_text())
    for node, host in zip(raw["nodes"], HOSTS):
        node["host"] = host
    path = directory / "cpu-small-ray.json"
    path.write_text(json.dumps(raw))
    return path


def time_to_ready(config: Any, codec: Any, env: dict[str, str], ray_address: str | None) -> float:
    from helix_jax.runtime.deploy import LocalDeployment
    from helix_jax.runtime.ray_launch import RayDeployment

    began = time.perf_counter()
    dep = (
        RayDeployment(config, codec, worker_env=env, ray_address=ray_address)
        if ray_address
        else LocalDeployment(config, codec, worker_env=env)
    )
    with dep:
        dep.wait_ready(timeout_s=1800)
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="no XLA cache: every bucket compiled")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    from helix_jax.cli.serve_cmds import serve_config

    env = {"HELIX_COMPILE_CACHE": "off"} if args.cold else {}
    cluster, ray_start_s = ray_cluster()
    out: dict = {"cold": args.cold, "ray_cluster_start_s": ray_start_s, "rounds": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            configs = {
                "local": serve_config(None, None, None, False, 1.0, "127.0.0.1", 0, None, 512, 10.0, secure=True),
                "ray": serve_config(ray_topology(Path(tmp)), None, None, False, 1.0, "127.0.0.1", 0, None, 512, 10.0, secure=True),
            }
            out["placement"] = {n: list(r) for n, r in configs["local"][0].placement.ranges.items()}
            print(f"[ready] default deployment {out['placement']}; Ray cluster of 3 nodes up in {ray_start_s:.1f} s", flush=True)
            for r in range(args.rounds):
                row: dict = {"load_1min": os.getloadavg()[0]}
                for how in ("local", "ray") if r % 2 == 0 else ("ray", "local"):
                    cfg, codec = configs[how]
                    row[how] = time_to_ready(cfg, codec, env, cluster.address if how == "ray" else None)
                row["load_1min_end"] = os.getloadavg()[0]
                out["rounds"].append(row)
                print(
                    f"  round {r + 1}: load {row['load_1min']:.2f}-{row['load_1min_end']:.2f}; local "
                    f"{row['local']:.1f} s, Ray {row['ray']:.1f} s",
                    flush=True,
                )
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    out["median"] = {how: statistics.median(row[how] for row in out["rounds"]) for how in ("local", "ray")}
    print(
        f"[ready] deploy-to-ready ({'cold' if args.cold else 'warm'} XLA cache), median of {args.rounds}: "
        f"local {out['median']['local']:.1f} s, Ray {out['median']['ray']:.1f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
