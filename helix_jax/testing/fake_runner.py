"""FakeRunner: a StageRunner (runtime/runner.py) whose outputs can be worked out by hand.

Sits where a StageEngine would, inside a worker (tests and `helix_jax.testing.InProcessCluster`):
the worker, its batching, the wire, the coordinator and the scheduler around it are the real
ones; only the layers are replaced, by numpy arithmetic that costs nothing to run.

The arithmetic:
* a hidden state has `hidden_size` columns; column 0 carries the token id and column 1 the
  number of layers that ran on it so far. A stage entered at layer s (token ids when s == 0)
  checks that exactly s layers ran before it, then adds its own `end - s`;
* the "KV cache" of a request on a stage is the sum of the token ids it holds;
* the last stage samples `next_token(sum, position, sampling)`: (sum of every token id of the
  request up to and including this step's + the position of the step's last token + the seed
  when temperature > 0) mod vocab, so `fake_generation` gives a whole stream in advance.
The slot and page accounting is the engine's own (KVCapacity over a PagePool), so admission
and the KV ledger are exercised as they are in production.

Test controls (thread-safe): `freeze()` blocks the next step until `thaw()` (a hung GPU: the
worker stops heartbeating); `freeze_after(...)` freezes after some more batches or sampled requests; `fail_next(exc)`
makes the next step raise `exc`.
"""

from __future__ import annotations

import threading
from typing import Hashable, Sequence

import numpy as np

from helix_jax.errors import OverloadedError, RequestError
from helix_jax.model.batching import StepInput, StepOutput, check_step
from helix_jax.model.engine_capacity import KVCapacity
from helix_jax.model.page_pool import PagePool, pages_for
from helix_jax.model.sampling_params import SamplingParams
from helix_jax.runtime.runner import RunnerSpec


def next_token(token_sum: int, position: int, sampling: SamplingParams, vocab_size: int) -> int:
    """The fake's sampled token after a request's tokens summing to `token_sum`, the last at `position`."""
    seed = sampling.seed if sampling.temperature > 0 else 0
    return (token_sum + position + seed) % vocab_size


def fake_generation(
    prompt: Sequence[int], max_tokens: int, vocab_size: int, sampling: SamplingParams | None = None, stop_ids: frozenset[int] = frozenset()
) -> list[int]:
    """The tokens a deployment of FakeRunners streams for `prompt` (stopping after a stop id)."""
    sampling = sampling or SamplingParams()
    total, position = sum(int(t) for t in prompt), len(prompt) - 1
    out: list[int] = []
    while len(out) < max_tokens:
        token = next_token(total, position, sampling, vocab_size)
        out.append(token)
        if token in stop_ids:
            break
        total, position = total + token, position + 1
    return out


class _Held:
    __slots__ = ("slot", "sampling", "run_start_layer", "next_position", "token_sum")

    def __init__(self, slot: int, sampling: SamplingParams):
        self.slot, self.sampling = slot, sampling
        self.run_start_layer: int | None = None
        self.next_position = 0
        self.token_sum = 0


class FakeRunner(KVCapacity):
    """The engine contract with hand-checkable arithmetic (module docstring)."""

    def __init__(self, spec: RunnerSpec) -> None:
        self.spec = spec
        self.config, self.start_layer, self.end_layer = spec.config, spec.start_layer, spec.end_layer
        self.max_slots, self.max_seq_len = spec.max_slots, spec.max_seq_len
        self.is_last = spec.end_layer == spec.config.num_layers
        self.page_size = spec.page_size if spec.kv_layout == "paged" else 0
        self.pool: PagePool | None = None
        if self.page_size:
            pages = spec.num_pages or spec.max_slots * pages_for(spec.max_seq_len, spec.page_size)
            self.pool = PagePool(self.num_layers, pages, self.page_size)
        self.cache = None
        self._requests: dict[Hashable, _Held] = {}
        self._free_slots = list(range(spec.max_slots - 1, -1, -1))
        self._thawed = threading.Event()
        self._thawed.set()
        self._fail: list[Exception] = []
        self._freeze_in: int | None = None
        self._sampled_goal: int | None = None
        self._sampled_since: set[Hashable] = set()
        self.decode_batches: list[frozenset[tuple[Hashable, int]]] = []  # each batch's one-token items: (request, position)
        self.prompt_batches: list[int] = []  # indices (in decode_batches) of the batches that carried prompt tokens
        self.warmed_up = False

    @property
    def steps(self) -> int:
        """Batches run."""
        return len(self.decode_batches)

    @property
    def most_decode_rows(self) -> int:
        """The most one-token items in one batch."""
        return max(map(len, self.decode_batches), default=0)

    # ---- test controls --------------------------------------------------------------------
    def freeze(self) -> None:
        self._thawed.clear()

    @property
    def frozen(self) -> bool:
        """Whether the next batch would hang (after `freeze()`, or once a `freeze_after` fired)."""
        return not self._thawed.is_set()

    def thaw(self) -> None:
        """Let batches run again; a `freeze_after` that has not fired yet is called off."""
        self._freeze_in = self._sampled_goal = None
        self._thawed.set()

    def freeze_after(self, batches: int | None = None, requests_sampled: int | None = None) -> None:
        """Freeze (as `freeze()`) before the next batch once `batches` more batches have run, or
        once `requests_sampled` distinct requests have sampled a token here from now on."""
        self._freeze_in = batches
        self._sampled_goal = requests_sampled
        self._sampled_since = set()

    def fail_next(self, exc: Exception, times: int = 1) -> None:
        """The next `times` step calls raise `exc` (the worker retries a failed batch item by item)."""
        self._fail.extend([exc] * times)

    # ---- the contract ---------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer

    @property
    def max_chunk_tokens(self) -> int:
        return self.spec.prefill_buckets[-1]

    @property
    def kv_cache_bytes(self) -> int:
        return 0

    def add_request(
        self, request_id: Hashable, sampling: SamplingParams | None = None, *, reserve_tokens: int = 0, run_start_layer: int | None = None
    ) -> int:
        slot = self._hold(request_id, reserve_tokens, run_start_layer)
        self._requests[request_id] = _Held(slot, sampling or SamplingParams())
        return slot

    def release(self, request_id: Hashable) -> None:
        self._unhold(request_id)

    def warmup(self) -> int:
        self.warmed_up = True
        return 0

    def step(self, items: Sequence[StepInput]) -> list[StepOutput]:
        self._thawed.wait()
        if self._fail:
            raise self._fail.pop(0)
        items = list(items)
        check_step(items, self._requests, self.start_layer, self.end_layer, self.config, self.max_chunk_tokens, self.max_seq_len)
        ids = [self._token_ids(item) for item in items]  # RequestError before anything changes
        if self.pool is not None:
            need = sum(self.page_cost(item) for item in items)
            if need > self.pool.pages_available:
                raise OverloadedError(
                    f"stage [{self.start_layer}, {self.end_layer}): the step needs {need} "
                    f"more pages, {self.pool.pages_available} are available"
                )
            for item in items:
                self.pool.grow(item.request_id, item.run_start_layer - self.start_layer, item.position + item.num_tokens)
        self.decode_batches.append(frozenset((item.request_id, item.position) for item in items if item.num_tokens == 1))
        if any(item.num_tokens > 1 for item in items):
            self.prompt_batches.append(len(self.decode_batches) - 1)
        outputs = [self._run(item, tokens) for item, tokens in zip(items, ids)]
        self._maybe_freeze(outputs)
        return outputs

    def _maybe_freeze(self, outputs: list[StepOutput]) -> None:
        if self._freeze_in is not None:
            self._freeze_in -= 1
            if self._freeze_in <= 0:
                self._freeze_in = None
                self.freeze()
        if self._sampled_goal is not None:
            self._sampled_since.update(o.request_id for o in outputs if o.next_token is not None)
            if len(self._sampled_since) >= self._sampled_goal:
                self._sampled_goal = None
                self.freeze()

    # ---- arithmetic -----------------------------------------------------------------------
    def _token_ids(self, item: StepInput) -> np.ndarray:
        if item.token_ids is not None:
            return np.asarray(item.token_ids, np.int64)
        hidden = np.asarray(item.hidden, np.float64)
        ran = hidden[:, 1]
        if not np.all(ran == item.run_start_layer):
            raise RequestError(
                f"request {item.request_id!r}: hidden states ran {sorted(set(ran.tolist()))} layers before layer {item.run_start_layer}"
            )
        return hidden[:, 0].astype(np.int64)

    def _run(self, item: StepInput, tokens: np.ndarray) -> StepOutput:
        held = self._requests[item.request_id]
        held.run_start_layer = item.run_start_layer
        held.next_position += item.num_tokens
        held.token_sum += int(tokens.sum())
        if self.is_last:
            token = (
                next_token(held.token_sum, item.position + item.num_tokens - 1, held.sampling, self.config.vocab_size)
                if item.sample
                else None
            )
            return StepOutput(item.request_id, next_token=token)
        hidden = np.zeros((item.num_tokens, self.config.hidden_size), np.float32)
        hidden[:, 0] = tokens
        hidden[:, 1] = self.end_layer
        return StepOutput(item.request_id, hidden=hidden)
