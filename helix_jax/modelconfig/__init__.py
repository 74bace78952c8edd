"""Model dimensions: the one description of a LLaMA-family model every layer shares.

Owns: `ModelConfig` (frozen; config.py), the built-in presets (presets.py), and parsing of
Hugging Face `config.json` files and topology `model` fields (parse.py). The planner's cost
model reads sizes from here; the Flax runtime builds its layers from the same object. Imports
nothing heavier than the stdlib.
"""

from helix_jax.modelconfig.config import DTYPE_ALIASES, DTYPE_BYTES, ModelConfig, RopeScaling
from helix_jax.modelconfig.parse import from_hf_config, resolve_model
from helix_jax.modelconfig.presets import PRESETS, TINY_BOS, TINY_EOS, TINY_PAD, TINY_VOCAB, is_tiny, preset

__all__ = [
    "DTYPE_ALIASES",
    "DTYPE_BYTES",
    "ModelConfig",
    "RopeScaling",
    "PRESETS",
    "TINY_BOS",
    "TINY_EOS",
    "TINY_PAD",
    "TINY_VOCAB",
    "from_hf_config",
    "is_tiny",
    "preset",
    "resolve_model",
]
