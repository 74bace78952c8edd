"""Checkpoints -> the nnx.State of one stage: Hugging Face LLaMA safetensors directories and GGUF files.

Owns: locating tensors in `model.safetensors` or a sharded `model.safetensors.index.json`,
reading ONLY the tensors of the layers a stage holds (one `safe_open` per tensor read),
checking names and shapes against the stage's abstract state, and mapping HF names onto our
module paths (HF stores `[out, in]` matrices; our kernels are `[in, out]`). Everything
wrong with a checkpoint becomes one `CheckpointError` naming the file and tensor.
GGUF files are read through `gguf_file.GGUFFile` (same HF names, dequantized per tensor).
Sits in the runtime step of the data flow, called by `weights.load_stage_weights`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from helix_jax.errors import CheckpointError, ConfigError
from helix_jax.model.layers import fused_parts
from helix_jax.modelconfig import ModelConfig, from_hf_config

log = logging.getLogger(__name__)

_SINGLE, _INDEX = "model.safetensors", "model.safetensors.index.json"


def checkpoint_config(directory: Path, dtype: str | None = None) -> ModelConfig:
    """The ModelConfig of a checkpoint directory (its config.json), as a CheckpointError on failure."""
    try:
        config = from_hf_config(directory)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: {exc}") from None
    return config.with_overrides(dtype=dtype) if dtype else config


class TensorIndex:
    """Which file holds each tensor of a checkpoint directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
        index_path, single = directory / _INDEX, directory / _SINGLE
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{str(index_path)!r} is not a valid safetensors index: {exc}") from None
            self.files = {name: directory / fname for name, fname in weight_map.items()}
        elif single.is_file():
            self.files = {name: single for name in self._names(single)}
        else:
            raise CheckpointError(f"checkpoint directory {str(directory)!r} has neither {_SINGLE} nor {_INDEX}")

    @staticmethod
    def _names(path: Path) -> list[str]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                return list(handle.keys())
        except Exception as exc:  # safetensors raises several types for corrupt headers
            raise CheckpointError(f"cannot read safetensors file {str(path)!r}: {exc}") from None

    def read(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        path = self.files.get(name)
        if path is None:
            raise CheckpointError(f"checkpoint {str(self.directory)!r} is missing the tensor {name!r}")
        if not path.is_file():
            raise CheckpointError(f"checkpoint shard {str(path)!r} (holding {name!r}) does not exist")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                return handle.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"cannot read tensor {name!r} from {str(path)!r}: {exc}") from None


def _hf_name(path: tuple[str, ...], layer: int | None) -> tuple[str, bool]:
    """HF tensor name for one of our parameter paths, and whether it must be transposed.
    Stacked layers: ("layers", "self_attn", "q_proj", "kernel"); unrolled layers carry their
    index: ("layers", "3", "self_attn", ...) (the caller passes the global layer)."""
    if path[0] == "layers":
        inner = path[2:] if path[1].isdigit() else path[1:]
        module = ".".join(inner[:-1])  # e.g. self_attn.q_proj or input_layernorm
        return f"model.layers.{layer}.{module}.weight", path[-1] == "kernel"
    if path[0] == "embed":
        return "model.embed_tokens.weight", False
    if path[0] == "final_norm":
        return "model.norm.weight", False
    if path[0] == "lm_head":
        return "lm_head.weight", True
    raise CheckpointError(f"internal: no checkpoint name for parameter {'.'.join(path)}")


def _fetch(read: Callable[[str], np.ndarray], name: str, transpose: bool, shape: tuple[int, ...]) -> np.ndarray:
    array = read(name)
    if transpose:
        array = array.T
    if tuple(array.shape) != tuple(shape):
        got = tuple(reversed(array.shape)) if transpose else tuple(array.shape)
        want = tuple(reversed(shape)) if transpose else tuple(shape)
        raise CheckpointError(f"tensor {name!r} has shape {got}, the model config expects {want}")
    return array


def _fetch_layer(
    read: Callable[[str], np.ndarray], config: ModelConfig, path: tuple[str, ...], layer: int, shape: tuple[int, ...]
) -> np.ndarray:
    """One layer's parameter; a fused projection (layers.FusedLinear) is its parts' kernels side
    by side, each read and checked under its own Hugging Face name."""
    inner = path[2:] if path[1].isdigit() else path[1:]
    parts = fused_parts(config).get(".".join(inner[:-1]))
    if parts is None:
        return _fetch(read, *_hf_name(path, layer), shape)
    return np.concatenate([_fetch(read, f"model.layers.{layer}.{module}.weight", True, (shape[0], outs)) for module, outs in parts], axis=1)


def check_dimensions(label: str, file_config: ModelConfig, config: ModelConfig) -> None:
    """CheckpointError when a checkpoint's dimensions differ from the model config's."""
    for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size", "tie_word_embeddings"):
        if getattr(file_config, field) != getattr(config, field):
            raise CheckpointError(
                f"checkpoint {label!r} has {field}={getattr(file_config, field)}, the model config says {getattr(config, field)}"
            )


def fill_stage_state(
    read: Callable[[str], np.ndarray], label: str, config: ModelConfig, start_layer: int, end_layer: int, abstract_state: Any
) -> Any:
    """Fill `abstract_state` (an nnx.State of ShapeDtypeStructs) with the tensors `read` returns
    by Hugging Face name (`[out, in]` float arrays), only those of layers [start, end)."""
    dtype = jnp.dtype(config.dtype)
    filled = []
    for key, variable in nnx.to_flat_state(abstract_state):
        path = tuple(str(p) for p in key)  # names only: the state keeps its own keys (int layer
        # indices of an unrolled stage: as strings, "10" would sort before "2" and scramble layers)
        shape = tuple(variable.get_value().shape)
        if path[0] == "layers" and path[1].isdigit():  # unrolled: one layer's tensor
            host = _fetch_layer(read, config, path, start_layer + int(path[1]), shape)
        elif path[0] == "layers":  # stacked: [num_layers, ...]
            host = np.stack([_fetch_layer(read, config, path, layer, shape[1:]) for layer in range(start_layer, end_layer)])
        else:
            host = _fetch(read, *_hf_name(path, None), shape)
        if not np.all(np.isfinite(host.astype(np.float32, copy=False))):  # copy=False: a float32 tensor is not copied to check it
            raise CheckpointError(f"checkpoint {label!r}: parameter {'.'.join(path)} holds NaN or infinite values")
        value = jax.device_put(host.astype(dtype, copy=False))
        filled.append((key, variable.replace(value=value)))
    log.info("loaded layers [%d, %d) from %s", start_layer, end_layer, label)
    return nnx.from_flat_state(filled)


def load_checkpoint_state(directory: Path, config: ModelConfig, start_layer: int, end_layer: int, abstract_state: Any) -> Any:
    """Fill `abstract_state` from a Hugging Face safetensors checkpoint directory."""
    file_config = checkpoint_config(directory)
    index = TensorIndex(directory)
    check_dimensions(str(directory), file_config, config)
    return fill_stage_state(index.read, str(directory), config, start_layer, end_layer, abstract_state)


def load_gguf_state(path: Path, config: ModelConfig, start_layer: int, end_layer: int, abstract_state: Any) -> tuple[Any, tuple[str, ...]]:
    """Fill `abstract_state` from a GGUF file, dequantizing only the stage's own tensors;
    returns the state and the GGUF names it dequantized, in order."""
    from helix_jax.model.gguf_file import GGUFFile, gguf_config

    gguf = GGUFFile(path)
    check_dimensions(str(path), gguf_config(gguf), config)

    def read(name: str) -> np.ndarray:
        heads = config.num_heads if ".q_proj." in name else config.num_kv_heads if ".k_proj." in name else None
        return gguf.read(name, heads)

    state = fill_stage_state(read, str(path), config, start_layer, end_layer, abstract_state)
    return state, tuple(gguf.reads)
