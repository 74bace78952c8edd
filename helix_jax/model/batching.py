"""Step messages and static-shape batching for `StageEngine` (pure numpy, no jax).

Owns: `StepInput` / `StepOutput` (what a worker hands the engine and gets back), the bucket
helpers, and `PaddedBatch`: a list of step items padded to a (rows, tokens) bucket. Padding
rows have `num_tokens == 0`, so the traced step writes no KV for them and their outputs are
dropped. Sits in the runtime step of the data flow, between the worker loop and the jitted
stage forward.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from typing import Hashable, Sequence

import numpy as np

from helix_jax.errors import ConfigError, RequestError


@dataclasses.dataclass(frozen=True, eq=False)
class StepInput:
    """One request's work in one engine step.

    A prefill chunk carries n >= 1 tokens, a decode step 1 token. `run_start_layer` is the
    global layer the request enters this stage at (the stage's start, or later under partial
    inference); it must stay the same for the request's whole life. `position` is the absolute
    position of the first token (tokens already cached for this request on this stage).
    `token_ids [n]` when run_start_layer == 0, else `hidden [n, hidden_size]` (the hidden states
    after layer run_start_layer - 1). `sample` (last stage only): sample a next token for this
    item; set False for prefill chunks that do not end the prompt.
    """

    request_id: Hashable
    run_start_layer: int
    position: int
    token_ids: np.ndarray | None = None
    hidden: np.ndarray | None = None
    sample: bool = True

    @functools.cached_property  # read ~10 times per item per engine step: computed once
    def num_tokens(self) -> int:
        data = self.token_ids if self.token_ids is not None else self.hidden
        return 0 if data is None else int(np.shape(data)[0])


@dataclasses.dataclass(frozen=True, eq=False)
class StepOutput:
    """Result of one StepInput: `hidden [n, hidden_size]` after the stage's last layer (stages
    that are not last), or `next_token` (last stage, when the input asked to sample), plus
    `logits [vocab]` (float32) of the item's last position when the engine was built with
    `return_logits=True` (last stage; for tests and debugging)."""

    request_id: Hashable
    hidden: np.ndarray | None = None
    next_token: int | None = None
    logits: np.ndarray | None = None


def normalize_buckets(name: str, buckets: Sequence[int], limit: int) -> tuple[int, ...]:
    """Sorted unique buckets clipped to `limit`, always including `limit` as the largest."""
    values = sorted({int(b) for b in buckets})
    if not values or values[0] <= 0:
        raise ConfigError(f"{name} must be positive integers, got {list(buckets)!r}")
    clipped = sorted({min(v, limit) for v in values})
    if clipped[-1] < limit and values[-1] >= limit:
        clipped.append(limit)
    return tuple(clipped)


def pick_bucket(buckets: tuple[int, ...], size: int) -> int:
    """Smallest bucket >= size (caller guarantees size <= buckets[-1])."""
    return buckets[bisect.bisect_left(buckets, size)]


@dataclasses.dataclass
class PaddedBatch:
    """Host arrays of one jitted call; row i < len(items) is items[i]."""

    items: list[StepInput]
    token_ids: np.ndarray  # [B, T] int32
    hidden: np.ndarray  # [B, T, hidden]
    run_start: np.ndarray  # [B] int32
    positions: np.ndarray  # [B] int32
    num_tokens: np.ndarray  # [B] int32
    slots: np.ndarray  # [B] int32
    temperature: np.ndarray  # [B] float32
    top_k: np.ndarray  # [B] int32
    top_p: np.ndarray  # [B] float32
    seed: np.ndarray  # [B] uint32


def pad_batch(
    items: list[StepInput], rows: int, tokens: int, hidden_size: int, hidden_dtype: np.dtype, slots: list[int], sampling: list
) -> PaddedBatch:
    """Place `items` (with their slots and SamplingParams) into a [rows, tokens] bucket."""
    batch = PaddedBatch(
        items=items,
        token_ids=np.zeros((rows, tokens), np.int32),
        hidden=np.zeros((rows, tokens, hidden_size), hidden_dtype),
        run_start=np.zeros((rows,), np.int32),
        positions=np.zeros((rows,), np.int32),
        num_tokens=np.zeros((rows,), np.int32),
        slots=np.zeros((rows,), np.int32),
        temperature=np.zeros((rows,), np.float32),
        top_k=np.zeros((rows,), np.int32),
        top_p=np.ones((rows,), np.float32),
        seed=np.zeros((rows,), np.uint32),
    )
    for row, (item, slot, params) in enumerate(zip(items, slots, sampling)):
        n = item.num_tokens
        if item.token_ids is not None:
            batch.token_ids[row, :n] = item.token_ids
        else:
            batch.hidden[row, :n] = item.hidden
        batch.run_start[row] = item.run_start_layer
        batch.positions[row] = item.position
        batch.num_tokens[row] = n
        batch.slots[row] = slot
        batch.temperature[row] = params.temperature
        batch.top_k[row] = params.top_k
        batch.top_p[row] = params.top_p
        batch.seed[row] = params.seed
    return batch


def check_item(item: StepInput, start_layer: int, end_layer: int, hidden_size: int, vocab_size: int) -> None:
    """Raise RequestError unless `item` is well formed for a stage holding [start, end)."""
    rid = item.request_id
    if not (start_layer <= item.run_start_layer < end_layer):
        raise RequestError(
            f"request {rid!r}: run_start_layer {item.run_start_layer} is outside this stage's layers [{start_layer}, {end_layer})"
        )
    if item.run_start_layer == 0:
        if item.token_ids is None or item.hidden is not None:
            raise RequestError(f"request {rid!r}: entering at layer 0 needs token_ids and no hidden")
        ids = np.asarray(item.token_ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise RequestError(f"request {rid!r}: token_ids must be a non-empty 1-D integer array")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise RequestError(f"request {rid!r}: token id out of range [0, {vocab_size})")
    else:
        if item.hidden is None or item.token_ids is not None:
            raise RequestError(f"request {rid!r}: entering at layer {item.run_start_layer} needs hidden states and no token_ids")
        shape = np.shape(item.hidden)
        if len(shape) != 2 or shape[0] == 0 or shape[1] != hidden_size:
            raise RequestError(f"request {rid!r}: hidden must have shape [n, {hidden_size}], got {list(shape)}")
    if item.position < 0:
        raise RequestError(f"request {rid!r}: position must be >= 0, got {item.position}")


def check_step(
    items: list[StepInput], requests: dict, start_layer: int, end_layer: int, config, max_chunk_tokens: int, max_seq_len: int
) -> None:
    """Raise RequestError unless every item is well formed and continues its held request
    (`requests`: id -> object with run_start_layer and next_position); nothing is changed."""
    seen: set[Hashable] = set()
    for item in items:
        request = requests.get(item.request_id)
        if request is None:
            raise RequestError(f"request {item.request_id!r} is not held by this stage (call add_request)")
        if item.request_id in seen:
            raise RequestError(f"request {item.request_id!r} appears twice in one step")
        seen.add(item.request_id)
        check_item(item, start_layer, end_layer, config.hidden_size, config.vocab_size)
        if request.run_start_layer not in (None, item.run_start_layer):
            raise RequestError(f"request {item.request_id!r} entered at layer {request.run_start_layer}, not {item.run_start_layer}")
        if item.position != request.next_position:
            raise RequestError(f"request {item.request_id!r}: position {item.position} given, {request.next_position} tokens are cached")
        if item.num_tokens > max_chunk_tokens:
            raise RequestError(
                f"request {item.request_id!r}: chunk of {item.num_tokens} tokens exceeds max_chunk_tokens {max_chunk_tokens}"
            )
        if item.position + item.num_tokens > max_seq_len:
            raise RequestError(f"request {item.request_id!r}: {item.position + item.num_tokens} tokens exceed max_seq_len {max_seq_len}")
