"""The model cache (helix_jax/models.py, `helix-jax models list`): where named models live, and
the one error a missing model gives, naming the command that fetches it. Nothing downloads here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helix_jax.errors import CheckpointError
from helix_jax.models import KNOWN_MODELS, cache_dir, list_models, model_file, pull


def test_a_missing_model_names_the_command_that_fetches_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HELIX_MODELS", str(tmp_path))
    assert cache_dir() == tmp_path
    with pytest.raises(CheckpointError, match="fetch it with `helix-jax models pull smollm2-135m`"):
        model_file("smollm2-135m")
    with pytest.raises(CheckpointError, match="GGUF file 'nope.gguf' does not exist"):
        model_file("nope.gguf")
    with pytest.raises(CheckpointError, match="unknown model 'gpt-5'; known models: smollm2-135m"):
        pull("gpt-5")
    from helix_jax.modelconfig import preset
    from helix_jax.models import default_weights_source

    with pytest.raises(CheckpointError, match="models pull smollm2-135m"):
        default_weights_source(preset("smollm2-135m"), "smollm2-135m")


def test_list_shows_known_models_and_other_gguf_files(tmp_path: Path) -> None:
    (tmp_path / "mine.gguf").write_bytes(b"GGUF")
    env = {"HELIX_MODELS": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "helix_jax.cli.main", "models", "list", "--json"], capture_output=True, text=True, env=env, check=True
    ).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {*KNOWN_MODELS, "mine.gguf"}
    assert rows["smollm2-135m"]["present"] is False and rows["mine.gguf"]["bytes"] == 4


def test_a_cached_file_is_found_by_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HELIX_MODELS", str(tmp_path))
    known = KNOWN_MODELS["smollm2-135m"]
    (tmp_path / known.filename).write_bytes(b"not checked at lookup")
    assert model_file("SmolLM2-135M") == tmp_path / known.filename
    assert [r["present"] for r in list_models() if r["name"] == "smollm2-135m"] == [True]
