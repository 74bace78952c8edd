"""The engine contract: what a worker needs of the thing that runs its layers.

Sits between the worker loop (worker.py, stage_host.py: wire messages, queues, batching) and
the compute: `StageEngine` (helix_jax.model, jax) in production, `helix_jax.testing.FakeRunner`
(numpy, hand-checkable arithmetic) in tests. A worker is given a `RunnerFactory`; on `assign`
it builds a `RunnerSpec` from the message, calls the factory, then `warmup()`.

The contract is `StageRunner`: every method's promise is in its docstring, and both
implementations keep them (tests/test_runner_contract.py runs the same checks on both).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Protocol, Sequence, runtime_checkable

from helix_jax.model.batching import StepInput, StepOutput
from helix_jax.model.sampling_params import SamplingParams
from helix_jax.modelconfig import ModelConfig


@dataclasses.dataclass(frozen=True)
class RunnerSpec:
    """Everything a runner is built from (the worker derives it from `assign`)."""

    config: ModelConfig
    start_layer: int
    end_layer: int
    weights: str  # checkpoint source: a directory, a .gguf, a cache name or "random:SEED"
    max_slots: int  # requests held at once
    max_seq_len: int
    prefill_buckets: tuple[int, ...]  # token counts per prompt chunk; the largest is the longest chunk
    decode_buckets: tuple[int, ...]  # row counts of decode steps
    kv_layout: str = "paged"  # "paged" | "contiguous"
    page_size: int = 16
    num_pages: int | None = None  # per layer (paged); None: as many tokens as max_slots x max_seq_len
    layer_loop: str = "auto"  # "auto" | "scan" | "unroll" (helix_jax/model/stage.py)


@runtime_checkable
class StageRunner(Protocol):
    """Runs layers [start_layer, end_layer) of one model for the requests it holds.

    Not thread-safe: one worker thread drives it. Request ids are opaque hashables.
    """

    config: ModelConfig
    start_layer: int
    end_layer: int
    max_seq_len: int

    @property
    def max_chunk_tokens(self) -> int:
        """Longest prompt chunk one StepInput may carry."""
        ...

    @property
    def kv_capacity_token_layers(self) -> int:
        """KV entries (tokens x layers) the runner can hold: what the scheduler's ledger budgets."""
        ...

    @property
    def kv_page_tokens(self) -> int | None:
        """Tokens per KV page (the ledger rounds reservations to it); None: whole slots."""
        ...

    @property
    def free_slots(self) -> int:
        """Requests that may still be added now."""
        ...

    @property
    def pages_available(self) -> int:
        """Pages neither allocated nor promised (contiguous: a number never reached)."""
        ...

    def page_cost(self, item: StepInput, reserve_tokens: int = 0) -> int:
        """Pages running `item` would take now (for a request not yet held: its reservation or
        the item's pages, whichever is larger); 0 when contiguous. Changes nothing."""
        ...

    def has_request(self, request_id: Hashable) -> bool:
        """Whether `add_request` was called for this id and `release` not yet."""
        ...

    def tokens_cached(self, request_id: Hashable) -> int:
        """Positions of a held request already in the KV cache (the next step's position);
        RequestError for an id not held."""
        ...

    def add_request(
        self, request_id: Hashable, sampling: SamplingParams | None = None, *, reserve_tokens: int = 0, run_start_layer: int | None = None
    ) -> int:
        """Hold a new request (a slot; paged: promise the pages of `reserve_tokens` tokens on the
        layers from `run_start_layer`). OverloadedError when no slot or pages are free, and
        RequestError for an id already held; nothing changes on either error."""
        ...

    def step(self, items: Sequence[StepInput]) -> list[StepOutput]:
        """One batch: prompt chunks and decode tokens of distinct held requests, each at its
        `tokens_cached` position. One StepOutput per item, in order: `hidden [n, hidden_size]`
        unless this is the last stage, else `next_token` where the item samples. RequestError or
        OverloadedError with nothing computed and nothing changed when any item is bad."""
        ...

    def release(self, request_id: Hashable) -> None:
        """Free a held request's KV (RequestError for an id not held)."""
        ...

    def warmup(self) -> int:
        """Prepare every program a steady mix of requests needs; returns how many. Called once,
        before the first step."""
        ...


RunnerFactory = Callable[[RunnerSpec], StageRunner]


def engine_runner(spec: RunnerSpec) -> StageRunner:
    """The production factory: the stage's weights from `spec.weights` and a jitted StageEngine."""
    from helix_jax.model import StageEngine, load_stage_weights

    weights = load_stage_weights(spec.config, spec.start_layer, spec.end_layer, spec.weights, spec.layer_loop)
    paging: dict[str, Any] = dict(kv_layout=spec.kv_layout)
    if spec.kv_layout == "paged":
        paging.update(page_size=spec.page_size, num_pages=spec.num_pages)
    engine: StageRunner = StageEngine(
        spec.config,
        spec.start_layer,
        spec.end_layer,
        weights,
        max_slots=spec.max_slots,
        max_seq_len=spec.max_seq_len,
        prefill_buckets=spec.prefill_buckets,
        decode_buckets=spec.decode_buckets,
        prefill_batch_buckets=(1,),
        **paging,
    )
    return engine
