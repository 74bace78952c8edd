"""`helix-jax bench --simulate`: table, ratios, results.json and plots; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_run import run_cli
from typer.testing import CliRunner

from helix_jax.cli.main import app
from helix_jax.placement import FlowEdge, Placement

C = "coordinator"
TOPOLOGY = Path(__file__).resolve().parents[1] / "topologies" / "fixtures" / "two-pipelines.json"


def write_placements(tmp_path: Path) -> Path:
    flows = [(C, "f-0", 100), ("f-0", "f-1", 100), ("f-1", C, 100), (C, "s-0", 40), ("s-0", "s-1", 40), ("s-1", C, 40)]
    path = tmp_path / "helix.json"
    Placement(
        "two-pipelines",
        4,
        {"f-0": (0, 2), "f-1": (2, 4), "s-0": (0, 2), "s-1": (2, 4)},
        tuple(FlowEdge(*f) for f in flows),
        objective_tokens_per_s=140.0,
    ).save(path)
    return path


def test_simulated_rate_sweep_writes_table_json_and_plots(tmp_path: Path) -> None:
    placement = write_placements(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(TOPOLOGY),
            "--simulate",
            "--methods",
            "helix",
            "--placement",
            str(placement),
            "--schedulers",
            "iwrr,random",
            "--mode",
            "online",
            "--rates",
            "0.05,0.1",
            "--duration",
            "400",
            "--warmup",
            "100",
            "--prompt-tokens",
            "100",
            "--output-tokens",
            "20",
            "--slo-ttft-ms",
            "60000",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "decode tok/s" in result.output and "helix" in result.output
    assert "planned for fixed (mean prompt 100 tokens, mean output 20.0 tokens" in result.output
    data = json.loads((out / "results.json").read_text())
    assert data["mode"] == "online" and len(data["results"]) == 4
    assert data["settings"]["slo_ttft_ms"] == 60000 and data["settings"]["slo_tpot_ms"] is None
    assert data["settings"]["workload_shape"]["mean_prompt_tokens"] == 100.0
    first = data["results"][0]
    assert first["metrics"]["decode_tokens_per_s"] > 0 and first["rate_per_s"] == 0.05
    # the saved placement's flows are recomputed for this topology and workload: same max-flow
    assert data["placements"]["helix"]["objective_tokens_per_s"] == pytest.approx(140.0)
    for png in ("throughput.png", "latency_cdf.png", "rate_sweep.png"):
        assert (out / png).stat().st_size > 1000


def test_bad_options_print_one_line_and_exit_2() -> None:
    cmd = ["bench", str(TOPOLOGY), "--simulate", "--endpoint", "tcp://127.0.0.1:1"]
    proc = run_cli(*cmd)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: choose exactly one of --simulate (with a TOPOLOGY) or --endpoint / --connection"
    proc = run_cli(*cmd[:3], "--mode", "online")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: online mode needs --rate or --rates"
    proc = run_cli(*cmd[:3], "--schedulers", "fifo")
    assert proc.returncode == 2 and "unknown scheduler 'fifo'" in proc.stderr


def test_deploy_rejects_a_negative_restart_budget_before_starting_anything() -> None:
    proc = run_cli("deploy", "--restart-workers", "-1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: validate: --restart-workers must be >= 0, got -1"


def test_model_bench_refuses_no_rounds(monkeypatch, capsys) -> None:
    """`make bench-runtime`'s real-model comparison: zero alternating rounds is one clear error
    (argparse's exit 2) before anything loads."""
    import sys

    from helix_jax.cli import model_bench

    monkeypatch.setattr(sys, "argv", ["model_bench", "--rounds", "0"])
    with pytest.raises(SystemExit) as exc:
        model_bench.main()
    assert exc.value.code == 2
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err
