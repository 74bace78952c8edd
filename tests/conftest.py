"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest

from helix_jax.topology import Topology, topology_from_dict


@pytest.fixture
def nic_pair() -> Topology:
    """a (no NIC limit) and b, whose 2560 B/s NIC passes 10 tiny-model activation vectors/s
    (256 bytes each) each way; both types take explicit capacity tables."""
    return topology_from_dict({
        "model": "tiny",
        "gpu_types": {"g": {"max_layers": 2, "capacity_tokens_per_s": [100, 100]},
                      "n": {"max_layers": 4, "capacity_tokens_per_s": [100, 100, 100, 100],
                            "nic_bandwidth": 2560}},
        "nodes": [{"name": "a", "gpu": "g"}, {"name": "b", "gpu": "n"}]})
