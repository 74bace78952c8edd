"""The OpenAI-compatible HTTP front end against a live deployment, through the official
`openai` client (sync and async), httpx for raw bodies, and prometheus_client's parser.

One deployment (helix_jax.testing.InProcessCluster: the real coordinator, workers and wire
as threads, FakeRunners for the layers of tiny-8, on the shipped small CPU topology) and one
front end on 127.0.0.1, port 0, serve the whole module. Expected texts come from
`fake_generation` (the module's `reference`). Nothing here waits on the clock: every wait is
on an event or a bounded poll of the coordinator. The real model behind the same front end:
tests/test_real_deploy.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
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
    cfg = ServeConfig(topo, cpu_small_placement, topo.model, weights="random:0", max_seq_len=MAX_SEQ_LEN,
                      kv_tokens=4 * MAX_SEQ_LEN, queue_limit=QUEUE_LIMIT, client_queue_limit=QUEUE_LIMIT,
                      heartbeat_timeout_s=600.0)  # test_queue_full freezes the workers
    with InProcessCluster(cfg, TOK) as cluster:
        yield cluster.wait_ready()


@pytest.fixture(scope="module")
def reference():
    """The deployment's greedy tokens (overrides conftest's real-model `reference`)."""
    vocab = load_topology(tiny_topology_path()).model.vocab_size
    return lambda ids, max_tokens, sampling=None: fake_generation(ids, max_tokens, vocab, sampling)


def start_front_end(dep: InProcessCluster, api_key: str | None = API_KEY) -> HttpServer:
    app = create_app(Backend(dep.client_endpoint, TOK), api_key=api_key)
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
        out = out[:out.index(TINY_EOS) + 1]
    text = TOK.decode(out)
    if stop is not None and stop in text:
        return text[:text.index(stop)], -1, "stop"
    return text, len(out), "stop" if out[-1] == TINY_EOS else "length"


def metrics(server: HttpServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_idle(zmq_client: Client, polls: int = 2000) -> dict[str, Any]:
    """Poll the coordinator until nothing runs or waits and no KV is held (bounded)."""
    for _ in range(polls):
        stats = zmq_client.stats()
        if stats["running"] == 0 and stats["waiting"] == 0 and all(
                n["kv_used_token_layers"] == 0 for n in stats["nodes"].values()):
            return stats
    raise AssertionError(f"the deployment never became idle: {stats}")


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
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*(client.completions.create(
                model=MODEL, prompt=TOK.encode(p) if as_ids else p, max_tokens=n, temperature=0)
                for p, n, as_ids in jobs))

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
    chunks = list(oai.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=12,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-1])
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 2) + [reason]
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == tokens
    assert chunks[-1].usage.prompt_tokens == len(ids) and len({c.id for c in chunks}) == 1


def test_raw_stream_is_sse_ending_in_done(server: HttpServer) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_prompt_lists_and_n(oai: openai.OpenAI, reference) -> None:
    res = oai.completions.create(model=MODEL, prompt=[PROMPTS[0], TOK.encode(PROMPTS[1])], n=2, max_tokens=5,
                                 temperature=0)
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
    cut = full[:full.index(stop)]
    res = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "\x00\x01"])
    assert (res.choices[0].text, res.choices[0].finish_reason) == (cut, "stop")
    streamed = list(oai.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=stop,
                                           stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut and streamed[-1].choices[0].finish_reason == "stop"
    res = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    assert res.choices[0].finish_reason == "length" and res.usage.completion_tokens == 6


# ------------------------------------------------------------------------------ errors


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    return exc.response.json()["error"]


@pytest.mark.parametrize("kwargs, param, needle", [
    (dict(temperature="hot"), "temperature", "valid number"),
    (dict(max_tokens=-3), "max_tokens", "at least 1"),
    (dict(top_p=0.0), "top_p", "top_p must be in"),
    (dict(n=99), "n", "n must be in"),
    (dict(extra_body={"logit_bias": {"5": 10}}), "logit_bias", "logit_bias is not supported"),
    (dict(presence_penalty=0.5), "presence_penalty", "not supported"),
    (dict(logprobs=2), "logprobs", "not supported"),
    (dict(prompt="y" * 200), "prompt", "maximum context length is 128"),
    (dict(prompt=[1, 2, 9999]), "prompt", "outside the vocabulary"),
])
def test_bad_fields_are_400s_naming_them(oai: openai.OpenAI, kwargs, param, needle) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(**{"model": MODEL, "prompt": "hi", "max_tokens": 4, **kwargs})
    err = _error(info.value)
    assert err["param"] == param and needle in err["message"] and err["type"] == "invalid_request_error"


def test_unknown_fields_are_ignored_and_default_values_accepted(oai: openai.OpenAI, reference) -> None:
    res = oai.completions.create(model=MODEL, prompt="x", max_tokens=3, temperature=0, presence_penalty=0,
                                 logprobs=None, extra_body={"whatever": [1, 2], "user_tag": "z"})
    assert res.choices[0].text == expected(reference, TOK.encode("x"), 3)[0]


def test_auth_model_and_chat_errors(server: HttpServer, oai: openai.OpenAI) -> None:
    bad_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad_key.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert "invalid or missing API key" in _error(info.value)["message"]
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    with pytest.raises(openai.NotFoundError) as info:
        oai.completions.create(model="gpt-4o", prompt="hi", max_tokens=2)
    assert _error(info.value)["code"] == "model_not_found" and "'gpt-4o' does not exist" in _error(info.value)["message"]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
    assert _error(info.value)["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "z" * 300}])
    assert _error(info.value)["code"] == "context_length_exceeded"


def test_queue_full_is_a_429_with_retry_after(deployment: InProcessCluster, oai: openai.OpenAI,
                                              zmq_client: Client, reference) -> None:
    """Workers frozen (a hung batch): nothing finishes, so once the queue is full it stays full."""
    nodes = sorted(deployment.config.placement.ranges)
    for node in nodes:
        deployment.runner(node).freeze()
    streams = []
    try:
        streams = [zmq_client.stream([70, 71, 72], max_tokens=100) for _ in range(3 * QUEUE_LIMIT)]
        for _ in range(2000):
            if zmq_client.stats()["waiting"] == QUEUE_LIMIT:
                break
        with pytest.raises(openai.RateLimitError) as info:
            oai.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert info.value.response.headers["retry-after"] == "1"
        assert "queue is full" in _error(info.value)["message"] and _error(info.value)["code"] == "queue_full"
    finally:
        for stream in streams:
            stream.cancel()
        for node in nodes:
            deployment.runner(node).thaw()
    wait_idle(zmq_client)
    res = oai.completions.create(model=MODEL, prompt="x", max_tokens=4, temperature=0)
    assert res.choices[0].text == expected(reference, TOK.encode("x"), 4)[0]


# ------------------------------------------------------------------------------ malformed bodies

BIG = b'{"model": "tiny-8", "prompt": "' + b"a" * (10 << 20) + b'"}'
MALFORMED = [
    (b"this is not json", None, "not valid JSON"),
    (b'{"model": "tiny-8", "prompt": "hi", "max_tokens": "4"}', "max_tokens", "valid integer"),
    (b'{"model": "tiny-8", "prompt": "hi", "stream": "yes"}', "stream", "valid boolean"),
    (b'{"model": 7, "prompt": "hi"}', "model", "valid string"),
    (b'{"model": "tiny-8", "prompt": {"a": 1}}', "prompt", "must be a non-empty string"),
    (b'{"model": "tiny-8"}', "prompt", "Field required"),
    (b'[1, 2]', None, "must be a JSON object"),
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
        good["r"] = httpx.post(f"{server.url}/v1/completions", headers=headers, timeout=120,
                               json={"model": MODEL, "prompt": PROMPTS[2], "max_tokens": 20, "temperature": 0})

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


# ------------------------------------------------------------------------------ metrics, cancel, drain


def test_metrics_count_the_requests_sent(server: HttpServer, oai: openai.OpenAI, reference,
                                         cpu_small_placement: Placement, deployment: InProcessCluster) -> None:
    coord = deployment.coordinator
    assert coord is not None  # every node has reported a step time (its first heartbeat after a batch)
    deployment.wait_until(lambda: all(coord.step_s.get(n) for n in cpu_small_placement.ranges), "step times")
    before = metrics(server)
    lengths = [(p, 3 + i) for i, p in enumerate(PROMPTS)]
    results = [oai.completions.create(model=MODEL, prompt=p, max_tokens=n, temperature=0) for p, n in lengths]
    list(oai.completions.create(model=MODEL, prompt="x", max_tokens=5, temperature=0, stream=True))
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="nope", prompt="x", max_tokens=2)
    after = metrics(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    reasons = [r.choices[0].finish_reason for r in results] + [expected(reference, TOK.encode("x"), 5)[2]]
    for reason in ("stop", "length"):
        assert delta("helix_requests_finished_total", finish_reason=reason) == reasons.count(reason)
    assert delta("helix_request_errors_total", status="404", code="model_not_found") == 1
    assert delta("helix_prompt_tokens_total") == sum(r.usage.prompt_tokens for r in results) + 2
    generated = sum(r.usage.completion_tokens for r in results) + expected(reference, TOK.encode("x"), 5)[1]
    assert delta("helix_generation_tokens_total") == generated
    tokens = [r.usage.completion_tokens for r in results] + [expected(reference, TOK.encode("x"), 5)[1]]
    for hist, count in (("helix_time_to_first_token_seconds", 5), ("helix_e2e_request_latency_seconds", 5),
                        ("helix_request_queue_time_seconds", 5),
                        ("helix_time_per_output_token_seconds", sum(t > 1 for t in tokens))):
        assert delta(f"{hist}_count") == count, hist
        assert delta(f"{hist}_bucket", le="+Inf") == count, hist
    assert after[("helix_requests_running", ())] == 0 and after[("helix_requests_waiting", ())] == 0
    assert after[("helix_ready", ())] == 1 and after[("helix_max_flow_tokens_per_s", ())] == cpu_small_placement.objective_tokens_per_s
    for node in ("cpu-0", "cpu-1", "cpu-2"):
        assert after[("helix_node_in_service", (("node", node),))] == 1
        assert after[("helix_node_kv_budget_token_layers", (("node", node),))] > 0
        assert after[("helix_node_kv_used_token_layers", (("node", node),))] == 0
        assert after[("helix_node_step_seconds", (("node", node),))] > 0
    assert after[("helix_node_planned_flow_tokens_per_s", (("node", "cpu-1"),))] == 200


def test_client_disconnect_cancels_and_frees_kv(server: HttpServer, zmq_client: Client,
                                                deployment: InProcessCluster) -> None:
    """The exit stage freezes after a few batches, so neither request can finish before its
    client has gone; then it thaws, and both end as cancelled."""
    before = metrics(server)
    deployment.runner("cpu-1").freeze_after(3)
    body = {"model": MODEL, "prompt": "y", "max_tokens": 120, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        next(r.iter_bytes())  # one token has arrived: the request runs; then the client leaves
    raw = json.dumps({**body, "stream": False}).encode()
    with socket.create_connection((server.host, server.port)) as sock:  # a non-streamed one, too
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: "
                     + str(len(raw)).encode() + b"\r\n\r\n" + raw)
    key = ("helix_requests_finished_total", (("finish_reason", "cancelled"),))
    try:
        for _ in range(2000):
            if metrics(server).get(key, 0) - before.get(key, 0) == 2:
                break
    finally:
        deployment.runner("cpu-1").thaw()
    assert metrics(server)[key] - before.get(key, 0) == 2
    stats = wait_idle(zmq_client)
    assert stats["running"] == 0 and server.app.state.backend.in_flight == 0


def test_drain_of_a_second_front_end_cancels_with_a_clear_error(deployment: InProcessCluster,
                                                                 zmq_client: Client) -> None:
    """Two front ends share the deployment; draining one with timeout 0 ends its streams with
    our error, refuses new requests and /ready with 503, and leaves nothing running. The exit
    stage freezes once both streams have their first token, so both are in flight at the drain."""
    second = start_front_end(deployment, api_key=None)
    deployment.runner("cpu-1").freeze_after(requests_sampled=2)
    try:
        client = openai.OpenAI(base_url=f"{second.url}/v1", api_key="unused", max_retries=0, timeout=120)
        streams = [client.completions.create(model=MODEL, prompt="z", max_tokens=120, temperature=0, stream=True)
                   for _ in range(2)]
        iters = [iter(s) for s in streams]
        for it in iters:
            next(it)  # in flight
        assert second.drain(0) == 2
        for it in iters:
            with pytest.raises(openai.APIError, match="shutting down: this request was cancelled"):
                for _ in it:
                    pass
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model=MODEL, prompt="z", max_tokens=2)
        assert info.value.status_code == 503 and _error(info.value)["code"] == "draining"
        ready = httpx.get(f"{second.url}/ready")
        assert ready.status_code == 503 and "shutting down" in ready.json()["error"]["message"]
    finally:
        deployment.runner("cpu-1").thaw()
        second.stop()
    wait_idle(zmq_client)
