"""A STAGE: one contiguous layer range `[start, end)` of the model on one device.

Owns: `StageModel` (Flax NNX; stacked decoder layers scanned with `jax.lax.scan`, plus the
token embedding on the first stage and final norm + LM head on the last), `KVCache` (the
explicit cache pytree) and `forward_full` (uncached reference forward used by tests).
Sits in the runtime step of the data flow: `engine.py` splits a StageModel with `nnx.split`
and runs `StageModel.__call__` under `jax.jit` with the weights as traced arguments.

Layer loop: "scan" stacks the layers' weights (`[layers, ...]`) and runs one `lax.scan` (compile
time independent of depth: many narrow layers); "unroll" keeps one module per layer and a
Python loop (every weight read in place: wide, bandwidth-bound layers, where the scan's
per-iteration weight slice costs a copy). `choose_layer_loop` picks by layer width.

Partial inference: every row of a batch carries `run_start` (a global layer index). Layer
`l` of the stage updates a row's hidden state and KV only where `run_start <= l`; rows that
skip the layer keep their hidden state bit for bit and write nothing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from helix_jax.errors import ConfigError
from helix_jax.model.layers import DecoderLayer, LayerKV, RMSNorm, jnp_dtype, normal_init, rope_cos_sin, rope_inv_freq
from helix_jax.modelconfig import ModelConfig


class KVCache(NamedTuple):
    """Keys and values of every layer of a stage: per slot `[layers, slots, max_seq, kv_heads,
    head_dim]` (contiguous) or a page pool `[kv_heads, layers, pages, page_size, head_dim]`
    (paged, kv-head major: paged_cache.py)."""

    k: jax.Array
    v: jax.Array


def init_kv_cache(config: ModelConfig, num_layers: int, num_slots: int, max_seq_len: int) -> KVCache:
    shape = (num_layers, num_slots, max_seq_len, config.num_kv_heads, config.dim_per_head)
    return KVCache(jnp.zeros(shape, jnp_dtype(config)), jnp.zeros(shape, jnp_dtype(config)))


def init_paged_kv_cache(config: ModelConfig, num_layers: int, pages_per_layer: int, page_size: int) -> KVCache:
    shape = (config.num_kv_heads, num_layers, pages_per_layer, page_size, config.dim_per_head)
    return KVCache(jnp.zeros(shape, jnp_dtype(config)), jnp.zeros(shape, jnp_dtype(config)))


def kv_cache_bytes(config: ModelConfig, num_layers: int, num_slots: int, max_seq_len: int) -> int:
    return config.kv_bytes_per_token_per_layer * num_layers * num_slots * max_seq_len


LAYER_LOOPS = ("scan", "unroll")
UNROLL_MIN_LAYER_BYTES = 4 << 20


def choose_layer_loop(config: ModelConfig, layer_loop: str = "auto") -> str:
    """ "auto": unroll layers of at least 4 MiB of weights (real models), scan narrow ones."""
    if layer_loop == "auto":
        return "unroll" if config.weight_bytes_per_layer >= UNROLL_MIN_LAYER_BYTES else "scan"
    if layer_loop not in LAYER_LOOPS:
        raise ConfigError(f"layer_loop must be 'auto', 'scan' or 'unroll', got {layer_loop!r}")
    return layer_loop


class StageModel(nnx.Module):
    """Layers `[start_layer, end_layer)` of `config`; `layer_keys [end-start, 2]` seed their init."""

    def __init__(
        self,
        config: ModelConfig,
        start_layer: int,
        end_layer: int,
        layer_keys: jax.Array,
        embed_key: jax.Array,
        head_key: jax.Array,
        layer_loop: str = "scan",
    ):
        dtype = jnp_dtype(config)
        self.config, self.start_layer, self.end_layer = config, start_layer, end_layer
        self.is_first, self.is_last = start_layer == 0, end_layer == config.num_layers
        self.layer_loop = choose_layer_loop(config, layer_loop)
        self.layers: Any  # scan: one DecoderLayer whose Params lead with [num_layers]; unroll: nnx.List
        if self.layer_loop == "scan":  # every Param gets a leading [num_layers] axis
            self.layers = nnx.vmap(lambda key: DecoderLayer(config, nnx.Rngs(params=key)), in_axes=0, out_axes=0)(layer_keys)
        else:
            self.layers = nnx.List([DecoderLayer(config, nnx.Rngs(params=layer_keys[i])) for i in range(end_layer - start_layer)])
        needs_table = self.is_first or (self.is_last and config.tie_word_embeddings)
        self.embed: Any = (
            nnx.Embed(
                config.vocab_size,
                config.hidden_size,
                dtype=dtype,
                param_dtype=dtype,
                embedding_init=normal_init(1.0),
                rngs=nnx.Rngs(params=embed_key),
            )
            if needs_table
            else None
        )
        self.final_norm: Any = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype) if self.is_last else None
        self.lm_head: Any = (
            nnx.Linear(
                config.hidden_size,
                config.vocab_size,
                use_bias=False,
                dtype=dtype,
                param_dtype=dtype,
                rngs=nnx.Rngs(params=head_key),
                kernel_init=normal_init(2.0 / config.hidden_size**0.5),
            )
            if self.is_last and not config.tie_word_embeddings
            else None
        )

    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer

    def __call__(
        self,
        token_ids: jax.Array | None,
        hidden: jax.Array,
        run_start: jax.Array,
        positions: jax.Array,
        num_tokens: jax.Array,
        kv_index: jax.Array,
        cache: KVCache,
        context_len: int,
        page_size: int = 0,
        attention: str = "gather",
    ) -> tuple[jax.Array, KVCache]:
        """Run the stage's layers on a padded batch and update the cache.

        token_ids `[B, T]` (first stage only, used by rows with run_start == 0), hidden
        `[B, T, hidden]` (rows entering after layer 0), run_start/positions/num_tokens `[B]`:
        first layer to run, position of the row's first token, valid tokens in the row (0 for
        padding rows). kv_index: the rows' cache slots `[B]` (contiguous cache, page_size 0) or
        their page tables `[B, layers, P]` (paged cache of `page_size`-token pages, whose
        attention window is P x page_size; `attention`: its decode backend, paged_cache.py).
        Returns hidden `[B, T, hidden]` after `end_layer - 1`.
        """
        tokens = hidden.shape[1]
        token_index = jnp.arange(tokens, dtype=jnp.int32)[None, :]
        query_pos = positions[:, None] + token_index  # [B, T]
        valid = token_index < num_tokens[:, None]  # [B, T]
        x = hidden
        if self.is_first and token_ids is not None:
            x = jnp.where((run_start == 0)[:, None, None], self.embed(token_ids), hidden)
        cos, sin = rope_cos_sin(rope_inv_freq(self.config), query_pos)

        def apply(layer: DecoderLayer, index, x, k_cache, v_cache):
            run = run_start <= self.start_layer + index  # [B]: rows that run this layer
            kv = LayerKV(k_cache, v_cache, index, valid & run[:, None], kv_index, query_pos, context_len, page_size, attention)
            y, k_cache, v_cache = layer(x, cos, sin, kv)
            return jnp.where(run[:, None, None], y, x), k_cache, v_cache

        k, v = cache.k, cache.v  # paged: any page may serve any layer (paged_cache.py)
        if self.layer_loop == "unroll":
            for index, layer in enumerate(self.layers):
                x, k, v = apply(layer, index, x, k, v)
            return x, KVCache(k, v)
        layer_graph, layer_state = nnx.split(self.layers)

        def one_layer(carry, xs):
            state, index = xs
            return apply(nnx.merge(layer_graph, state), index, *carry), None

        indices = jnp.arange(self.num_layers, dtype=jnp.int32)
        (x, k, v), _ = jax.lax.scan(one_layer, (x, k, v), (layer_state, indices))
        return x, KVCache(k, v)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final norm + LM head (last stage only): `[..., hidden]` -> float32 `[..., vocab]`."""
        h = self.final_norm(hidden)
        out = self.embed.attend(h) if self.lm_head is None else self.lm_head(h)
        return out.astype(jnp.float32)


def forward_full(model: StageModel, token_ids: jax.Array) -> jax.Array:
    """Uncached reference: logits `[B, T, vocab]` of a whole-model stage on `token_ids [B, T]`.

    Uses a fresh cache with one slot per row; no padding, no chunking. Tests compare the
    engine's cached, chunked, padded and staged paths against this.
    """
    batch, tokens = token_ids.shape
    cfg = model.config
    cache = init_kv_cache(cfg, model.num_layers, batch, tokens)
    hidden = jnp.zeros((batch, tokens, cfg.hidden_size), jnp_dtype(cfg))
    zeros = jnp.zeros((batch,), jnp.int32)
    x, _ = model(token_ids, hidden, zeros + model.start_layer, zeros, zeros + tokens, jnp.arange(batch, dtype=jnp.int32), cache, tokens)
    return model.logits(x)
