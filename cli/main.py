"""`helix-jax` command line (Typer). Each command module parses its options, calls one
library function and prints, on a rich Console it makes when it runs (so the terminal's width
and COLUMNS are read then, not at import); this file only assembles them and turns every
`HelixError` into one readable line on stderr with a non-zero exit (no traceback)."""

from __future__ import annotations

import logging
import os
import sys

import typer

from helix_jax.errors import HelixError

app = typer.Typer(
    name="helix-jax",
    help="Serve one LLM across a cluster of mixed GPUs by max-flow placement.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Serve one LLM across a cluster of mixed GPUs by max-flow placement."""


def _register_commands() -> None:
    # Each module defines `register(app)`; imports of jax/cvxpy stay inside the commands.
    from helix_jax.cli import bench_cmds, http_cmds, models_cmds, plan_cmds, runtime_cmds, serve_cmds

    for module in (plan_cmds, runtime_cmds, serve_cmds, http_cmds, bench_cmds, models_cmds):
        module.register(app)


_register_commands()


def main() -> None:
    logging.basicConfig(level=os.environ.get("HELIX_LOG", "WARNING").upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        app()
    except HelixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
