"""OpenAI-compatible HTTP front end of a deployment (FastAPI + uvicorn).

Owns: the HTTP API (`/v1/models`, `/v1/completions`, `/v1/chat/completions`, `/health`,
`/ready`, `/metrics`), its errors, metrics and graceful drain. Sits beside the client at the
end of the data flow (runtime -> coordinator -> **client / HTTP front end** -> users): the
front end is a client of the coordinator over its ZeroMQ client socket (`AsyncClient`), in
its own thread and event loop, so it never runs inside the coordinator's loop and several
front ends may share one deployment. docs/http-api.md describes the API.
"""

from helix_jax.http.app import create_app
from helix_jax.http.backend import Backend
from helix_jax.http.server import HttpServer, bind_socket

__all__ = ["Backend", "HttpServer", "bind_socket", "create_app"]
