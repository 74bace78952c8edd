"""HTTP front end commands: `serve-http` (an OpenAI-compatible front end of a running
deployment) and the `--http-*` part of `deploy`. The app itself is `helix_jax.http`; this
module parses options, starts it next to (or apart from) the coordinator, and drains it on
SIGTERM / Ctrl-C."""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.console import Console

from helix_jax.cli.signals import StopSignal
from helix_jax.errors import ConfigError

API_KEY_HELP = (
    "Require 'Authorization: Bearer KEY' on /v1; several keys separated by commas, each with "
    "its own share of the queue (env HELIX_API_KEY)."
)
KEY_QUEUE_SHARE_HELP = (
    "Sequences one API key (or, without keys, all requests together) may have waiting "
    "before it gets 429 (default: half of the coordinator's queue)."
)


def check_http_options(http_port: int, shutdown_timeout: float, api_key: str | None = None, key_queue_share: int | None = None) -> None:
    from helix_jax.http.tenants import Tenants

    if not 0 <= http_port <= 65535:
        raise ConfigError(f"--http-port must be in [0, 65535], got {http_port}")
    if not shutdown_timeout >= 0:
        raise ConfigError(f"--shutdown-timeout must be >= 0, got {shutdown_timeout}")
    Tenants(api_key, key_queue_share)  # a bad key list or share is one error before anything starts


def start_http(
    console: Console,
    endpoint: str,
    tokenizer: Any,
    sock: Any,
    api_key: str | None,
    served_model: str | None = None,
    keys: Any = None,
    key_queue_share: int | None = None,
) -> Any:
    """The front end on `sock` (from `helix_jax.http.bind_socket`), started; prints its URL on `console`.
    `keys`: the ClientKeys of a CURVE deployment (deploy hands over its client keypair)."""
    from helix_jax.http.server import serve_front_end

    front = serve_front_end(endpoint, tokenizer, sock, api_key or None, served_model, keys, key_queue_share)
    console.print(f"HTTP API: {front.url}/v1", soft_wrap=True)
    console.print(f"  (OpenAI-compatible{', API key required' if api_key else ''}; {front.url}/metrics, /health, /ready)", soft_wrap=True)
    return front


def drain_http(console: Console, front: Any, shutdown_timeout: float) -> None:
    console.print(f"draining the HTTP API (up to {shutdown_timeout:g} s for requests in flight)")
    cancelled = front.drain(shutdown_timeout)
    if cancelled:
        console.print(f"cancelled {cancelled} request(s) still running after {shutdown_timeout:g} s")
    front.stop()


def serve_http(
    endpoint: str = typer.Option(..., help="The deployment's client endpoint, tcp://HOST:PORT."),
    model: str = typer.Option(
        None, help="Model the deployment serves (preset, checkpoint dir or .gguf), for its tokenizer (default: the deployment's)."
    ),
    http_host: str = typer.Option("127.0.0.1", help="Address the HTTP API listens on."),
    http_port: int = typer.Option(8000, help="Port of the HTTP API (0: a free port)."),
    api_key: str = typer.Option(None, envvar="HELIX_API_KEY", help=API_KEY_HELP),
    key_queue_share: int = typer.Option(None, help=KEY_QUEUE_SHARE_HELP),
    served_model_name: str = typer.Option(None, help="Model id clients send (default: the deployment's)."),
    shutdown_timeout: float = typer.Option(30.0, help="On SIGTERM: seconds requests in flight may finish before they are cancelled."),
) -> None:
    """Serve the OpenAI-compatible HTTP API for a running deployment (several may share one)."""
    from helix_jax.client import Client
    from helix_jax.http.server import bind_socket
    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.modelconfig import is_tiny, resolve_model

    check_http_options(http_port, shutdown_timeout, api_key, key_queue_share)
    console = Console()
    if model is None:
        with Client(endpoint, timeout_s=30) as client:
            model = str(client.info()["model"])
    config = resolve_model(model)
    tokenizer = load_tokenizer(config, None if is_tiny(config) and not os.path.exists(model) else model)
    front = start_http(
        console, endpoint, tokenizer, bind_socket(http_host, http_port), api_key, served_model_name, key_queue_share=key_queue_share
    )
    stop = StopSignal()
    stop.wait()
    drain_http(console, front, shutdown_timeout)
    console.print("stopped")


def register(app: typer.Typer) -> None:
    app.command("serve-http")(serve_http)
