"""Planner commands: `validate` (more come with the solver)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from helix_jax.topology import load_topology


def validate(topology: Path = typer.Argument(..., help="Topology JSON file.")) -> None:
    """Check a topology file and print a summary of what it describes."""
    topo = load_topology(topology)
    console = Console()
    kinds: dict[str, int] = {}
    for n in topo.nodes:
        kinds[n.gpu] = kinds.get(n.gpu, 0) + 1
    console.print(f"[bold]{topo.name}[/]: {len(topo.nodes)} nodes "
                  f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
                  f"regions {', '.join(topo.regions)}, model {topo.model.name} "
                  f"({topo.model.num_layers} layers)")
    console.print("valid")


def register(app: typer.Typer) -> None:
    app.command()(validate)
