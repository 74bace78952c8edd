"""`helix-jax deploy --ray` with the default model, as a user runs it, on a local Ray cluster.

The cluster: three Ray nodes on 127.0.0.1 (`ray.cluster_utils.Cluster`, one CPU each), labelled
helix-jax/host=h0/h1/h2. The deployment: SmolLM2-135M-Instruct on topologies/fixtures/ray-smollm2.json
with its placement (what the planner gives that topology): cpu-0 on h0 holds all 30 layers beside
the chain cpu-1 [0,15) on h1 -> cpu-2 [15,30) on h2, whose ranges are therefore redundant.

One cluster and one `helix-jax deploy --ray` child process serve the whole module, in order:
placement on the right Ray nodes (Ray's state API), 16 concurrent greedy requests through the
connection file equal to the model run whole in this process, the same answers to the official
`openai` client on deploy's HTTP API (chat, streamed chat, token-id completions all at once; the
shipped default deployment's answers: tests/test_demo_cli.py), a killed worker restarted by Ray
and rejoining, the Ray node of a redundant range removed while requests are in flight, and
Ctrl-C: exit 0 and no actor or worker process left. Every wait is for an event (a printed line,
a state of the coordinator's `stats`, of Ray's actor table); timeouts only turn hangs into
failures. Needs the cached model (`make install`; skipped otherwise) and Ray (the test extras;
under CI=true a missing Ray fails the module instead of skipping it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from cli_run import Deploy

from helix_jax.errors import CheckpointError
from helix_jax.models import model_file
from helix_jax.testing import wait_until

# Ray's node IP detection would pick this machine's external address: keep everything on 127.0.0.1
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
if os.environ.get("CI") == "true":
    import openai
    import ray  # ray is in the test extras: under CI its absence is a failure, not a skip
else:
    ray = pytest.importorskip("ray")
    openai = pytest.importorskip("openai")
try:
    model_file("smollm2-135m")
except CheckpointError as exc:
    pytest.skip(str(exc), allow_module_level=True)

from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from helix_jax.client import Client  # noqa: E402
from helix_jax.runtime.ray_launch import ACTOR_PREFIX, LABEL, match_ray_nodes  # noqa: E402
from helix_jax.runtime.workflow import StepFailed  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "topologies" / "fixtures"
TOPOLOGY, PLACEMENT = FIXTURES / "ray-smollm2.json", FIXTURES / "ray-smollm2.placement.json"
HOSTS = {"cpu-0": "h0", "cpu-1": "h1", "cpu-2": "h2"}
MAX_TOKENS = 16  # the answers of conftest.smollm2_answers


@pytest.fixture(scope="module")
def cluster():
    """Three labelled Ray nodes on 127.0.0.1, whose workers run at niceness 0 (the raylets'
    environment), not Ray's default 15, which lets any other job on a shared machine starve them."""
    node_args: dict[str, Any] = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 100 << 20}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_worker_niceness", "0")
        # a dashboard port of its own: another Ray cluster on this machine may hold the default 8265
        c = Cluster(initialize_head=True, head_node_args={**node_args, "labels": {LABEL: "h0"}, "dashboard_port": free_port()})
        nodes = {"h0": c.head_node}
        for host in ("h1", "h2"):
            nodes[host] = c.add_node(**node_args, labels={LABEL: host})
    try:
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def deploy(cluster, tmp_path_factory: pytest.TempPathFactory):
    """`helix-jax deploy ray-smollm2.json --ray ADDRESS` in a child process, once it serves:
    (the process, its connection file, its deployment.json, its HTTP API's base URL)."""
    state = tmp_path_factory.mktemp("ray-state")
    dep = Deploy(
        [
            str(TOPOLOGY),
            "--placement",
            str(PLACEMENT),
            "--ray",
            cluster[0].address,
            "--state-dir",
            str(state),
            "--max-seq-len",
            "256",
            "--layer-loop",
            "scan",  # compiles in a fifth of the unrolled time, as tests/conftest.py's smollm2_answers does
            "--kv-tokens",
            str(16 * 256),
            "--max-batch",
            "16",  # the most requests this module sends at once: decode programs for 1, 4 and 16 rows
            "--restart-workers",
            "1",
            "--heartbeat-timeout",
            "120",
        ]
    )  # a worker is paused (SIGSTOP) while a Ray node goes
    try:
        url = dep.wait_for(r"HTTP API: (http://\S+)/v1", timeout_s=900)
        dep.wait_for(r"client endpoint (tcp://\S+)")
        connection = Path(dep.wait_for(r"connection file: (\S+)"))
        yield dep, connection, state / "deployment.json", url
    finally:
        dep.kill()


@pytest.fixture(scope="module")
def client(deploy):
    with Client.from_connection_file(deploy[1], timeout_s=600) as c:
        yield c


def records(deploy) -> dict[str, dict[str, Any]]:
    """deployment.json's per-node entries: host, launcher, Ray node and actor ids, pid, log."""
    return json.loads(deploy[2].read_text())["nodes"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def helix_actors(cluster, **filters: str) -> list[Any]:
    """Our actors in Ray's actor table (asked of this cluster by address: without one, the state
    API asks the Ray cluster started last on this machine, which may be another's)."""
    found = list_actors(address=cluster[0].address, filters=[(k, "=", v) for k, v in filters.items()], detail=True)
    return [a for a in found if (a.name or "").startswith(ACTOR_PREFIX)]


def route_nodes(result: Any) -> set[str]:
    return {hop[0] for hop in result.route}


def test_each_worker_runs_on_the_ray_node_of_its_host(deploy, cluster) -> None:
    labels = {n["NodeID"]: n["Labels"].get(LABEL) for n in ray.nodes() if n["Alive"]}
    actors = {a.name: a for a in helix_actors(cluster, state="ALIVE")}
    assert sorted(actors) == [f"{ACTOR_PREFIX}ray-smollm2-{node}" for node in sorted(HOSTS)]
    nodes = records(deploy)
    for node, host in HOSTS.items():
        actor = actors[f"{ACTOR_PREFIX}ray-smollm2-{node}"]
        assert labels[actor.node_id] == host, (node, host)
        assert nodes[node]["launcher"] == "ray" and nodes[node]["host"] == host
        assert nodes[node]["ray_node_id"] == actor.node_id and nodes[node]["actor_id"] == actor.actor_id
        assert Path(nodes[node]["log"]).is_file()


def test_a_host_without_a_ray_node_is_a_clear_launch_error(cluster) -> None:
    with pytest.raises(
        StepFailed,
        match=r"^launch: node cpu-9 on host h9: no Ray node with label "
        r"helix-jax/host=h9; Ray nodes seen: .*helix-jax/host=h0",
    ):
        match_ray_nodes({"cpu-9": "h9"}, ray.nodes())


def test_sixteen_concurrent_greedy_requests_equal_the_local_model(client, smollm2_answers) -> None:
    _, prompts, answers = smollm2_answers
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda p: client.generate(p, max_tokens=MAX_TOKENS), prompts * 2))
    for result, want in zip(results, answers * 2):
        assert list(result.ids) == want
    assert {frozenset(route_nodes(r)) for r in results} == {frozenset({"cpu-0"}), frozenset({"cpu-1", "cpu-2"})}


def test_the_openai_client_gets_the_same_answers(deploy, smollm2_answers) -> None:
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.modelconfig import preset

    questions, prompts, expected = smollm2_answers
    tokenizer = load_tokenizer(preset("smollm2-135m"), "smollm2-135m")
    client = openai.OpenAI(base_url=f"{deploy[3]}/v1", api_key="unused", max_retries=0, timeout=600)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]
    chat = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": questions[0]}], max_tokens=MAX_TOKENS, temperature=0
    )
    assert chat.choices[0].message.content == tokenizer.decode(expected[0])
    assert "Paris" in chat.choices[0].message.content and chat.choices[0].finish_reason == "stop"
    assert chat.usage.prompt_tokens == len(prompts[0]) and chat.usage.completion_tokens == len(expected[0])
    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": questions[0]}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == chat.usage.total_tokens

    async def completions() -> list:  # token-id prompts, all at once
        aclient = openai.AsyncOpenAI(base_url=f"{deploy[3]}/v1", api_key="unused", max_retries=0, timeout=600)
        return await asyncio.gather(
            *(aclient.completions.create(model="smollm2-135m", prompt=p, max_tokens=MAX_TOKENS, temperature=0) for p in prompts)
        )

    for res, want in zip(asyncio.run(completions()), expected):
        assert res.choices[0].text == tokenizer.decode(want)


def test_a_killed_worker_is_restarted_by_ray_and_rejoins(deploy, cluster, client, smollm2_answers) -> None:
    _, prompts, answers = smollm2_answers
    old = records(deploy)["cpu-2"]
    os.kill(old["pid"], signal.SIGKILL)  # its actor exits with it; Ray restarts the actor (max_restarts 1)
    wait_until(
        lambda: (
            client.stats()["rejoined"] == 1
            and client.stats()["nodes"]["cpu-2"]["in_service"] == 1
            and records(deploy)["cpu-2"]["pid"] != old["pid"]
        ),
        "cpu-2 back in service",
        600,
        0.2,
    )
    (actor,) = [a for a in helix_actors(cluster, state="ALIVE") if a.name.endswith("-cpu-2")]
    assert actor.num_restarts == 1 and actor.actor_id == old["actor_id"]
    assert actor.node_id == old["ray_node_id"]  # pinned: restarted on h2's Ray node
    assert "cpu-2" not in client.stats()["down_nodes"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: client.generate(p, max_tokens=MAX_TOKENS), prompts[:4]))
    assert [list(r.ids) for r in results] == answers[:4]
    assert any("cpu-2" in route_nodes(r) for r in results)


def test_losing_the_ray_node_of_a_redundant_range_keeps_serving(deploy, cluster, client, smollm2_answers) -> None:
    c, nodes = cluster
    _, prompts, answers = smollm2_answers
    before = client.stats()
    downstream = psutil.Process(records(deploy)["cpu-2"]["pid"])
    downstream.suspend()  # holds every request of the chain cpu-1 -> cpu-2 in flight
    try:
        with ThreadPoolExecutor(len(prompts)) as pool:
            futures = [pool.submit(client.generate, p, max_tokens=MAX_TOKENS) for p in prompts]

            def admitted() -> bool:
                s = client.stats()
                return s["waiting"] == 0 and s["running"] + s["completed"] - before["completed"] == len(prompts)

            wait_until(admitted, "every request admitted", 120, 0.05)
            assert client.stats()["running"] >= 1  # the chain's requests cannot finish
            c.remove_node(nodes["h1"])  # cpu-1's Ray node: its actor and worker go with it
            wait_until(lambda: "cpu-1" in client.stats()["down_nodes"], "cpu-1 out of service", 120, 0.05)
            downstream.resume()
            results = [f.result() for f in futures]
    finally:
        downstream.resume()
    assert [list(r.ids) for r in results] == answers
    after = client.stats()
    assert after["resumed"] > before["resumed"] and "Ray actor of cpu-1 died" in after["down_nodes"]["cpu-1"]
    later = client.generate(prompts[0], max_tokens=MAX_TOKENS)
    assert list(later.ids) == answers[0] and "cpu-1" not in route_nodes(later)


def test_ctrl_c_stops_deploy_and_leaves_no_actor_or_worker(deploy, cluster) -> None:
    dep = deploy[0]
    workers = [psutil.Process(r["pid"]) for r in records(deploy).values() if psutil.pid_exists(r["pid"])]
    assert "stopped" in dep.interrupt()  # exit code 0
    wait_until(lambda: helix_actors(cluster, state="ALIVE") == [], "no helix actor alive", 60, 0.2)
    wait_until(
        lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), "every worker process gone", 60, 0.2
    )
