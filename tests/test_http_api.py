"""The OpenAI-compatible HTTP front end against a live deployment: answers and bad requests,
through the official `openai` client (sync and async) and httpx for raw bodies.

The deployment, front end and helpers are tests/http_cluster.py's (one InProcessCluster per
module, FakeRunners, so every expected text comes from `fake_generation`). Nothing here waits
on the clock. Queueing, metrics, cancellation and drain: tests/test_http_serving.py; the real
model behind the same front end: tests/test_ray_deploy.py (SmolLM2 deployed on Ray).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import http_cluster
import httpx
import openai
import pytest
from http_cluster import API_KEY, MAX_SEQ_LEN, MODEL, PROMPTS, TOK, api_error, expected

from helix_jax.client import Client
from helix_jax.http import HttpServer

# the shared fixtures (tests/http_cluster.py)
deployment = http_cluster.deployment
oai = http_cluster.oai
reference = http_cluster.reference
server = http_cluster.server
zmq_client = http_cluster.zmq_client


# ------------------------------------------------------------------------------ the happy paths


def test_models_list_and_health(oai: openai.OpenAI, server: HttpServer, zmq_client: Client) -> None:
    models = oai.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["context_length"] == MAX_SEQ_LEN
    assert oai.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/ready").status_code == 200
    stats = zmq_client.stats()
    assert stats["ready"] and stats["reason"] is None and set(stats["nodes"]) == {"cpu-0", "cpu-1", "cpu-2"}


def test_32_concurrent_async_greedy_completions_equal_local_generate(server: HttpServer, reference) -> None:
    jobs = [(PROMPTS[i % 4], 4 + i % 5, i % 2 == 0) for i in range(32)]

    async def main():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.completions.create(model=MODEL, prompt=TOK.encode(p) if as_ids else p, max_tokens=n, temperature=0)
                    for p, n, as_ids in jobs
                )
            )

    for (prompt, n, _), res in zip(jobs, asyncio.run(main())):
        text, tokens, reason = expected(reference, TOK.encode(prompt), n)
        assert (res.choices[0].text, res.choices[0].finish_reason) == (text, reason), prompt
        assert res.usage.prompt_tokens == len(TOK.encode(prompt)) and res.usage.completion_tokens == tokens
        assert res.usage.total_tokens == res.usage.prompt_tokens + tokens and res.object == "text_completion"


def test_chat_completion_then_the_same_streamed_with_usage(oai: openai.OpenAI, reference) -> None:
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of France?"}]
    ids = TOK.encode_chat(messages)
    text, tokens, reason = expected(reference, ids, 12)
    res = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    assert res.object == "chat.completion" and res.choices[0].message.role == "assistant"
    assert (res.choices[0].message.content, res.choices[0].finish_reason) == (text, reason)
    assert (res.usage.prompt_tokens, res.usage.completion_tokens) == (len(ids), tokens)
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=messages, max_completion_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-1])
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 2) + [reason]
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == tokens
    assert chunks[-1].usage.prompt_tokens == len(ids) and len({c.id for c in chunks}) == 1


def test_raw_stream_is_sse_ending_in_done(server: HttpServer) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_prompt_lists_and_n(oai: openai.OpenAI, reference) -> None:
    res = oai.completions.create(model=MODEL, prompt=[PROMPTS[0], TOK.encode(PROMPTS[1])], n=2, max_tokens=5, temperature=0)
    assert [c.index for c in res.choices] == [0, 1, 2, 3]
    for k, c in enumerate(res.choices):
        assert c.text == expected(reference, TOK.encode(PROMPTS[k // 2]), 5)[0]
    assert res.usage.prompt_tokens == len(TOK.encode(PROMPTS[0])) + len(TOK.encode(PROMPTS[1]))
    sampled = oai.completions.create(model=MODEL, prompt="x", n=3, max_tokens=8, temperature=1.0, seed=5)
    again = oai.completions.create(model=MODEL, prompt="x", n=3, max_tokens=8, temperature=1.0, seed=5)
    assert [c.text for c in sampled.choices] == [c.text for c in again.choices]  # seeded


def test_stop_strings_and_max_tokens_give_the_finish_reason(oai: openai.OpenAI, reference) -> None:
    prompt, stop = "max-flow", "?\x7f"  # its fake greedy text: "s\ufffd\ufffd\ufffd?\x7f...": "?" alone comes first
    full, _, reason = expected(reference, TOK.encode(prompt), 24)
    assert stop in full and reason == "length"
    cut = full[: full.index(stop)]
    res = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "\x00\x01"])
    assert (res.choices[0].text, res.choices[0].finish_reason) == (cut, "stop")
    streamed = list(oai.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut and streamed[-1].choices[0].finish_reason == "stop"
    res = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    assert res.choices[0].finish_reason == "length" and res.usage.completion_tokens == 6


def test_ignore_eos_runs_to_max_tokens(oai: openai.OpenAI, reference) -> None:
    """vLLM's `ignore_eos` extension: a prompt whose greedy answer ends at EOS runs to max_tokens."""
    prompt = next([t] for t in range(1, 400) if expected(reference, [t], 12)[2] == "stop")
    assert oai.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0).choices[0].finish_reason == "stop"
    res = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    assert (res.choices[0].finish_reason, res.usage.completion_tokens) == ("length", 12)
    assert res.choices[0].text == TOK.decode(reference(prompt, 12))
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={"ignore_eos": "yes"})
    assert api_error(info.value)["param"] == "ignore_eos"


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, param, needle",
    [
        (dict(temperature="hot"), "temperature", "valid number"),
        (dict(max_tokens=-3), "max_tokens", "at least 1"),
        (dict(top_p=0.0), "top_p", "top_p must be in"),
        (dict(n=99), "n", "n must be in"),
        (dict(extra_body={"logit_bias": {"5": 10}}), "logit_bias", "logit_bias is not supported"),
        (dict(presence_penalty=0.5), "presence_penalty", "not supported"),
        (dict(logprobs=2), "logprobs", "not supported"),
        (dict(prompt="y" * 200), "prompt", "maximum context length is 128"),
        (dict(prompt=[1, 2, 9999]), "prompt", "outside the vocabulary"),
    ],
)
def test_bad_fields_are_400s_naming_them(oai: openai.OpenAI, kwargs, param, needle) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(**{"model": MODEL, "prompt": "hi", "max_tokens": 4, **kwargs})
    err = api_error(info.value)
    assert err["param"] == param and needle in err["message"] and err["type"] == "invalid_request_error"


def test_unknown_fields_are_ignored_and_default_values_accepted(oai: openai.OpenAI, reference) -> None:
    res = oai.completions.create(
        model=MODEL,
        prompt="x",
        max_tokens=3,
        temperature=0,
        presence_penalty=0,
        logprobs=None,
        extra_body={"whatever": [1, 2], "user_tag": "z"},
    )
    assert res.choices[0].text == expected(reference, TOK.encode("x"), 3)[0]


def test_auth_model_and_chat_errors(server: HttpServer, oai: openai.OpenAI) -> None:
    bad_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad_key.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert "invalid or missing API key" in api_error(info.value)["message"]
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    with pytest.raises(openai.NotFoundError) as info:
        oai.completions.create(model="gpt-4o", prompt="hi", max_tokens=2)
    assert api_error(info.value)["code"] == "model_not_found" and "'gpt-4o' does not exist" in api_error(info.value)["message"]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
    assert api_error(info.value)["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "z" * 300}])
    assert api_error(info.value)["code"] == "context_length_exceeded"


# ------------------------------------------------------------------------------ malformed bodies

BIG = b'{"model": "tiny-8", "prompt": "' + b"a" * (10 << 20) + b'"}'
MALFORMED = [
    (b"this is not json", None, "not valid JSON"),
    (b'{"model": "tiny-8", "prompt": "hi", "max_tokens": "4"}', "max_tokens", "valid integer"),
    (b'{"model": "tiny-8", "prompt": "hi", "stream": "yes"}', "stream", "valid boolean"),
    (b'{"model": 7, "prompt": "hi"}', "model", "valid string"),
    (b'{"model": "tiny-8", "prompt": {"a": 1}}', "prompt", "must be a non-empty string"),
    (b'{"model": "tiny-8"}', "prompt", "Field required"),
    (b"[1, 2]", None, "must be a JSON object"),
    (BIG, None, "limit is"),
    (b'{"model": "tiny-8", "prompt": "hi", "max_tokens": -1}', "max_tokens", "at least 1"),
    (b'{"model": "tiny-8", "prompt": "hi", "temperature": NaN}', "temperature", "finite"),
]
MALFORMED_CHAT = [
    (b'{"model": "tiny-8", "messages": []}', "messages", "at least one message"),
    (b'{"model": "tiny-8", "messages": [{"role": "robot", "content": "hi"}]}', "messages[0].role", "'system'"),
    (b'{"model": "tiny-8", "messages": [{"role": "user", "content": 5}]}', "messages[0].content", "string"),
    (b'{"model": "tiny-8", "messages": "hi"}', "messages", "valid list"),
]


def test_malformed_bodies_are_400s_and_harm_no_other_request(server: HttpServer, reference) -> None:
    good: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    def run_good() -> None:
        good["r"] = httpx.post(
            f"{server.url}/v1/completions",
            headers=headers,
            timeout=120,
            json={"model": MODEL, "prompt": PROMPTS[2], "max_tokens": 20, "temperature": 0},
        )

    worker = threading.Thread(target=run_good)
    worker.start()
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
        for path, cases in (("/v1/completions", MALFORMED), ("/v1/chat/completions", MALFORMED_CHAT)):
            for body, param, needle in cases:
                r = http.post(path, content=body)
                assert r.status_code == 400, (body[:60], r.text)
                err = r.json()["error"]
                assert err["param"] == param and needle in err["message"], (body[:60], err)
    worker.join(120)
    assert good["r"].json()["choices"][0]["text"] == expected(reference, TOK.encode(PROMPTS[2]), 20)[0]
