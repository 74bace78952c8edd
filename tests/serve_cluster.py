"""The deployment that tests/test_serve_deploy.py and tests/test_serve_limits.py share, imported
as fixtures: the real coordinator, workers, wire format and scheduler, as threads over loopback
ZeroMQ (helix_jax.testing.InProcessCluster), with FakeRunners in place of the layers, so every
stream is known in advance (`expected`, from `fake_generation`). The shipped tiny topology,
tests/conftest.py's partial-inference placement, small KV budgets (two whole sequences per
worker, so bursts must queue) and a queue one client fills. One cluster per test module.
"""

from __future__ import annotations

import pytest

from helix_jax.client import Client
from helix_jax.model.sampling_params import SamplingParams
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import Placement
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.testing import InProcessCluster, fake_generation
from helix_jax.topology import load_topology, tiny_topology_path

MAX_SEQ_LEN = 128
KV_TOKENS = 2 * MAX_SEQ_LEN  # two whole sequences per worker: bursts must queue
QUEUE_LIMIT = 40
PROMPTS = ["Hello, helix!", "max-flow", "A100 + T4 + L4", "x"]
TOPOLOGY = load_topology(tiny_topology_path())
TOKENIZER = load_tokenizer(TOPOLOGY.model)


@pytest.fixture(scope="module")
def deployment(cpu_small_placement: Placement):
    """cpu_small_placement (tests/conftest.py) served by three worker threads."""
    cfg = ServeConfig(
        TOPOLOGY,
        cpu_small_placement,
        TOPOLOGY.model,
        weights="random:0",
        max_seq_len=MAX_SEQ_LEN,
        kv_tokens=KV_TOKENS,
        queue_limit=QUEUE_LIMIT,
        client_queue_limit=QUEUE_LIMIT,  # one client fills it
        heartbeat_timeout_s=120,
        layer_loop="scan",  # FakeRunners ignore it; test_serve_deploy.py checks that it reaches them
    )  # frozen runners (a hung GPU) must not be timed out here
    with InProcessCluster(cfg, TOKENIZER) as cluster:
        yield cluster.wait_ready()


@pytest.fixture(scope="module")
def client(deployment: InProcessCluster):
    with Client(deployment.client_endpoint, timeout_s=60) as c:
        yield c


def ids(text: str) -> list[int]:
    return TOKENIZER.encode(text)


def expected(deployment: InProcessCluster, prompt: str | list[int], max_tokens: int, sampling: SamplingParams | None = None) -> list[int]:
    """The stream every route gives (FakeRunners: `fake_generation`, the deployment's stop ids)."""
    prompt_ids = ids(prompt) if isinstance(prompt, str) else prompt
    assert deployment.coordinator is not None
    return fake_generation(prompt_ids, max_tokens, TOPOLOGY.model.vocab_size, sampling, deployment.coordinator.stop_ids)
