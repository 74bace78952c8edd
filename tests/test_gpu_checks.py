"""`make bench-gpu` (helix_jax/model/gpu_checks.py) runs on a bare GPU host: JAX, flax, rich and
msgpack, but none of pydantic, pyzmq, the solver or the HTTP stack. Here it runs end to end on
the tiny model in a child process where importing any of those fails, and writes its rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE_HOST = """
import sys
for name in ("pydantic", "zmq", "cvxpy", "highspy", "fastapi", "uvicorn"):
    sys.modules[name] = None  # import fails, as on a host without them
from helix_jax.model.gpu_checks import main
main(sys.argv[1:])
"""


def test_the_gpu_checks_run_with_jax_alone(tmp_path: Path) -> None:
    out = tmp_path / "checks"
    args = ["--out", str(out), "--shape", "tiny-8", "--dtype", "float32", "--layers", "1", "--batches", "1,2", "--prefill-tokens", "16,32"]
    args += ["--context-tokens", "16", "--steps", "2", "--kv", "paged-gather,contiguous", "--bandwidth-mib", "64"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", BARE_HOST, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    profile = json.loads((out / "profile.json").read_text())
    assert [p["batch"] for p in profile["decode"]] == [1, 2] and [p["tokens"] for p in profile["prefill"]] == [16, 32]
    rows = [json.loads(line) for line in (out / "decode.jsonl").read_text().splitlines()]
    assert [(r["kv"], r["batch"]) for r in rows] == [("paged/gather", 1), ("paged/gather", 2), ("contiguous", 1), ("contiguous", 2)]
    assert all(r["step_ms"] > 0 and r["floor_ms"] > 0 for r in rows)
    assert "decode paged/gather: 1:" in done.stdout and "decode contiguous: 1:" in done.stdout
