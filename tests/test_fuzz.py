"""Fuzz tests (hypothesis): nothing a peer or an HTTP client sends makes the decoders raise
anything but their one error type (issue 19). The wire decoder: ProtocolError or a Message;
the HTTP request models: pydantic's ValidationError (a 400) or a request whose `check()`
raises only APIError (a 400 naming the field)."""

from __future__ import annotations

import msgpack
import numpy as np
import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st

from helix_jax.errors import ProtocolError
from helix_jax.http.errors import APIError
from helix_jax.http.schemas import ChatCompletionRequest, CompletionRequest
from helix_jax.runtime import wire

KINDS = [
    "step",
    "sampled",
    "free",
    "abort",
    "generate",
    "cancel",
    "info",
    "register",
    "ready",
    "heartbeat",
    "assign",
    "shutdown",
    "token",
    "done",
    "error",
    "nope",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def decodes_or_refuses(frames: list) -> None:
    try:
        msg = wire.decode(frames)
    except ProtocolError:
        return
    assert msg.kind in wire.SCHEMAS and len(msg.arrays) == wire.SCHEMAS[msg.kind].num_arrays


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_raw_frames_decode_or_raise_protocol_error(frames) -> None:
    decodes_or_refuses(frames)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(KINDS),
    st.dictionaries(
        st.sampled_from(
            [
                "request_id",
                "route",
                "hop",
                "position",
                "index",
                "sampling",
                "token_id",
                "node",
                "message",
                "prompt_ids",
                "max_tokens",
                "kv_tokens",
                "last",
                "data_endpoint",
            ]
        ),
        json_values,
        max_size=8,
    ),
    st.lists(
        st.tuples(st.sampled_from(["float32", "int32", "bfloat16", "object", "x"]), st.lists(st.integers(-2, 5), max_size=3)), max_size=2
    ),
    st.lists(st.binary(max_size=40), max_size=3),
    st.sampled_from([wire.WIRE_VERSION, 0, 2, "1"]),
)
def test_headers_of_every_kind_decode_or_raise_protocol_error(kind, fields, arrays, payloads, version) -> None:
    header = msgpack.packb({"v": version, "kind": kind, "f": fields, "a": [list(a) for a in arrays]})
    decodes_or_refuses([header, *payloads])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3), st.integers(1, 8))
def test_a_valid_step_round_trips(rows, width) -> None:
    hidden = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    msg = wire.make("step", [hidden], request_id="r", route=[["a", 0, 1]], hop=0, position=0, index=0)
    back = wire.decode(wire.encode(msg))
    assert np.array_equal(back.arrays[0], hidden) and back["route"] == [["a", 0, 1]]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([CompletionRequest, ChatCompletionRequest]),
    st.dictionaries(
        st.sampled_from(
            [
                "model",
                "prompt",
                "messages",
                "max_tokens",
                "temperature",
                "top_p",
                "top_k",
                "seed",
                "stop",
                "n",
                "stream",
                "stream_options",
                "logprobs",
                "echo",
            ]
        ),
        json_values,
        max_size=8,
    ),
)
def test_http_request_bodies_validate_or_give_a_400(model, body) -> None:
    try:
        request = model.model_validate(body)
    except pydantic.ValidationError:
        return
    try:
        request.check()
    except APIError as exc:
        assert exc.status == 400
