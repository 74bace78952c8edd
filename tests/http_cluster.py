"""The deployment and front end that the HTTP API tests share (tests/test_http_api.py,
tests/test_http_serving.py), imported as fixtures: one InProcessCluster (the real coordinator,
workers and wire as threads, FakeRunners for the layers of tiny-8, on the shipped small CPU
topology) per test module, one front end on 127.0.0.1, port 0, and helpers to predict
answers (`expected`, from `fake_generation`), read /metrics and wait for the deployment to be
idle. Nothing here waits on the clock: every wait is on an event or a bounded poll.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helix_jax.client import Client
from helix_jax.http import Backend, HttpServer, bind_socket, create_app
from helix_jax.model.tokenizer import ByteTokenizer
from helix_jax.modelconfig import TINY_EOS
from helix_jax.placement import Placement
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.testing import InProcessCluster, fake_generation
from helix_jax.testing.waiting import wait_until
from helix_jax.topology import load_topology, tiny_topology_path

MAX_SEQ_LEN = 128
QUEUE_LIMIT = 40
API_KEY = "sk-helix-test"
MODEL = "tiny-8"
PROMPTS = ["Hello, helix!", "max-flow", "A100 + T4 + L4", "x"]


TOK = ByteTokenizer()  # with its built-in ChatML template


@pytest.fixture(scope="module")
def deployment(cpu_small_placement: Placement):
    topo = load_topology(tiny_topology_path())
    cfg = ServeConfig(
        topo,
        cpu_small_placement,
        topo.model,
        weights="random:0",
        max_seq_len=MAX_SEQ_LEN,
        kv_tokens=4 * MAX_SEQ_LEN,
        queue_limit=QUEUE_LIMIT,
        client_queue_limit=QUEUE_LIMIT,
        heartbeat_timeout_s=600.0,
    )  # test_queue_full freezes the workers
    with InProcessCluster(cfg, TOK) as cluster:
        yield cluster.wait_ready()


@pytest.fixture(scope="module")
def reference():
    """The deployment's greedy tokens (overrides conftest's real-model `reference`)."""
    vocab = load_topology(tiny_topology_path()).model.vocab_size
    return lambda ids, max_tokens, sampling=None: fake_generation(ids, max_tokens, vocab, sampling)


def start_front_end(dep: InProcessCluster, api_key: str | None = API_KEY) -> HttpServer:
    """A front end whose key may use the whole queue (32 concurrent requests here are one user's;
    the share per key: tests/test_http_tenants.py)."""
    app = create_app(Backend(dep.client_endpoint, TOK), api_key=api_key, key_queue_share=QUEUE_LIMIT)
    return HttpServer(app, bind_socket("127.0.0.1", 0)).start()


@pytest.fixture(scope="module")
def server(deployment: InProcessCluster):
    with start_front_end(deployment) as srv:
        yield srv


@pytest.fixture(scope="module")
def zmq_client(deployment: InProcessCluster):
    with Client(deployment.client_endpoint, timeout_s=180) as c:
        yield c


@pytest.fixture(scope="module")
def oai(server: HttpServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def expected(reference, ids: list[int], max_tokens: int, stop: str | None = None) -> tuple[str, int, str]:
    """(text, completion tokens, finish reason) of greedy generate_local."""
    out = reference(ids, max_tokens)
    if TINY_EOS in out:
        out = out[: out.index(TINY_EOS) + 1]
    text = TOK.decode(out)
    if stop is not None and stop in text:
        return text[: text.index(stop)], -1, "stop"
    return text, len(out), "stop" if out[-1] == TINY_EOS else "length"


def metrics(server: HttpServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def wait_idle(zmq_client: Client) -> dict[str, Any]:
    """Wait until nothing runs or waits and no KV is held; the coordinator's stats then."""
    seen: list[dict[str, Any]] = []

    def idle() -> bool:
        seen[:] = [stats := zmq_client.stats()]
        return stats["running"] == 0 and stats["waiting"] == 0 and all(n["kv_used_token_layers"] == 0 for n in stats["nodes"].values())

    wait_until(idle, "an idle deployment (nothing running or waiting, no KV held)", timeout_s=120)
    return seen[0]


def api_error(exc: openai.APIStatusError) -> dict[str, Any]:
    return exc.response.json()["error"]
