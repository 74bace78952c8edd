"""`helix-jax demo`, the README's first command, as a newcomer runs it: the shipped CPU cluster
(topologies/cpu-small.json) planned and deployed with SmolLM2-135M-Instruct, real questions
answered through its 3 worker processes, a 24-GPU plan and a short benchmark table.

Runs the real command in a child process (coordinator + worker processes over CURVE-secured
ZeroMQ, HiGHS, the simulator), with fewer requests and simulated seconds than the default and
`--layer-loop scan` (a fifth of the unrolled compile time; tests/test_gguf_model.py checks the
unrolled model against transformers). Its answers must equal the whole model run in this process
(conftest.smollm2_answers), token for token, as printed. Needs the cached model (`make install`);
skipped otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helix_jax.errors import CheckpointError
from helix_jax.models import model_file

ROOT = Path(__file__).resolve().parent.parent
try:
    model_file("smollm2-135m")
except CheckpointError as exc:
    pytest.skip(str(exc), allow_module_level=True)

MAX_TOKENS = 16  # the answers of conftest.smollm2_answers


def test_demo_deploys_answers_plans_and_compares(tmp_path: Path, smollm2_answers) -> None:
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.modelconfig import preset

    env = dict(os.environ, COLUMNS="250", JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path))
    args = ["--requests", "3", "--max-tokens", str(MAX_TOKENS), "--layer-loop", "scan", "--paper-plan-time", "20", "--sim-seconds", "120"]
    proc = subprocess.run([sys.executable, "-m", "helix_jax.cli.main", "demo", *args], capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # 1-3: the shipped CPU cluster is planned, deployed, and answers real questions over real routes
    assert "1. placement of cpu-small (smollm2-135m)" in out and re.search(r"max-flow 275\.0 tokens/s \(helix, optimal", out), out
    rows = re.findall(r"│ (What [^│]+?) +│ ([^│]*?) +│ ((?:cpu-\d\[\d+:\d+\)(?: > )?)+) +│ +([\d.]+) +│ +([\d.]+) +│", out)
    assert len(rows) == 3, out
    questions, _, answers = smollm2_answers
    tokenizer = load_tokenizer(preset("smollm2-135m"), "smollm2-135m")
    for (question, answer, route, ttft_ms, tpot_ms), want_q, want in zip(rows, questions, answers):
        assert question == want_q
        assert answer == " ".join(tokenizer.decode(want).split())  # the table prints whitespace as single spaces
        hops = re.findall(r"cpu-\d\[(\d+):(\d+)\)", route)
        # every answer crossed all 3 workers and all 30 layers, each hop starting where the last ended
        assert len(hops) == 3 and hops[0][0] == "0" and hops[-1][1] == "30", route
        assert all(a[1] == b[0] for a, b in zip(hops, hops[1:])), route
        # measured by the client: on a loaded machine its I/O thread may read a whole answer's
        # tokens in one go, so TPOT can print as 0.00; the table must hold both figures
        assert float(ttft_ms) > 0 and float(tpot_ms) >= 0
    assert rows[0][1] == "The capital of France is Paris."
    # partial inference: a worker runs only part of the layers it holds (the plan printed above)
    held = dict(re.findall(r"│ (cpu-\d) +│ CPU-\w+ +│ (\[\d+, \d+\)) +│", out))
    assert any(f"[{s}, {e})" != held[n] for n, s, e in re.findall(r"(cpu-\d)\[(\d+):(\d+)\)", rows[0][2])), (held, rows[0][2])
    assert "deployment shut down cleanly" in out
    assert not list(tmp_path.glob("helix-deploy-*"))  # its logs, keys and connection file went with it
    # 4: the paper's 24-GPU cluster, planned to its proven optimum
    assert "4. planner on single-region-24" in out
    assert re.search(r"max-flow 319\.\d tokens/s \(helix, optimal", out), out
    # 5: the benchmark table ranks helix above every baseline
    ratios = dict(re.findall(r"helix/iwrr vs (\w+)/iwrr: ([\d.]+)x decode throughput", out))
    assert set(ratios) == {"swarm", "petals", "sp"}, out
    assert all(float(r) > 1.0 for r in ratios.values()), ratios
    assert re.search(r"demo done in [\d.]+ s", out)


@pytest.mark.parametrize(
    "args, error",
    [
        (["--layer-loop", "sideways"], "error: --layer-loop must be auto, scan or unroll, got 'sideways'"),
        (["--requests", "0"], "error: --requests must be at least 1, got 0"),
    ],
)
def test_a_bad_option_is_one_clear_error_before_anything_starts(args: list[str], error: str) -> None:
    from cli_run import run_cli

    proc = run_cli("demo", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == error
