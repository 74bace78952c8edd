"""Cost model time figures: layer step times, the simulator's step function, measured
profiles, links and transfers, route link time (capacities: test_costmodel.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_costmodel import TOPOLOGIES, _llama70b, _promise_error

from helix_jax.costmodel import CostModel, WorkloadShape
from helix_jax.errors import ConfigError
from helix_jax.profiles import LatencyProfile
from helix_jax.topology import load_topology, topology_from_dict


def test_step_time_grows_with_work() -> None:
    cm = _llama70b(["L4"])
    assert cm.layer_step_seconds("L4", 0, 0) == 0.0
    small = cm.layer_step_seconds("L4", 0, 8, 8 * 500)
    assert cm.layer_step_seconds("L4", 0, 64, 64 * 500) > small
    assert cm.layer_step_seconds("L4", 512, 8, 8 * 500) > small
    assert cm.layer_step_seconds("L4", 0, 8, 8 * 4000) > small  # longer contexts read more KV
    with pytest.raises(ConfigError):
        cm.layer_step_seconds("L4", -1, 0)


@pytest.mark.parametrize("topology", ["geo-42-llama2-70b", "three-region-24-tables-llama2-70b", "cpu-small", "single-region-24-llama-30b"])
def test_layer_step_function_equals_the_method(topology: str) -> None:
    """The simulator's hoisted step time is the method's, bit for bit (rooflines and tables)."""
    cm = CostModel(load_topology(TOPOLOGIES / f"{topology}.json"))
    for gpu in sorted({node.gpu for node in cm.topology.nodes}):
        step = cm.layer_step_function(gpu)
        for prompt in (0, 1, 7, 128, 2048):
            for seqs in (0, 1, 3, 64):
                for context in (0, 1, 999, 123_457):
                    if seqs or not context:
                        assert step(prompt, seqs, context) == cm.layer_step_seconds(gpu, prompt, seqs, context), (
                            gpu,
                            prompt,
                            seqs,
                            context,
                        )


def test_links_and_transfers() -> None:
    topo = load_topology(TOPOLOGIES / "fixtures" / "link-bound.json")
    cm = CostModel(topo)
    # 12800 B/s / 256 B per vector = 50 vectors/s; each decode token brings 763/232 prompt vectors
    per_decode = 1 + 763 / 232
    assert cm.link_tokens_per_s("a", "b") == pytest.approx(50.0 / per_decode)
    assert cm.link_tokens_per_s("b", "a") == pytest.approx(50.0 / per_decode)
    assert cm.link_tokens_per_s("coordinator", "a") == pytest.approx(1e9 / 4 / per_decode)  # prompt ids too
    assert cm.link_tokens_per_s("a", "coordinator") == pytest.approx(1e9 / 4)  # one id back per step
    decode_only = CostModel(topo, WorkloadShape(0, 10))
    assert decode_only.link_tokens_per_s("a", "b") == pytest.approx(50.0)
    assert cm.bytes_per_vector("a", "b") == 256 and cm.bytes_per_vector("coordinator", "a") == 4
    assert cm.transfer_seconds("a", "b", 10) == pytest.approx(0.005 + 10 * 256 / 12800)
    assert cm.node_capacity_tokens_per_s("a", 2) == 1000.0


def _profile_dict() -> dict:
    return {
        "format": "helix-jax-profile/1",
        "device": "cpu",
        "model": {},
        "dtype": "float32",
        "layers_measured": 2,
        "memory_bytes_total": 8e9,
        "memory_bytes_free_for_kv_per_layer_held": None,
        "weight_bytes_per_layer": 1e9,
        "prefill": [{"tokens": 128, "seconds_per_layer": 0.002}, {"tokens": 256, "seconds_per_layer": 0.003}],
        "decode": [
            {"batch": 1, "context_tokens": 512, "seconds_per_layer": 0.001},
            {"batch": 9, "context_tokens": 512, "seconds_per_layer": 0.002},
        ],
    }


def test_profile_interpolation_and_round_trip(tmp_path: Path) -> None:
    profile = LatencyProfile.from_dict(_profile_dict())
    assert profile.prefill_seconds_per_layer(192) == pytest.approx(0.0025)
    assert profile.prefill_seconds_per_layer(512) == pytest.approx(0.005)  # linear beyond the end
    assert profile.decode_seconds_per_layer(5) == pytest.approx(0.0015)
    assert profile.decode_seconds_per_layer(0) == 0.0
    path = tmp_path / "p.json"
    profile.save(path)
    assert LatencyProfile.load(path) == profile


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": "other"}, "format"),
        ({"prefill": []}, "at least one"),
        ({"decode": [{"batch": 0, "seconds_per_layer": 0.1}]}, "batch > 0"),
        ({"weight_bytes_per_layer": "lots"}, "malformed"),
    ],
)
def test_bad_profiles_are_named(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LatencyProfile.from_dict({**_profile_dict(), **change})
    with pytest.raises(ConfigError, match="does not exist"):
        LatencyProfile.load("/nonexistent/profile.json")


def test_unreadable_profile_files_are_named(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.json"
    truncated.write_text('{"format": "helix-jax-profile/1", "prefill": [')
    with pytest.raises(ConfigError, match=r"truncated.json is not valid JSON: .* line 1 column"):
        LatencyProfile.load(truncated)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"device": "\xff"}')
    with pytest.raises(ConfigError, match="profile file .*binary.json.* cannot be read"):
        LatencyProfile.load(binary)


def test_cost_model_reads_a_profile(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(_profile_dict()))
    topo = topology_from_dict(
        {"model": "tiny", "gpu_types": {"Box": {"profile": "p.json"}}, "nodes": [{"name": "b", "gpu": "Box"}]}, base_dir=tmp_path
    )
    cm = CostModel(topo)
    assert cm.max_layers("Box") == 3  # (8e9 - 1.5e9) / 2 // 1e9, capped at the model's 4 layers
    assert cm.layer_step_seconds("Box", 128, 1) == pytest.approx(0.003)
    for k in range(1, 4):
        assert _promise_error(cm, "Box", k) < 0.03
    assert cm.capacity_tokens_per_s("Box", 1) > cm.capacity_tokens_per_s("Box", 3)


def test_route_link_seconds_counts_hops_and_region_crossings() -> None:
    def topo(between: dict | None):
        links = {"default": {"bandwidth": "1 GB/s", "latency_ms": 2}}
        nodes = [{"name": "a", "gpu": "g", "region": "r1", "count": 2}]
        if between is not None:
            links["between_regions"] = [{"regions": ["r1", "r2"], **between}]
            nodes.append({"name": "b", "gpu": "g", "region": "r2", "count": 2})
        return topology_from_dict(
            {
                "model": {"preset": "tiny", "num_layers": 8},
                "gpu_types": {"g": {"max_layers": 2, "capacity_tokens_per_s": [100, 100]}},
                "coordinator": {"region": "r1"},
                "nodes": nodes,
                "links": links,
            }
        )

    one = CostModel(topo(None))
    assert one.route_link_seconds == pytest.approx(8 / 2 * 0.002)  # L / max_layers hops at 2 ms
    two = CostModel(topo({"bandwidth": 128 * 256 * 10, "latency_ms": 50}))  # a 128-token chunk: 0.1 s
    # hops within a region at 2 ms; one activation crossing r1 -> r2 (50 ms + M/D/1 wait at 50%:
    # 0.5 chunk = 50 ms); token ids back to the coordinator's region: 50 ms
    assert two.route_link_seconds == pytest.approx(4 * 0.002 + (0.05 + 0.05) + 0.05)
