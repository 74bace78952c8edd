"""What Client and AsyncClient share on their side of the socket: the connection and request ids.

Part of helix_jax.client (the last link of the data flow: runtime -> client). `ClientCore` owns
a client's endpoint, reply timeout and CURVE keys, its one DEALER socket (`connect_dealer`) and
the request ids unique to it (`request_ids`); it opens a client from a deployment's connection
file and names the error of a request or query that got no reply in time. sync.py (an I/O
thread and queues) and aio.py (a reader task) add only how a request waits for its replies;
messages.py is the wire side (results, the `generate` message and its checks, reading replies).
Touches nothing but its own socket.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any, Iterator, Self

import zmq

from helix_jax.errors import HelixError
from helix_jax.runtime import security, wire


def connect_dealer(ctx: zmq.Context, endpoint: str, keys: security.ClientKeys | None) -> zmq.Socket:
    """The one DEALER socket a client multiplexes all its requests over (a CURVE client with keys)."""
    sock = wire.configure(ctx.socket(zmq.DEALER))
    if keys is not None:
        security.curve_client(sock, keys.own, keys.server_public)
    sock.connect(endpoint)
    return sock


def request_ids() -> Iterator[str]:
    """Request ids unique to this client (the coordinator keys requests by socket and id)."""
    prefix = uuid.uuid4().hex[:8]
    return (f"{prefix}-{n}" for n in itertools.count())


class ClientCore:
    """A client's connection (module docstring): Client and AsyncClient build on it."""

    def __init__(self, endpoint: str, timeout_s: float = 300.0, keys: security.ClientKeys | None = None) -> None:
        self.endpoint, self.timeout_s, self.keys = endpoint, timeout_s, keys
        self._sock: Any = connect_dealer(self._context(), endpoint, keys)  # AsyncClient's: zmq.asyncio, awaitable
        self._ids = request_ids()

    @classmethod
    def from_connection_file(cls, path: str | Path, timeout_s: float = 300.0) -> Self:
        """A client of the deployment described by `connection.json` (endpoint and keys)."""
        endpoint, keys = security.read_connection_file(path)
        return cls(endpoint, timeout_s, keys)

    @staticmethod
    def _context() -> zmq.Context:
        """The zmq context the socket is made in (AsyncClient: zmq.asyncio's)."""
        return zmq.Context.instance()

    def _no_reply(self, request_id: str | None = None) -> HelixError:
        """The error of a request (by id), or of an `info` / `stats` query, that got no reply
        within the client's timeout."""
        if request_id is None:
            return HelixError(f"no reply from {self.endpoint} within {self.timeout_s:.0f} s")
        return HelixError(f"request {request_id} got no reply within {self.timeout_s:.0f} s")
