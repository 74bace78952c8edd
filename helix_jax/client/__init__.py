"""Client of a helix-jax deployment: the last link of the data flow (runtime -> client).

`Client(endpoint)` talks to the coordinator's client socket (printed by `helix-jax deploy`).
One ZeroMQ DEALER socket carries every request; each request has its own id, so any number
of requests may be in flight at once from one client. The socket is owned by one background
I/O thread; caller threads hand it outgoing messages through a queue plus a wake-up pipe, so
`Client` is thread-safe: call `generate`/`stream` from as many threads as you like.
`AsyncClient` is the asyncio twin (zmq.asyncio, one reader task). A deployment with CURVE on
(the default of `helix-jax deploy`) admits only the client keys of its connection file:
`Client.from_connection_file(PATH)` (or `keys=`) connects with them.

Timings are measured here, on arrival of each token. When the deployment runs with
`--emulate --time-scale N`, every figure in `Timings` is divided by N (the coordinator reports
N), so it reads in emulated seconds; `StreamToken.wall_s` stays in wall seconds.
"""

from helix_jax.client.aio import AsyncClient, AsyncTokenStream
from helix_jax.client.messages import (
    LOST_AFTER_S,
    PING_INTERVAL_S,
    GenerateResult,
    StreamToken,
    Timings,
    check_generate_values,
    error_from_message,
    generate_message,
)
from helix_jax.client.sync import Client, TokenStream

__all__ = [
    "AsyncClient",
    "AsyncTokenStream",
    "Client",
    "GenerateResult",
    "LOST_AFTER_S",
    "PING_INTERVAL_S",
    "StreamToken",
    "Timings",
    "TokenStream",
    "check_generate_values",
    "error_from_message",
    "generate_message",
]
