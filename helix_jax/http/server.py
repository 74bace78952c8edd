"""Running the HTTP front end: uvicorn in a thread with its own event loop.

Owns: `bind_socket` (the listening socket, bound before anything else starts so a busy port
fails at once and port 0 is known early), `HttpServer` (start, the drain of SIGTERM, stop)
and `serve_front_end` (build the app for an endpoint and start it). Sits beside the
coordinator in the deploy process (or alone, `helix-jax serve-http`): the uvicorn thread
only talks to the coordinator over its ZeroMQ client socket, never inside its loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import uvicorn

from helix_jax.errors import ConfigError, HelixError

logger = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port); ConfigError if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} for the HTTP API: {exc.strerror or exc} (choose another --http-port, 0 for a free one)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()

    def install_signal_handlers(self) -> None:  # older uvicorn: signals belong to the main thread
        pass


class HttpServer:
    """The app served on `sock` from a daemon thread. `start()` returns once it accepts
    requests (the backend connected to the coordinator); `drain(S)` then `stop()` on SIGTERM."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.app, self.sock = app, sock
        host, port = sock.getsockname()[:2]
        self.host, self.port = host, port
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", loop="asyncio", timeout_graceful_shutdown=5, timeout_keep_alive=30
        )
        self._server = _Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> "HttpServer":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]}, name="helix-http", daemon=True)
        self._thread.start()
        waited = 0.0
        while not self._server.up.wait(0.2):
            waited += 0.2
            if not self._thread.is_alive() or waited > timeout_s:
                self.stop()
                raise HelixError(f"the HTTP front end did not start on {self.url} (is the coordinator reachable? see the log above)")
        return self

    def drain(self, timeout_s: float) -> int:
        """Stop accepting (503), let requests in flight finish for up to `timeout_s`, cancel the
        rest with a clear error; returns how many were cancelled. Thread-safe."""
        loop = getattr(self.app.state, "loop", None)
        if loop is None or self._thread is None or not self._thread.is_alive():
            return 0
        backend = self.app.state.backend
        return asyncio.run_coroutine_threadsafe(backend.drain(timeout_s), loop).result(timeout_s + 30)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        self.sock.close()

    def __enter__(self) -> "HttpServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_front_end(
    endpoint: str,
    tokenizer: Any,
    sock: socket.socket,
    api_key: str | None = None,
    served_model: str | None = None,
    keys: Any = None,
    key_queue_share: int | None = None,
) -> HttpServer:
    """An OpenAI-compatible front end of the deployment at `endpoint` (CURVE client `keys`), started.
    `api_key`: None, or one or more keys separated by commas; `key_queue_share`: sequences one key
    may have waiting (None: half the coordinator's queue)."""
    from helix_jax.http.app import create_app
    from helix_jax.http.backend import Backend

    app = create_app(Backend(endpoint, tokenizer, served_model, keys=keys), api_key=api_key, key_queue_share=key_queue_share)
    return HttpServer(app, sock).start()
