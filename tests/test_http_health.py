"""/ready and /metrics show the deployment's health: messages dropped (by node and reason),
requests failed by containment (by cause), nodes out of service, rejoins, and the restarts
taken and left per node. Each event is provoked on the in-process cluster (FakeRunners; forged
and broken messages sent straight to the coordinator's and a worker's data sockets; runners
frozen instead of slept on), then /metrics is parsed with prometheus_client and /ready read.

Placement (tests/conftest.py): cpu-0 [0, 6) and cpu-2 [0, 4) enter, cpu-1 [4, 8) is the only exit.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from helix_jax.client import Client
from helix_jax.errors import RequestError
from helix_jax.http import Backend, HttpServer, bind_socket, create_app
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import Placement
from helix_jax.runtime import wire
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.runtime.restarts import RestartBudget
from helix_jax.testing import InProcessCluster, fake_generation
from helix_jax.topology import load_topology, tiny_topology_path

TOPOLOGY = load_topology(tiny_topology_path())
VOCAB = TOPOLOGY.model.vocab_size
TOKENIZER = load_tokenizer(TOPOLOGY.model)


@pytest.fixture(scope="module")
def cluster(cpu_small_placement: Placement):
    cfg = ServeConfig(
        TOPOLOGY, cpu_small_placement, TOPOLOGY.model, max_seq_len=128, kv_tokens=8 * 128, heartbeat_timeout_s=600
    )  # frozen runners send no heartbeats; kills are reported
    with InProcessCluster(cfg, TOKENIZER) as c:
        yield c.wait_ready()


@pytest.fixture(scope="module")
def server(cluster: InProcessCluster):
    app = create_app(Backend(cluster.client_endpoint, TOKENIZER))
    with HttpServer(app, bind_socket("127.0.0.1", 0)).start() as srv:
        yield srv


@pytest.fixture(scope="module")
def client(cluster: InProcessCluster):
    with Client(cluster.client_endpoint, timeout_s=60) as c:
        yield c


def scrape(server: HttpServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def send(endpoint: str, *messages: list[bytes]) -> None:
    push = wire.configure(zmq.Context.instance().socket(zmq.PUSH))
    push.connect(endpoint)
    for frames in messages:
        push.send_multipart(frames)
    push.close(linger=2000)


def serves(cluster: InProcessCluster, client: Client) -> None:
    ids = [256, 72, 105]
    assert cluster.coordinator is not None
    assert list(client.generate(ids, max_tokens=6).ids) == fake_generation(ids, 6, VOCAB, stop_ids=cluster.coordinator.stop_ids)


def test_the_first_scrape_shows_every_cause_at_zero(server: HttpServer) -> None:
    m = scrape(server)
    for cause in ("abort", "repeated_failure", "no_route", "resume_timeout"):
        assert sample(m, "helix_requests_failed_total", cause=cause) == 0
    assert sample(m, "helix_nodes_out_of_service") == 0 and sample(m, "helix_requests_resuming") == 0
    for node in ("cpu-0", "cpu-1", "cpu-2"):
        assert sample(m, "helix_node_rejoins_total", node=node) == 0
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["status"] == "ready" and ready["health"]["out_of_service"] == {}
    assert ready["health"]["restarts"] == {}  # no restart budget: nothing restarts this cluster's workers


def test_dropped_messages_are_counted_by_node_and_reason(cluster: InProcessCluster, client: Client, server: HttpServer) -> None:
    coord = cluster.coordinator
    assert coord is not None
    runner = cluster.runner("cpu-1")
    runner.freeze()  # a request waits at its exit hop while the forgeries arrive
    stream = client.stream([256, 65], max_tokens=5)
    cluster.wait_until(lambda: coord.stats()["in_flight"] == 1, "the request in flight")
    rid = next(iter(coord._live))
    sampled = [
        wire.encode(wire.make("sampled", request_id=rid, index=0, token_id=VOCAB, node="cpu-1")),
        wire.encode(wire.make("sampled", request_id=rid, index=0, token_id=7, node="cpu-0")),
        wire.encode(wire.make("sampled", request_id=rid, index=0, token_id=2**31, node="cpu-1")),
        [b"not msgpack"],
    ]
    before = coord.dropped
    send(coord.data_endpoint, *sampled)
    cluster.wait_until(lambda: coord.dropped == before + 4, "the forgeries refused")  # before the real token
    hidden = np.full((1, TOPOLOGY.model.hidden_size), np.nan, np.float32)  # [tokens, hidden]
    step = wire.make(
        "step",
        [hidden],
        request_id="r-forged",
        route=[["cpu-0", 0, 4], ["cpu-1", 4, 8]],
        hop=1,
        position=0,
        index=0,
        sampling=dict(temperature=0.0, top_k=0, top_p=1.0, seed=0),
    )
    send(coord.worker_data_endpoints["cpu-1"], wire.encode(step), [b"junk"])
    runner.thaw()  # cpu-1 reads its socket again, and reports its drops with its next heartbeat
    assert [t.token_id for t in stream] == fake_generation([256, 65], 5, VOCAB, stop_ids=coord.stop_ids)

    def dropped() -> dict:
        return client.stats()["health"]["dropped"]

    cluster.wait_until(lambda: sum(dropped().get("cpu-1", {}).values()) == 2, "cpu-1's heartbeat with its drops")
    m = scrape(server)
    assert sample(m, "helix_messages_dropped_total", node="coordinator", reason="out_of_range_token") == 2
    assert sample(m, "helix_messages_dropped_total", node="coordinator", reason="forged") == 1
    assert sample(m, "helix_messages_dropped_total", node="coordinator", reason="malformed") == 1
    assert sample(m, "helix_messages_dropped_total", node="cpu-1", reason="bad_hidden_state") == 1
    assert sample(m, "helix_messages_dropped_total", node="cpu-1", reason="malformed") == 1
    assert httpx.get(f"{server.url}/ready").json()["health"]["dropped"] == {
        "coordinator": {"out_of_range_token": 2, "forged": 1, "malformed": 1},
        "cpu-1": {"bad_hidden_state": 1, "malformed": 1},
    }
    serves(cluster, client)


def test_an_abort_is_counted_as_a_containment_failure(cluster: InProcessCluster, client: Client, server: HttpServer) -> None:
    for _ in range(2):  # the batch, then the item alone
        cluster.runner("cpu-1").fail_next(OverflowError("Python int too large to convert to C int"))
    with pytest.raises(RequestError, match="node cpu-1 could not run this request"):
        client.generate([256, 66], max_tokens=5)
    assert sample(scrape(server), "helix_requests_failed_total", cause="abort") == 1
    serves(cluster, client)


def test_nodes_out_of_service_restarts_and_rejoins(cluster: InProcessCluster, client: Client, server: HttpServer) -> None:
    """cpu-2 is lost (the deployment would restart it: its budget is shown) and rejoins; then
    the only exit is lost with a request in flight (failed: no route; /ready 503 with the
    health beside the error) and rejoins."""
    coord = cluster.coordinator
    assert coord is not None
    now = [0.0]
    budget = RestartBudget(3, window_s=600.0, clock=lambda: now[0])
    coord.health.restart_budget = budget  # as LocalDeployment does when it restarts workers
    cluster.kill("cpu-2")
    assert budget.take("cpu-2")  # the deployment restarts it
    m = scrape(server)
    assert sample(m, "helix_nodes_out_of_service") == 1 and sample(m, "helix_node_in_service", node="cpu-2") == 0
    assert sample(m, "helix_node_restarts_total", node="cpu-2") == 1
    assert sample(m, "helix_node_restart_budget_left", node="cpu-2") == 2
    assert sample(m, "helix_node_restart_budget_left", node="cpu-0") == 3
    ready = httpx.get(f"{server.url}/ready")
    assert ready.status_code == 200  # cpu-0 and cpu-1 still cover every layer
    assert list(ready.json()["health"]["out_of_service"]) == ["cpu-2"]
    assert ready.json()["health"]["restarts"]["cpu-2"] == {"taken": 1, "left": 2}
    cluster.start_worker("cpu-2")
    cluster.wait_until(lambda: not client.stats()["down_nodes"], "cpu-2 back")
    m = scrape(server)
    assert sample(m, "helix_node_rejoins_total", node="cpu-2") == 1 and sample(m, "helix_nodes_out_of_service") == 0
    now[0] = 600.0  # the restart has left the window: the budget is full again
    assert sample(scrape(server), "helix_node_restart_budget_left", node="cpu-2") == 3

    cluster.runner("cpu-1").freeze()
    stream = client.stream([256, 67], max_tokens=5)
    cluster.wait_until(lambda: coord.stats()["in_flight"] == 1, "the request in flight")
    cluster.kill("cpu-1")
    with pytest.raises(RequestError, match="node cpu-1 went out of service"):
        list(stream)
    ready = httpx.get(f"{server.url}/ready")
    assert ready.status_code == 503 and "layers 6-7 have no node in service" in ready.json()["error"]["message"]
    assert list(ready.json()["health"]["out_of_service"]) == ["cpu-1"]
    m = scrape(server)
    assert sample(m, "helix_requests_failed_total", cause="no_route") == 1 and sample(m, "helix_ready") == 0
    cluster.start_worker("cpu-1")
    cluster.wait_until(lambda: client.stats()["ready"], "cpu-1 back")
    serves(cluster, client)
    assert sample(scrape(server), "helix_node_rejoins_total", node="cpu-1") == 1
