"""`make bench-sim`'s scale part: one measured run per engine, placement choice, table rows."""

from __future__ import annotations

import json
from pathlib import Path

from helix_jax.cli.sim_scale import measure_one, scale_markdown, scale_method
from helix_jax.placement import FlowEdge, Placement

C = "coordinator"
FIXTURE = Path(__file__).resolve().parents[1] / "topologies" / "fixtures" / "two-pipelines.json"


def test_both_engines_measure_the_same_run(tmp_path: Path) -> None:
    flows = [(C, "f-0", 100), ("f-0", "f-1", 100), ("f-1", C, 100), (C, "s-0", 40), ("s-0", "s-1", 40), ("s-1", C, 40)]
    placement = Placement(
        "two-pipelines",
        4,
        {"f-0": (0, 2), "f-1": (2, 4), "s-0": (0, 2), "s-1": (2, 4)},
        tuple(FlowEdge(*f) for f in flows),
        objective_tokens_per_s=140.0,
    )
    path = tmp_path / "placement.json"
    placement.save(path)
    fast, reference = (measure_one(FIXTURE, path, 300.0, 100.0, engine) for engine in ("fast", "reference"))
    for key in ("decode_tokens_per_s", "ttft_mean_ms", "tpot_mean_ms", "completed", "steps", "max_flow_tokens_per_s"):
        assert fast[key] == reference[key], key
    assert fast["decode_tokens_per_s"] > 0 and fast["peak_rss_mib"] > 0
    assert fast["events"] == sum(fast["events_by_kind"].values()) <= reference["events"]
    json.dumps(fast)  # what the child process prints


def test_auto_placement_and_a_timed_out_row() -> None:
    assert [scale_method(g, "auto") for g in (50, 200, 1000)] == ["helix", "helix", "petals"]
    assert scale_method(1000, "swarm") == "swarm"
    row = {"gpus": 1000, "regions": 4, "nodes": 657, "method": "petals", "mean_hops": 10.5, "timed_out_s": 1800.0}
    assert scale_markdown([row]).splitlines()[-1].startswith("| 1000 | 4 | 657 | petals (10.5) | - |")
