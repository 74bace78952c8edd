"""Workers as Ray actors on a local Ray cluster (ray.cluster_utils.Cluster: 3 Ray nodes on
127.0.0.1, one CPU each, labelled helix-jax/host=h0/h1/h2), tiny-8 on tests/conftest.py's
placement with the topology's nodes moved to those hosts: cpu-0 [0,6) on h0, cpu-1 [4,8) on h1,
cpu-2 [0,4) on h2 (cpu-2's range is redundant: cpu-0 also enters).

One cluster and one deployment serve the whole module, in order: placement on the right Ray
nodes, exact outputs, losing a Ray node, shutdown. The module takes about 50 s on a 2-core
machine, most of it Ray's start-up (about 15 s) and the workers' warm-up.
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# Ray's node IP detection would pick this machine's external address: keep everything on 127.0.0.1
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from helix_jax.client import Client  # noqa: E402
from helix_jax.model.tokenizer import load_tokenizer  # noqa: E402
from helix_jax.placement import Placement  # noqa: E402
from helix_jax.runtime.coordinator import ServeConfig  # noqa: E402
from helix_jax.runtime.ray_launch import ACTOR_PREFIX, LABEL, RayDeployment, match_ray_nodes  # noqa: E402
from helix_jax.runtime.security import DeploymentKeys  # noqa: E402
from helix_jax.runtime.workflow import StepFailed  # noqa: E402
from helix_jax.solver.maxflow import survivor_flows  # noqa: E402
from helix_jax.topology import load_topology, tiny_topology_path  # noqa: E402

HOSTS = {"cpu-0": "h0", "cpu-1": "h1", "cpu-2": "h2"}


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "labels": {LABEL: "h0"},
                                                      "node_ip_address": "127.0.0.1"})
    nodes = {"h0": c.head_node}
    for host in ("h1", "h2"):
        nodes[host] = c.add_node(num_cpus=1, labels={LABEL: host}, node_ip_address="127.0.0.1")
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def deployment(cluster, tmp_path_factory: pytest.TempPathFactory, cpu_small_placement: Placement):
    raw = json.loads(Path(tiny_topology_path()).read_text())
    for node in raw["nodes"]:
        node["host"] = HOSTS[node["name"]]
    path = tmp_path_factory.mktemp("topo") / "ray-tiny.json"
    path.write_text(json.dumps(raw))
    topo = load_topology(path)
    cfg = ServeConfig(topo, cpu_small_placement, topo.model, weights="random:0", max_seq_len=128,
                      kv_tokens=16 * 128, keys=DeploymentKeys.generate(cpu_small_placement.ranges),
                      flow_planner=functools.partial(survivor_flows, topo, cpu_small_placement))
    state = tmp_path_factory.mktemp("state")
    dep = RayDeployment(cfg, load_tokenizer(topo.model), log_dir=state / "logs", state_dir=state,
                        restart_workers=True, max_restarts=1, ray_address=cluster[0].address)
    with dep:
        dep.wait_ready(timeout_s=600)
        yield dep


def test_each_worker_runs_on_the_ray_node_of_its_host(deployment: RayDeployment) -> None:
    labels = {n["NodeID"]: n["Labels"].get(LABEL) for n in ray.nodes() if n["Alive"]}
    actors = {a.name: a for a in list_actors(filters=[("state", "=", "ALIVE")])}
    for node, host in HOSTS.items():
        actor = actors[f"{ACTOR_PREFIX}{deployment.config.topology.name}-{node}"]
        assert labels[actor.node_id] == host, (node, host)
    records = json.loads(deployment.deployment_file.read_text())["nodes"]
    for node, host in HOSTS.items():
        assert records[node]["launcher"] == "ray" and records[node]["host"] == host
        assert labels[records[node]["ray_node_id"]] == host and Path(records[node]["log"]).is_file()


def test_a_host_without_a_ray_node_is_a_clear_launch_error() -> None:
    with pytest.raises(StepFailed, match=r"^launch: node cpu-9 on host h9: no Ray node with label "
                                         r"helix-jax/host=h9; Ray nodes seen: .*helix-jax/host=h0"):
        match_ray_nodes({"cpu-9": "h9"}, ray.nodes())


def test_sixteen_concurrent_greedy_requests_equal_local_generate(deployment: RayDeployment, reference) -> None:
    prompts = [[65 + i, 66, 67 + i % 3] for i in range(16)]
    with Client.from_connection_file(deployment.connection_file, timeout_s=300) as client, \
            ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda p: client.generate(p, max_tokens=8), prompts))
    for prompt, res in zip(prompts, results):
        assert list(res.ids) == reference(prompt, 8), prompt
    assert {r.route[0][0] for r in results} == {"cpu-0", "cpu-2"}  # both entries carried some


def test_losing_the_ray_node_of_a_redundant_range_keeps_serving(deployment: RayDeployment, cluster,
                                                                reference) -> None:
    c, nodes = cluster
    prompts = [[70 + i, 71, 72] for i in range(8)]
    with Client.from_connection_file(deployment.connection_file, timeout_s=300) as client:
        streams = [client.stream(p, max_tokens=24) for p in prompts]
        tokens = [iter(s) for s in streams]
        firsts = [next(t) for t in tokens]  # every request is in flight
        c.remove_node(nodes["h2"])  # cpu-2's Ray node: its actor and worker die with it
        rest = [[t.token_id for t in it] for it in tokens]
        for prompt, first, tail in zip(prompts, firsts, rest):
            assert [first.token_id, *tail] == reference(prompt, 24), prompt
        assert "cpu-2" in deployment.coordinator.down_nodes
        later = client.generate([90, 91, 92], max_tokens=6)
        assert list(later.ids) == reference([90, 91, 92], 6) and later.route[0][0] == "cpu-0"


def test_shutdown_leaves_no_actor(deployment: RayDeployment) -> None:
    deployment.close()
    alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.name.startswith(ACTOR_PREFIX)]
    assert alive == []
