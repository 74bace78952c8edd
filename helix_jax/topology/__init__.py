"""Topology files: the user's description of a cluster and the model it serves.

Owns: the JSON schema (pydantic, at the file boundary: schema.py), the built-in GPU catalog
(catalog.py), unit parsing for bandwidths and memory (units.py), link resolution (pair >
region defaults > global default: load.py), and the frozen `Topology` every later stage reads
(model.py). Nothing here knows about placements or solvers.

File format (all fields but `model` and `nodes` optional)::

    {
      "name": "my-cluster",
      "model": "llama-2-70b" | {"num_layers": 80, ...} | {"hf_config": "path/config.json"},
      "gpu_types": {"MyGPU": {"memory_gb": 24, "memory_bandwidth": "300 GB/s", "tflops": 121,
                              "max_layers": 6, "capacity_tokens_per_s": [...], "profile": "p.json"}},
      "coordinator": {"region": "r1", "host": "127.0.0.1"},
      "nodes": [{"name": "a100-0", "gpu": "A100-40GB", "region": "r1", "host": "10.0.0.2"},
                {"name": "t4", "gpu": "T4", "region": "r1", "count": 8, "price_per_hour": 0.35}],
      "links": {
        "default": {"bandwidth": "1 GB/s", "latency_ms": 1},
        "within_region": {"default": {...}, "r1": {...}},
        "between_regions": [{"regions": ["r1", "r2"], "bandwidth": "100 Mbit/s", "latency_ms": 50}],
        "pairs": [{"from": "coordinator", "to": "a100-0", "bandwidth": 1e9, "latency_ms": 1,
                   "one_way": false}]
      }
    }

`max_prompt_tokens_per_step` (a GPU type's) caps the prompt tokens one batch step of its nodes
takes: longer prompts are prefilled in chunks over several steps, mixed with decode rows, in the
simulator and in the workers alike. Without it the cost model derives the budget from activation
memory (at most 128 tokens), or allows 2,048 for a type given only by an explicit table.

`count` expands an entry to `name-0 .. name-{count-1}`. `price_per_hour` (per GPU node, in any
currency, >= 0) is read only by `plan --shop`, where a file is a *pool* of GPUs one can rent:
`count` is how many are available and the shop chooses how many to take (solver/shop.py).
"""

from helix_jax.topology.catalog import GPU_ALIASES, GPU_CATALOG
from helix_jax.topology.load import (
    DEFAULT_LINK,
    default_topology_path,
    load_topology,
    tiny_topology_path,
    topology_from_dict,
)
from helix_jax.topology.model import COORDINATOR, GpuType, Link, Node, Topology
from helix_jax.topology.units import parse_bandwidth, parse_memory_bytes

__all__ = [
    "COORDINATOR",
    "DEFAULT_LINK",
    "GPU_ALIASES",
    "GPU_CATALOG",
    "GpuType",
    "Link",
    "Node",
    "Topology",
    "default_topology_path",
    "load_topology",
    "parse_bandwidth",
    "parse_memory_bytes",
    "tiny_topology_path",
    "topology_from_dict",
]
