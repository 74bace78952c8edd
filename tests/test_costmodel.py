"""Cost model: memory limits, c(type, k), the consistency promise, workload shapes, tables
(step times, profiles and links: test_costmodel_time.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helix_jax.costmodel import (
    ACTIVATION_MEMORY_FRACTION,
    MEMORY_RESERVE_BYTES_PER_GPU,
    PIPELINE_MICROBATCH_FACTOR,
    CostModel,
    WorkloadShape,
    best_layer_rate,
)
from helix_jax.errors import ConfigError, TopologyError
from helix_jax.topology import load_topology, topology_from_dict

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = ROOT / "topologies"


def _llama70b(gpus: list[str]) -> CostModel:
    nodes = [{"name": f"n{i}", "gpu": g} for i, g in enumerate(gpus)]
    return CostModel(topology_from_dict({"model": "llama-2-70b", "nodes": nodes}))


def test_max_layers_of_llama2_70b_match_the_paper_scale() -> None:
    cm = _llama70b(["A100-40GB", "L4", "T4", "T4x2", "A100-80GB"])
    assert 10 <= cm.max_layers("A100-40GB") <= 12
    assert 5 <= cm.max_layers("L4") <= 7
    assert 3 <= cm.max_layers("T4") <= 5
    assert cm.max_layers("T4x2") > cm.max_layers("T4")
    assert cm.max_layers("A100-80GB") > cm.max_layers("A100-40GB")


def test_memory_limit_leaves_room_for_one_full_context_request() -> None:
    cm = _llama70b(["A100-40GB", "L4", "T4", "T4x4"])
    model = cm.model
    # what a plain pipeline engine fits: 4 A100-40GB x 20, 8 L4 x 10, 12 T4 x 6-7 layers (the
    # paper prototype's separate pipelines on its 24-GPU cluster), beyond the planner's cap
    assert {g: cm.memory_max_layers(g) for g in ("A100-40GB", "L4", "T4")} == {"A100-40GB": 20, "L4": 11, "T4": 7}
    full_context = model.max_position_embeddings
    for gpu in ("A100-40GB", "L4", "T4", "T4x4"):
        top = cm.memory_max_layers(gpu)
        assert top > cm.max_layers(gpu)
        assert cm.kv_budget_token_layers(gpu, top) >= top * full_context
        # one layer more would leave less than one full-context request of KV per layer
        spec = cm.topology.gpu_types[gpu]
        usable = spec.memory_bytes - MEMORY_RESERVE_BYTES_PER_GPU * spec.num_gpus
        kv_after = (1 - ACTIVATION_MEMORY_FRACTION) * usable - (top + 1) * model.weight_bytes_per_layer
        assert kv_after < (top + 1) * full_context * model.kv_bytes_per_token_per_layer
        assert cm.capacity_tokens_per_s(gpu, top) > 0  # beyond the table, still a figure
        assert len(cm.capacity_table(gpu)) == cm.max_layers(gpu)  # the planner keeps its cap


def test_memory_limit_of_an_explicit_table_is_its_length() -> None:
    topo = load_topology(TOPOLOGIES / "fixtures" / "table-only.json")
    cm = CostModel(topo)
    tables = [g for g, t in topo.gpu_types.items() if t.capacity_tokens_per_s is not None]
    assert tables
    for gpu in tables:
        assert cm.memory_max_layers(gpu) == cm.max_layers(gpu) == len(topo.gpu_types[gpu].capacity_tokens_per_s)


@pytest.mark.parametrize("gpu", ["A100-40GB", "L4", "T4", "V100", "L4x2"])
def test_layer_rate_falls_as_more_layers_are_held(gpu: str) -> None:
    cm = _llama70b([gpu])
    table = cm.capacity_table(gpu)
    assert len(table) == cm.max_layers(gpu)
    rates = [k * c for k, c in enumerate(table, start=1)]
    assert all(r > 0 for r in rates)
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:]))
    assert rates[-1] < rates[0]  # strictly falls over the whole range
    budgets = [cm.kv_budget_token_layers(gpu, k) for k in range(1, len(table) + 1)]
    assert all(b2 < b1 for b1, b2 in zip(budgets, budgets[1:]))


def test_best_layer_rate_is_the_strongest_k() -> None:
    assert best_layer_rate([100.0, 60.0, 30.0]) == 120.0  # k=2: 2 x 60 token-layers/s
    assert best_layer_rate([50.0]) == 50.0
    assert best_layer_rate([]) == 0.0


def test_stronger_gpus_serve_more() -> None:
    cm = _llama70b(["A100-40GB", "L4", "T4"])
    assert cm.capacity_tokens_per_s("A100-40GB", 4) > cm.capacity_tokens_per_s("L4", 4) > cm.capacity_tokens_per_s("T4", 4)


def _promise_error(cm: CostModel, gpu: str, k: int) -> float:
    """Relative gap between c(gpu, k) and what the consistency promise derives from step times."""
    from helix_jax.costmodel import HOP_WAIT_FACTOR

    w = cm.workload
    if cm.topology.gpu_types[gpu].capacity_tokens_per_s is not None:
        batch = cm.max_decode_batch(gpu, k)  # explicit table: a node cycles at its own step
        step = cm.layer_step_seconds(gpu, round(batch * w.prompt_per_output), batch, round(batch * w.average_context_tokens))
        expected = batch / (k * step)
    else:  # Little's law: residents / round trip
        layers = cm.model.num_layers
        residents = cm.kv_budget_token_layers(gpu, k) / (k * w.resident_kv_tokens)
        batch = max(1, int(residents * k / layers))
        own = cm.layer_step_seconds(gpu, round(batch * w.prompt_per_output), batch, round(batch * w.average_context_tokens))
        round_trip = HOP_WAIT_FACTOR * (k * own + (layers - k) * cm.reference_layer_seconds)
        expected = residents / round_trip
    return abs(expected - cm.capacity_tokens_per_s(gpu, k)) / cm.capacity_tokens_per_s(gpu, k)


def test_consistency_promise_roofline() -> None:
    cm = _llama70b(["A100-40GB", "L4", "T4"])
    for gpu in ("A100-40GB", "L4", "T4"):
        for k in range(1, cm.max_layers(gpu) + 1):
            assert _promise_error(cm, gpu, k) < 0.03, (gpu, k)
            residents = cm.kv_budget_token_layers(gpu, k) / (k * cm.workload.resident_kv_tokens)
            micro_batch = PIPELINE_MICROBATCH_FACTOR * residents * k / cm.model.num_layers
            assert cm.max_decode_batch(gpu, k) == max(1, int(min(residents, micro_batch)))
            assert cm.max_decode_batch(gpu, k) < residents  # 80 layers: the cap splits the residents


def test_fast_gpus_cycle_at_the_clusters_pace() -> None:
    alone = _llama70b(["A100-40GB"])
    mixed = _llama70b(["A100-40GB", "T4", "T4", "T4"])
    assert mixed.reference_layer_seconds > alone.reference_layer_seconds
    assert mixed.capacity_tokens_per_s("A100-40GB", 4) < alone.capacity_tokens_per_s("A100-40GB", 4)


def test_round_trip_prices_own_layers_at_own_pace_and_the_rest_at_the_clusters() -> None:
    """A route through a node runs the node's k layers at its own pace and the other L - k at the
    cluster's reference pace: fast layers held shorten the route, slow ones lengthen it."""
    from helix_jax.costmodel import HOP_WAIT_FACTOR

    cm = _llama70b(["A100-40GB", "L4", "T4"])
    ref = cm.reference_layer_seconds
    for gpu in ("A100-40GB", "T4"):
        own = cm._own_pace_layer_seconds(gpu, 4)
        assert cm.round_trip_seconds(gpu, 4) == pytest.approx(HOP_WAIT_FACTOR * (4 * own + 76 * ref) + cm.route_link_seconds)
    assert cm._own_pace_layer_seconds("A100-40GB", 11) < ref < cm._own_pace_layer_seconds("T4", 4)
    assert cm.round_trip_seconds("A100-40GB", 11) < cm.round_trip_seconds("A100-40GB", 1)
    assert cm.round_trip_seconds("T4", 4) > cm.round_trip_seconds("T4", 1)
    # a slow node no longer prices the whole route at its own pace
    slow_everywhere = HOP_WAIT_FACTOR * 80 * cm._own_pace_layer_seconds("T4", 4) + cm.route_link_seconds
    assert cm.capacity_tokens_per_s("T4", 4) > cm.resident_requests("T4", 4) / slow_everywhere


def test_resident_kv_is_residence_weighted() -> None:
    w = WorkloadShape()
    assert w.resident_kv_tokens > w.mean_prompt_tokens + w.mean_output_tokens > w.average_context_tokens


def test_workload_shape_round_trips_through_json_and_rejects_bad_fields() -> None:
    shape = WorkloadShape(1379.0, 27.5, 5.0)
    assert WorkloadShape.from_dict(json.loads(json.dumps(shape.to_dict()))) == shape
    assert WorkloadShape.from_dict(None) == WorkloadShape()  # a placement file that records none
    with pytest.raises(ConfigError, match="with the fields mean_output_tokens, mean_prompt_tokens"):
        WorkloadShape.from_dict({"mean_prompt": 5})
    with pytest.raises(ConfigError, match="needs numbers"):
        WorkloadShape.from_dict({"mean_prompt_tokens": "many"})
    with pytest.raises(ConfigError, match="output_length_second_moment_ratio >= 1"):
        WorkloadShape(100.0, 10.0, 0.5)


def test_a_prompt_heavy_workload_lowers_decode_capacity() -> None:
    """Tokens/s are decode tokens of the workload: each pays for its share of prefill, so the
    code trace's shape (1379 prompt tokens per 27.5 output) leaves far fewer than the default."""
    topo = load_topology(TOPOLOGIES / "single-region-24-llama2-70b.json")
    chat, code = CostModel(topo), CostModel(topo, WorkloadShape(1379.0, 27.5, 5.0))
    for gpu in ("A100-40GB", "L4", "T4"):
        assert code.capacity_tokens_per_s(gpu, 2) < 0.5 * chat.capacity_tokens_per_s(gpu, 2)
    assert code.link_tokens_per_s("a100-0", "l4-0") < chat.link_tokens_per_s("a100-0", "l4-0") / 10


@pytest.mark.parametrize("name", ["table-only", "two-pipelines"])
def test_explicit_tables_win_and_keep_the_promise(name: str) -> None:
    topo = load_topology(TOPOLOGIES / "fixtures" / f"{name}.json")
    cm = CostModel(topo)
    for gpu_name, gpu in topo.gpu_types.items():
        assert cm.capacity_table(gpu_name) == list(gpu.capacity_tokens_per_s)
        assert cm.max_layers(gpu_name) == gpu.max_layers
        for k in range(1, gpu.max_layers + 1):
            assert _promise_error(cm, gpu_name, k) < 0.05
            assert cm.kv_budget_token_layers(gpu_name, k) > 0
            assert cm.max_decode_batch(gpu_name, k) >= 1
        assert cm.max_prompt_tokens_per_step(gpu_name) > 0


def test_cpu_small_tables_keep_the_promise() -> None:
    cm = CostModel(load_topology(TOPOLOGIES / "cpu-tiny.json"))
    for gpu in ("CPU-big", "CPU-small"):
        for k in range(1, cm.max_layers(gpu) + 1):
            assert _promise_error(cm, gpu, k) < 0.05, (gpu, k)


def test_bad_questions_raise_clear_errors() -> None:
    cm = _llama70b(["T4"])
    with pytest.raises(TopologyError, match="unknown GPU type 'H900'"):
        cm.max_layers("H900")
    with pytest.raises(ConfigError, match="holds 1..7 layers"):  # the memory limit, not the planner's 4
        cm.capacity_tokens_per_s("T4", 8)
    with pytest.raises(ConfigError):
        WorkloadShape(mean_prompt_tokens=100, mean_output_tokens=0)


def test_workload_shape_changes_capacity() -> None:
    topo = topology_from_dict({"model": "llama-2-70b", "nodes": [{"name": "a", "gpu": "A100-40GB"}]})
    heavy_prompts = CostModel(topo, WorkloadShape(mean_prompt_tokens=2000, mean_output_tokens=50))
    assert heavy_prompts.capacity_tokens_per_s("A100-40GB", 8) < CostModel(topo).capacity_tokens_per_s("A100-40GB", 8)


def test_a_type_states_its_own_prompt_budget_per_step() -> None:
    """`max_prompt_tokens_per_step` in gpu_types wins over the derived budget, is inherited
    through based_on, and the shipped default cluster chunks prompts to 16 tokens per step."""
    doc = {
        "model": "llama-2-70b",
        "gpu_types": {"A100-chunky": {"based_on": "A100-80GB", "max_prompt_tokens_per_step": 32}, "A100-copy": {"based_on": "A100-80GB"}},
        "nodes": [{"name": "a", "gpu": "A100-chunky"}, {"name": "b", "gpu": "A100-copy"}, {"name": "c", "gpu": "A100-80GB"}],
    }
    cm = CostModel(topology_from_dict(doc))
    assert cm.max_prompt_tokens_per_step("A100-chunky") == 32
    assert cm.max_prompt_tokens_per_step("A100-copy") == cm.max_prompt_tokens_per_step("A100-80GB") == 128
    small = CostModel(load_topology(TOPOLOGIES / "cpu-small.json"))
    assert [small.max_prompt_tokens_per_step(g) for g in ("CPU-big", "CPU-small")] == [16, 16]
    with pytest.raises(TopologyError, match="max_prompt_tokens_per_step"):
        topology_from_dict({**doc, "gpu_types": {"A100-chunky": {"based_on": "A100-80GB", "max_prompt_tokens_per_step": 0}}})
