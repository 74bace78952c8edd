"""What a shopping answer is compared with: the cheapest single-type cluster and the Pareto frontier.

Owns: `single_type_options` (per GPU type of a pool, the fewest nodes of that type alone that
reach a target, the cluster a user would otherwise rent), `frontier` (least cost per hour
against max-flow over a range of targets, each point with its proven lower bound) and its
PNG. Sits after shop.py: pool -> shop -> **comparison, frontier** -> CLI table / bench rows.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from helix_jax.costmodel import WorkloadShape
from helix_jax.solver.shop import _own_flow, cheapest_mix, check_pool, cost_of, mix_of, sub_topology
from helix_jax.topology import Topology


@dataclasses.dataclass(frozen=True)
class MixPoint:
    """The cheapest mix found for one target (None fields: no mix reaches it)."""

    target_tokens_per_s: float
    mix: dict[str, int] | None
    cost_per_hour: float | None
    cost_lower_bound_per_hour: float  # inf: proven out of reach
    tokens_per_s: float | None  # the mix's true max-flow at its own pace
    ranges: dict[str, tuple[int, int]] | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def tokens_per_dollar(self) -> float | None:
        if self.tokens_per_s is None or not self.cost_per_hour:
            return None
        return self.tokens_per_s * 3600.0 / self.cost_per_hour

    def to_dict(self) -> dict:
        low = self.cost_lower_bound_per_hour
        return {
            "target_tokens_per_s": self.target_tokens_per_s,
            "mix": self.mix,
            "cost_per_hour": self.cost_per_hour,
            "cost_lower_bound_per_hour": low if math.isfinite(low) else None,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_dollar": self.tokens_per_dollar,
        }


def cheapest_point(
    pool: Topology, target: float, workload: WorkloadShape, partial: bool = True, time_limit_s: float = 30.0, seed: int = 0
) -> MixPoint:
    ranges, cost, lower = cheapest_mix(pool, target, workload, partial, time_limit_s, seed)
    if ranges is None:
        return MixPoint(target, None, None, lower, None)
    return MixPoint(target, mix_of(pool, ranges), cost, lower, _own_flow(pool, workload, ranges, partial), ranges)


def single_type_options(
    pool: Topology, target: float, workload: WorkloadShape, partial: bool = True, time_limit_s: float = 10.0, seed: int = 0
) -> dict[str, MixPoint]:
    """Per GPU type of `pool`: the cheapest cluster of that type alone reaching `target`."""
    check_pool(pool)
    out = {}
    types = sorted({n.gpu for n in pool.nodes})
    for gpu in types:
        sub = sub_topology(pool, [n.name for n in pool.nodes if n.gpu == gpu])
        out[gpu] = cheapest_point(sub, target, workload, partial, time_limit_s / len(types), seed)
    return out


def cheapest_single_type(options: dict[str, MixPoint]) -> MixPoint | None:
    reaching = [p for p in options.values() if p.cost_per_hour is not None]
    return min(reaching, key=lambda p: (p.cost_per_hour, sorted(p.mix))) if reaching else None


def default_targets(largest_tokens_per_s: float, points: int) -> list[float]:
    """`points` evenly spaced targets up to the largest reachable max-flow, rounded to 3 digits
    (none when nothing is reachable)."""
    step = largest_tokens_per_s / points
    return sorted({float(f"{step * (i + 1):.3g}") for i in range(points)} - {0.0}) if step > 0 else []


def frontier(
    pool: Topology,
    targets: list[float],
    workload: WorkloadShape,
    partial: bool = True,
    time_limit_s: float = 60.0,
    seed: int = 0,
    known: list[MixPoint] = (),
) -> list[tuple[MixPoint, MixPoint | None]]:
    """(cheapest mix, cheapest single-type cluster) per target; time split evenly. Least cost is
    non-decreasing in the target, so each point takes the cheapest mix found for any target (or
    in `known`, e.g. the shop's own answer) that reaches it, and the largest lower bound of the
    targets up to it."""
    check_pool(pool)
    targets = sorted(targets)
    per_target = time_limit_s / max(1, len(targets))
    found = [cheapest_point(pool, t, workload, partial, 0.75 * per_target, seed) for t in targets]
    singles = [cheapest_single_type(single_type_options(pool, t, workload, partial, 0.25 * per_target, seed)) for t in targets]
    mixes = [p for p in [*found, *known] if p.cost_per_hour is not None]
    rows, lower = [], 0.0
    for target, point, single in zip(targets, found, singles):
        lower = max(lower, point.cost_lower_bound_per_hour)
        reaching = [p for p in mixes if p.tokens_per_s >= target * (1 - 1e-9)]
        best = min(reaching, key=lambda p: p.cost_per_hour) if reaching else None
        rows.append(
            (
                MixPoint(
                    target,
                    best.mix if best else None,
                    best.cost_per_hour if best else None,
                    lower,
                    best.tokens_per_s if best else None,
                    best.ranges if best else None,
                ),
                single,
            )
        )
    return rows


def plot_frontier(rows: list[tuple[MixPoint, MixPoint | None]], path: Path, title: str) -> None:
    """Cost per hour against target max-flow: the mix, its lower bound, the best single type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    found = [(p.target_tokens_per_s, p.cost_per_hour) for p, _ in rows if p.cost_per_hour is not None]
    bound = [(p.target_tokens_per_s, p.cost_lower_bound_per_hour) for p, _ in rows if math.isfinite(p.cost_lower_bound_per_hour)]
    single = [(p.target_tokens_per_s, s.cost_per_hour) for p, s in rows if s is not None]
    for points, style, label in (
        (found, "o-", "cheapest mix"),
        (bound, "k:", "proven lower bound"),
        (single, "s--", "cheapest single GPU type"),
    ):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("target max-flow (decode tokens/s)")
    ax.set_ylabel("cost per hour")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mix_topology_dict(raw: dict, pool: Topology, rented: list[str]) -> dict:
    """The pool file `raw` with each node entry's `count` cut to what the mix rents from it
    (entries it rents nothing from dropped): a topology of the mix, with the same node names."""
    keep = set(rented)
    out = dict(raw, name=f"{pool.name}-mix", nodes=[])
    for entry in raw["nodes"]:
        count = int(entry.get("count", 1))
        names = [entry["name"]] if count == 1 else [f"{entry['name']}-{j}" for j in range(count)]
        taken = [n for n in names if n in keep]
        if not taken:
            continue
        if taken != names[: len(taken)]:  # not a prefix of the entry: name the nodes one by one
            out["nodes"].extend({**entry, "name": n, "count": 1} for n in taken)
        elif count > 1 and len(taken) == 1:
            out["nodes"].append({**entry, "name": taken[0], "count": 1})
        else:
            out["nodes"].append({**entry, "count": len(taken)})
    out["description"] = (
        f"Mix rented from {pool.name}: "
        + ", ".join(f"{v} x {k}" for k, v in mix_of(pool, rented).items())
        + f", {cost_of(pool, rented):.2f} per hour."
    )
    return out
