"""Topology files: the user's description of a cluster and the model it serves.

Owns: the JSON schema (pydantic, at the file boundary), the built-in GPU catalog, unit
parsing for bandwidths, link resolution (pair > region defaults > global default), and the
frozen `Topology` every later stage reads. Nothing here knows about placements or solvers.

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

`count` expands an entry to `name-0 .. name-{count-1}`. `price_per_hour` (per GPU node, in any
currency, >= 0) is read only by `plan --shop`, where a file is a *pool* of GPUs one can rent:
`count` is how many are available and the shop chooses how many to take (solver/shop.py).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from helix_jax.errors import ConfigError, TopologyError
from helix_jax.jsonfile import read_json_file
from helix_jax.modelconfig import ModelConfig, resolve_model

COORDINATOR = "coordinator"

# ----------------------------------------------------------------------------- units

_UNIT_BYTES = {
    "b/s": 1.0, "bytes/s": 1.0, "byte/s": 1.0, "bps": 0.125,
    "kb/s": 1e3, "mb/s": 1e6, "gb/s": 1e9, "tb/s": 1e12,
    "kib/s": 1024.0, "mib/s": 1024.0**2, "gib/s": 1024.0**3,
    "kbit/s": 1e3 / 8, "mbit/s": 1e6 / 8, "gbit/s": 1e9 / 8, "tbit/s": 1e12 / 8,
    "kbps": 1e3 / 8, "mbps": 1e6 / 8, "gbps": 1e9 / 8,
}
_BANDWIDTH_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]+)?\s*$")


def parse_bandwidth(value: Any, field: str = "bandwidth") -> float:
    """Bytes per second from a number (bytes/s) or a string with a unit ("10 Gbit/s").

    Units: B/s, KB/s, MB/s, GB/s, TB/s (powers of 1000 bytes), KiB/s.. (powers of 1024),
    Kbit/s, Mbit/s, Gbit/s (bits; also kbps/Mbps/Gbps). A bare number is bytes/s.
    """
    if isinstance(value, bool):
        raise TopologyError(f"{field} must be a number of bytes/s or a string with a unit, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _BANDWIDTH_RE.match(value)
        if not match:
            raise TopologyError(f"{field} {value!r} is not a bandwidth (e.g. \"10 Gbit/s\", \"1.25 GB/s\")")
        number = float(match.group(1))
        unit = (match.group(2) or "B/s").lower()
        if unit not in _UNIT_BYTES:
            raise TopologyError(f"{field} {value!r} has an unknown unit {match.group(2)!r}; "
                                "use B/s, KB/s, MB/s, GB/s, KiB/s, Mbit/s, Gbit/s, ...")
        number *= _UNIT_BYTES[unit]
    else:
        raise TopologyError(f"{field} must be a number of bytes/s or a string with a unit, got {value!r}")
    if not number > 0 or number == float("inf"):
        raise TopologyError(f"{field} must be positive and finite, got {value!r}")
    return number


def parse_memory_bytes(value: Any, field: str) -> float:
    """Bytes from a number of GB (1e9) or a string like "24 GB" / "16 GiB"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise TopologyError(f"{field} must be positive, got {value!r}")
        return float(value) * 1e9
    if isinstance(value, str):
        match = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*(GB|GiB|MB|MiB|TB)?\s*$", value, re.I)
        if match:
            scale = {"gb": 1e9, "gib": 1024.0**3, "mb": 1e6, "mib": 1024.0**2, "tb": 1e12}
            return float(match.group(1)) * scale[(match.group(2) or "GB").lower()]
    raise TopologyError(f"{field} {value!r} is not a memory size (e.g. 24 or \"24 GB\")")


# ----------------------------------------------------------------------------- frozen model


@dataclasses.dataclass(frozen=True)
class GpuType:
    """One kind of compute node. `num_gpus` > 1 means a multi-GPU node (e.g. "L4x2") that
    holds its layers with tensor parallelism: memory, bandwidth and FLOPs add up."""

    name: str
    memory_bytes: float
    memory_bandwidth_bytes_per_s: float
    tflops: float  # dense fp16/bf16 tensor TFLOP/s of the whole node
    num_gpus: int = 1
    nic_bandwidth_bytes_per_s: float | None = None  # None: links alone limit traffic
    max_layers: int | None = None  # explicit override of the cost model
    capacity_tokens_per_s: tuple[float, ...] | None = None  # tokens/s holding 1..N layers
    profile_path: str | None = None  # measured latency profile (helix-jax profile)


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    gpu: str
    region: str | None = None
    host: str | None = None
    price_per_hour: float | None = None  # rent of this node (pools for `plan --shop`)


@dataclasses.dataclass(frozen=True)
class Link:
    bandwidth_bytes_per_s: float
    latency_ms: float


def _catalog_type(name: str, memory_gb: float, bw_tb_s: float, tflops: float, n: int = 1) -> GpuType:
    return GpuType(name, memory_gb * 1e9 * n, bw_tb_s * 1e12 * n, tflops * n, n)


# Spec-sheet figures (../shared/HELIX.md section 9). Multi-GPU nodes add up their GPUs.
GPU_CATALOG: dict[str, GpuType] = {
    g.name: g for g in (
        _catalog_type("A100-40GB", 40, 1.555, 312),
        _catalog_type("A100-80GB", 80, 2.04, 312),
        _catalog_type("H100", 80, 3.35, 989),
        _catalog_type("H200", 141, 4.8, 989),
        _catalog_type("L4", 24, 0.30, 121),
        _catalog_type("T4", 16, 0.32, 65),
        _catalog_type("V100", 16, 0.90, 125),
        _catalog_type("A100-40GBx2", 40, 1.555, 312, 2),
        _catalog_type("L4x2", 24, 0.30, 121, 2),
        _catalog_type("L4x4", 24, 0.30, 121, 4),
        _catalog_type("T4x2", 16, 0.32, 65, 2),
        _catalog_type("T4x4", 16, 0.32, 65, 4),
        _catalog_type("V100x2", 16, 0.90, 125, 2),
        # A host CPU: what the small CPU topology's workers run on.
        GpuType("CPU", 8e9, 20e9, 0.2, 1),
    )
}
GPU_ALIASES = {"A100": "A100-40GB", "A100-40G": "A100-40GB", "A100-80G": "A100-80GB"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A validated cluster: model, GPU types in use, compute nodes, and every directed link."""

    name: str
    model: ModelConfig
    gpu_types: dict[str, GpuType]
    nodes: tuple[Node, ...]
    coordinator: Node
    links: dict[tuple[str, str], Link]  # every ordered pair of distinct endpoints
    source_path: str | None = None

    def __hash__(self) -> int:  # dict fields: hash by identity-ish content
        return hash((self.name, self.model, self.nodes))

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @functools.cached_property
    def _node_by_name(self) -> dict[str, Node]:  # node() is called per node by the planner: O(1), not O(nodes)
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        found = self._node_by_name.get(name)
        if found is not None:
            return found
        if name == COORDINATOR:
            return self.coordinator
        raise TopologyError(f"unknown node {name!r}")

    def gpu_of(self, node_name: str) -> GpuType:
        return self.gpu_types[self.node(node_name).gpu]

    def link(self, src: str, dst: str) -> Link:
        try:
            return self.links[(src, dst)]
        except KeyError:
            raise TopologyError(f"no link from {src!r} to {dst!r}") from None

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(sorted({n.region or "default" for n in self.nodes}))


# ----------------------------------------------------------------------------- file schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class GpuTypeSpec(_Strict):
    memory_gb: float | str | None = None
    memory_bandwidth: float | str | None = None  # bytes/s or string with unit
    tflops: float | None = Field(default=None, gt=0)
    num_gpus: int = Field(default=1, ge=1)
    nic_bandwidth: float | str | None = None
    max_layers: int | None = Field(default=None, ge=1)
    capacity_tokens_per_s: list[float] | None = None
    profile: str | None = None
    based_on: str | None = None  # start from a catalog type and override some fields

    @field_validator("capacity_tokens_per_s")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not v:
                raise ValueError("must list at least one capacity")
            if any(not (x > 0) for x in v):
                raise ValueError(f"every capacity must be positive, got {v}")
        return v


class LinkSpec(_Strict):
    bandwidth: float | str
    latency_ms: float = Field(default=0.0, ge=0)


class RegionPairSpec(LinkSpec):
    regions: tuple[str, str]


class PairSpec(LinkSpec):
    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    one_way: bool = False


class LinksSpec(_Strict):
    default: LinkSpec | None = None
    within_region: dict[str, LinkSpec] = Field(default_factory=dict)
    between_regions: list[RegionPairSpec] = Field(default_factory=list)
    pairs: list[PairSpec] = Field(default_factory=list)


class NodeSpec(_Strict):
    name: str = Field(min_length=1)
    gpu: str
    region: str | None = None
    host: str | None = None
    count: int = Field(default=1, ge=1)  # "count": 4 expands to name-0 .. name-3
    price_per_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class CoordinatorSpec(_Strict):
    region: str | None = None
    host: str | None = None


class TopologySpec(_Strict):
    name: str | None = None
    description: str | None = None
    model: Union[str, dict[str, Any]]
    gpu_types: dict[str, GpuTypeSpec] = Field(default_factory=dict)
    coordinator: CoordinatorSpec = Field(default_factory=CoordinatorSpec)
    nodes: list[NodeSpec] = Field(min_length=1)
    links: LinksSpec = Field(default_factory=LinksSpec)


DEFAULT_LINK = Link(bandwidth_bytes_per_s=1e9, latency_ms=1.0)


def _pydantic_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "file"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if err["type"] == "missing":
        return f"missing required field {where!r}"
    return f"field {where!r}: {err['msg']} (got {err.get('input')!r})"


def _build_gpu_types(spec: TopologySpec, base_dir: Path) -> dict[str, GpuType]:
    types = dict(GPU_CATALOG)
    for alias, target in GPU_ALIASES.items():
        types[alias] = dataclasses.replace(GPU_CATALOG[target], name=alias)
    for name, t in spec.gpu_types.items():
        base_name = t.based_on or (name if name in types else None)
        if t.based_on and t.based_on not in types:
            raise TopologyError(f"gpu_types.{name}.based_on: unknown GPU type {t.based_on!r}")
        base = types.get(base_name) if base_name else None
        has_table = t.capacity_tokens_per_s is not None
        if base is None and not has_table and t.profile is None and (
                t.memory_gb is None or t.memory_bandwidth is None or t.tflops is None):
            raise TopologyError(
                f"gpu_types.{name}: a new GPU type needs memory_gb, memory_bandwidth and tflops, "
                "or a measured table (max_layers + capacity_tokens_per_s), or a profile")
        table = tuple(t.capacity_tokens_per_s) if has_table and t.capacity_tokens_per_s is not None else None
        max_layers = t.max_layers
        if table is not None:
            if max_layers is None:
                max_layers = len(table)
            elif len(table) != max_layers:
                raise TopologyError(
                    f"gpu_types.{name}: capacity_tokens_per_s has {len(table)} entries "
                    f"but max_layers is {max_layers}")
        profile = None
        if t.profile is not None:
            p = Path(t.profile)
            p = p if p.is_absolute() else base_dir / p
            if not p.is_file():
                raise TopologyError(f"gpu_types.{name}.profile: file {str(p)!r} does not exist")
            profile = str(p)
        n = t.num_gpus if t.num_gpus != 1 or base is None else base.num_gpus
        types[name] = GpuType(
            name=name,
            memory_bytes=(parse_memory_bytes(t.memory_gb, f"gpu_types.{name}.memory_gb")
                          if t.memory_gb is not None else (base.memory_bytes if base else 0.0)),
            memory_bandwidth_bytes_per_s=(
                parse_bandwidth(t.memory_bandwidth, f"gpu_types.{name}.memory_bandwidth")
                if t.memory_bandwidth is not None else (base.memory_bandwidth_bytes_per_s if base else 0.0)),
            tflops=t.tflops if t.tflops is not None else (base.tflops if base else 0.0),
            num_gpus=n,
            nic_bandwidth_bytes_per_s=(parse_bandwidth(t.nic_bandwidth, f"gpu_types.{name}.nic_bandwidth")
                                       if t.nic_bandwidth is not None
                                       else (base.nic_bandwidth_bytes_per_s if base else None)),
            max_layers=max_layers if max_layers is not None else (base.max_layers if base else None),
            capacity_tokens_per_s=table if table is not None else (base.capacity_tokens_per_s if base else None),
            profile_path=profile if profile is not None else (base.profile_path if base else None),
        )
    return types


def _link_of(spec: LinkSpec, where: str) -> Link:
    return Link(parse_bandwidth(spec.bandwidth, f"{where}.bandwidth"), float(spec.latency_ms))


def _resolve_links(spec: TopologySpec, endpoints: list[Node]) -> dict[tuple[str, str], Link]:
    ls = spec.links
    default = _link_of(ls.default, "links.default") if ls.default else DEFAULT_LINK
    within_default = (_link_of(ls.within_region["default"], "links.within_region.default")
                      if "default" in ls.within_region else None)
    regions = {n.region for n in endpoints if n.region}
    within = {}
    for region, s in ls.within_region.items():
        if region != "default" and region not in regions:
            raise TopologyError(f"links.within_region: unknown region {region!r}; "
                                f"regions in this file: {sorted(regions)}")
        within[region] = _link_of(s, f"links.within_region.{region}")
    between: dict[frozenset[str], Link] = {}
    for i, s in enumerate(ls.between_regions):
        for r in s.regions:
            if r not in regions:
                raise TopologyError(f"links.between_regions[{i}]: unknown region {r!r}; "
                                    f"regions in this file: {sorted(regions)}")
        between[frozenset(s.regions)] = _link_of(s, f"links.between_regions[{i}]")

    def region_link(a: Node, b: Node) -> Link:
        if a.region and b.region:
            if a.region == b.region:
                return within.get(a.region) or within_default or default
            return between.get(frozenset((a.region, b.region)), default)
        return default

    links = {(a.name, b.name): region_link(a, b) for a in endpoints for b in endpoints if a is not b}
    names = {n.name for n in endpoints}
    for i, p in enumerate(ls.pairs):
        for end, label in ((p.src, "from"), (p.dst, "to")):
            if end not in names:
                raise TopologyError(f"links.pairs[{i}].{label}: unknown node {end!r}")
        if p.src == p.dst:
            raise TopologyError(f"links.pairs[{i}]: a link needs two different nodes, got {p.src!r} twice")
        link = _link_of(p, f"links.pairs[{i}]")
        links[(p.src, p.dst)] = link
        if not p.one_way:
            links[(p.dst, p.src)] = link
    return links


def topology_from_dict(raw: Any, source: str | None = None, base_dir: Path | None = None) -> Topology:
    """Validate a parsed topology document. Raises TopologyError naming the bad field."""
    base_dir = base_dir or Path.cwd()
    if not isinstance(raw, dict):
        raise TopologyError(f"a topology must be a JSON object, got {type(raw).__name__}")
    try:
        spec = TopologySpec.model_validate(raw)
    except ValidationError as exc:
        raise TopologyError(_pydantic_message(exc)) from None
    try:
        model = resolve_model(spec.model, base_dir)
    except ConfigError as exc:
        raise TopologyError(f"model: {exc}") from None
    types = _build_gpu_types(spec, base_dir)
    nodes: list[Node] = []
    for i, ns in enumerate(spec.nodes):
        if ns.gpu not in types:
            raise TopologyError(f"nodes[{i}] ({ns.name!r}): unknown GPU type {ns.gpu!r}; "
                                f"known types: {', '.join(sorted(types))}")
        names = [ns.name] if ns.count == 1 else [f"{ns.name}-{j}" for j in range(ns.count)]
        nodes.extend(Node(nm, ns.gpu, ns.region, ns.host, ns.price_per_hour) for nm in names)
    seen: set[str] = set()
    for n in nodes:
        if n.name == COORDINATOR:
            raise TopologyError(f"node name {COORDINATOR!r} is reserved for the coordinator")
        if n.name in seen:
            raise TopologyError(f"duplicate node name {n.name!r}")
        seen.add(n.name)
    coordinator = Node(COORDINATOR, "none", spec.coordinator.region or nodes[0].region,
                       spec.coordinator.host)
    links = _resolve_links(spec, [coordinator, *nodes])
    used = {n.gpu for n in nodes}
    return Topology(
        name=spec.name or (Path(source).stem if source else "topology"),
        model=model,
        gpu_types={k: v for k, v in types.items() if k in used},
        nodes=tuple(nodes),
        coordinator=coordinator,
        links=links,
        source_path=source,
    )


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology JSON file."""
    p = Path(path)
    raw = read_json_file(p, "topology", TopologyError)
    return topology_from_dict(raw, source=str(p), base_dir=p.parent)


def default_topology_path() -> Path:
    """The embedded small CPU topology (SmolLM2-135M-Instruct, 3 workers): `deploy`'s default."""
    return Path(__file__).parent / "data" / "cpu-small.json"


def tiny_topology_path() -> Path:
    """The embedded tiny CPU topology (tiny-8 with random weights, 3 workers): fast tests, --emulate."""
    return Path(__file__).parent / "data" / "cpu-tiny.json"


