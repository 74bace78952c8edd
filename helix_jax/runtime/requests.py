"""Client requests inside the coordinator: validation, per-request state, stop handling.

Sits between the client socket and the scheduler: a `generate` wire message becomes a
validated `LiveRequest` (or one clear `RequestError` naming the bad field), and the sampled
tokens that come back are appended here until a stop condition ends the request.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol, Sequence

from helix_jax.errors import RequestError
from helix_jax.model.sampling_params import SamplingParams
from helix_jax.modelconfig import ModelConfig
from helix_jax.placement import Hop
from helix_jax.runtime import wire

MAX_STOP_STRINGS = 8
MAX_TEMPERATURE = 100.0  # the deployment's cap on top of SamplingParams' own checks


class TextCodec(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def stop_ids_of(codec: Any, model: ModelConfig) -> frozenset[int]:
    """Token ids that end a request: the tokenizer's stop ids (EOS and the chat template's
    end-of-turn), else the model's EOS."""
    ids = getattr(codec, "stop_token_ids", None)
    if ids:
        return frozenset(int(i) for i in ids)
    return frozenset() if model.eos_token_id is None else frozenset({model.eos_token_id})


@dataclasses.dataclass
class LiveRequest:
    """A request from admission to its last token (mutable: the coordinator's own record)."""

    request_id: str  # coordinator-wide id ("r17"); clients' ids may collide
    identity: bytes  # the client's ROUTER identity
    client_request_id: str
    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    ignore_eos: bool = False  # stop ids do not end it: it runs to max_tokens or a stop string
    submitted_at: float = dataclasses.field(default_factory=time.perf_counter)
    route: tuple[Hop, ...] | None = None
    output_ids: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    first_token_at: float | None = None
    admitted_at: float | None = None  # first admission (a resumed request keeps it)
    failures: list[str] = dataclasses.field(default_factory=list)  # nodes lost under it: "node (why)"
    # wire forms, built once (every decode step's message carries both)
    route_wire: list[list[Any]] = dataclasses.field(default_factory=list)
    sampling_wire: dict[str, Any] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.sampling_wire = dataclasses.asdict(self.sampling)

    def set_route(self, route: tuple[Hop, ...]) -> None:
        self.route = route
        self.route_wire = [[h.node, h.start_layer, h.end_layer] for h in route]

    def add_token(self, token_id: int, codec: TextCodec, stop_ids: frozenset[int]) -> tuple[str, str | None]:
        """Append a sampled token; returns (new text, finish reason or None). A stop id (EOS,
        end-of-turn) ends the request with reason "eos" and adds no text."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.output_ids.append(token_id)  # the stop id included, as generate_local does
        if token_id in stop_ids and not self.ignore_eos:
            return "", "eos"
        full = codec.decode(self.output_ids)
        delta = full[len(self.text) :] if full.startswith(self.text) else full
        self.text = full
        for s in self.stop:
            cut = self.text.find(s)
            if cut >= 0:
                self.text = self.text[:cut]
                return delta, "stop"
        if len(self.output_ids) >= self.max_tokens:
            return delta, "length"
        return delta, None


def parse_generate(
    msg: wire.Message, identity: bytes, request_id: str, model: ModelConfig, codec: TextCodec, max_seq_len: int
) -> LiveRequest:
    """Validate a `generate` message against the model; RequestError names the problem."""
    prompt, prompt_ids = msg.get("prompt"), msg.get("prompt_ids")
    if (prompt is None) == (prompt_ids is None):
        raise RequestError("give exactly one of prompt (text) or prompt_ids (token ids)")
    if prompt is not None:
        if not prompt:
            raise RequestError("prompt is empty")
        ids = list(codec.encode(prompt))
    else:
        if not prompt_ids:
            raise RequestError("prompt_ids is empty")
        for t in prompt_ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < model.vocab_size:
                raise RequestError(f"prompt token id {t!r} is outside the vocabulary [0, {model.vocab_size})")
        ids = list(prompt_ids)
    max_tokens = msg["max_tokens"]
    if max_tokens <= 0:
        raise RequestError(f"max_tokens must be positive, got {max_tokens}")
    if len(ids) + max_tokens > max_seq_len:
        raise RequestError(
            f"prompt too long: {len(ids)} prompt tokens + max_tokens {max_tokens} "
            f"exceed the deployment's maximum sequence length {max_seq_len}"
        )
    temperature = msg["temperature"]
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise RequestError(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {temperature}")
    sampling = SamplingParams(float(temperature), msg["top_k"], float(msg["top_p"]), msg["seed"])  # RequestError
    if sampling.top_k > model.vocab_size:
        raise RequestError(f"top_k must be at most the vocabulary size {model.vocab_size}, got {sampling.top_k}")
    stop = msg.get("stop") or []
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"stop must be at most {MAX_STOP_STRINGS} non-empty strings, got {stop!r}")
    return LiveRequest(
        request_id, identity, msg["request_id"], tuple(ids), max_tokens, sampling, tuple(stop), bool(msg.get("ignore_eos", False))
    )
