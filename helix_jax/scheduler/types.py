"""Request and admission records exchanged between the scheduler and its callers.

Owns: `RequestSpec` (what a caller submits) and `Admission` (the fixed route the scheduler
hands back). Both are frozen: the coordinator copies the route into every wire message and
the simulator keys its events on the request id.
"""

from __future__ import annotations

import dataclasses

from helix_jax.errors import RequestError
from helix_jax.placement import Hop


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """A request as the scheduler sees it: only its id and sizes matter for routing."""

    request_id: str
    prompt_tokens: int
    max_output_tokens: int  # reserved in the KV ledger as the expected output

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_tokens, int) or self.prompt_tokens < 1:
            raise RequestError(f"request {self.request_id!r}: prompt_tokens must be a positive integer, got {self.prompt_tokens!r}")
        if not isinstance(self.max_output_tokens, int) or self.max_output_tokens < 1:
            raise RequestError(f"request {self.request_id!r}: max_output_tokens must be a positive integer, got {self.max_output_tokens!r}")

    @property
    def kv_tokens(self) -> int:
        """Tokens of KV the request may hold per layer at its end (prompt + output)."""
        return self.prompt_tokens + self.max_output_tokens


@dataclasses.dataclass(frozen=True)
class Admission:
    """A request let into the cluster: its route is fixed for its whole life (prompt and
    every decode step), and its KV is already reserved on every hop."""

    request_id: str
    route: tuple[Hop, ...]
    spec: RequestSpec

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(h.node for h in self.route)
