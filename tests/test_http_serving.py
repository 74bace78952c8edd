"""The HTTP front end's serving behaviour against a live deployment: a full queue (429),
/metrics (parsed with prometheus_client), a client that disconnects, and the drain.

The deployment, front end and helpers are tests/http_cluster.py's (one InProcessCluster per
module, FakeRunners). Runners are frozen rather than slept on: nothing here waits on the clock.
"""

from __future__ import annotations

import json
import socket

import http_cluster
import httpx
import openai
import pytest
from http_cluster import API_KEY, MODEL, PROMPTS, QUEUE_LIMIT, TOK, api_error, expected, metrics, start_front_end, wait_idle

from helix_jax.client import Client
from helix_jax.http import HttpServer
from helix_jax.placement import Placement
from helix_jax.testing import InProcessCluster
from helix_jax.testing.waiting import wait_until

# the shared fixtures (tests/http_cluster.py)
deployment = http_cluster.deployment
oai = http_cluster.oai
reference = http_cluster.reference
server = http_cluster.server
zmq_client = http_cluster.zmq_client


def test_queue_full_is_a_429_with_retry_after(deployment: InProcessCluster, oai: openai.OpenAI, zmq_client: Client, reference) -> None:
    """Workers frozen (a hung batch): nothing finishes, so once the queue is full it stays full."""
    nodes = sorted(deployment.config.placement.ranges)
    for node in nodes:
        deployment.runner(node).freeze()
    streams = []
    try:
        streams = [zmq_client.stream([70, 71, 72], max_tokens=100) for _ in range(3 * QUEUE_LIMIT)]
        wait_until(lambda: zmq_client.stats()["waiting"] == QUEUE_LIMIT, f"{QUEUE_LIMIT} requests waiting", timeout_s=120)
        with pytest.raises(openai.RateLimitError) as info:
            oai.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert info.value.response.headers["retry-after"] == "1"
        assert "queue is full" in api_error(info.value)["message"] and api_error(info.value)["code"] == "queue_full"
    finally:
        for stream in streams:
            stream.cancel()
        for node in nodes:
            deployment.runner(node).thaw()
    wait_idle(zmq_client)
    res = oai.completions.create(model=MODEL, prompt="x", max_tokens=4, temperature=0)
    assert res.choices[0].text == expected(reference, TOK.encode("x"), 4)[0]


# ------------------------------------------------------------------------------ metrics, cancel, drain


def test_metrics_count_the_requests_sent(
    server: HttpServer, oai: openai.OpenAI, reference, cpu_small_placement: Placement, deployment: InProcessCluster
) -> None:
    coord = deployment.coordinator
    assert coord is not None  # every node has run a batch (the routes alternate) and reported a step time
    for _ in range(12):  # bounded: the weighted round robin reaches every route within a few requests
        if all(deployment.runner(n).steps for n in cpu_small_placement.ranges):
            break
        oai.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=0)
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
    for hist, count in (
        ("helix_time_to_first_token_seconds", 5),
        ("helix_e2e_request_latency_seconds", 5),
        ("helix_request_queue_time_seconds", 5),
        ("helix_time_per_output_token_seconds", sum(t > 1 for t in tokens)),
    ):
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


def test_client_disconnect_cancels_and_frees_kv(server: HttpServer, zmq_client: Client, deployment: InProcessCluster) -> None:
    """The exit stage freezes after a few batches, so neither request can finish before its
    client has gone; then it thaws, and both end as cancelled."""
    before = metrics(server)
    deployment.runner("cpu-1").freeze_after(3)
    body = {"model": MODEL, "prompt": "y", "max_tokens": 120, "temperature": 0, "stream": True}
    key = ("helix_requests_finished_total", (("finish_reason", "cancelled"),))
    backend = server.app.state.backend
    try:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120, headers=auth) as r:
            next(r.iter_bytes())  # one token has arrived: the request runs; then the client leaves
        wait_until(lambda: metrics(server).get(key, 0) - before.get(key, 0) == 1, "the stream cancelled", timeout_s=120)
        raw = json.dumps({**body, "stream": False}).encode()
        with socket.create_connection((server.host, server.port)) as sock:  # a non-streamed one, too
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw
            )
            # leave only once the server runs it (closed earlier, the request may never start at all)
            wait_until(lambda: backend.in_flight == 1, "the non-streamed request in flight", timeout_s=120)
        wait_until(lambda: metrics(server).get(key, 0) - before.get(key, 0) == 2, "both requests cancelled", timeout_s=120)
    finally:
        deployment.runner("cpu-1").thaw()
    assert metrics(server)[key] - before.get(key, 0) == 2
    stats = wait_idle(zmq_client)
    assert stats["running"] == 0 and server.app.state.backend.in_flight == 0


def test_drain_of_a_second_front_end_cancels_with_a_clear_error(deployment: InProcessCluster, zmq_client: Client) -> None:
    """Two front ends share the deployment; draining one with timeout 0 ends its streams with
    our error, refuses new requests and /ready with 503, and leaves nothing running. The exit
    stage freezes once both streams have their first token, so both are in flight at the drain."""
    second = start_front_end(deployment, api_key=None)
    deployment.runner("cpu-1").freeze_after(requests_sampled=2)
    try:
        client = openai.OpenAI(base_url=f"{second.url}/v1", api_key="unused", max_retries=0, timeout=120)
        streams = [client.completions.create(model=MODEL, prompt="z", max_tokens=120, temperature=0, stream=True) for _ in range(2)]
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
        assert info.value.status_code == 503 and api_error(info.value)["code"] == "draining"
        ready = httpx.get(f"{second.url}/ready")
        assert ready.status_code == 503 and "shutting down" in ready.json()["error"]["message"]
    finally:
        deployment.runner("cpu-1").thaw()
        second.stop()
    wait_idle(zmq_client)
