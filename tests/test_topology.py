"""Bad topology files give one clear error through the CLI: exit code != 0, no traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli_run import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)


def _write(tmp_path: Path, doc) -> Path:
    path = tmp_path / "topo.json"
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    else:
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


GOOD = {"model": "tiny", "nodes": [{"name": "a", "gpu": "CPU"}, {"name": "b", "gpu": "CPU"}]}

BAD = {
    "unknown-gpu": ({**GOOD, "nodes": [{"name": "a", "gpu": "Z80"}]}, "unknown GPU type 'Z80'"),
    "unknown-node-in-link": ({**GOOD, "links": {"pairs": [{"from": "a", "to": "ghost", "bandwidth": 1e9}]}}, "unknown node 'ghost'"),
    "negative-bandwidth": ({**GOOD, "links": {"default": {"bandwidth": -5}}}, "must be positive"),
    "no-composition-holds-the-model": (
        {"model": "llama-2-70b", "nodes": [{"name": "t", "gpu": "T4", "count": 2}]},
        "at most 8 of the 80 layers",
    ),
    "malformed-json": ('{"model": "tiny", "nodes": [', "not valid JSON"),
    "not-utf8": (b'{"model": "tiny\xff"}', "cannot be read"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_give_one_clear_error(tmp_path: Path, case: str) -> None:
    doc, message = BAD[case]
    path = _write(tmp_path, doc)
    command = ["plan", str(path), "--time-limit", "2"] if case == "no-composition-holds-the-model" else ["validate", str(path)]
    result = _cli(*command)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_missing_file_and_bad_placement(tmp_path: Path) -> None:
    result = _cli("validate", str(tmp_path / "nope.json"))
    assert result.returncode != 0 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    topo = _write(tmp_path, GOOD)
    bad_placement = tmp_path / "p.json"
    bad_placement.write_text(json.dumps({"num_layers": 4, "nodes": {"a": {"start_layer": 0, "end_layer": 2}}}))
    result = _cli("validate", str(topo), "--placement", str(bad_placement))
    assert result.returncode != 0 and "no node holds layer(s) [2, 3]" in result.stderr
    result = _cli("explain", str(bad_placement))
    assert result.returncode != 0 and "--topology" in result.stderr
    not_utf8 = _write(tmp_path, b'{"nodes": {"\xff": 1}}')
    result = _cli("explain", str(not_utf8))
    assert result.returncode != 0 and "Traceback" not in result.stderr and "cannot be read" in result.stderr


def test_plan_json_prints_exactly_one_object(tmp_path: Path) -> None:
    out = tmp_path / "placement.json"
    result = _cli("plan", str(ROOT / "topologies" / "fixtures" / "two-pipelines.json"), "--json", "--time-limit", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # the whole stdout is one JSON document
    for key in ("method", "objective_tokens_per_s", "upper_bound_tokens_per_s", "solve_seconds", "status", "nodes", "flows"):
        assert key in doc
    assert doc["objective_tokens_per_s"] == pytest.approx(140.0)
    bound = doc["upper_bound_tokens_per_s"]
    assert doc["gap"] == pytest.approx((bound - 140.0) / bound, abs=1e-9)
    assert all({"from", "to", "tokens_per_s"} <= set(f) for f in doc["flows"])
    assert json.loads(out.read_text())["nodes"] == doc["nodes"]
    check = _cli("validate", str(ROOT / "topologies" / "fixtures" / "two-pipelines.json"), "--placement", str(out))
    assert check.returncode == 0 and "placement valid" in check.stdout
    explained = _cli("explain", str(out), "--topology", str(ROOT / "topologies" / "fixtures" / "two-pipelines.json"), "--json")
    assert explained.returncode == 0 and json.loads(explained.stdout)["throughput_tokens_per_s"] == pytest.approx(140.0)


def test_plan_table_for_a_baseline() -> None:
    result = _cli("plan", str(ROOT / "topologies" / "cpu-tiny.json"), "--method", "petals")
    assert result.returncode == 0, result.stderr
    assert "cpu-0" in result.stdout and "throughput" in result.stdout


def test_bad_workload_options_and_a_bad_recorded_workload_give_one_clear_error(tmp_path: Path) -> None:
    """plan's --trace/--prompt-tokens and a placement file's extra.workload: one line, exit 2."""
    topo = ROOT / "topologies" / "fixtures" / "two-pipelines.json"
    missing = _cli("plan", str(topo), "--trace", str(tmp_path / "none.csv"))
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: trace file '{tmp_path / 'none.csv'}' does not exist"
    half = _cli("plan", str(topo), "--prompt-tokens", "100")
    assert half.returncode == 2
    assert half.stderr.strip() == "error: fixed lengths need both --prompt-tokens and --output-tokens"
    out = tmp_path / "p.json"
    assert _cli("plan", str(topo), "--time-limit", "5", "--out", str(out)).returncode == 0
    doc = json.loads(out.read_text())
    doc["workload"] = {"mean_prompt_tokens": "lots"}
    out.write_text(json.dumps(doc))
    bad = _cli("explain", str(out), "--topology", str(topo))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "error: placement's workload is malformed: a workload shape needs numbers, got {'mean_prompt_tokens': 'lots'}"
    )
