"""Fairness per API key on HTTP: each configured key (and, without keys, all requests together)
may have at most its share of sequences waiting (sent to the coordinator, no first token yet);
past it the key gets 429 with Retry-After while another key still gets in.

The deployment is tests/http_cluster.py's (InProcessCluster, FakeRunners); its runners are
frozen, so nothing gets a first token and every sequence sent stays waiting until they thaw:
exact counts, no sleeps. Waits poll /metrics until the count holds (`wait_until`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import http_cluster
import httpx
import pytest
from http_cluster import MODEL, PROMPTS, QUEUE_LIMIT, TOK, expected
from prometheus_client.parser import text_string_to_metric_families

from helix_jax.errors import ConfigError
from helix_jax.http import Backend, HttpServer, bind_socket, create_app
from helix_jax.http.errors import APIError
from helix_jax.http.tenants import Tenants, parse_api_keys
from helix_jax.testing import InProcessCluster
from helix_jax.testing.waiting import wait_until

# the shared fixtures (tests/http_cluster.py)
deployment = http_cluster.deployment
reference = http_cluster.reference

KEYS = ("sk-tenant-a", "sk-tenant-b")
SHARE = 3


def front_end(dep: InProcessCluster, api_key: str | None, share: int | None) -> HttpServer:
    app = create_app(Backend(dep.client_endpoint, TOK), api_key=api_key, key_queue_share=share)
    return HttpServer(app, bind_socket("127.0.0.1", 0)).start()


def post(srv: HttpServer, key: str | None, prompt: str, n: int = 1) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{srv.url}/v1/completions",
        headers=headers,
        timeout=120,
        json={"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0, "n": n},
    )


def gauge(srv: HttpServer, name: str, key: str) -> float:
    text = httpx.get(f"{srv.url}/metrics").text
    return next(
        s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name and s.labels == {"key": key}
    )


def wait_waiting(srv: HttpServer, key: str, count: int) -> None:
    wait_until(lambda: gauge(srv, "helix_api_key_waiting_sequences", key) == count, f"{count} sequences of {key} waiting", timeout_s=120)


def frozen(dep: InProcessCluster, on: bool) -> None:
    for node in sorted(dep.config.placement.ranges):
        runner = dep.runner(node)
        runner.freeze() if on else runner.thaw()


def test_one_keys_flood_gets_429_while_another_key_gets_in(deployment: InProcessCluster, reference) -> None:
    with front_end(deployment, ",".join(KEYS), SHARE) as srv, ThreadPoolExecutor(SHARE + 1) as pool:
        frozen(deployment, True)
        try:
            flood = [pool.submit(post, srv, KEYS[0], PROMPTS[i]) for i in range(SHARE)]
            wait_waiting(srv, "key-1", SHARE)
            for n in (1, 2):  # a fourth sequence, or two more, pass key-1's share
                refused = post(srv, KEYS[0], "x", n=n)
                assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
                err = refused.json()["error"]
                assert err["type"] == "rate_limit_error" and err["code"] == "queue_full"
                assert err["message"] == (
                    "API key key-1 has already 3 sequences waiting, the share of the queue one key may hold (3); retry later"
                )
                assert KEYS[0] not in refused.text
            other = pool.submit(post, srv, KEYS[1], "x")  # another key still gets in
            wait_waiting(srv, "key-2", 1)
            assert gauge(srv, "helix_api_key_refused_total", "key-1") == 2
            assert gauge(srv, "helix_api_key_refused_total", "key-2") == 0
        finally:
            frozen(deployment, False)
        for i, answer in enumerate(flood):
            assert answer.result().json()["choices"][0]["text"] == expected(reference, TOK.encode(PROMPTS[i]), 4)[0]
        assert other.result().json()["choices"][0]["text"] == expected(reference, TOK.encode("x"), 4)[0]
        assert gauge(srv, "helix_api_key_waiting_sequences", "key-1") == 0
        assert gauge(srv, "helix_api_key_waiting_sequences", "key-2") == 0
        assert post(srv, KEYS[0], "x").status_code == 200  # the share is free again
        assert post(srv, "sk-nobody", "x").status_code == 401


def test_without_keys_every_request_is_one_tenant(deployment: InProcessCluster, reference) -> None:
    with front_end(deployment, None, 1) as srv, ThreadPoolExecutor(1) as pool:
        frozen(deployment, True)
        try:
            first = pool.submit(post, srv, None, "x")
            wait_waiting(srv, "anonymous", 1)
            refused = post(srv, "any key at all", "y")
            assert refused.status_code == 429 and refused.json()["error"]["message"].startswith(
                "requests without an API key have already 1 sequences waiting"
            )
        finally:
            frozen(deployment, False)
        assert first.result().json()["choices"][0]["text"] == expected(reference, TOK.encode("x"), 4)[0]


def test_the_default_share_is_half_the_coordinators_queue(deployment: InProcessCluster) -> None:
    with front_end(deployment, KEYS[0], None) as srv:
        assert srv.app.state.backend.tenants.queue_share == QUEUE_LIMIT // 2


@pytest.mark.parametrize(
    "keys, share, needle",
    [
        ("a,b,a", None, "lists the same key twice"),
        (" , ", None, "holds no key"),
        ("a", 0, "--key-queue-share must be >= 1"),
    ],
)
def test_bad_key_options_are_one_clear_error(keys, share, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        Tenants(keys, share)


def test_keys_are_one_or_many_and_tenants_are_named_by_position() -> None:
    assert parse_api_keys("k1") == ("k1",) and parse_api_keys(" k1, k2 ") == ("k1", "k2")
    assert parse_api_keys(["k1", "k2,k3"]) == ("k1", "k2", "k3") and parse_api_keys(None) == ()
    tenants = Tenants("k1,k2")
    assert tenants.identify("Bearer k2") == "key-2" and tenants.identify("Bearer  k1 ") == "key-1"
    for bad in ("", "k1", "Bearer k3", "Bearer "):
        with pytest.raises(APIError, match="invalid or missing API key"):
            tenants.identify(bad)
    assert Tenants(None).identify("") == "anonymous"
