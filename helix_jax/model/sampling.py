"""Next-token sampling on the last stage: greedy, temperature, top-k, top-p, per-request seed.

Owns: `sample_tokens` (`SamplingParams`, validated, lives in the jax-free sampling_params) (traced inside the last
stage's jitted step). Sits at the end of the runtime step of the data flow.

Determinism: sampling is Gumbel-max with noise from a counter-based integer hash of
(seed, position, token id), where `position` is the absolute position the new token will
occupy. The choice therefore depends only on (logits, seed, position), never on batch
composition, so a distributed deployment samples exactly what a local run samples. The hash
(integer multiply/xor-shift, exact on every backend) replaces jax.random's threefry, which
added ~0.6 s of XLA compile time to every last-stage bucket on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from helix_jax.model.sampling_params import SamplingParams

__all__ = ["SamplingParams", "sample_tokens"]


def _sample_row(
    logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, seed: jax.Array, position: jax.Array
) -> jax.Array:
    """One row: logits `[vocab]` (float32) -> token id (int32)."""
    vocab = logits.shape[-1]
    greedy_token = jnp.argmax(logits).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    ranked = jnp.sort(scaled)[::-1]  # descending
    rank = jnp.arange(vocab)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    in_top_k = rank < k
    probs = jax.nn.softmax(jnp.where(in_top_k, ranked, -jnp.inf))
    mass_before = jnp.cumsum(probs) - probs
    # smallest prefix reaching top_p (rank 0 always kept; top_p 1 keeps all despite rounding)
    keep = in_top_k & ((mass_before < top_p) | (top_p >= 1.0))
    threshold = ranked[jnp.sum(keep) - 1]
    masked = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    sampled = jnp.argmax(masked + gumbel_noise(seed, position, vocab)).astype(jnp.int32)
    return jnp.where(temperature <= 0.0, greedy_token, sampled)


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash (xor-shift / multiply finaliser)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def gumbel_noise(seed: jax.Array, position: jax.Array, vocab: int) -> jax.Array:
    """Standard Gumbel noise `[vocab]` (float32), a pure function of (seed, position)."""
    index = jnp.arange(vocab, dtype=jnp.uint32)
    stream = _mix32(_mix32(seed.astype(jnp.uint32) + jnp.uint32(0x9E3779B9)) ^ position.astype(jnp.uint32))
    bits = _mix32(index * jnp.uint32(0x85EBCA6B) ^ stream)
    uniform = ((bits >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
    return -jnp.log(-jnp.log(uniform))


def sample_tokens(
    logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, seed: jax.Array, position: jax.Array
) -> jax.Array:
    """logits `[B, vocab]` float32 and per-row params `[B]` -> next token ids `[B]` int32.

    Three paths give identical tokens per row; a batch takes the cheapest that serves all its
    rows: all greedy (argmax only), no top-k/top-p filter anywhere (Gumbel-max over the full
    vocabulary), or the per-row sort of the filtered path.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    vocab = logits.shape[-1]

    def plain(_):
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        noise = jax.vmap(lambda s, p: gumbel_noise(s, p, vocab))(seed, position)
        return jnp.where(temperature <= 0.0, greedy, jnp.argmax(scaled + noise, axis=-1).astype(jnp.int32))

    def filtered(_):
        return jax.vmap(_sample_row)(logits, temperature, top_k, top_p, seed, position)

    sampling = temperature > 0.0
    needs_filter = jnp.any(sampling & ((top_k > 0) | (top_p < 1.0)))
    return jax.lax.cond(jnp.any(sampling), lambda _: jax.lax.cond(needs_filter, filtered, plain, None), lambda _: greedy, None)
