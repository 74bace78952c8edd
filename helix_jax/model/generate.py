"""Whole-model generation on one device with the same StageEngine a worker runs.

Owns `LocalModel` and `generate_local`: one stage holding [0, num_layers), chunked prefill, then decode
until `max_tokens` or EOS. The distributed deployment must produce the same ids for the
same (prompt, sampling), which tests and the serving helper check against this function.
Sits beside the runtime in the data flow (no coordinator, no network).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import numpy as np

from helix_jax.errors import RequestError
from helix_jax.model.batching import StepInput
from helix_jax.model.engine import StageEngine
from helix_jax.model.sampling import SamplingParams
from helix_jax.model.weights import StageWeights, load_stage_weights
from helix_jax.modelconfig import ModelConfig

log = logging.getLogger(__name__)

_SEQ_ROUND = 64


class LocalModel:
    """The whole model on this device: one StageEngine (one request at a time; `kv_layout`
    "paged" or "contiguous", default the engine's) reused across prompts, so its step
    programs compile once. `generate` is what `generate_local` does for one call; with
    `return_logits`, `prompt_logits` gives the next-token logits after a prompt (the same
    programs, which then also return each row's logits)."""

    def __init__(
        self,
        config: ModelConfig,
        weights_source: str | Path | StageWeights,
        max_seq_len: int,
        chunk_tokens: int = 64,
        compiler_options: dict | None = None,
        kv_layout: str | None = None,
        return_logits: bool = False,
    ):
        self.config = config
        self.max_seq_len = min(config.max_position_embeddings, -(-max_seq_len // _SEQ_ROUND) * _SEQ_ROUND)
        self.weights = (
            weights_source if isinstance(weights_source, StageWeights) else load_stage_weights(config, 0, config.num_layers, weights_source)
        )
        self.chunk = min(chunk_tokens, self.max_seq_len)
        layout: dict[str, Any] = {} if kv_layout is None else {"kv_layout": kv_layout}
        self.engine = StageEngine(
            config,
            0,
            config.num_layers,
            self.weights,
            max_slots=1,
            max_seq_len=self.max_seq_len,
            prefill_buckets=(self.chunk,),
            decode_buckets=(1,),
            prefill_batch_buckets=(1,),
            compiler_options=compiler_options,
            return_logits=return_logits,
            **layout,
        )

    def prompt_logits(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """The float32 logits [vocab] that sample the token after `prompt_ids` (chunked prefill,
        as `generate` runs it). Needs `return_logits`."""
        if not self.engine.return_logits:
            raise RequestError("prompt_logits needs a LocalModel built with return_logits=True")
        prompt = [int(t) for t in prompt_ids]
        if not 0 < len(prompt) <= self.max_seq_len:
            raise RequestError(f"prompt of {len(prompt)} tokens: expected 1 to {self.max_seq_len}")
        self.engine.add_request("local")
        try:
            for begin in range(0, len(prompt), self.chunk):
                piece = np.asarray(prompt[begin : begin + self.chunk], np.int32)
                (result,) = self.engine.step([StepInput("local", 0, begin, token_ids=piece, sample=begin + self.chunk >= len(prompt))])
        finally:
            self.engine.release("local")
        assert result.logits is not None  # the last chunk samples, and the engine returns logits
        return np.asarray(result.logits)

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int,
        sampling: SamplingParams | None = None,
        *,
        stop_at_eos: bool = True,
        on_token: Callable[[int], None] | None = None,
        stop_token_ids: Collection[int] | None = None,
    ) -> list[int]:
        """Up to `max_tokens` ids after `prompt_ids` (see `generate_local`)."""
        config, engine, chunk = self.config, self.engine, self.chunk
        stops = (
            frozenset(int(i) for i in stop_token_ids)
            if stop_token_ids is not None
            else frozenset()
            if config.eos_token_id is None
            else frozenset({config.eos_token_id})
        )
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise RequestError("prompt must contain at least one token")
        if max_tokens <= 0:
            raise RequestError(f"max_tokens must be positive, got {max_tokens}")
        if len(prompt) + max_tokens > self.max_seq_len:
            raise RequestError(f"prompt ({len(prompt)}) + max_tokens ({max_tokens}) exceeds the maximum sequence length {self.max_seq_len}")
        engine.add_request("local", sampling or SamplingParams())
        out: list[int] = []
        token = None
        for begin in range(0, len(prompt), chunk):
            piece = np.asarray(prompt[begin : begin + chunk], np.int32)
            last = begin + chunk >= len(prompt)
            (result,) = engine.step([StepInput("local", 0, begin, token_ids=piece, sample=last)])
            token = result.next_token
        assert token is not None  # the last chunk samples
        position = len(prompt)
        while True:
            out.append(token)
            if on_token is not None:
                on_token(token)
            if len(out) >= max_tokens or (stop_at_eos and token in stops):
                break
            (result,) = engine.step([StepInput("local", 0, position, token_ids=np.asarray([token], np.int32))])
            assert result.next_token is not None  # a whole-model stage samples every decode row
            token, position = result.next_token, position + 1
        engine.release("local")
        log.info("generated %d tokens (%d programs compiled)", len(out), engine.compile_count)
        return out


def generate_local(
    config: ModelConfig,
    weights_source: str | Path | StageWeights,
    prompt_ids: Sequence[int],
    max_tokens: int,
    sampling: SamplingParams | None = None,
    *,
    chunk_tokens: int = 64,
    stop_at_eos: bool = True,
    on_token: Callable[[int], None] | None = None,
    compiler_options: dict | None = None,
    stop_token_ids: Collection[int] | None = None,
) -> list[int]:
    """Generate up to `max_tokens` ids after `prompt_ids` (returned without the prompt).

    Stops early after emitting a stop id (included) when `stop_at_eos`: `stop_token_ids` (the
    tokenizer's EOS and end-of-turn ids), by default the model's EOS. `on_token` is called with
    each id as soon as it is sampled (streaming). Prompts are prefilled in chunks of
    `chunk_tokens`, exactly as a worker would receive them. `compiler_options` go to the
    engine (XLA options of its step programs).
    """
    if not prompt_ids:
        raise RequestError("prompt must contain at least one token")
    if max_tokens <= 0:
        raise RequestError(f"max_tokens must be positive, got {max_tokens}")
    total = len(prompt_ids) + max_tokens
    if total > config.max_position_embeddings:
        raise RequestError(
            f"prompt ({len(prompt_ids)}) + max_tokens ({max_tokens}) exceeds the model's "
            f"max_position_embeddings {config.max_position_embeddings}"
        )
    model = LocalModel(config, weights_source, total, chunk_tokens, compiler_options)
    return model.generate(prompt_ids, max_tokens, sampling, stop_at_eos=stop_at_eos, on_token=on_token, stop_token_ids=stop_token_ids)
