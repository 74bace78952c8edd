"""The synthetic scale clusters: exact GPU totals, the paper's mix, one entry per (kind, region)."""

import pytest

from helix_jax.bench.synthetic import PAPER_MIX, node_counts, synthetic_topology
from helix_jax.errors import ConfigError
from helix_jax.topology import topology_from_dict

GPUS_PER_NODE = {name: g for name, _, _, g in PAPER_MIX}


@pytest.mark.parametrize("gpus", [64, 200, 1000])
def test_gpu_totals_match_within_one_node(gpus):
    counts = node_counts(gpus)
    total = sum(counts[k] * GPUS_PER_NODE[k] for k in counts)
    assert gpus - 4 < total <= gpus


def test_paper_size_is_the_paper_cluster():
    assert node_counts(64) == {name: n for name, _, n, _ in PAPER_MIX}


def test_regions_split_nodes_and_links_slow_between_them():
    raw = synthetic_topology(200, regions=4)
    assert len(raw["nodes"]) == 7 * 4
    topo = topology_from_dict(raw)
    assert len(topo.nodes) == sum(node_counts(200).values())
    assert {n.region for n in topo.nodes} == {"r0", "r1", "r2", "r3"}
    assert raw["links"]["default"]["latency_ms"] == 50


def test_too_small_is_one_clear_error():
    with pytest.raises(ConfigError, match="at least 7 GPUs"):
        synthetic_topology(5)
