"""The persistent compile cache (helix_jax/model/compile_cache.py): a second process warming up
the same stage from ~/.cache/helix-jax/xla compiles nothing new and writes nothing, and
HELIX_COMPILE_CACHE=off writes nothing.
Each check runs a fresh process, since JAX decides about its cache once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WARM_UP = """
from helix_jax.model import random_stage_weights
from helix_jax.model.compile_cache import enable_compile_cache
from helix_jax.model.engine import StageEngine
from helix_jax.model.step_program import NARROW_CPU_OPTIONS
from helix_jax.modelconfig import preset

config = preset("tiny")
# two buckets, XLA's quickest optimisation level: every run of this compiles cold
engine = StageEngine(config, 0, 2, random_stage_weights(config, 0, 2, 0), max_slots=2, max_seq_len=64,
                     prefill_buckets=(16,), decode_buckets=(1,), prefill_batch_buckets=(1,),
                     compiler_options=NARROW_CPU_OPTIONS)
print(engine.warmup(), enable_compile_cache())
"""


def _warm_up(cache: str | None, home: Path | None = None) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env.pop("HELIX_COMPILE_CACHE")
    if cache is not None:
        env["HELIX_COMPILE_CACHE"] = cache
    if home is not None:
        env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-c", WARM_UP], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[-1]


def _entries(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()}


def test_a_second_process_loads_every_program_from_the_default_cache(tmp_path: Path) -> None:
    default = tmp_path / ".cache" / "helix-jax" / "xla"  # beside the model cache
    assert _warm_up(None, home=tmp_path) == str(default)
    first = _entries(default)
    assert len(first) >= 2  # the two buckets' step programs at least
    assert _warm_up(None, home=tmp_path) == str(default)
    assert _entries(default) == first  # nothing recompiled, nothing rewritten


def test_off_writes_nothing(tmp_path: Path) -> None:
    assert _warm_up("off", home=tmp_path) == "None"
    assert not (tmp_path / ".cache").exists()
