"""Serving commands: `worker` (join a deployment), `deploy` and `demo` (see helix_jax.runtime)."""

from __future__ import annotations

import logging
import os
import sys

import typer

from helix_jax.errors import HelixError


def worker(coordinator: str = typer.Option(..., help="Coordinator control endpoint, tcp://HOST:PORT."),
           node: str = typer.Option(..., help="Node name in the topology."),
           bind_host: str = typer.Option("127.0.0.1", help="Address the data socket binds (0.0.0.0 for remote peers)."),
           advertise_host: str = typer.Option(None, help="Address other nodes use to reach this one."),
           parent_pid: int = typer.Option(None, hidden=True, help="Exit when this process dies.")) -> None:
    """Join a deployment: register, load and warm up the assigned layers, then serve."""
    logging.getLogger().setLevel(os.environ.get("HELIX_LOG", "INFO").upper())
    from helix_jax.runtime.worker import WorkerOptions, run_worker

    code = run_worker(WorkerOptions(coordinator, node, bind_host, advertise_host, parent_pid))
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(worker)
