"""Weights of one stage: seeded random weights or a Hugging Face checkpoint, for layers
`[start, end)` only.

Owns: `StageWeights` (graphdef + nnx.State of a `StageModel`) and `load_stage_weights`.
Sits in the runtime step of the data flow: a worker loads the weights of the layer range
its placement gives it, then hands them to `StageEngine`.

Random weights ("random:<seed>") are keyed per global layer: small models draw each Hugging
Face tensor (named with its layer) from its own numpy generator, larger ones `fold_in` the
layer index on the device. Either way a stage holding `[s, e)` builds exactly the layers
`s..e-1` of the whole model: a pipeline of stages computes the same function as one stage
holding everything.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from helix_jax.errors import ConfigError
from helix_jax.model.compile_cache import enable_compile_cache
from helix_jax.model.stage import StageModel
from helix_jax.modelconfig import ModelConfig

log = logging.getLogger(__name__)

_LAYER_STREAM, _EMBED_STREAM, _HEAD_STREAM = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class StageWeights:
    """Everything a StageEngine needs to build its layers: static graph plus array state."""

    config: ModelConfig
    start_layer: int
    end_layer: int
    graphdef: Any  # nnx.GraphDef of the StageModel
    state: Any  # nnx.State: the weight arrays (traced arguments of the jitted step)
    tensors_read: tuple[str, ...] = ()  # GGUF tensors dequantized to build it (GGUF sources only)

    def model(self) -> StageModel:
        """A live StageModel sharing these arrays (for direct, unjitted use)."""
        return nnx.merge(self.graphdef, self.state)

    @property
    def weight_bytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.state))


def check_range(config: ModelConfig, start_layer: int, end_layer: int) -> None:
    if not (0 <= start_layer < end_layer <= config.num_layers):
        raise ConfigError(
            f"stage layer range [{start_layer}, {end_layer}) is not a non-empty range "
            f"inside [0, {config.num_layers}) of model {config.name!r}"
        )


def _keys(seed: int, start_layer: int, end_layer: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    base = jax.random.PRNGKey(seed)
    layer_base = jax.random.fold_in(base, _LAYER_STREAM)
    layer_keys = jnp.stack([jax.random.fold_in(layer_base, layer) for layer in range(start_layer, end_layer)])
    return layer_keys, jax.random.fold_in(base, _EMBED_STREAM), jax.random.fold_in(base, _HEAD_STREAM)


HOST_DRAW_MAX_PARAMS = 1 << 26  # models up to 64M parameters draw their random weights with numpy


def random_stage_weights(config: ModelConfig, start_layer: int, end_layer: int, seed: int = 0, layer_loop: str = "auto") -> StageWeights:
    """Seeded random weights for layers `[start, end)` (identical to the whole model's).

    Small models (the tiny ones, up to HOST_DRAW_MAX_PARAMS) draw on the host with numpy, one
    generator per Hugging Face tensor name (`_HostDraws`), and go through the checkpoint loader:
    no XLA program at all (JAX's eager init compiles one small program per op and shape, seconds
    of CPU per process). Larger models (profiling shapes, benches) draw on the device with JAX.
    The choice is made per model, never per stage: every stage of one model must draw the same
    way, or a pipeline of stages would not compute the whole model's function."""
    check_range(config, start_layer, end_layer)
    if total_params(config) <= HOST_DRAW_MAX_PARAMS:
        from helix_jax.model.checkpoint import fill_stage_state

        graphdef, abstract = abstract_stage(config, start_layer, end_layer, layer_loop)
        state = fill_stage_state(_HostDraws(config, seed).read, f"random:{seed}", config, start_layer, end_layer, abstract)
        return StageWeights(config, start_layer, end_layer, graphdef, state)
    enable_compile_cache()  # the init's eager ops compile one small program each: seconds of CPU uncached
    model = StageModel(config, start_layer, end_layer, *_keys(seed, start_layer, end_layer), layer_loop=layer_loop)
    graphdef, state = nnx.split(model)
    return StageWeights(config, start_layer, end_layer, graphdef, state)


def total_params(config: ModelConfig) -> int:
    """Parameters of the whole model: its layers, the embedding table(s) and the final norm."""
    return config.num_layers * config.params_per_layer + config.embedding_bytes // config.bytes_per_param


class _HostDraws:
    """The random weights of a small model as a checkpoint reader: `read(name)` is the tensor
    of that Hugging Face name (`[out, in]`), drawn by its own generator seeded with (seed,
    crc32(name)), so a layer's weights do not depend on which stage reads them. The scales are
    the device init's (layers.normal_init): projections N(0, 1/in), the embedding N(0, 1), an
    untied LM head N(0, 4/hidden), RMSNorm weights one."""

    def __init__(self, config: ModelConfig, seed: int):
        self.config, self.seed = config, seed

    def shape(self, name: str) -> tuple[int, ...]:
        c = self.config
        h, q, kv = c.hidden_size, c.num_heads * c.dim_per_head, c.num_kv_heads * c.dim_per_head
        module = name.rsplit(".", 2)[-2]  # e.g. q_proj, input_layernorm, embed_tokens, lm_head
        shapes = {"embed_tokens": (c.vocab_size, h), "lm_head": (c.vocab_size, h), "q_proj": (q, h), "k_proj": (kv, h)}
        shapes.update(v_proj=(kv, h), o_proj=(h, q), gate_proj=(c.intermediate_size, h), up_proj=(c.intermediate_size, h))
        shapes.update(down_proj=(h, c.intermediate_size))
        return shapes.get(module, (h,))  # the rest are RMSNorm weights

    def read(self, name: str) -> np.ndarray:
        shape = self.shape(name)
        if len(shape) == 1:
            return np.ones(shape, np.float32)
        std = shape[1] ** -0.5  # a projection: 1/sqrt(its inputs)
        if name.endswith("embed_tokens.weight"):
            std = 1.0
        elif name == "lm_head.weight":
            std = 2.0 / self.config.hidden_size**0.5
        entropy = [self.seed % (1 << 64), zlib.crc32(name.encode())]  # numpy seeds are unsigned; random:-1 is a seed too
        draw = np.random.default_rng(entropy).standard_normal(shape, dtype=np.float32)
        return draw * np.float32(std)


def abstract_stage(config: ModelConfig, start_layer: int, end_layer: int, layer_loop: str = "auto") -> tuple[Any, Any]:
    """(graphdef, state of ShapeDtypeStructs) of a stage, allocating nothing."""
    check_range(config, start_layer, end_layer)
    model = nnx.eval_shape(lambda: StageModel(config, start_layer, end_layer, *_keys(0, start_layer, end_layer), layer_loop=layer_loop))
    return nnx.split(model)


def load_stage_weights(config: ModelConfig, start_layer: int, end_layer: int, source: str | Path, layer_loop: str = "auto") -> StageWeights:
    """Weights of layers `[start, end)` from `source`.

    source: "random:<seed>" (built-in seeded weights of the model's true shape), a model name
    of the cache (helix_jax/models.py), a GGUF file
    (`*.gguf`, dequantized per tensor into the config's dtype) or a Hugging Face LLaMA
    checkpoint directory (config.json + model.safetensors or sharded with
    model.safetensors.index.json); only the tensors of the stage's layers are read. A bad
    checkpoint raises one CheckpointError naming the file, tensor or field. layer_loop: "scan"
    (stacked weights), "unroll" (one module per layer) or "auto" (by layer width; stage.py).
    """
    enable_compile_cache()  # before the first compile: building the weights compiles small programs too
    text = str(source)
    if text.startswith("random:"):
        try:
            seed = int(text.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"weights source {text!r}: expected 'random:<integer seed>'") from None
        return random_stage_weights(config, start_layer, end_layer, seed, layer_loop)
    from helix_jax.model.checkpoint import load_checkpoint_state, load_gguf_state
    from helix_jax.models import is_model_name, model_file

    if is_model_name(text):  # a named model: its file in this host's model cache
        text = str(model_file(text))

    graphdef, abstract = abstract_stage(config, start_layer, end_layer, layer_loop)
    if text.endswith(".gguf"):
        state, read = load_gguf_state(Path(text), config, start_layer, end_layer, abstract)
        return StageWeights(config, start_layer, end_layer, graphdef, state, read)
    state = load_checkpoint_state(Path(text), config, start_layer, end_layer, abstract)
    return StageWeights(config, start_layer, end_layer, graphdef, state)
