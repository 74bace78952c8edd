"""Chat templates: OpenAI-style messages rendered to a prompt string by a model's Jinja template.

Owns: `ChatTemplate` (compiles a template the way Hugging Face's `apply_chat_template` does: a
sandboxed, immutable Jinja environment with trim_blocks and lstrip_blocks, `raise_exception`,
`tojson` and `strftime_now`; renders `messages`, `add_generation_prompt` and the special token
strings), `validate_messages` (RequestError naming what is wrong with a conversation),
`end_of_turn_tokens` (the template's end-of-turn marker, a stop token besides EOS) and
`CHATML_TEMPLATE` (the built-in default of the byte tokenizer of the tiny models).
Sits at the edge of the data flow: the HTTP front end and the coordinator turn a chat request
into prompt ids through a tokenizer's `render_chat`/`encode_chat`, which use this module.
Imports jinja2 (lazily) and the stdlib; never jax or flax.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Callable, Mapping, Sequence

from helix_jax.errors import CheckpointError, RequestError

ROLES = ("system", "user", "assistant", "tool")

# A plain ChatML template: what the byte-level tiny models use (their tokenizer has no
# specials for the markers, so they are spelled out as bytes; EOS is the end of turn).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# End-of-turn markers of the common template families, each a stop token where the
# template writes it and the vocabulary has it as one token.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eom_id|>", "</s>")


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """`messages` checked and normalized: a non-empty list of {"role", "content"} mappings, role
    one of ROLES, content a string or a list of {"type": "text", "text": str} parts (joined by
    newlines). An assistant message with `tool_calls` may have null content (rendered ""). Other
    keys pass through to the template. RequestError names the first problem."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise RequestError(f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}")
    if not messages:
        raise RequestError("messages is empty: a chat needs at least one message")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"messages[{i}] must be an object with role and content, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        if "content" not in message:
            raise RequestError(f"messages[{i}] has no content")
        content = message["content"]
        if content is None and role == "assistant" and message.get("tool_calls"):
            content = ""
        elif isinstance(content, list):
            content = _join_text_parts(content, i)
        elif not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string or a list of text parts, got {type(content).__name__}")
        out.append({**message, "content": content})
    return out


def _join_text_parts(parts: list[Any], i: int) -> str:
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise RequestError(f"messages[{i}].content[{j}] is of type {kind!r}; only text parts are supported")
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError(f"messages[{i}].content[{j}].text must be a string")
        texts.append(text)
    return "\n".join(texts)


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template; CheckpointError when the source does not parse."""

    def __init__(self, source: str, where: str = "chat template"):
        try:
            from jinja2 import TemplateSyntaxError
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise CheckpointError("chat templates need the jinja2 package (pip install jinja2)") from None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source
        try:
            self._template = env.from_string(source)
        except TemplateSyntaxError as exc:
            raise CheckpointError(f"{where} does not parse: {exc} (line {exc.lineno})") from None

    def render(self, messages: Any, add_generation_prompt: bool = True, **special_tokens: Any) -> str:
        """The prompt of validated `messages`; RequestError when the template rejects the
        conversation (its `raise_exception`, e.g. roles that do not alternate)."""
        from jinja2.exceptions import TemplateError

        checked = validate_messages(messages)
        try:
            return self._template.render(messages=checked, add_generation_prompt=bool(add_generation_prompt), **special_tokens)
        except TemplateError as exc:
            raise RequestError(f"the chat template rejected the conversation: {exc}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise RequestError(f"the chat template failed on the conversation: {type(exc).__name__}: {exc}") from None


def end_of_turn_tokens(source: str, token_to_id: Callable[[str], int | None]) -> frozenset[int]:
    """Ids of the end-of-turn markers `source` writes that are single tokens of the vocabulary."""
    ids = set()
    for marker in END_OF_TURN_MARKERS:
        if marker in source:
            token_id = token_to_id(marker)
            if token_id is not None:
                ids.add(int(token_id))
    return frozenset(ids)
