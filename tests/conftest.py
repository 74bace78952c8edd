"""Fixtures shared by several test files.

The run's XLA programs go to one fresh compile cache (helix_jax/model/compile_cache.py) that
this process and every worker it starts share, so each step program compiles once per run and
the user's own cache is neither read nor written; HELIX_COMPILE_CACHE set by the caller wins.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if "HELIX_COMPILE_CACHE" not in os.environ:  # before anything imports jax or starts a worker
    _cache = tempfile.mkdtemp(prefix="helix-xla-")
    os.environ["HELIX_COMPILE_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the tiny models' programs too

# under `pytest -n 2` (make test) each xdist worker computes on one thread (XLA's Eigen pool and
# torch's), so the two workers and the deployments they start share the two cores without
# oversubscribing them; deploy already gives each local worker process one XLA thread
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# what one xdist worker computed that the other may need too (tests/conftest.py's `shared_result`)
if "HELIX_TEST_SHARED" not in os.environ:
    os.environ["HELIX_TEST_SHARED"] = tempfile.mkdtemp(prefix="helix-test-shared-")
    atexit.register(shutil.rmtree, os.environ["HELIX_TEST_SHARED"], ignore_errors=True)

# deployments started without --state-dir keep their keys here, one directory per process (so
# the two xdist workers never share one), not under the user's ~/.cache
os.environ["HELIX_DEPLOYMENTS"] = tempfile.mkdtemp(prefix="helix-deployments-")
atexit.register(shutil.rmtree, os.environ["HELIX_DEPLOYMENTS"], ignore_errors=True)

import pytest

from helix_jax.placement import FlowEdge, Placement
from helix_jax.topology import Topology, load_topology, tiny_topology_path, topology_from_dict


@pytest.fixture
def nic_pair() -> Topology:
    """a (no NIC limit) and b, whose 2560 B/s NIC passes 10 tiny-model activation vectors/s
    (256 bytes each) each way; both types take explicit capacity tables."""
    return topology_from_dict(
        {
            "model": "tiny",
            "gpu_types": {
                "g": {"max_layers": 2, "capacity_tokens_per_s": [100, 100]},
                "n": {"max_layers": 4, "capacity_tokens_per_s": [100, 100, 100, 100], "nic_bandwidth": 2560},
            },
            "nodes": [{"name": "a", "gpu": "g"}, {"name": "b", "gpu": "n"}],
        }
    )


@pytest.fixture(scope="session")
def cpu_small_placement() -> Placement:
    """The deployment tests' placement of the shipped small CPU topology: cpu-2 [0,4) and cpu-0
    [0,6) enter, cpu-1 [4,8) is the only exit; cpu-2 -> cpu-0 runs only [4,6)."""
    flows = (
        FlowEdge("coordinator", "cpu-0", 100),
        FlowEdge("coordinator", "cpu-2", 100),
        FlowEdge("cpu-2", "cpu-1", 60),
        FlowEdge("cpu-2", "cpu-0", 40),
        FlowEdge("cpu-0", "cpu-1", 140),
        FlowEdge("cpu-1", "coordinator", 200),
    )
    return Placement("cpu-small", 8, {"cpu-0": (0, 6), "cpu-1": (4, 8), "cpu-2": (0, 4)}, flows)


@pytest.fixture(scope="session")
def reference():
    """generate_local on the deployments' seeded weights ("random:0"), memoised per (prompt
    ids, sampling): `reference(ids, max_tokens, sampling=None) -> list[int]`."""
    from helix_jax.model import random_stage_weights
    from helix_jax.model.generate import generate_local

    config = load_topology(tiny_topology_path()).model
    weights = random_stage_weights(config, 0, config.num_layers, 0)
    memo: dict = {}

    def ref(ids: list[int], max_tokens: int, sampling=None) -> list[int]:
        # greedy and seeded sampling are both prefix-consistent: one long run serves every length
        key = (tuple(ids), sampling)
        if key not in memo or len(memo[key][1]) < max_tokens and memo[key][0] < max_tokens:
            n = max(max_tokens, 12)
            memo[key] = (n, generate_local(config, weights, ids, n, sampling))
        return memo[key][1][:max_tokens]

    return ref


def smollm2_weights(layer_loop: str):
    """(config, all 30 layers' weights, tokenizer) of the cached SmolLM2-135M-Instruct; skips when
    it is not cached."""
    from helix_jax.errors import CheckpointError
    from helix_jax.model import load_stage_weights
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.modelconfig import preset
    from helix_jax.models import model_file

    try:
        model_file("smollm2-135m")
    except CheckpointError as exc:
        pytest.skip(str(exc))
    config = preset("smollm2-135m")
    weights = load_stage_weights(config, 0, config.num_layers, "smollm2-135m", layer_loop)
    return config, weights, load_tokenizer(config, "smollm2-135m")


def smollm2_local(layer_loop: str, return_logits: bool = False):
    """(LocalModel, tokenizer) of the cached SmolLM2-135M-Instruct; skips when it is not cached."""
    from helix_jax.model.generate import LocalModel

    config, weights, tokenizer = smollm2_weights(layer_loop)
    return LocalModel(config, weights, max_seq_len=256, return_logits=return_logits), tokenizer


def import_when_used(name: str):
    """Module `name`, imported at its first attribute access; the calling test module is skipped
    (as with pytest.importorskip) when it is not installed. Both xdist workers import every test
    file, and only the one that runs these tests should pay for importing torch or transformers."""
    import importlib
    import importlib.util
    import types

    if importlib.util.find_spec(name) is None:
        pytest.skip(f"could not import {name!r} (the test extras)", allow_module_level=True)

    class _OnFirstUse(types.ModuleType):
        def __getattr__(self, attr: str):
            if attr.startswith("_"):  # what pytest's collection asks of each module attribute (__test__, _mock_name)
                raise AttributeError(attr)
            return getattr(importlib.import_module(name), attr)

    return _OnFirstUse(name)


@pytest.fixture(scope="session")
def transformers_gguf():
    """transformers loading GGUF files (the reference of the real-model tests), parsing each file
    once per session: its loader constructs `gguf.GGUFReader` once for the config, once for the
    tensors and once for the tokenizer, and builds `gguf.get_tensor_name_map(arch, layers)`
    once per module of the model (397 times for SmolLM2), 24 s of the 2-core machine's CPU in
    all. Both are rebound to cached equals for the session: helix_jax's shared reader (the same
    fields and tensors, gguf_reader.py) and the same name map, built once. What transformers
    computes from them is unchanged."""
    import functools

    import gguf

    from helix_jax.model.gguf_reader import open_reader

    patch = pytest.MonkeyPatch()
    patch.setattr(gguf, "GGUFReader", lambda path, mode="r": open_reader(path))
    patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))
    yield
    patch.undo()


SMOLLM2_QUESTIONS = (
    "What is the capital of France?",
    "What color is the sky on a clear day?",
    "What do bees make?",
    "How many days are in a week?",
    "Name a fruit that is yellow.",
    "What is water made of?",
    "Who wrote Romeo and Juliet?",
    "What is the opposite of hot?",
)
SMOLLM2_MAX_TOKENS = 16


def shared_result(name: str, compute):
    """`compute()` (JSON-serialisable) once per test run: the first process to ask computes it
    while holding a lock; the other xdist worker waits for it and reads the file."""
    import fcntl
    import json
    from pathlib import Path

    path = Path(os.environ["HELIX_TEST_SHARED"]) / f"{name}.json"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            path.with_suffix(".tmp").write_text(json.dumps(compute()))
            path.with_suffix(".tmp").rename(path)
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def smollm2_answers():
    """(questions, chat-templated prompt ids, greedy answer ids of at most 16 tokens) of the whole
    SmolLM2 run in this process: what every deployment of it must return (tests/test_demo_cli.py,
    tests/test_ray_deploy.py), computed once per run (the two files usually run on different
    xdist workers). One StageEngine holds all 30 layers; each prompt is prefilled alone, then the
    answers decode together, one row each (the same tokens as one prompt at a time through
    LocalModel, in half the CPU: 16 steps instead of 128 of a bandwidth-bound model). Its layers
    are scanned, as those deployments' are (a fifth of the unrolled compile time; unrolled:
    tests/test_gguf_model.py)."""

    def compute() -> list[list[list[int]]]:
        import numpy as np

        from helix_jax.model import SamplingParams, StageEngine, StepInput

        config, weights, tokenizer = smollm2_weights("scan")
        prompts = [tokenizer.encode_chat([{"role": "user", "content": q}]) for q in SMOLLM2_QUESTIONS]
        n, chunk, stops = len(prompts), 64, set(tokenizer.stop_token_ids)
        engine = StageEngine(
            config, 0, config.num_layers, weights, max_slots=n, max_seq_len=256,
            prefill_buckets=(chunk,), decode_buckets=(n,), prefill_batch_buckets=(1,),
        )  # fmt: skip
        answers: list[list[int]] = []
        for i, prompt in enumerate(prompts):
            engine.add_request(i, SamplingParams())
            for begin in range(0, len(prompt), chunk):
                piece = np.asarray(prompt[begin : begin + chunk], np.int32)
                (out,) = engine.step([StepInput(i, 0, begin, token_ids=piece, sample=begin + chunk >= len(prompt))])
            answers.append([out.next_token])
        active = [i for i in range(n) if answers[i][-1] not in stops]
        while active:
            step = [StepInput(i, 0, len(prompts[i]) + len(answers[i]) - 1, token_ids=np.asarray(answers[i][-1:], np.int32)) for i in active]
            for i, out in zip(active, engine.step(step)):
                answers[i].append(out.next_token)
            active = [i for i in active if answers[i][-1] not in stops and len(answers[i]) < SMOLLM2_MAX_TOKENS]
        return [prompts, answers]

    prompts, answers = shared_result("smollm2_answers", compute)
    return SMOLLM2_QUESTIONS, prompts, answers


# Files that start worker processes, Ray or the real model: under `pytest -n 2 --dist loadfile`
# (make test) each file runs whole on one xdist worker (its module fixtures built once), and these
# go first, longest first (as measured in the suite), so that no long file starts last. The tiny
# deployments of deploy_cli, serve_security and http_drain share their shapes: the first
# (deploy_cli) compiles, and the others, after it, load from the run's compile cache. xdist hands
# a worker its next file as soon as 2 or fewer of its current file's tests are left, so a file of
# 2 tests (demo_cli) comes with the file after it: deploy_cli goes third, to the worker that ends
# test_gguf_model, and serve_security, queued behind demo_cli on the other, starts after it.
HEAVY_FILES = (
    "test_ray_deploy.py",
    "test_gguf_model.py",
    "test_deploy_cli.py",
    "test_demo_cli.py",
    "test_serve_security.py",
    "test_paged_kv.py",
    "test_model_engine.py",
    "test_compile_cache.py",
    "test_deploy_workflow.py",
    "test_gpu_checks.py",
    "test_http_drain.py",
    "test_serve_failures.py",
    "test_model_generate.py",
    "test_model_checkpoint.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return HEAVY_FILES.index(name) if name in HEAVY_FILES else len(HEAVY_FILES)

    items.sort(key=rank)  # stable: the order within a file is kept
