"""Loading a topology: a validated file -> GPU types, expanded nodes, every directed link.

Sits at the file boundary (**file -> topology** -> cost model): resolves GPU types against
the catalog (catalog.py) and the file's overrides, expands `count`, resolves links (pair >
region defaults > global default) and returns the frozen `Topology` (model.py). Reads the
file and the files it names (profiles, HF configs); touches nothing after the topology.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from helix_jax.errors import ConfigError, TopologyError
from helix_jax.jsonfile import read_json_file
from helix_jax.modelconfig import resolve_model
from helix_jax.topology.catalog import GPU_ALIASES, GPU_CATALOG
from helix_jax.topology.model import COORDINATOR, GpuType, Link, Node, Topology
from helix_jax.topology.schema import LinkSpec, TopologySpec, pydantic_message
from helix_jax.topology.units import parse_bandwidth, parse_memory_bytes

DEFAULT_LINK = Link(bandwidth_bytes_per_s=1e9, latency_ms=1.0)


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
        if base is None and not has_table and t.profile is None and (t.memory_gb is None or t.memory_bandwidth is None or t.tflops is None):
            raise TopologyError(
                f"gpu_types.{name}: a new GPU type needs memory_gb, memory_bandwidth and tflops, "
                "or a measured table (max_layers + capacity_tokens_per_s), or a profile"
            )
        table = tuple(t.capacity_tokens_per_s) if has_table and t.capacity_tokens_per_s is not None else None
        max_layers = t.max_layers
        if table is not None:
            if max_layers is None:
                max_layers = len(table)
            elif len(table) != max_layers:
                raise TopologyError(f"gpu_types.{name}: capacity_tokens_per_s has {len(table)} entries but max_layers is {max_layers}")
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
            memory_bytes=(
                parse_memory_bytes(t.memory_gb, f"gpu_types.{name}.memory_gb")
                if t.memory_gb is not None
                else (base.memory_bytes if base else 0.0)
            ),
            memory_bandwidth_bytes_per_s=(
                parse_bandwidth(t.memory_bandwidth, f"gpu_types.{name}.memory_bandwidth")
                if t.memory_bandwidth is not None
                else (base.memory_bandwidth_bytes_per_s if base else 0.0)
            ),
            tflops=t.tflops if t.tflops is not None else (base.tflops if base else 0.0),
            num_gpus=n,
            nic_bandwidth_bytes_per_s=(
                parse_bandwidth(t.nic_bandwidth, f"gpu_types.{name}.nic_bandwidth")
                if t.nic_bandwidth is not None
                else (base.nic_bandwidth_bytes_per_s if base else None)
            ),
            max_layers=max_layers if max_layers is not None else (base.max_layers if base else None),
            capacity_tokens_per_s=table if table is not None else (base.capacity_tokens_per_s if base else None),
            profile_path=profile if profile is not None else (base.profile_path if base else None),
            max_prompt_tokens_per_step=(
                t.max_prompt_tokens_per_step
                if t.max_prompt_tokens_per_step is not None
                else (base.max_prompt_tokens_per_step if base else None)
            ),
        )
    return types


def _link_of(spec: LinkSpec, where: str) -> Link:
    return Link(parse_bandwidth(spec.bandwidth, f"{where}.bandwidth"), float(spec.latency_ms))


def _resolve_links(spec: TopologySpec, endpoints: list[Node]) -> dict[tuple[str, str], Link]:
    ls = spec.links
    default = _link_of(ls.default, "links.default") if ls.default else DEFAULT_LINK
    within_default = _link_of(ls.within_region["default"], "links.within_region.default") if "default" in ls.within_region else None
    regions = {n.region for n in endpoints if n.region}
    within = {}
    for region, s in ls.within_region.items():
        if region != "default" and region not in regions:
            raise TopologyError(f"links.within_region: unknown region {region!r}; regions in this file: {sorted(regions)}")
        within[region] = _link_of(s, f"links.within_region.{region}")
    between: dict[frozenset[str], Link] = {}
    for i, s in enumerate(ls.between_regions):
        for r in s.regions:
            if r not in regions:
                raise TopologyError(f"links.between_regions[{i}]: unknown region {r!r}; regions in this file: {sorted(regions)}")
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
        raise TopologyError(pydantic_message(exc)) from None
    try:
        model = resolve_model(spec.model, base_dir)
    except ConfigError as exc:
        raise TopologyError(f"model: {exc}") from None
    types = _build_gpu_types(spec, base_dir)
    nodes: list[Node] = []
    for i, ns in enumerate(spec.nodes):
        if ns.gpu not in types:
            raise TopologyError(f"nodes[{i}] ({ns.name!r}): unknown GPU type {ns.gpu!r}; known types: {', '.join(sorted(types))}")
        names = [ns.name] if ns.count == 1 else [f"{ns.name}-{j}" for j in range(ns.count)]
        nodes.extend(Node(nm, ns.gpu, ns.region, ns.host, ns.price_per_hour) for nm in names)
    seen: set[str] = set()
    for n in nodes:
        if n.name == COORDINATOR:
            raise TopologyError(f"node name {COORDINATOR!r} is reserved for the coordinator")
        if n.name in seen:
            raise TopologyError(f"duplicate node name {n.name!r}")
        seen.add(n.name)
    coordinator = Node(COORDINATOR, "none", spec.coordinator.region or nodes[0].region, spec.coordinator.host)
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
    return Path(__file__).parent.parent / "data" / "cpu-small.json"


def tiny_topology_path() -> Path:
    """The embedded tiny CPU topology (tiny-8 with random weights, 3 workers): fast tests, --emulate."""
    return Path(__file__).parent.parent / "data" / "cpu-tiny.json"
