"""The shipped default end to end: SmolLM2-135M-Instruct deployed on the 3-worker CPU cluster
(partial inference on), reached through our ZeroMQ client and through the official `openai`
client on the HTTP front end. Outputs must equal the model run whole in this process.

One deployment serves the module. Needs the cached model (`make install`); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from helix_jax.errors import CheckpointError
from helix_jax.models import model_file

openai = pytest.importorskip("openai")
try:
    model_file("smollm2-135m")
except CheckpointError as exc:
    pytest.skip(str(exc), allow_module_level=True)

MAX_TOKENS = 16  # the answers of conftest.smollm2_answers


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from helix_jax.cli.serve_cmds import serve_config
    from helix_jax.runtime.deploy import LocalDeployment

    # KV for the 16 concurrent requests the tests send: decode buckets up to 16 rows, no more to compile
    cfg, tokenizer = serve_config(None, None, None, False, 1.0, "127.0.0.1", 0, 16 * 256, 256, 10.0)
    # the workers scan their layers: a fifth of the unrolled programs' compile time (so does the
    # whole-model reference, tests/conftest.py's smollm2_answers; unrolled: tests/test_gguf_model.py)
    cfg = dataclasses.replace(cfg, layer_loop="scan")
    assert cfg.model.name == "smollm2-135m" and len(cfg.placement.ranges) == 3
    with LocalDeployment(cfg, tokenizer, log_dir=tmp_path_factory.mktemp("workers")) as dep:
        dep.wait_ready(timeout_s=600)
        yield dep, tokenizer


@pytest.fixture(scope="module")
def local(smollm2_answers):
    """Greedy answers of the whole model run locally, one prompt at a time (conftest.smollm2_answers)."""
    questions, prompts, answers = smollm2_answers
    return questions, prompts, answers


def test_16_concurrent_requests_equal_the_local_model_token_for_token(deployment, local) -> None:
    from helix_jax.client import Client

    dep, tokenizer = deployment
    _, prompts, expected = local
    with Client(dep.client_endpoint, timeout_s=600) as client, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda p: client.generate(p, max_tokens=MAX_TOKENS), prompts * 2))
    for res, want in zip(results, expected * 2):
        assert list(res.ids) == want
        assert len(res.route) == 3 and res.route[-1][2] == 30  # every request crossed all 3 workers
    assert "Paris" in tokenizer.decode(expected[0])


def test_the_openai_client_gets_the_same_answers(deployment, local) -> None:
    from helix_jax.http import Backend, HttpServer, bind_socket, create_app

    dep, tokenizer = deployment
    questions, prompts, expected = local
    with HttpServer(create_app(Backend(dep.client_endpoint, tokenizer)), bind_socket("127.0.0.1", 0)).start() as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=600)
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
            aclient = openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=600)
            return await asyncio.gather(
                *(aclient.completions.create(model="smollm2-135m", prompt=p, max_tokens=MAX_TOKENS, temperature=0) for p in prompts)
            )

        for res, want in zip(asyncio.run(completions()), expected):
            assert res.choices[0].text == tokenizer.decode(want)
