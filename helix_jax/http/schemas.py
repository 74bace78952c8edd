"""Request bodies of the OpenAI API (pydantic, OpenAI field names) and their parsing.

Owns: `CompletionRequest`, `ChatCompletionRequest`, `parse_body` (bytes -> model, every
failure one 400 `APIError` naming the field) and the list of sampling fields we refuse
rather than silently drop. Sits at the entrance of the front end's data flow: HTTP body ->
**schemas** -> tokenizer -> coordinator. Unknown fields are ignored, as OpenAI's server does;
types are strict (a string is not a number, a bool is not an int) and NaN/Infinity are refused.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from helix_jax.http.errors import bad_request
from helix_jax.runtime.requests import MAX_STOP_STRINGS

MAX_N = 16
MAX_TEMPERATURE = 2.0  # OpenAI's range

# field -> value that means "not used"; anything else is a sampling feature we do not have
UNSUPPORTED_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "min_p": (None, 0, 0.0),
    "min_tokens": (None, 0),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # extension (vLLM's): 0 or -1 disables it
    seed: int | None = None
    stop: Any = Field(default=None, validate_default=True)
    ignore_eos: bool = False  # extension (vLLM's): run to max_tokens whatever the model says
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> list[str]:
        stops = [v] if isinstance(v, str) else ([] if v is None else v)
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("must be a non-empty string or a list of non-empty strings")
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        return stops

    def check(self) -> None:
        """Ranges and unsupported fields; APIError naming the field."""
        for name, defaults in UNSUPPORTED_DEFAULTS.items():
            value = (self.model_extra or {}).get(name)
            if not any(value == d and type(value) is type(d) for d in defaults) and value is not None:
                raise bad_request(f"{name} is not supported by this server (got {value!r}); remove it", name, "unsupported_parameter")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad_request(f"max_tokens must be at least 1, got {self.max_tokens}", "max_tokens")
        if self.temperature is not None and not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise bad_request(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}", "temperature")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise bad_request(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k is not None and self.top_k < -1:
            raise bad_request(f"top_k must be >= -1, got {self.top_k}", "top_k")
        if not 1 <= self.n <= MAX_N:
            raise bad_request(f"n must be in [1, {MAX_N}], got {self.n}", "n")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: Any

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> list[str | list[int]]:
        """A string, token ids, or a list of either: a list of prompts."""

        def ids(x: Any) -> bool:
            return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

        if isinstance(v, str) or ids(v):
            v = [v]
        if not isinstance(v, list) or not v or not all((isinstance(p, str) and p) or ids(p) for p in v):
            raise ValueError("must be a non-empty string, a list of token ids, or a non-empty list of those")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None

    @field_validator("content")
    @classmethod
    def _content(cls, v: Any) -> str:
        """A string, or a list of text parts ({"type": "text", "text": ...}) joined."""
        if isinstance(v, str):
            return v
        if isinstance(v, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in v):
            return "".join(p["text"] for p in v)
        raise ValueError("must be a string or a list of text parts ({'type': 'text', 'text': ...})")

    def as_template_input(self) -> dict[str, str]:
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None

    def check(self) -> None:
        if self.max_completion_tokens is not None:
            if self.max_completion_tokens < 1:
                raise bad_request(f"max_completion_tokens must be at least 1, got {self.max_completion_tokens}", "max_completion_tokens")
            self.max_tokens = self.max_completion_tokens
        super().check()
        if not self.messages:
            raise bad_request("messages must contain at least one message", "messages")


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_body(raw: bytes, model: type[_Sampling]) -> Any:
    """The validated request of a JSON body, or one 400 APIError naming the bad field."""
    try:
        data = json.loads(raw, parse_constant=float)  # NaN / Infinity reach the float check, by field
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        request = model.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = _param(err["loc"]) or None
        got = repr(err.get("input"))
        raise bad_request(
            f"{param}: {err['msg'].removeprefix('Value error, ')}{'' if err['type'] == 'missing' else f' (got {got[:80]})'}", param
        ) from None
    request.check()
    return request
