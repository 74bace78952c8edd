"""Placement JSON round trip and the hand-off rules routes are built from."""

import json

import pytest

from helix_jax.errors import PlacementError
from helix_jax.placement import FlowEdge, Hop, Placement


def _placement(partial: bool = True) -> Placement:
    return Placement(
        "t",
        6,
        {"a": (0, 4), "b": (2, 6), "c": (4, 6)},
        (
            FlowEdge("coordinator", "a", 10.0),
            FlowEdge("a", "b", 4.0),
            FlowEdge("a", "c", 6.0),
            FlowEdge("b", "coordinator", 4.0),
            FlowEdge("c", "coordinator", 6.0),
        ),
        partial_inference=partial,
    )


def test_roundtrip(tmp_path) -> None:
    p = _placement()
    p.save(tmp_path / "p.json")
    assert Placement.load(tmp_path / "p.json") == p


def test_hand_off_rules_with_and_without_partial_inference() -> None:
    p = _placement(partial=True)
    assert p.can_hand_off("coordinator", "a") and not p.can_hand_off("coordinator", "b")
    assert p.can_hand_off("a", "b")  # b holds [2, 6) and continues from layer 4
    assert p.can_hand_off("a", "c") and p.can_hand_off("c", "coordinator")
    assert not p.can_hand_off("b", "c")  # b ends at 6 = L: only the coordinator follows
    strict = _placement(partial=False)
    assert not strict.can_hand_off("a", "b") and strict.can_hand_off("a", "c")


def test_route_hops_run_only_the_tail() -> None:
    hops = _placement().route_hops(["a", "b"])
    assert hops == (Hop("a", 0, 4), Hop("b", 4, 6))
    assert hops[1].num_layers == 2
    with pytest.raises(PlacementError, match="ends at layer 4"):
        _placement().route_hops(["a"])


def test_malformed_placement_names_the_field(tmp_path) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"nodes": {}}))
    with pytest.raises(PlacementError, match="num_layers"):
        Placement.load(f)
    f.write_text("{not json")
    with pytest.raises(PlacementError, match="not valid JSON"):
        Placement.load(f)


def test_the_workload_shape_is_a_typed_field_and_old_files_still_load() -> None:
    from helix_jax.placement import Placement
    from helix_jax.workload import WorkloadShape

    shape = WorkloadShape(100.0, 20.0, 1.5)
    doc = Placement("t", 2, {"a": (0, 2)}, workload=shape).to_dict()
    assert doc["workload"] == shape.to_dict() and "extra" not in doc
    assert Placement.from_dict(doc).workload == shape
    legacy = {**doc, "extra": {"workload": doc.pop("workload"), "mean_hops": 1.0}}
    back = Placement.from_dict(legacy)
    assert back.workload == shape and back.extra == {"mean_hops": 1.0}
    assert WorkloadShape.recorded_in(Placement("t", 2, {"a": (0, 2)})) == WorkloadShape()
