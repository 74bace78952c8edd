"""Synthetic clusters for the scale benchmarks: N GPUs of the paper's 7 kinds in R regions.

Feeds the planner and simulator scale rows (`make bench-plan`, `make bench-sim`):
**synthetic_topology(gpus, regions)** -> topology dict -> `topology_from_dict` -> plan / simulate.

The mix is the Helix paper's heterogeneous cluster (HELIX.md: 4 A100, 6 V100, 8 L4, 4 L4x2,
10 T4, 6 T4x2, 4 T4x4 nodes, 64 GPUs in 42 nodes), scaled so the GPUs add up to `gpus`
(largest-remainder rounding; every kind keeps at least one node). Nodes of a kind are dealt
round-robin over the regions, one `count` entry per (kind, region), so the file's size grows
with kinds x regions, not with nodes. Links: 1.25 GB/s and 1 ms within a region, 12.5 MB/s and
50 ms between regions, as in the paper's three-region cluster. Deterministic: no randomness.
"""

from __future__ import annotations

import math
from typing import Any

from helix_jax.errors import ConfigError

# (node name, catalog GPU, nodes in the paper's 42-node cluster, GPUs per node)
PAPER_MIX: tuple[tuple[str, str, int, int], ...] = (
    ("a100", "A100-40GB", 4, 1),
    ("v100", "V100", 6, 1),
    ("l4", "L4", 8, 1),
    ("l4x2", "L4x2", 4, 2),
    ("t4", "T4", 10, 1),
    ("t4x2", "T4x2", 6, 2),
    ("t4x4", "T4x4", 4, 4),
)
PAPER_GPUS = sum(n * g for _, _, n, g in PAPER_MIX)  # 64


def node_counts(gpus: int) -> dict[str, int]:
    """Nodes per kind so that the GPUs add up to about `gpus` (within one node's GPUs)."""
    if gpus < len(PAPER_MIX):
        raise ConfigError(f"a synthetic cluster needs at least {len(PAPER_MIX)} GPUs (one node per kind), got {gpus}")
    scale = gpus / PAPER_GPUS
    exact = {name: n * scale for name, _, n, _ in PAPER_MIX}
    counts = {name: max(1, math.floor(x)) for name, x in exact.items()}
    per_node = {name: g for name, _, _, g in PAPER_MIX}
    # Hand out the remaining GPUs to the kinds with the largest remainders, one node at a time.
    for name in sorted(exact, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True):
        if sum(counts[k] * per_node[k] for k in counts) + per_node[name] > gpus:
            continue
        counts[name] += 1
    return counts


def synthetic_topology(gpus: int, regions: int = 1, model: str = "llama-2-70b") -> dict[str, Any]:
    """A topology dict (the file schema) of about `gpus` GPUs of the paper's mix in `regions` regions."""
    if regions < 1:
        raise ConfigError(f"regions must be >= 1, got {regions}")
    counts = node_counts(gpus)
    gpu_of = {name: gpu for name, gpu, _, _ in PAPER_MIX}
    nodes: list[dict[str, Any]] = []
    for name, total in counts.items():
        for r in range(regions):
            share = total // regions + (1 if r < total % regions else 0)
            if share:
                nodes.append({"name": f"r{r}-{name}", "gpu": gpu_of[name], "region": f"r{r}", "count": share})
    total_gpus = sum(counts[k] * g for k, _, _, g in PAPER_MIX)
    links: dict[str, Any] = {"default": {"bandwidth": "1.25 GB/s", "latency_ms": 1}}
    if regions > 1:
        links = {
            "default": {"bandwidth": "12.5 MB/s", "latency_ms": 50},
            "within_region": {"default": {"bandwidth": "1.25 GB/s", "latency_ms": 1}},
        }
    return {
        "name": f"synthetic-{total_gpus}gpu-{regions}r",
        "description": f"{total_gpus} GPUs of the Helix paper's 7 kinds in {regions} region(s), {sum(counts.values())} nodes.",
        "model": model,
        "coordinator": {"region": "r0"},
        "nodes": nodes,
        "links": links,
    }
