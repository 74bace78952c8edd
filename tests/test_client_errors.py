"""Client behaviour that needs no deployment: argument errors, timeouts, error mapping, and
multiplexing many requests over one socket against a scripted coordinator socket."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq

from helix_jax.client import AsyncClient, Client, error_from_message
from helix_jax.errors import HelixError, OverloadedError, RequestError
from helix_jax.runtime import wire


def test_bad_argument_types_fail_before_sending() -> None:
    with Client("tcp://127.0.0.1:9", timeout_s=1) as client:
        with pytest.raises(RequestError, match="bad sampling argument"):
            client.generate("hi", max_tokens="many")
        with pytest.raises(RequestError, match="sequence of token ids"):
            client.generate([1, "x"])


def test_no_coordinator_times_out_with_a_clear_error() -> None:
    with Client("tcp://127.0.0.1:9", timeout_s=0.5) as client:
        with pytest.raises(HelixError, match="no reply within"):
            client.generate("hi", max_tokens=2)


def test_error_messages_map_to_error_types() -> None:
    err = error_from_message(wire.make("error", request_id="a", error="OverloadedError", message="full"))
    assert isinstance(err, OverloadedError) and str(err) == "full"
    assert type(error_from_message(wire.make("error", request_id=None, error="Nope", message="?"))) is HelixError


def _echo_server(router: zmq.Socket, stop: threading.Event) -> None:
    """Answers each generate by streaming its prompt ids back as tokens."""
    while not stop.is_set():
        if not router.poll(50):
            continue
        identity, msg = wire.recv(router, routed=True)
        if msg.kind != "generate":
            continue
        rid, ids = msg["request_id"], msg["prompt_ids"]
        if ids and ids[0] >= 1000:  # scripted rejection: the coordinator's error reply
            wire.send(router, wire.make("error", request_id=rid, error="RequestError", message=f"bad id {ids[0]}"), identity)
            continue
        for i, tok in enumerate(ids):
            wire.send(router, wire.make("token", request_id=rid, index=i, token_id=tok, text=chr(65 + tok % 26)), identity)
        wire.send(
            router,
            wire.make("done", request_id=rid, ids=ids, text="", finish_reason="length", prompt_tokens=len(ids), time_scale=2.0),
            identity,
        )


@pytest.fixture
def echo_endpoint():
    """The endpoint of a scripted coordinator socket (`_echo_server`) running in a thread."""
    router = wire.configure(zmq.Context.instance().socket(zmq.ROUTER))
    endpoint = wire.bind_free_port(router)
    stop = threading.Event()
    server = threading.Thread(target=_echo_server, args=(router, stop), daemon=True)
    server.start()
    try:
        yield endpoint
    finally:
        stop.set()
        server.join(5)
        router.close(0)


def test_many_threads_share_one_client_and_get_their_own_answers(echo_endpoint) -> None:
    endpoint = echo_endpoint
    with Client(endpoint, timeout_s=30) as client, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: client.generate([n, n + 1, n + 2]), range(40)))
        stream = client.stream([7, 8])
        tokens = [t.token_id for t in stream]
    for n, res in enumerate(results):
        assert res.ids == (n, n + 1, n + 2)
        assert len(res.timings.token_times_s) == 3
        assert res.timings.time_scale == 2.0  # timings are reported in emulated seconds
    assert tokens == [7, 8] and stream.result is not None and stream.result.ids == (7, 8)


def test_error_replies_raise_and_async_client_multiplexes_too(echo_endpoint) -> None:
    endpoint = echo_endpoint

    async def run_async() -> tuple[list, list[int]]:
        async with AsyncClient(endpoint, timeout_s=30) as ac:
            with pytest.raises(RequestError, match="bad id 1003"):
                await ac.generate([1003, 1])
            results = await asyncio.gather(*(ac.generate([n, n + 1]) for n in range(10)))
            tokens = [t.token_id async for t in ac.stream([4, 5, 6])]
            return results, tokens

    with Client(endpoint, timeout_s=30) as client:
        with pytest.raises(RequestError, match="bad id 1003"):
            client.generate([1003, 1])
        with pytest.raises(RequestError, match="prompt token id -3 is out of range"):  # refused before sending
            client.generate([-3, 1])
        assert client.generate([9]).ids == (9,)  # the client still serves after an error
    results, tokens = asyncio.run(run_async())
    assert [r.ids for r in results] == [(n, n + 1) for n in range(10)]
    assert all(r.timings.time_scale == 2.0 and len(r.timings.token_times_s) == 2 for r in results)
    assert tokens == [4, 5, 6]


def test_close_is_idempotent_and_rejects_new_requests() -> None:
    client = Client("tcp://127.0.0.1:9", timeout_s=1)
    client.close()
    client.close()
    with pytest.raises(HelixError, match="closed"):
        client.generate("hi")


def test_a_cancelled_async_stream_stays_cancelled_when_a_token_arrives_in_the_same_tick() -> None:
    """The front end cancels a request's reader when its HTTP client leaves. If a token (and
    here even the end) reaches the reader's queue in the same loop tick as the cancel, the
    cancel must still win: the reader stops and tells the coordinator `cancel`. (asyncio.wait_for
    on Python 3.11 returns the token instead, so the request ran to its end unread: a client
    that left mid-stream still held its KV, and the next request waited behind it.)"""
    router = wire.configure(zmq.Context.instance().socket(zmq.ROUTER))
    endpoint = wire.bind_free_port(router)

    async def scenario() -> tuple[list[int], list[str]]:
        got: list[int] = []
        async with AsyncClient(endpoint, timeout_s=30) as ac:

            async def read() -> None:
                async for tok in ac.stream([3, 4], max_tokens=2):
                    got.append(tok.token_id)

            reader = asyncio.create_task(read())
            while not ac._pending:  # the request is on the wire and its reader waits for a reply
                await asyncio.sleep(0)
            (rid, replies), *_ = ac._pending.items()
            # what the client's socket reader does with the coordinator's replies, then the cancel, all in one tick
            replies.put_nowait(wire.make("token", request_id=rid, index=0, token_id=3, text="D"))
            done = dict(request_id=rid, ids=[3], text="D", finish_reason="length", prompt_tokens=2, time_scale=1.0)
            replies.put_nowait(wire.make("done", **done))
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            kinds: list[str] = []  # what the coordinator's socket got, read before the client closes its socket
            while len(kinds) < 2 and router.poll(10_000):  # a guard against a hang, not a timing bound
                kinds.append(wire.recv(router, routed=True)[1].kind)
        return got, kinds

    try:
        assert asyncio.run(scenario()) == ([], ["generate", "cancel"])
    finally:
        router.close(0)
